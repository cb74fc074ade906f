"""`clipprobe checkpoints FOLDER`: import a folder of checkpoints as registered model versions."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from clipprobe.backbones.architectures import DEFAULT_ARCHITECTURE
from clipprobe.backbones.checkpoints import WEIGHTS
from clipprobe.cli import options
from clipprobe.tracking.registry import import_checkpoints


def _default(fn, name: str):
    """The library's default for a parameter, so the CLI never keeps a second copy."""
    return inspect.signature(fn).parameters[name].default


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--arch", "architecture", default=DEFAULT_ARCHITECTURE, show_default=True,
              help="torchvision classification model the files were saved from.")
@click.option("--width-mult", default=None, type=float,
              help="Width multiplier, when the files' args do not say (default: read from the weights).")
@click.option("--num-classes", default=None, type=int,
              help="Classifier outputs, when the files' args do not say (default: read from the weights).")
@click.option("--weights", type=click.Choice(WEIGHTS), default=_default(import_checkpoints, "weights"),
              show_default=True, help="The files' trained model, or the EMA the recipe keeps with --model-ema.")
@click.option("--model-name", default=None,
              help="Registered model name (default: the architecture name, with -ema for --weights ema).")
@click.option("--pattern", default="*.pth", show_default=True, help="Glob of checkpoint files in FOLDER.")
@options.experiment_name
def checkpoints(folder, architecture, width_mult, num_classes, weights, model_name, pattern,
                experiment_name) -> None:
    """Import checkpoints (torchvision reference dicts or plain state dicts) from FOLDER.

    The epoch comes from each file's dict or its name (model_<N>.pth). Each file becomes a
    version of the registered model with the alias epoch-NNN and a weight fingerprint; files
    already registered are skipped, bad files are named and skipped, and the recipe's
    checkpoint.pth is recognised as the copy of the latest model_<N>.pth.
    """
    from clipprobe.backbones.architectures import check_architecture
    from clipprobe.tracking import registry, runs

    try:
        check_architecture(architecture)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    files = sorted(p for p in Path(folder).glob(pattern) if p.is_file())
    if not files:
        raise click.UsageError(f"no files match {pattern!r} in {folder}: pass --pattern")
    model_name = model_name or (architecture if weights == "model" else f"{architecture}-{weights}")
    params = {"folder": str(Path(folder).resolve()), "architecture": architecture,
              "width_mult": width_mult or "", "num_classes": num_classes or "", "model_name": model_name,
              "pattern": pattern, "weights": weights}
    tags = {runs.MODEL_NAME_TAG: model_name, registry.ARCHITECTURE_TAG: architecture,
            registry.WEIGHTS_TAG: weights}
    with runs.step_run("checkpoints", experiment_name=experiment_name, params=params, tags=tags) as run:
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
        for copy, original in summary.copies:
            click.echo(f"{copy.name}: the copy of {original.name} (same epoch and weights), not registered twice")
        if summary.duplicates:
            click.echo(f"WARNING: {len(summary.duplicates)} group(s) of epochs share identical weights: "
                       "see the clipprobe.duplicate_of version tags", err=True)
        if not summary.imported and not summary.already:  # inside the run: it ends FAILED, never a default model
            raise click.ClickException(f"nothing imported from {folder}: all {len(files)} files were skipped "
                                       f"as bad files (run {run.info.run_id} FAILED)")
