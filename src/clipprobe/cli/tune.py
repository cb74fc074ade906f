"""`clipprobe tune`: one Optuna study per probe kind on a subset of fits, every trial a nested MLflow run."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from clipprobe import tuning
from clipprobe.activations import DEFAULT_CACHE_DIR
from clipprobe.cli import options
from clipprobe.executors import EXECUTORS
from clipprobe.probes.kinds import ProbeKind
from clipprobe.sweep import DEFAULT_PROBES

log = logging.getLogger(__name__)

DEFAULT_MODULE_SAMPLE = 3  # modules spread from first to last when --modules is not given


def sample_modules(available: Sequence[str], k: int = DEFAULT_MODULE_SAMPLE) -> list[str]:
    """``k`` display names evenly spread over ``available`` (first and last included)."""
    if len(available) <= k:
        return list(available)
    return [available[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(available) - 1, k)})]


def sample_concepts(groups: Mapping[str, str]) -> list[str]:
    """The first concept of every group (concept -> group, in splits order)."""
    first: dict[str, str] = {}
    for concept, group in groups.items():
        first.setdefault(group, concept)
    return list(first.values())


def check_kinds(names: Sequence[str]) -> list[ProbeKind]:
    """The probe kinds to tune; an unknown kind or one with nothing to search raises one line."""
    return [tuning.check_kind(n) for n in names]


@click.command()
@click.option("--probes", default=",".join(DEFAULT_PROBES), show_default=True,
              help="Probe kinds to tune, one study each: linear_gap, non_linear_gap, non_linear_non_gap, linear_non_gap.")
@click.option("--concepts", default=None, help="all, or a list. Default: the first concept of every group.")
@click.option("--modules", default=None,
              help=f"all, or a list (module:0,features.7). Default: {DEFAULT_MODULE_SAMPLE} modules from first to last.")
@click.option("--epochs", default="latest", show_default=True, help="latest, all, a list (0,2,5) or a range (0-3).")
@click.option("--n-trials", default=tuning.DEFAULT_N_TRIALS, show_default=True, type=int,
              help="Trials per probe kind in this invocation (added to a resumed study's).")
@click.option("--timeout", default=None, type=float, help="Seconds per probe kind's study at most (default: no limit).")
@click.option("--storage", default=None, envvar="CLIPPROBE_OPTUNA_STORAGE", show_envvar=True,
              help="Optuna storage: a journal file path, or an RDB URL (postgresql://user:pw@host/db) shared by "
                   "several workers; the environment variable keeps a password out of `mlflow run` params. "
                   "Default: optuna.journal next to the embedded tracking store.")
@click.option("--study-name", default=None,
              help="Study name prefix (<name>-<kind>). Default: <kind>-<fingerprint of the subset>.")
@click.option("--seed", default=tuning.DEFAULT_SEED, show_default=True, type=int,
              help="TPE sampler seed (give parallel workers different seeds).")
@click.option("--folds", default=tuning.DEFAULT_FOLDS, show_default=True, type=int,
              help="Stratified folds of the training part (the test part is never used).")
@click.option("--splits-run", default=None, help="Concepts run whose concepts/splits.parquet to use. Default: the latest.")
@click.option("--model-name", default=None,
              help="Registered backbone. Default: the model of the latest train/checkpoints run.")
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where decoded images and activations are cached (shared with `probe`).")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: trials in this process; ray: several Ray tasks share each study through --storage "
                   "(an RDB URL such as postgresql+psycopg2://... across machines, a journal file on one).")
@click.option("--ray-address", default=None, help="ray: the cluster to join. Default: RAY_ADDRESS, else a new local one.")
@click.option("--gpus-per-task", default=0.0, show_default=True, type=float, help="ray: GPUs each study worker reserves.")
@click.option("--workers", default=None, type=int,
              help="ray: study workers per probe kind, sharing its --n-trials. Default: one per CPU of the cluster "
                   "(per --gpus-per-task share of its GPUs).")
@options.device
@options.experiment_name
def tune(probes, concepts, modules, epochs, n_trials, timeout, storage, study_name, seed, folds, splits_run,
         model_name, cache_dir, executor, ray_address, gpus_per_task, workers, device, experiment_name) -> None:
    """Tune each probe kind's hyper-parameters with Optuna on k-fold validation inside the training part.

    The parent run gets tune/best_params.json ({kind: {param: value}}; `probe --params-from RUN_ID`
    reads it), the best params as <kind>.<param>, and history / importance plots under tune/plots.
    Running the same command again resumes the studies.
    """
    from clipprobe.devices import resolve_device
    from clipprobe.executors import make_executor
    from clipprobe.sweep import parse_names
    from clipprobe.tracking import runs, trials

    try:
        kinds = check_kinds(parse_names(probes) or list(DEFAULT_PROBES))
        if n_trials < 1 and timeout is None:
            raise ValueError(f"--n-trials {n_trials}: expected 1 or more")
        dev = str(resolve_device(device))
        store = tuning.open_storage(storage, default_dir=trials.default_journal_dir())
        runner = make_executor(executor, ray_address=ray_address, gpus_per_task=gpus_per_task)
        if workers is not None and (executor != "ray" or workers < 1):
            raise ValueError(f"--workers {workers}: expected 1 or more, with --executor ray")
        if executor == "ray":  # workers open the storage themselves: hand them its address
            store = storage or str((trials.default_journal_dir() / tuning.JOURNAL_FILE).resolve())
    except tuning.StorageError as err:  # the URL may be right and the database down: not a usage error
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    data = _prepare(model_name, splits_run, epochs, modules, concepts, [k.name for k in kinds], cache_dir, dev,
                    runs.chosen_experiment(experiment_name))
    params = {"probes": ",".join(k.name for k in kinds), "concepts": ",".join(data["concepts"]),
              "modules": ",".join(data["modules"]), "epochs": ",".join(map(str, data["epochs"])),
              "n_trials": n_trials, "timeout": timeout or "", "seed": seed, "folds": folds,
              "storage": tuning.mask_url(str(storage)) if storage else "default",
              "study_name": study_name or "", "splits_run": data["splits_run"], "model_name": data["model_name"]}
    with runs.step_run("tune", experiment_name=experiment_name, params=params,
                       tags={runs.MODEL_NAME_TAG: data["model_name"]}) as run:
        try:
            results = run_studies(run.info.run_id, [(k, data["tasks"][k.name]) for k in kinds], storage=store,
                                  study_name=study_name, n_trials=n_trials if n_trials > 0 else None,
                                  timeout=timeout, seed=seed, folds=folds, runner=runner,
                                  device=dev if executor == "local" else device,  # "auto": each worker's own GPU
                                  workers=workers)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
    for kind, res in results.items():
        click.echo(f"{kind}: best val_acc {res.best_value:.3f} ({res.counts['complete']} complete, "
                   f"{res.counts['pruned']} pruned, {res.counts['fail']} failed) in study {res.study_name}")
    click.echo(f"tune run {run.info.run_id}: best params in {trials.BEST_PARAMS_ARTIFACT}; "
               f"use them with `clipprobe probe --params-from {run.info.run_id}`")


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
    device: str = "cpu",
    runner: Any = None,
    workers: int | None = None,
) -> dict[str, tuning.StudyResult]:
    """One study per (kind, tasks) under the active tune run ``run_id``: trials as nested runs (by ``runner``,
    an executor: in this process by default), then best params (params ``<kind>.<param>``,
    ``tune/best_params.json``), metrics and plots on the run."""
    from clipprobe.executors import LocalExecutor
    from clipprobe.tracking import runs, trials

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
        path = Path(tmp) / "best_params.json"
        path.write_text(trials.best_params_json({k: r.best_params for k, r in results.items()}))
        runs.log_artifact(path, "tune")
    return results


def _prepare(model_name: str | None, splits_run: str | None, epochs: str, modules: str | None,
             concepts: str | None, kinds: Sequence[str], cache_dir: str, device: str,
             experiment: tuple[str | None, str]) -> dict[str, Any]:
    """Features of the chosen (concept, module, epoch) subset, cut to their training parts, per kind."""
    from clipprobe.activations import ExtractOptions
    from clipprobe.backbones.architectures import resolve_probe_modules
    from clipprobe.backbones.loader import load_backbone
    from clipprobe.cli.probe import SPLITS_ARTIFACT, latest_model_name, splits_run_id
    from clipprobe.concepts.splits import load_splits
    from clipprobe.probes.kinds import probe_kind
    from clipprobe.sweep import Sweep, SweepPlan, parse_epochs, parse_names
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import MLFLOW_REGISTRY, list_checkpoints

    name = model_name or latest_model_name(*experiment)
    try:
        registered = list_checkpoints(name)
        if not registered:
            raise ValueError(f"model {name!r} has no registered checkpoints: run `clipprobe train` or "
                             "`clipprobe checkpoints FOLDER`, or pass --model-name")
        by_epoch = {c.epoch: c for c in registered}
        wanted = [max(by_epoch)] if epochs.strip() == "latest" else parse_epochs(epochs) or sorted(by_epoch)
        missing = [e for e in wanted if e not in by_epoch]
        if missing:
            raise ValueError(f"epoch(s) {', '.join(map(str, missing))} not registered: the model has epochs "
                             f"{', '.join(map(str, sorted(by_epoch)))}")
        split_id = splits_run_id(splits_run, *experiment)
        splits = load_splits(runs.download_artifact(split_id, SPLITS_ARTIFACT))
        groups = {c: splits.group_of(c) for c in splits.concepts}
        chosen = sample_concepts(groups) if concepts is None else parse_names(concepts) or list(groups)
        sweep = Sweep(splits, SweepPlan(concepts=chosen, probes=list(kinds), repeats=0),
                      cache_dir=cache_dir, device=device, progress=False)
        tasks: dict[str, list[tuning.TuneTask]] = {k: [] for k in kinds}
        module_names: list[str] = []
        for epoch in wanted:
            backbone = load_backbone(by_epoch[epoch].uri, device=device, registry=MLFLOW_REGISTRY)
            available = backbone.probe_modules
            spec = parse_names(modules) if modules is not None else sample_modules(list(available))
            picked = resolve_probe_modules(backbone.module, spec)
            module_names = list(picked)
            acts = sweep.cache.get(backbone.module, picked, sweep.images(backbone.transform),
                                   fingerprint=backbone.fingerprint, options=ExtractOptions(), device=device,
                                   progress=False)
            for module, path in picked.items():
                for kind in kinds:
                    X = acts.features(path, probe_kind(kind).features)
                    tasks[kind].extend(tuning.training_part(X, t, f"{t.concept} {module} @{epoch}")
                                       for t in sweep.tasks)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.UsageError(str(err).strip("'\"")) from None
    click.echo(f"experiment: {experiment[1]} ({experiment[0]})\nmodel: {name} ("
               + ", ".join(f"v{by_epoch[e].version} = epoch {e}" for e in wanted) + ")\n"
               f"concepts run: {split_id} (tuning on {', '.join(chosen)})\nmodules: {', '.join(module_names)}\n"
               f"forward pass: precision {ExtractOptions().precision}, device {device}; "
               f"{len(tasks[kinds[0]])} fits per probe kind")
    return {"tasks": tasks, "concepts": chosen, "modules": module_names, "epochs": wanted,
            "splits_run": split_id, "model_name": name}
