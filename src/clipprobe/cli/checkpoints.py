"""`clipprobe checkpoints FOLDER`: import a folder of checkpoints as registered model versions."""

from __future__ import annotations

import click

from clipprobe.backbones.checkpoints import WEIGHTS, CheckpointImport
from clipprobe.cli import options

_D = CheckpointImport  # a dataclass's class attributes are its defaults


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--arch", "architecture", default=_D.architecture, show_default=True,
              help="torchvision classification model the files were saved from.")
@click.option("--width-mult", default=None, type=float,
              help="Width multiplier, when the files' args do not say (default: read from the weights).")
@click.option("--num-classes", default=None, type=int,
              help="Classifier outputs, when the files' args do not say (default: read from the weights).")
@click.option("--weights", type=click.Choice(WEIGHTS), default=_D.weights,
              show_default=True, help="The files' trained model, or the EMA the recipe keeps with --model-ema.")
@click.option("--model-name", default=None,
              help="Registered model name (default: the architecture name, with -ema for --weights ema).")
@click.option("--pattern", default=_D.pattern, show_default=True, help="Glob of checkpoint files in FOLDER.")
@options.experiment_name
def checkpoints(folder, architecture, width_mult, num_classes, weights, model_name, pattern,
                experiment_name) -> None:
    """Import checkpoints (torchvision reference dicts or plain state dicts) from FOLDER.

    The epoch comes from each file's dict or its name (model_<N>.pth). Each file becomes a
    version of the registered model with the alias epoch-NNN and a weight fingerprint; files
    already registered are skipped, bad files are named and skipped, and the recipe's
    checkpoint.pth is recognised as the copy of the latest model_<N>.pth.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.tracking import configs, registry, runs

    config = CheckpointImport(folder=folder, architecture=architecture, width_mult=width_mult,
                              num_classes=num_classes, weights=weights, model_name=model_name, pattern=pattern)
    with usage_errors():
        config.validate()
        files = config.files()
    left_out = config.left_out(files)
    if left_out:
        click.echo(f"WARNING: {folder}: {left_out}", err=True)
    model_name = config.model_name
    params = {"folder": str(config.folder), "architecture": architecture, "width_mult": width_mult or "",
              "num_classes": num_classes or "", "model_name": model_name, "pattern": pattern, "weights": weights}
    tags = {runs.MODEL_NAME_TAG: model_name, registry.ARCHITECTURE_TAG: architecture,
            registry.WEIGHTS_TAG: weights}
    with runs.step_run("checkpoints", experiment_name=experiment_name, params=params, tags=tags) as run:
        configs.log_config(config)
        try:
            summary = registry.import_checkpoints(files, name=model_name, architecture=architecture,
                                                  width_mult=width_mult, num_classes=num_classes,
                                                  weights=weights)
        except ValueError as err:  # the model holds the other kind of weights
            raise click.UsageError(str(err)) from None
        runs.log_metrics({"n_files": len(files), "n_imported": len(summary.imported),
                          "n_already_registered": len(summary.already), "n_copies": len(summary.copies),
                          "n_skipped": len(summary.skipped), "n_duplicate_groups": len(summary.duplicates)})
        epochs = sorted(c.epoch for c in summary.imported)
        span = f" (epochs {epochs[0]}..{epochs[-1]})" if epochs else ""
        click.echo(f"{folder}: imported {len(summary.imported)}{span} as '{model_name}', "
                   f"{len(summary.already)} already registered, {len(summary.skipped)} skipped as bad files "
                   f"({weights} weights; run {run.info.run_id})")
        for path, reason in summary.skipped:
            click.echo(f"skipped {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", err=True)
        for copy, original in summary.copies:
            click.echo(f"{copy.name}: the copy of {original.name} (same epoch and weights), not registered twice")
        if summary.duplicates:
            click.echo(f"WARNING: {len(summary.duplicates)} group(s) of epochs share identical weights: "
                       "see the clipprobe.duplicate_of version tags", err=True)
        if not summary.imported and not summary.already:  # inside the run: it ends FAILED, never a default model
            raise click.ClickException(f"nothing imported from {folder}: all {len(files)} files were skipped "
                                       f"as bad files (run {run.info.run_id} FAILED)")
