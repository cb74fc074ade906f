"""The tune step: a ``TuneConfig`` resolved into the training parts of a few fits, then one Optuna study per
probe kind under the tune run.

The fits' checkpoints, splits and activations come from the probe step and ``Sweep`` (the same epoch
selection, fingerprint check and activation cache), so a study tunes on exactly the features a sweep
probes. ``resolve`` checks every setting before a run exists; ``run`` opens the tune run, logs the config
and has an executor run the studies.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipprobe.activations.options import ExtractOptions
from clipprobe.backbones.architectures import resolve_probe_modules
from clipprobe.core.devices import DEFAULT_DEVICE, resolve_device
from clipprobe.executors import EXECUTORS, Executor, LocalExecutor, make_executor
from clipprobe.probes.kinds import ProbeKind, probe_kind
from clipprobe.steps.probe import Experiment, checkpoints, concept_splits, describe_checkpoints
from clipprobe.sweep.plan import CheckpointRef, Sweep, SweepPlan
from clipprobe.tracking import configs, runs, trials
from clipprobe.tracking.discovery import latest_model_name, latest_splits_run_id
from clipprobe.tracking.trials import BEST_PARAMS_ARTIFACT
from clipprobe.tuning import studies as tuning
from clipprobe.tuning.config import SAMPLE, TuneConfig, sample_concepts, sample_modules


@dataclass(frozen=True)
class TuneInputs:
    """A resolved tune: its config (every choice made), the checkpoints, and per probe kind the training
    parts of the chosen (concept, module, epoch) fits."""

    config: TuneConfig
    refs: tuple[CheckpointRef, ...]
    tasks: Mapping[str, Sequence[tuning.TuneTask]]
    experiment: Experiment

    def describe(self, device: str) -> str:
        config = self.config
        return "\n".join([
            f"experiment: {self.experiment[1]} ({self.experiment[0]})",
            describe_checkpoints(config.model_name or "", self.refs),
            f"concepts run: {config.splits_run} (tuning on {', '.join(config.concepts or ())})",
            f"modules: {', '.join(config.modules or ())}",
            f"forward pass: precision {ExtractOptions().precision}, device {device}; "
            f"{len(self.tasks[config.probes[0]])} fits per probe kind",
        ])


def resolve(config: TuneConfig, *, device: str, experiment_name: str | None = None,
            cache_dir: str | Path | None = None) -> TuneInputs:
    """``config`` with every open choice made in the chosen experiment, and the training parts of its fits
    (features from the activation cache, computed once per checkpoint when missing). ``LookupError`` or
    ``ValueError`` before any run exists."""
    experiment = runs.chosen_experiment(experiment_name)
    name = config.model_name or latest_model_name(*experiment)
    refs = checkpoints(name, config.epochs, device=device)
    split_id = config.splits_run or latest_splits_run_id(*experiment)
    splits = concept_splits(split_id)
    groups = {c: splits.group_of(c) for c in splits.concepts}
    concepts = sample_concepts(groups) if config.concepts == SAMPLE else config.concepts
    first = refs[0].backbone()
    modules = config.modules
    if modules == SAMPLE:
        modules = sample_modules(list(first.probe_modules or resolve_probe_modules(first.module)))
    sweep = Sweep(splits, SweepPlan(modules=modules, concepts=concepts, probes=config.probes, repeats=0),
                  cache_dir=cache_dir, device=device, progress=False)
    modules = tuple(sweep.modules_of(first))  # unknown modules raise naming the model's
    tasks: dict[str, list[tuning.TuneTask]] = {k: [] for k in config.probes}
    for ref in refs:
        backbone = first if ref is refs[0] else ref.backbone()
        picked = sweep.modules_of(backbone)
        acts = sweep.activations(backbone, picked)
        for module, path in picked.items():
            for kind in config.probes:
                X = acts.features(path, probe_kind(kind).features)
                tasks[kind].extend(tuning.training_part(X, t, f"{t.concept} {module} @{ref.epoch}")
                                   for t in sweep.tasks)
    resolved = config.replace(model_name=name, epochs=tuple(r.epoch for r in refs), splits_run=split_id,
                              concepts=tuple(t.concept for t in sweep.tasks), modules=modules)
    return TuneInputs(resolved, tuple(refs), tasks, experiment)


@dataclass(frozen=True)
class TuneWork:
    """Where a tune's trials run; nothing here changes what a study computes."""

    runner: Executor
    storage: Any  # what the executor's studies open: the opened storage here, its address for Ray workers
    storage_param: str  # the run's ``storage`` param: the URL with its password hidden, or "default"
    device: str = DEFAULT_DEVICE  # as given: Ray workers resolve "auto" to their own GPU
    workers: int | None = None  # Ray study workers per probe kind (None: one per CPU or GPU share)

    @property
    def local_device(self) -> str:
        """``device`` resolved in this process (where ``resolve`` computes the features): ``ValueError`` for
        cuda without a GPU."""
        return str(resolve_device(self.device))

    @classmethod
    def open(cls, storage: str | None, *, executor: str = EXECUTORS[0], ray_address: str | None = None,
             gpus_per_task: float = 0.0, workers: int | None = None, device: str = DEFAULT_DEVICE) -> TuneWork:
        """Check the executor options (``ValueError``) and open the Optuna storage (``tuning.StorageError``):
        ``storage`` None is ``optuna.journal`` next to the embedded tracking store."""
        runner = make_executor(executor, ray_address=ray_address, gpus_per_task=gpus_per_task)
        if workers is not None and (executor != "ray" or workers < 1):
            raise ValueError(f"--workers {workers}: expected 1 or more, with --executor ray")
        store = tuning.open_storage(storage, default_dir=trials.default_journal_dir())
        if executor == "ray":  # workers open the storage themselves: hand them its address
            store = storage or str((trials.default_journal_dir() / tuning.JOURNAL_FILE).resolve())
        return cls(runner, store, tuning.mask_url(str(storage)) if storage else "default", device, workers)


def run(inputs: TuneInputs, work: TuneWork, *, experiment_name: str | None = None
        ) -> tuple[str, dict[str, tuning.StudyResult]]:
    """Open the tune run, log the config, run one study per probe kind; returns the run id and the studies'
    results (best params, counts). A study's ``ValueError`` ends the run FAILED and goes on."""
    config = inputs.config
    params = {**config.run_params(), "storage": work.storage_param}
    local = work.runner.name == "local"
    with runs.step_run("tune", experiment_name=experiment_name, params=params,
                       tags={runs.MODEL_NAME_TAG: config.model_name}) as active:
        configs.log_config(config)
        results = run_studies(active.info.run_id, [(k, inputs.tasks[k.name]) for k in config.kinds()],
                              storage=work.storage, study_name=config.study_name, n_trials=config.trials,
                              timeout=config.timeout, seed=config.seed, folds=config.folds, runner=work.runner,
                              device=str(resolve_device(work.device)) if local else work.device,
                              workers=work.workers)
    return active.info.run_id, results


def run_studies(
    run_id: str,
    studies: Sequence[tuple[str | ProbeKind, Sequence[tuning.TuneTask]]],
    *,
    storage: Any,
    study_name: str | None = None,
    n_trials: int | None = tuning.DEFAULT_N_TRIALS,
    timeout: float | None = None,
    seed: int = tuning.DEFAULT_SEED,
    folds: int = tuning.DEFAULT_FOLDS,
    device: str,
    runner: Executor | None = None,
    workers: int | None = None,
) -> dict[str, tuning.StudyResult]:
    """One study per (kind, tasks) under the active tune run ``run_id``: trials as nested runs (by ``runner``,
    an executor: in this process by default), then best params (params ``<kind>.<param>``,
    ``tune/best_params.json``), metrics and plots on the run."""
    runner = runner or LocalExecutor()
    extra = {} if runner.name == "local" else {"workers": workers,
                                               "tracking_uri": runs.absolute_uri(runs.tracking_uri())}
    results: dict[str, tuning.StudyResult] = {}
    for kind, kind_tasks in studies:
        name = kind if isinstance(kind, str) else kind.name
        res = runner.tune_study(run_id, kind, kind_tasks, storage=storage, study_name=study_name, n_trials=n_trials,
                                timeout=timeout, seed=seed, folds=folds, device=device, **extra)
        results[name] = res
        runs.log_params({f"{name}.{p}": v for p, v in res.best_params.items()})
        runs.log_metrics({f"{name}.best_val_acc": res.best_value, f"{name}.n_tasks": len(kind_tasks),
                          **{f"{name}.n_{state}": n for state, n in res.counts.items()}})
        runs.set_tags({f"clipprobe.study.{name}": res.study_name})
        with tempfile.TemporaryDirectory() as tmp:
            if tuning.study_plots(res.study, tmp):
                runs.log_artifacts(tmp, "tune/plots")
    with tempfile.TemporaryDirectory() as tmp:
        folder, name = BEST_PARAMS_ARTIFACT.rsplit("/", 1)
        path = Path(tmp) / name
        path.write_text(trials.best_params_json({k: r.best_params for k, r in results.items()}))
        runs.log_artifact(path, folder)
    return results
