"""`clipprobe probe`: the sweep checkpoint x module x concept x probe kind, every fit a nested MLflow run."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
from typing import Any

import click

from clipprobe.activations import DEFAULT_CACHE_DIR, PRECISIONS, ExtractOptions
from clipprobe.cli import options
from clipprobe.sweep import DEFAULT_PROBES, DEFAULT_REPEATS, SweepPlan

log = logging.getLogger(__name__)

SPLITS_ARTIFACT = "concepts/splits.parquet"
# Options that choose what a sweep computes: stored on the sweep run, read back by --resume.
PLAN_OPTIONS = ("model_name", "epochs", "modules", "concepts", "probes", "repeats", "seed", "splits_run",
                "params_from", "allow_duplicate_weights")
_PLAN_DEFAULTS = inspect.signature(SweepPlan).parameters


def latest_model_name() -> str:
    """The model name (tag ``clipprobe.model_name``) of the newest finished train or checkpoints run."""
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import MODEL_NAME_TAG

    found = [r for r in (runs.find_latest_run("train"), runs.find_latest_run("checkpoints"))
             if r is not None and MODEL_NAME_TAG in r.data.tags]
    if not found:
        raise click.UsageError("no --model-name given and no finished train or checkpoints run names one: "
                               "run `clipprobe train` or `clipprobe checkpoints FOLDER`, or pass --model-name")
    return max(found, key=lambda r: r.info.start_time).data.tags[MODEL_NAME_TAG]


def splits_run_id(given: str | None) -> str:
    from clipprobe.tracking import runs

    if given:
        return given
    run = runs.find_latest_run("concepts")
    if run is None:
        raise click.UsageError("no --splits-run given and no finished concepts run found: run `clipprobe concepts` first")
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


def _plan_from_run(run) -> dict[str, Any]:
    params = run.data.params
    if "probes" not in params:
        raise click.UsageError(f"--resume {run.info.run_id}: that run stores no sweep options; it cannot be resumed")
    return {k: params.get(f"{k}_resolved", params.get(k, "")).strip("'\"") for k in PLAN_OPTIONS}


@click.command()
@click.option("--model-name", default=None,
              help="Registered backbone to probe. Default: the model of the latest train/checkpoints run.")
@click.option("--epochs", default="all", show_default=True, help="all, a list (0,2,5) or a range (0-3).")
@click.option("--modules", default="all", show_default=True,
              help="all, or a list of display names (module:0,module:7) or paths (features.7).")
@click.option("--concepts", default="all", show_default=True, help="all, or a list of concepts of the splits.")
@click.option("--probes", default=",".join(DEFAULT_PROBES), show_default=True,
              help="Probe kinds: linear_gap, non_linear_gap, non_linear_non_gap, linear_non_gap.")
@click.option("--repeats", default=DEFAULT_REPEATS, show_default=True, type=int,
              help="Stratified re-splits on top of the stored one (intervals over 1 + repeats).")
@click.option("--seed", default=_PLAN_DEFAULTS["seed"].default, show_default=True, type=int)
@click.option("--splits-run", default=None, help="Concepts run whose concepts/splits.parquet to use. Default: the latest.")
@click.option("--params-from", default=None,
              help="Tune run id: its tune/best_params.json gives each probe kind's hyper-parameters.")
@click.option("--resume", default=None, metavar="RUN_ID",
              help="Finish an interrupted sweep: its stored options are used, only missing fits run.")
@click.option("--allow-duplicate-weights", is_flag=True,
              help="Probe checkpoints with equal weights as different epochs anyway (warns).")
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where decoded images and activations are cached.")
@click.option("--keep-cache/--no-keep-cache", default=True, show_default=True,
              help="Keep each checkpoint's activations (full maps: ~5.6 GB per checkpoint at the seed's "
                   "sizes) so a later sweep reads them; --no-keep-cache deletes them once probed.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=ExtractOptions.precision, show_default=True,
              help="Forward pass precision: auto (bf16 autocast where the device computes bf16 natively: "
                   "a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute capability 8.0+; else fp32), fp32, "
                   "or bf16. fp32 and bf16 activations are cached apart.")
@click.option("--channels-last/--no-channels-last", default=ExtractOptions.channels_last, show_default=True,
              help="Run the forward pass in channels_last layout (same values up to float32 rounding).")
@click.option("--fold-batchnorm/--no-fold-batchnorm", default=ExtractOptions.fold_batchnorm, show_default=True,
              help="Fold BatchNorm into the convolutions for the pass (same values up to float32 rounding).")
@click.option("--batch-size", default=ExtractOptions.batch_size, show_default=True, type=int,
              help="Images per forward batch.")
@options.device
@options.experiment_name
def probe(model_name, epochs, modules, concepts, probes, repeats, seed, splits_run, params_from, resume,
          allow_duplicate_weights, cache_dir, keep_cache, precision, channels_last, fold_batchnorm, batch_size, device,
          experiment_name) -> None:
    """Probe every (checkpoint, module, concept, probe kind); log every fit as a nested run.

    Without options: the latest concepts run's splits, every registered epoch of the latest trained or
    imported model, all modules and concepts, the seed's three probe kinds. The sweep run gets
    probe/results.parquet (one row per fit) and test_acc/<concept>/<module>/<probe> over epochs.
    """
    from clipprobe.tracking import fits, runs

    chosen = {"model_name": model_name, "epochs": epochs, "modules": modules, "concepts": concepts,
              "probes": probes, "repeats": repeats, "seed": seed, "splits_run": splits_run,
              "params_from": params_from, "allow_duplicate_weights": allow_duplicate_weights}
    if resume:
        try:
            run_cm = fits.reopen_sweep(resume)
        except ValueError as err:
            raise click.UsageError(str(err)) from None
        stored = _plan_from_run(runs.get_run(resume))
        chosen = {**stored, "repeats": int(stored["repeats"]), "seed": int(stored["seed"]),
                  "allow_duplicate_weights": stored["allow_duplicate_weights"] == "True",
                  "splits_run": stored["splits_run"] or None, "params_from": stored["params_from"] or None}
        click.echo(f"resuming sweep {resume} with its stored options")
    setup = _prepare(chosen, device)
    extract = ExtractOptions(batch_size=batch_size, precision=precision, channels_last=channels_last,
                             fold_batchnorm=fold_batchnorm)
    if not resume:
        run_cm = runs.step_run("probe", experiment_name=experiment_name, params=setup["params"],
                               tags={"clipprobe.model_name": setup["params"]["model_name"]})
    with run_cm as run:
        n_new, seconds = _sweep(run.info.run_id, setup, extract, cache_dir, keep_cache, device)
    click.echo(f"probe sweep {run.info.run_id}: {n_new} new fits in {seconds:.1f} s; "
               f"results in probe/results.parquet")


def _prepare(chosen: dict[str, Any], device: str) -> dict[str, Any]:
    """Resolve the options into checkpoints, splits and a plan (before any run opens)."""
    from clipprobe.backbones.loader import load_backbone
    from clipprobe.concepts.splits import load_splits
    from clipprobe.sweep import (
        CheckpointRef,
        check_distinct_weights,
        parse_epochs,
        parse_names,
        select_checkpoints,
    )
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import list_checkpoints

    name = chosen["model_name"] or latest_model_name()
    try:
        epochs = parse_epochs(str(chosen["epochs"]))
        probes = parse_names(chosen["probes"]) or list(DEFAULT_PROBES)
        registered = list_checkpoints(name)
        refs = [CheckpointRef(c.epoch, c.fingerprint, name=name, version=c.version,
                              load=lambda uri=c.uri: load_backbone(uri, device=device)) for c in registered]
        refs = select_checkpoints(refs, epochs)
        check_distinct_weights(refs, allow_duplicate_weights=bool(chosen["allow_duplicate_weights"]))
        split_id = splits_run_id(chosen["splits_run"])
        splits = load_splits(runs.download_artifact(split_id, SPLITS_ARTIFACT))
        hparams = best_params(chosen["params_from"], probes) if chosen["params_from"] else {}
        source = {p: f"tune:{chosen['params_from']}" for p in hparams}
        plan = SweepPlan(modules=parse_names(chosen["modules"]), concepts=parse_names(chosen["concepts"]),
                         probes=probes, repeats=int(chosen["repeats"]), seed=int(chosen["seed"]),
                         hparams=hparams, hparams_source=source)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.UsageError(str(err).strip("'\"")) from None
    params = {**chosen, "model_name": name, "epochs": ",".join(str(r.epoch) for r in refs),
              "probes": ",".join(probes), "splits_run": split_id, "params_from": chosen["params_from"] or "",
              "allow_duplicate_weights": bool(chosen["allow_duplicate_weights"])}
    return {"refs": refs, "splits": splits, "plan": plan, "params": params,
            "allow_duplicate_weights": bool(chosen["allow_duplicate_weights"])}


def _sweep(run_id: str, setup: dict[str, Any], extract: ExtractOptions, cache_dir: str, keep_cache: bool,
           device: str) -> tuple[int, float]:
    from clipprobe.devices import resolve_device
    from clipprobe.sweep import DuplicateWeightsError, Sweep, rows_by_epoch
    from clipprobe.tracking import fits, runs

    logger = fits.FitLogger(run_id)
    done = logger.finished_fits()
    before = rows_by_epoch(logger.results().to_dict("records")) if done else {}
    if done:
        click.echo(f"{len(done)} fits already logged under {run_id}: fitting only the rest")
    sweep = Sweep(setup["splits"], setup["plan"], cache_dir=cache_dir, extract=extract,
                  device=resolve_device(device), keep_cache=keep_cache)

    def on_fit(row: dict[str, Any]) -> None:
        ckpt = logger.checkpoint_run(row["epoch"], params={"epoch": row["epoch"], "model_name": row["model_name"],
                                                          "model_version": row["model_version"],
                                                          "fingerprint": row["fingerprint"]})
        logger.submit(ckpt, row, hparams=json.loads(row["hparams"]))

    def on_checkpoint(ref, rows) -> None:
        logger.checkpoint_run(ref.epoch, params={"epoch": ref.epoch, "model_name": ref.name or "",
                                                 "model_version": ref.version or "", "fingerprint": ref.fingerprint})
        logger.finish_checkpoint(ref.epoch, [*before.get(ref.epoch, []), *rows])

    start = time.perf_counter()
    try:
        new = sweep.run(setup["refs"], done=done, allow_duplicate_weights=setup["allow_duplicate_weights"],
                        on_fit=on_fit, on_checkpoint=on_checkpoint)
    except BaseException as err:
        with contextlib.suppress(Exception):
            logger.close()  # what was submitted before the failure still gets logged
        if isinstance(err, DuplicateWeightsError):
            raise click.UsageError(str(err)) from None
        raise
    logger.close()
    seconds = time.perf_counter() - start
    table = logger.results()
    logger.log_results(table)
    runs.log_metrics({"n_fits": len(table), "n_new_fits": len(new), "sweep_seconds": seconds})
    return len(new), seconds
