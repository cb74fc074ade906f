"""`clipprobe probe`: the sweep checkpoint x module x concept x probe kind, every fit a nested MLflow run."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from clipprobe.activations import DEFAULT_CACHE_DIR, PRECISIONS, ExtractOptions
from clipprobe.cli import options
from clipprobe.executors import EXECUTORS
from clipprobe.sweep_config import SweepConfig

CONFIG_ARTIFACT = SweepConfig.artifact_path()

log = logging.getLogger(__name__)

SPLITS_ARTIFACT = "concepts/splits.parquet"


def latest_model_name(exp_id: str | None, exp_name: str) -> str:
    """The model name (tag ``clipprobe.model_name``) of the newest finished train or checkpoints run of the
    chosen experiment."""
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import MODEL_NAME_TAG

    found = [] if exp_id is None else [
        r for r in (runs.find_latest_run("train", experiment_id=exp_id),
                    runs.find_latest_run("checkpoints", experiment_id=exp_id))
        if r is not None and MODEL_NAME_TAG in r.data.tags]
    if not found:
        raise click.UsageError(f"no --model-name given and no finished train or checkpoints run in experiment "
                               f"{exp_name!r} names one: run `clipprobe train` or `clipprobe checkpoints FOLDER` "
                               "there, pass --experiment-name, or pass --model-name")
    return max(found, key=lambda r: r.info.start_time).data.tags[MODEL_NAME_TAG]


def splits_run_id(given: str | None, exp_id: str | None, exp_name: str) -> str:
    """``given``, or the newest finished concepts run of the chosen experiment."""
    from clipprobe.tracking import runs

    if given:
        return given
    run = None if exp_id is None else runs.find_latest_run("concepts", experiment_id=exp_id)
    if run is None:
        raise click.UsageError(f"no --splits-run given and no finished concepts run in experiment {exp_name!r}: "
                               "run `clipprobe concepts` there, pass --experiment-name, or pass --splits-run RUN_ID")
    return run.info.run_id


def best_params(run_id: str, probes: list[str]) -> dict[str, dict[str, Any]]:
    """Best hyper-parameters per probe kind from a tune run's ``tune/best_params.json``."""
    from clipprobe.tracking.trials import load_best_params

    try:
        data = load_best_params(run_id)
    except ValueError as err:  # no such run, not a tune run, or no tune/best_params.json
        raise click.UsageError(str(err)) from None
    out = {}
    for probe in probes:
        entry = data.get(probe)
        if entry is None:
            log.warning("--params-from %s has no parameters for %s: using its defaults", run_id, probe)
            continue
        out[probe] = dict(entry.get("params", entry)) if isinstance(entry, dict) else {}
    return out


# click parameter -> SweepConfig field, for the options that change what a sweep computes
CONFIG_OPTIONS = ("model_name", "epochs", "modules", "concepts", "probes", "repeats", "permutations", "seed", "splits_run",
                  "params_from", "allow_duplicate_weights", "precision", "channels_last", "fold_batchnorm",
                  "calibration_images", "calibration_rtol")
_D = SweepConfig()


def _given(ctx: click.Context) -> dict[str, Any]:
    """The config settings the user set (command line or environment), converted to SweepConfig values."""
    from clipprobe.sweep import parse_epochs

    given = {}
    for name in CONFIG_OPTIONS:
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        value = ctx.params[name]
        if name == "epochs":
            try:
                value = parse_epochs(str(value))
            except ValueError as err:
                raise click.UsageError(str(err)) from None
        given[name] = value
    return given


def stored_config(run_id: str) -> SweepConfig:
    """The config a sweep run logged (``probe/config.json``); one clear error when there is none."""
    from clipprobe.tracking.configs import load_config

    try:
        return load_config(SweepConfig, run_id)
    except LookupError:
        raise click.UsageError(f"--resume {run_id}: that sweep stores no {CONFIG_ARTIFACT} (an older clipprobe made "
                               "it), so what it computed is unknown; start a new sweep") from None
    except ValueError as err:
        raise click.UsageError(f"--resume {err}") from None


def resume_config(run_id: str, given: dict[str, Any]) -> SweepConfig:
    """The stored config of a sweep; refuses given settings that differ from it (one sweep, one setting)."""
    config = stored_config(run_id)
    try:
        clash = config.conflicts({k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if clash:
        raise click.UsageError(
            f"--resume {run_id}: the sweep ran with {'; '.join(clash)}; the options given would mix two settings "
            "in one sweep: drop them to resume, or start a new sweep without --resume")
    return config


def _resolve(config: SweepConfig, device: str, experiment: tuple[str | None, str]) -> dict[str, Any]:
    """Turn a config into checkpoints and splits; the returned config names exactly what runs."""
    from clipprobe.backbones.architectures import resolve_probe_modules
    from clipprobe.backbones.loader import load_backbone
    from clipprobe.concepts.splits import load_splits
    from clipprobe.sweep import (
        CheckpointRef,
        check_distinct_weights,
        concept_tasks,
        select_checkpoints,
    )
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import MLFLOW_REGISTRY, list_checkpoints

    exp_id, exp_name = experiment
    name = config.model_name or latest_model_name(exp_id, exp_name)
    try:
        registered = list_checkpoints(name)
        refs = [CheckpointRef(c.epoch, c.fingerprint, name=name, version=c.version,
                              load=lambda uri=c.uri: load_backbone(uri, device=device, registry=MLFLOW_REGISTRY)) for c in registered]
        refs = select_checkpoints(refs, config.epochs)
        check_distinct_weights(refs, allow_duplicate_weights=config.allow_duplicate_weights)
        split_id = config.splits_run or splits_run_id(None, exp_id, exp_name)
        splits = load_splits(runs.download_artifact(split_id, SPLITS_ARTIFACT))
        # bad --modules / --concepts are usage errors here, before any run exists
        concept_tasks(splits, config.concepts)
        if config.modules is not None:
            resolve_probe_modules(refs[0].load().module, config.modules)
        hparams, source = dict(config.hparams), dict(config.hparams_source)
        if config.params_from and not hparams:
            hparams = best_params(config.params_from, list(config.probes))
            source = {p: f"tune:{config.params_from}" for p in hparams}
        config = config.replace(model_name=name, epochs=tuple(r.epoch for r in refs), splits_run=split_id,
                                hparams=hparams, hparams_source=source)
        config = config.replace(hparams={p: config.plan().params_of(p) for p in config.probes},
                                hparams_source={p: config.plan().source_of(p) for p in config.probes})
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.UsageError(str(err).strip("'\"")) from None
    return {"config": config, "refs": refs, "splits": splits}


def describe(config: SweepConfig, refs, splits, experiment: tuple[str | None, str], device: str) -> str:
    """What the sweep uses, in a few lines: the user sees every choice made for them."""
    versions = ", ".join(f"v{r.version} = epoch {r.epoch}" for r in refs)
    n_test = splits.table[splits.table["part"] == "test"].groupby("concept").size()
    sizes = f"{int(n_test.min())}" if n_test.min() == n_test.max() else f"{int(n_test.min())}-{int(n_test.max())}"
    concepts = list(config.concepts or splits.concepts)
    return "\n".join([
        f"experiment: {experiment[1]} ({experiment[0]})",
        f"model: {config.model_name} ({versions})",
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


@click.command()
@click.option("--model-name", default=None,
              help="Registered backbone to probe. Default: the model of the experiment's latest train/checkpoints run.")
@click.option("--epochs", default="all", show_default=True, help="all, a list (0,2,5) or a range (0-3).")
@click.option("--modules", default="all", show_default=True,
              help="all, or a list of display names (module:0,module:7) or paths (features.7).")
@click.option("--concepts", default="all", show_default=True, help="all, or a list of concepts of the splits.")
@click.option("--probes", default=",".join(_D.probes), show_default=True,
              help="Probe kinds: linear_gap, non_linear_gap, non_linear_non_gap, linear_non_gap.")
@click.option("--repeats", default=_D.repeats, show_default=True, type=int,
              help="Stratified re-splits on top of the stored one (their spread: a corrected resampled t).")
@click.option("--permutations", default=_D.permutations, show_default=True, type=int,
              help="Permutation baseline: probes refitted with the training labels shuffled (the test labels kept); "
                   "its p-value is (1 + #permuted >= real) / (1 + permutations). 0 turns it off.")
@click.option("--seed", default=_D.seed, show_default=True, type=int)
@click.option("--splits-run", default=None,
              help="Concepts run whose concepts/splits.parquet to use. Default: the experiment's latest.")
@click.option("--params-from", default=None,
              help="Tune run id: its tune/best_params.json gives each probe kind's hyper-parameters.")
@click.option("--resume", default=None, metavar="RUN_ID",
              help=f"Finish an interrupted sweep with its stored {CONFIG_ARTIFACT}; only missing fits run. "
                   "Options that would change its numbers are refused.")
@click.option("--allow-duplicate-weights", is_flag=True,
              help="Probe checkpoints with equal weights as different epochs anyway (warns).")
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where decoded images and activations are cached.")
@click.option("--keep-cache/--no-keep-cache", default=True, show_default=True,
              help="Keep each checkpoint's activations (full maps: ~5.6 GB per checkpoint at the seed's "
                   "sizes) so a later sweep reads them; --no-keep-cache deletes them once probed.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_D.precision, show_default=True,
              help="Forward pass precision: fp32 (exact, the default), bf16 (autocast; moves deep features of "
                   "trained networks), or auto (bf16 only for the modules where a calibration batch shows it "
                   "agrees with fp32, on devices with native bf16). Every fit records what ran.")
@click.option("--calibration-images", default=_D.calibration_images, show_default=True, type=int,
              help="auto: images whose fp32 and bf16 features are compared per module.")
@click.option("--calibration-rtol", default=_D.calibration_rtol, show_default=True, type=float,
              help="auto: a module keeps bf16 when the 99th percentile over its features of the centred relative "
                   "error ||bf16 - fp32|| / ||fp32 - mean|| is at most this.")
@click.option("--channels-last/--no-channels-last", default=_D.channels_last, show_default=True,
              help="Run the forward pass in channels_last layout (same values up to float32 rounding).")
@click.option("--fold-batchnorm/--no-fold-batchnorm", default=_D.fold_batchnorm, show_default=True,
              help="Fold BatchNorm into the convolutions for the pass (same values up to float32 rounding).")
@click.option("--batch-size", default=ExtractOptions.batch_size, show_default=True, type=int,
              help="Images per forward batch.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: checkpoints one after another in this process; ray: one Ray task per checkpoint, "
                   "every task logging its fits under this sweep run (pip install 'clipprobe[ray]').")
@click.option("--ray-address", default=None,
              help="ray: the cluster to join (ray://host:10001, host:6379 or auto). Default: RAY_ADDRESS, else "
                   "a new local cluster on this machine.")
@click.option("--gpus-per-task", default=0.0, show_default=True, type=float,
              help="ray: GPUs each checkpoint task reserves (0.5 puts two tasks on a GPU); pair with --device auto.")
@options.device
@options.experiment_name
@click.pass_context
def probe(ctx: click.Context, resume: str | None, cache_dir: str, keep_cache: bool, batch_size: int, device: str,
          experiment_name: str | None, executor: str, ray_address: str | None, gpus_per_task: float,
          **_settings: Any) -> None:
    """Probe every (checkpoint, module, concept, probe kind); log every fit as a nested run.

    Without options: the latest concepts run's splits and every registered epoch of the latest trained or
    imported model of the chosen experiment (--experiment-name, or the one `mlflow run` uses), all modules
    and concepts, the seed's three probe kinds, an exact fp32 forward pass. The sweep run gets
    probe/config.json (every setting that changes the numbers), probe/results.parquet (one row per fit)
    and test_acc_<concept>/<NN>_<module>/<probe> over epochs (on the sweep and each checkpoint run).
    """
    from clipprobe.executors import make_executor
    from clipprobe.tracking import configs, fits, runs

    given = _given(ctx)
    try:
        runner = make_executor(executor, ray_address=ray_address, gpus_per_task=gpus_per_task)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if resume:
        runs.get_step_run(resume, "probe", source=f"--resume {resume}", error=click.UsageError,
                          fix="pass the parent run id of `clipprobe probe`")
        config = resume_config(resume, given)
        experiment = runs.chosen_experiment(None)
        click.echo(f"resuming sweep {resume} with its stored {CONFIG_ARTIFACT}")
    else:
        experiment = runs.chosen_experiment(experiment_name)
        try:
            config = SweepConfig(**given)
        except ValueError as err:
            raise click.UsageError(str(err)) from None
    setup = _resolve(config, device, experiment)
    config = setup["config"]
    click.echo(describe(config, setup["refs"], setup["splits"], experiment, device))
    if resume:
        run_cm = fits.reopen_sweep(resume)  # the run opens here: nothing above may leave it open
    else:
        run_cm = runs.step_run("probe", experiment_name=experiment_name, params=_run_params(config),
                               tags={runs.MODEL_NAME_TAG: config.model_name},
                               run_name=fits.sweep_run_name(config.model_name, config.epochs, config.splits_run))
    with run_cm as run:
        if not resume:
            configs.log_config(config)
        n_new, seconds = _sweep(run.info.run_id, setup, config.extract_options(batch_size), cache_dir, keep_cache,
                                device, runner)
        fits.describe_sweep(run.info.run_id)  # findings, links to the model versions and the report
    click.echo(f"probe sweep {run.info.run_id}: {n_new} new fits in {seconds:.1f} s; "
               f"results in probe/results.parquet")


def _run_params(config: SweepConfig) -> dict[str, Any]:
    """The sweep run's params: the config flattened (lists as a,b,c), so the UI can compare sweeps."""
    out = {}
    for key, value in config.to_dict().items():
        if key in ("hparams", "hparams_source", "format"):
            continue
        if value is None:
            value = "all" if key in ("epochs", "modules", "concepts") else "none"
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    for probe_name, params in config.hparams.items():
        out.update({f"{probe_name}.{k}": v for k, v in params.items()})
    return out


def _sweep(run_id: str, setup: dict[str, Any], extract: ExtractOptions, cache_dir: str, keep_cache: bool,
           device: str, runner: Any) -> tuple[int, float]:
    """Every missing fit of the sweep, by ``runner`` (an executor); then the results table and the attempt's stats."""
    config: SweepConfig = setup["config"]
    from clipprobe.executors import SweepJob
    from clipprobe.sweep import DuplicateWeightsError
    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.sweep_fits import SweepFits

    reader = SweepFits(run_id)
    done = reader.finished(delete_unfinished=True)  # a resume: drop half-written fits, keep the rest
    if done:
        click.echo(f"{len(done)} fits already logged under {run_id}: fitting only the rest")
    job = SweepJob(sweep_run_id=run_id, tracking_uri=runs.absolute_uri(runs.tracking_uri()),
                   registry_uri=runs.absolute_uri(runs.registry_uri()), splits=setup["splits"], plan=config.plan(),
                   refs=tuple(setup["refs"]),
                   cache_dir=str(Path(cache_dir).resolve()),  # workers start elsewhere: no relative paths
                   extract=extract, device=device, keep_cache=keep_cache,
                   allow_duplicate_weights=config.allow_duplicate_weights)
    attempt = fits.start_attempt(run_id)
    start = time.perf_counter()
    new: list[dict[str, Any]] = []
    try:
        new = runner.run(job, done)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C or SIGTERM: the open checkpoint runs end KILLED too
            with contextlib.suppress(Exception):
                fits.CheckpointRuns(run_id).end_open("KILLED")
                fits.log_attempt(run_id, attempt, n_new_fits=len(reader.finished()) - len(done),
                                 seconds=time.perf_counter() - start)
        if isinstance(err, DuplicateWeightsError):
            raise click.UsageError(str(err)) from None
        raise
    seconds = time.perf_counter() - start
    table = reader.table()
    fits.log_results(run_id, table)
    fits.log_attempt(run_id, attempt, n_new_fits=len(new), seconds=seconds)
    runs.log_metrics({"n_fits": len(table)})
    if new:
        ran = Counter(r["precision"] for r in new)
        click.echo("forward pass as run: " + ", ".join(f"{p} for {n} fits" for p, n in sorted(ran.items())))
    return len(new), seconds
