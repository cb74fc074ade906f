"""`clipprobe checkpoints FOLDER`: import a folder of checkpoints as registered model versions."""

from __future__ import annotations

from dataclasses import fields

import click

from clipprobe.backbones.config import WEIGHTS, CheckpointImport
from clipprobe.cli import options

_D = CheckpointImport  # a dataclass's class attributes are its defaults


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--arch", default=_D.arch, show_default=True,
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
@click.pass_context
def checkpoints(ctx: click.Context, folder: str, experiment_name: str | None, **_settings) -> None:
    """Import checkpoints (torchvision reference dicts or plain state dicts) from FOLDER.

    The epoch comes from each file's dict or its name (model_<N>.pth). Each file becomes a
    version of the registered model with the alias epoch-NNN and a weight fingerprint; files
    already registered are skipped, bad files are named and skipped, and the recipe's
    checkpoint.pth is recognised as the copy of the latest model_<N>.pth.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import checkpoints as step

    with usage_errors():  # a bad setting or pattern, before a run exists
        config = CheckpointImport(**options.given(ctx, [f.name for f in fields(CheckpointImport)]))
        inputs = step.resolve(config)
    if inputs.left_out:
        click.echo(f"WARNING: {folder}: {inputs.left_out}", err=True)
    with usage_errors():  # the registered model holds the other weights, or these epochs with other weights
        step.run(inputs, experiment_name=experiment_name, say=click.echo)
