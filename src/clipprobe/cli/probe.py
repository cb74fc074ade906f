"""`clipprobe probe`: the sweep checkpoint x module x concept x probe kind, every fit a nested MLflow run."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from clipprobe.cli import options
from clipprobe.steps.probe import EXECUTORS, SweepWork
from clipprobe.sweep.config import SweepConfig

CONFIG_ARTIFACT = SweepConfig.artifact_path()
_D = SweepConfig()


@click.command()
@click.option("--model-name", default=None,
              help="Registered backbone to probe. Default: the model of the experiment's latest train/checkpoints run.")
@click.option("--epochs", type=options.Epochs(), default="all", show_default=True, help="all, a list (0,2,5) or a range (0-3).")
@click.option("--modules", type=options.Names(), default="all", show_default=True,
              help="all, or a list of display names (module:0,module:7) or paths (features.7).")
@click.option("--concepts", type=options.Names(), default="all", show_default=True, help="all, or a list of concepts of the splits.")
@click.option("--probes", type=options.Names(), default=",".join(_D.probes), show_default=True,
              help="Probe kinds: linear_gap, non_linear_gap, non_linear_non_gap, linear_non_gap.")
@click.option("--repeats", default=_D.repeats, show_default=True, type=int,
              help="Stratified re-splits on top of the stored one (their spread: a corrected resampled t).")
@click.option("--permutations", default=_D.permutations, show_default=True, type=int,
              help="Permutation baseline: probes refitted with the training labels shuffled (the test labels kept); "
                   "its p-value is (1 + #permuted >= real) / (1 + permutations). 0 turns it off.")
@click.option("--mdl/--no-mdl", default=_D.mdl, show_default=True,
              help="Online codelength (Voita and Titov's MDL) of every fit on its training part, in bits, and its "
                   "compression (uniform / online): one probe more per doubling block (about 5 at 210 training "
                   "images): 6% more time with the default repeats and permutations, 55% with --repeats 1 --permutations 0 "
                   "(benchmarks/results/bench_measures_small.md).")
@click.option("--cka/--no-cka", default=_D.cka, show_default=True,
              help="Debiased linear CKA between every pair of probed modules at each epoch and between every pair of "
                   "epochs of each module, from the pooled activations (probe/cka.parquet; drawn by compare).")
@click.option("--seed", default=_D.seed, show_default=True, type=int,
              help="Seeds the re-splits, the permutations' shuffles and the probes' initial weights.")
@click.option("--splits-run", default=None, metavar="RUN_ID",
              help="Concepts run whose concepts/splits.parquet to use. Default: the experiment's latest.")
@click.option("--params-from", default=None, metavar="RUN_ID",
              help="Tune run id: its tune/best_params.json gives each probe kind's hyper-parameters.")
@click.option("--resume", default=None, metavar="RUN_ID",
              help=f"Finish an interrupted sweep with its stored {CONFIG_ARTIFACT}; only missing fits run. "
                   "Options that would change its numbers are refused.")
@click.option("--allow-duplicate-weights", is_flag=True,
              help="Probe checkpoints with equal weights as different epochs anyway (warns).")
@options.cache_dir("activations", "Where decoded images and activations are cached.")
@click.option("--keep-cache/--no-keep-cache", default=True, show_default=True,
              help="Keep each checkpoint's activations (full maps: ~5.6 GB per checkpoint at the seed's "
                   "sizes) so a later sweep reads them; --no-keep-cache deletes them once probed.")
@click.option("--precision", type=click.Choice(SweepConfig.precisions()), default=_D.precision, show_default=True,
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
@click.option("--neurons/--no-neurons", default=_D.neurons, show_default=True,
              help="Then score every unit of each checkpoint from the same cache (`clipprobe neurons` on this sweep).")
@click.option("--batch-size", default=SweepWork.batch_size, show_default=True, type=int,
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
def probe(ctx: click.Context, resume: str | None, cache_dir: str | None, keep_cache: bool, batch_size: int, device: str,
          experiment_name: str | None, executor: str, ray_address: str | None, gpus_per_task: float,
          **_settings: Any) -> None:
    """Probe every (checkpoint, module, concept, probe kind); log every fit as a nested run.

    Without options: the latest concepts run's splits and every registered epoch of the latest trained or
    imported model of the chosen experiment (--experiment-name, or the one `mlflow run` uses), all modules
    and concepts, the seed's three probe kinds, an exact fp32 forward pass. The sweep run gets
    probe/config.json (every setting that changes the numbers), probe/results.parquet (one row per fit)
    and test_acc_<concept>/<NN>_<module>/<probe> over epochs (on the sweep and each checkpoint run).
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import probe as step

    given = options.given(ctx, [f.name for f in fields(SweepConfig)])
    with usage_errors():  # every setting is checked here, before a run exists
        work = SweepWork.open(executor, ray_address=ray_address, gpus_per_task=gpus_per_task, device=device,
                              cache_dir=cache_dir, keep_cache=keep_cache, batch_size=batch_size)
        config = step.resumed_config(resume, given) if resume else SweepConfig(**given)
        if resume:
            click.echo(f"resuming sweep {resume} with its stored {CONFIG_ARTIFACT}")
        inputs = step.resolve(config, experiment_name=None if resume else experiment_name, device=device)
        plan, disk = step.budget(inputs, work)
        disk.check()  # a sweep the disk cannot hold stops here, before it writes anything
    click.echo("\n".join([inputs.describe(device), plan, disk.describe()]))
    done = step.run(inputs, work, resume=resume, experiment_name=experiment_name, say=click.echo)
    if done.precisions:
        click.echo("forward pass as run: " + ", ".join(f"{p} for {n} fits" for p, n in done.precisions.items()))
    click.echo(f"probe sweep {done.run_id}: {done.n_new} new fits in {done.seconds:.1f} s; "
               f"results in probe/results.parquet")
    if inputs.config.neurons:  # then the neurons step on this sweep, from the same cache
        from clipprobe.steps.neurons import score_sweep

        score_sweep(done.run_id, cache_dir=work.cache_dir, device=device, batch_size=batch_size, say=click.echo)
