"""`clipprobe world`: render the built-in concept world and log its ground truth."""

from __future__ import annotations

from dataclasses import fields

import click

from clipprobe.cli import options
from clipprobe.world.config import COLOURS, DEFAULT_OUT, PATTERNS, SHAPES, WorldSpec

_D = WorldSpec()


@click.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Folder to write train/, val/, pool/ and truth.parquet into.")
@click.option("--seed", default=_D.seed, show_default=True, type=int,
              help="Seeds every image's drawing: the same seed and sizes give the same world.")
@click.option("--size", default=_D.size, show_default=True, type=int, help="Image side in pixels (224 for realistic benchmarks).")
@click.option("--train-per-class", default=_D.train_per_class, show_default=True, type=int,
              help="Images per shape (class) in train/.")
@click.option("--val-per-class", default=_D.val_per_class, show_default=True, type=int,
              help="Images per shape (class) in val/.")
@click.option("--pool-size", default=_D.pool_size, show_default=True, type=int,
              help="Images in the flat pool/ folder (the stand-in for ImageNet's validation folder).")
@click.option("--shapes", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(SHAPES)}.")
@click.option("--colours", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(COLOURS)}.")
@click.option("--patterns", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(PATTERNS)}.")
@click.option("--overwrite", is_flag=True, help="Replace a world already in --out.")
@options.experiment_name
@click.pass_context
def world(ctx: click.Context, out: str, overwrite: bool, experiment_name: str | None, **_settings) -> None:
    """Generate the concept world: shapes (the classes) in known colours and fill patterns.

    Writes an ImageFolder training and validation set, a flat pool folder and a Parquet table of
    ground truth, and logs the table (world/truth.parquet) and a preview to an MLflow run.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import world as step

    with usage_errors():  # a bad setting or folder, before a run exists
        spec = WorldSpec(**options.given(ctx, [f.name for f in fields(WorldSpec)]))
        inputs = step.resolve(spec, out, overwrite=overwrite)
    made = step.run(inputs, experiment_name=experiment_name)  # a folder that cannot be written: exit 1
    click.echo(made.describe())
