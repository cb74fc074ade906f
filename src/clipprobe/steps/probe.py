"""The probe step: a ``SweepConfig`` resolved into checkpoints and splits, then run under its sweep run.

``resolve`` makes every choice left open (model, epochs, concepts run, hyper-parameters) and checks every
setting before a run exists, so a bad option never leaves a FAILED sweep; ``run`` opens (or reopens) the
sweep run, logs the config, has an executor fit what is missing and logs the results. ``checkpoints`` and
``concept_splits`` are the sweep's inputs, used by ``tune`` too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from clipprobe.activations.cache import ActivationCache
from clipprobe.activations.decoding import image_set_key
from clipprobe.activations.disk_budget import (
    CacheBudget,
    cache_budget,
    describe_plan,
    module_shapes,
)
from clipprobe.activations.options import ExtractOptions
from clipprobe.backbones.architectures import resolve_probe_modules
from clipprobe.backbones.loader import load_backbone
from clipprobe.concepts.pool import open_rgb
from clipprobe.concepts.splits import ConceptSplits, load_splits
from clipprobe.core.caches import ACTIVATIONS, cache_dir
from clipprobe.core.devices import DEFAULT_DEVICE
from clipprobe.executors import EXECUTORS, Executor, SweepJob, make_executor
from clipprobe.similarity.checkpoints import DEFAULT_MAX_IMAGES as CKA_MAX_IMAGES
from clipprobe.similarity.checkpoints import sweep_cka
from clipprobe.sweep.config import SweepConfig
from clipprobe.sweep.plan import (
    CheckpointRef,
    check_distinct_weights,
    concept_tasks,
    select_checkpoints,
)
from clipprobe.tracking import configs, fits, runs
from clipprobe.tracking import similarity as sweep_similarity
from clipprobe.tracking.discovery import latest_model_name, latest_splits_run_id
from clipprobe.tracking.registry import MLFLOW_REGISTRY, list_checkpoints
from clipprobe.tracking.sweep_fits import SweepFits
from clipprobe.tracking.trials import load_best_params

log = logging.getLogger(__name__)

Experiment = tuple[str | None, str]  # (id, name) as runs.chosen_experiment gives it; id None: not created yet


def checkpoints(model_name: str, epochs: Sequence[int] | str | None, *, device: str) -> list[CheckpointRef]:
    """The model's registered checkpoints of the asked epochs (``sweep.select_checkpoints``: None for all,
    ``sweep.LATEST`` for the newest), by epoch; each loads its weights on ``device`` only when asked."""
    refs = [CheckpointRef(c.epoch, c.fingerprint, name=model_name, version=c.version, load=partial(_load, c.uri, device))
            for c in list_checkpoints(model_name)]
    return select_checkpoints(refs, epochs)


def _load(uri: str, device: str) -> Any:
    with runs.quiet_artifact_downloads():  # no bar of MLflow's per checkpoint under the sweep's own bars
        return load_backbone(uri, device=device, registry=MLFLOW_REGISTRY)


def concept_splits(run_id: str) -> ConceptSplits:
    """The ``concepts/splits.parquet`` of a concepts run; ``LookupError`` naming the run when it has none."""
    try:
        path = runs.download_artifact(run_id, runs.SPLITS_ARTIFACT)
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing run or artifact
        raise LookupError(f"run {run_id} has no {runs.SPLITS_ARTIFACT}: pass --splits-run with the id of a "
                          "finished `clipprobe concepts` run") from None
    return load_splits(path)


def describe_checkpoints(model_name: str, refs: Sequence[CheckpointRef], *, show: int = 8) -> str:
    """``model: NAME (v1 = epoch 0, ...)``; past ``show`` checkpoints the first and last few and the count, so
    300 checkpoints stay one readable line."""
    parts = [f"v{r.version} = epoch {r.epoch}" for r in refs]
    if len(parts) <= show:
        return f"model: {model_name} (" + ", ".join(parts) + ")"
    parts = [*parts[:show // 2], f"{len(parts) - show} more", *parts[-(show // 2):]]
    return f"model: {model_name} ({len(refs)} checkpoints: " + ", ".join(parts) + ")"


def params_from(run_id: str, probes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Best hyper-parameters per probe kind from a tune run's ``tune/best_params.json`` (a kind it has none
    for keeps its defaults, with a warning)."""
    data = load_best_params(run_id)  # ValueError: no such run, not a tune run, or no tune/best_params.json
    out = {}
    for probe in probes:
        entry = data.get(probe)
        if entry is None:
            log.warning("--params-from %s has no parameters for %s: using its defaults", run_id, probe)
            continue
        out[probe] = dict(entry.get("params", entry)) if isinstance(entry, dict) else {}
    return out


def resumed_config(run_id: str, given: Mapping[str, Any]) -> SweepConfig:
    """The config sweep ``run_id`` stored; a ``ValueError`` when it stores none or ``given`` (the settings the
    user set) would change it: one sweep, one setting."""
    runs.get_step_run(run_id, "probe", source=f"--resume {run_id}", fix="pass the parent run id of `clipprobe probe`")
    try:
        config = configs.load_config(SweepConfig, run_id)
    except LookupError:
        raise ValueError(f"--resume {run_id}: that sweep stores no {SweepConfig.artifact_path()} (an older "
                         "clipprobe made it), so what it computed is unknown; start a new sweep") from None
    except ValueError as err:
        raise ValueError(f"--resume {err}") from None
    clash = config.conflicts({k: v for k, v in given.items() if v is not None})
    if clash:
        raise ValueError(f"--resume {run_id}: the sweep ran with {'; '.join(clash)}; the options given would mix "
                         "two settings in one sweep: drop them to resume, or start a new sweep without --resume")
    return config.replace(neurons=given["neurons"]) if given.get("neurons") is not None else config


@dataclass(frozen=True)
class SweepInputs:
    """A resolved sweep: its config (every choice made), the checkpoints and the splits it probes."""

    config: SweepConfig
    refs: tuple[CheckpointRef, ...]
    splits: ConceptSplits
    experiment: Experiment

    def describe(self, device: str) -> str:
        """What the sweep uses, in a few lines: the user sees every choice made for them."""
        config = self.config
        n_test = self.splits.table[self.splits.table["part"] == "test"].groupby("concept").size()
        sizes = f"{int(n_test.min())}" if n_test.min() == n_test.max() else f"{int(n_test.min())}-{int(n_test.max())}"
        concepts = list(config.concepts or self.splits.concepts)
        return "\n".join([
            f"experiment: {self.experiment[1]} ({self.experiment[0]})",
            describe_checkpoints(config.model_name or "", self.refs),
            f"concepts run: {config.splits_run} ({len(concepts)} concepts: {', '.join(concepts)}; "
            f"{sizes} test images each)",
            f"modules: {', '.join(config.modules) if config.modules else 'all'}; probes: {', '.join(config.probes)}; "
            f"repeats: {config.repeats}; permutations: {config.permutations}; seed: {config.seed}",
            f"forward pass: precision {config.precision}"
            + (f" (calibrated per module: {config.calibration_images} images, rtol {config.calibration_rtol})"
               if config.precision == "auto" else "") + f", channels_last {config.channels_last}, "
            f"fold_batchnorm {config.fold_batchnorm}, device {device}",
            f"hyper-parameters: {', '.join(f'{p} from {s}' for p, s in config.hparams_source.items())}",
        ])


def resolve(config: SweepConfig, *, device: str, experiment_name: str | None = None) -> SweepInputs:
    """``config`` with every open choice made in the chosen experiment and every setting checked, before any
    run exists: ``LookupError`` (nothing to take a default from) or ``ValueError`` (a bad setting)."""
    experiment = runs.chosen_experiment(experiment_name)
    name = config.model_name or latest_model_name(*experiment)
    refs = checkpoints(name, config.epochs, device=device)
    check_distinct_weights(refs, allow_duplicate_weights=config.allow_duplicate_weights)
    split_id = config.splits_run or latest_splits_run_id(*experiment)
    splits = concept_splits(split_id)
    concept_tasks(splits, config.concepts)  # unknown concepts raise naming those the splits hold
    if config.modules is not None:
        resolve_probe_modules(refs[0].load().module, config.modules)  # unknown modules raise naming the model's
    hparams, source = dict(config.hparams), dict(config.hparams_source)
    if config.params_from and not hparams:
        hparams = params_from(config.params_from, config.probes)
        source = {p: f"tune:{config.params_from}" for p in hparams}
    config = config.replace(model_name=name, epochs=tuple(r.epoch for r in refs), splits_run=split_id,
                            hparams=hparams, hparams_source=source)
    plan = config.plan()
    config = config.replace(hparams={p: plan.params_of(p) for p in config.probes},
                            hparams_source={p: plan.source_of(p) for p in config.probes})
    return SweepInputs(config, tuple(refs), splits, experiment)


@dataclass(frozen=True)
class SweepWork:
    """Where and how a sweep's fits run; nothing here changes their numbers."""

    runner: Executor
    device: str = DEFAULT_DEVICE  # as given: "auto" is resolved where the work runs
    cache_dir: str | Path | None = None  # the activations folder; None: the one under the cache root
    keep_cache: bool = True
    batch_size: int = ExtractOptions.batch_size

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", cache_dir(ACTIVATIONS, self.cache_dir))

    @classmethod
    def open(cls, executor: str = EXECUTORS[0], *, ray_address: str | None = None, gpus_per_task: float = 0.0,
             **settings: Any) -> SweepWork:
        """The work with its executor made (``ValueError`` for options the executor does not take); ``settings``:
        the other fields (device, cache_dir, keep_cache, batch_size)."""
        return cls(make_executor(executor, ray_address=ray_address, gpus_per_task=gpus_per_task), **settings)


def budget(inputs: SweepInputs, work: SweepWork) -> tuple[str, CacheBudget]:
    """The sweep's size (one line: checkpoints, modules, concepts, probe kinds, fits, images) and what its
    activation cache will write under ``work.cache_dir``, from one checkpoint's module shapes on one image
    (without ``keep_cache``: one checkpoint's worth per checkpoint ``work.runner`` processes at once).
    Its ``check()`` refuses a sweep the disk cannot hold, before any run exists."""
    config = inputs.config
    paths, tasks, _groups = concept_tasks(inputs.splits, config.concepts)
    backbone = inputs.refs[0].load()
    modules = resolve_probe_modules(backbone.module, config.modules or backbone.probe_modules or None)
    image = backbone.transform(open_rgb(Path(inputs.splits.pool_root) / paths[0])).float().numpy()
    shapes = module_shapes(backbone.module, {p: p for p in modules.values()}, image)
    cache = ActivationCache(work.cache_dir)
    workers, workers_from = work.runner.parallelism()
    spent = cache_budget(cache, shapes=shapes, image_shape=image.shape,
                         images_key=image_set_key(inputs.splits.pool_root, paths, backbone.transform),
                         n_images=len(paths), fingerprints=[r.fingerprint for r in inputs.refs],
                         options=config.extract_options(work.batch_size), keep_cache=work.keep_cache,
                         maps=config.plan().needs_maps, workers=workers, workers_from=workers_from)
    return describe_plan(len(inputs.refs), len(modules), len(tasks), config.probes, len(paths)), spent


@dataclass(frozen=True)
class SweepOutcome:
    run_id: str
    n_new: int
    seconds: float
    precisions: Mapping[str, int]  # forward pass precision as run -> new fits
    table: Any = field(default=None, repr=False, compare=False)  # the results table logged (a DataFrame)


def run(inputs: SweepInputs, work: SweepWork, *, resume: str | None = None, experiment_name: str | None = None,
        say: Callable[[str], None] = print) -> SweepOutcome:
    """Open the sweep run (reopen ``resume``), log the config, fit every missing fit, log the results and the
    attempt's stats, and describe the sweep on its run. ``say`` hears what the user should read."""
    config = inputs.config
    if resume:
        run_cm = fits.reopen_sweep(resume)
    else:
        run_cm = runs.step_run("probe", experiment_name=experiment_name, params=config.run_params(),
                               tags={runs.MODEL_NAME_TAG: config.model_name},
                               run_name=fits.sweep_run_name(config.model_name, config.epochs, config.splits_run))
    with run_cm as active:
        run_id = active.info.run_id
        if not resume:
            configs.log_config(config)
        outcome = _fit_missing(run_id, inputs, work, say)
        fits.describe_sweep(run_id, outcome.table)  # findings, links to the model versions and the report
    return outcome


def _fit_missing(run_id: str, inputs: SweepInputs, work: SweepWork, say: Callable[[str], None]) -> SweepOutcome:
    """Every missing fit of the sweep, by the executor; then the results table and the attempt's stats."""
    reader = SweepFits(run_id)
    refs, done = _missing(reader, fits.CheckpointRuns(run_id), inputs.refs, say)
    job = SweepJob(sweep_run_id=run_id, tracking_uri=runs.absolute_uri(runs.tracking_uri()),
                   registry_uri=runs.absolute_uri(runs.registry_uri()), splits=inputs.splits,
                   plan=inputs.config.plan(), refs=refs,
                   cache_dir=str(Path(work.cache_dir).resolve()),  # workers start elsewhere: no relative paths
                   extract=inputs.config.extract_options(work.batch_size), device=work.device,
                   keep_cache=work.keep_cache)
    attempt = fits.start_attempt(run_id)
    start = time.perf_counter()
    try:
        new = work.runner.run(job, done)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the open checkpoint runs end KILLED too
        with contextlib.suppress(Exception):
            fits.CheckpointRuns(run_id).end_open("KILLED")
            todo = {r.epoch for r in refs}  # new fits can only be in the checkpoints this attempt probed
            started = [run for run in reader.checkpoint_runs() if run.epoch in todo]
            # a finished checkpoint's results part counts its fits; only the killed ones are read back
            fits.log_attempt(run_id, attempt, n_new_fits=sum(reader.n_finished(run) for run in started) - len(done),
                             seconds=time.perf_counter() - start)
        raise
    seconds = time.perf_counter() - start
    table = reader.results()  # the checkpoints' results parts: no fit is read back
    fits.log_results(run_id, table)
    fits.log_attempt(run_id, attempt, n_new_fits=sum(new.values()), seconds=seconds)
    runs.log_metrics({"n_fits": len(table)})
    if inputs.config.cka:
        _log_cka(run_id, inputs.refs, job, say)
    return SweepOutcome(run_id, sum(new.values()), seconds, dict(sorted(new.items())), table)


def _log_cka(run_id: str, refs: Sequence[CheckpointRef], job: SweepJob, say: Callable[[str], None]) -> None:
    """CKA between the sweep's modules and epochs (every checkpoint, also those probed by an earlier attempt),
    logged as ``probe/cka.parquet`` with the seconds it took (``cka_seconds``)."""
    start = time.perf_counter()
    table = sweep_cka(job.sweep(progress=False), refs, max_images=CKA_MAX_IMAGES, progress=True)
    sweep_similarity.log_cka(run_id, table, max_images=CKA_MAX_IMAGES)
    seconds = time.perf_counter() - start
    runs.log_metrics({"cka_seconds": seconds})
    say(f"CKA between {table['module_a'].nunique()} modules and {table['epoch_a'].nunique()} epochs on "
        f"{int(table['n_images'].iloc[0]) if len(table) else 0} images in {seconds:.1f} s: {sweep_similarity.CKA_ARTIFACT}")


def _missing(reader: SweepFits, checkpoint_runs: fits.CheckpointRuns, refs: Sequence[CheckpointRef],
             say: Callable[[str], None]) -> tuple[tuple[CheckpointRef, ...], set]:
    """What a (resumed) sweep still has to fit: the checkpoints whose run is not FINISHED, and the fits of
    those already logged. A checkpoint run ends FINISHED only after every fit of it was written
    (``executors.local.probe_checkpoint``), so a finished checkpoint's fit runs are never read: at the seed's
    scale reading 150,000 fit runs back takes minutes. Half-written fits of open checkpoints are deleted
    (``SweepFits.finished``), to be redone."""
    status = checkpoint_runs.statuses()
    complete = {e for e, (_run, s) in status.items() if s == "FINISHED"}
    todo = tuple(r for r in refs if r.epoch not in complete)
    done: set = set()
    for ref in todo:
        if ref.epoch in status:
            done |= reader.finished(delete_unfinished=True, checkpoint_run=status[ref.epoch][0])
    if complete or done:
        say(f"{len(refs) - len(todo)} of {len(refs)} checkpoints already probed and {len(done)} fits of the others "
            f"logged under {reader.sweep_run_id}: fitting only the rest")
    return todo, done
