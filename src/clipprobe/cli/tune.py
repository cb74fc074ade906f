"""`clipprobe tune`: one Optuna study per probe kind on a subset of fits, every trial a nested MLflow run."""

from __future__ import annotations

from dataclasses import fields

import click

from clipprobe.cli import options
from clipprobe.steps.tune import EXECUTORS
from clipprobe.tuning.config import DEFAULT_MODULE_SAMPLE, LATEST, TuneConfig

_D = TuneConfig()


@click.command()
@click.option("--probes", type=options.Names(), default=",".join(_D.probes), show_default=True,
              help="Probe kinds to tune, one study each: linear_gap, non_linear_gap, non_linear_non_gap, linear_non_gap.")
@click.option("--concepts", type=options.Names(), default=None, help="all, or a list. Default: the first concept of every group.")
@click.option("--modules", type=options.Names(), default=None,
              help=f"all, or a list (module:0,features.7). Default: {DEFAULT_MODULE_SAMPLE} modules from first to last.")
@click.option("--epochs", type=options.Epochs(words=(LATEST,)), default=_D.epochs, show_default=True, help="latest, all, a list (0,2,5) or a range (0-3).")
@click.option("--n-trials", default=_D.n_trials, show_default=True, type=int,
              help="Trials per probe kind in this invocation (added to a resumed study's).")
@click.option("--timeout", default=None, type=float, help="Seconds per probe kind's study at most (default: no limit).")
@click.option("--storage", default=None, envvar="CLIPPROBE_OPTUNA_STORAGE", show_envvar=True,
              help="Optuna storage: a journal file path, or an RDB URL (postgresql://user:pw@host/db) shared by "
                   "several workers; the environment variable keeps a password out of `mlflow run` params. "
                   "Default: optuna.journal next to the embedded tracking store.")
@click.option("--study-name", default=None,
              help="Study name prefix (<name>-<kind>). Default: <kind>-<fingerprint of the subset>.")
@click.option("--seed", default=_D.seed, show_default=True, type=int,
              help="TPE sampler seed (give parallel workers different seeds).")
@click.option("--folds", default=_D.folds, show_default=True, type=int,
              help="Stratified folds of the training part (the test part is never used).")
@click.option("--splits-run", default=None, metavar="RUN_ID", help="Concepts run whose concepts/splits.parquet to use. Default: the latest.")
@click.option("--model-name", default=None,
              help="Registered backbone. Default: the model of the latest train/checkpoints run.")
@options.cache_dir("activations", "Where decoded images and activations are cached (shared with `probe`).")
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
@click.pass_context
def tune(ctx: click.Context, storage: str | None, cache_dir: str | None, executor: str, ray_address: str | None,
         gpus_per_task: float, workers: int | None, device: str, experiment_name: str | None, **_settings) -> None:
    """Tune each probe kind's hyper-parameters with Optuna on k-fold validation inside the training part.

    The parent run gets tune/best_params.json ({kind: {param: value}}; `probe --params-from RUN_ID`
    reads it), tune/config.json (what the studies tuned on), the best params as <kind>.<param>, and
    history / importance plots under tune/plots. Running the same command again resumes the studies.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import tune as step

    with usage_errors():  # every setting is checked here, before a run exists (a storage that will not open: exit 1)
        config = TuneConfig(**options.given(ctx, [f.name for f in fields(TuneConfig)]))
        work = step.TuneWork.open(storage, executor=executor, ray_address=ray_address, gpus_per_task=gpus_per_task,
                                  workers=workers, device=device)
        inputs = step.resolve(config, experiment_name=experiment_name, cache_dir=cache_dir, device=work.local_device)
    click.echo(inputs.describe(work.local_device))
    run_id, results = step.run(inputs, work, experiment_name=experiment_name)
    for kind, res in results.items():
        click.echo(f"{kind}: best val_acc {res.best_value:.3f} ({res.counts['complete']} complete, "
                   f"{res.counts['pruned']} pruned, {res.counts['fail']} failed) in study {res.study_name}")
    click.echo(f"tune run {run_id}: best params in {step.BEST_PARAMS_ARTIFACT}; "
               f"use them with `clipprobe probe --params-from {run_id}`")
