"""`clipprobe world`: render the built-in concept world and log its ground truth."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.world.generate import (
    COLOURS,
    PATTERNS,
    SHAPES,
    WorldError,
    WorldSpec,
    generate_world,
    preview,
)

_DEFAULT = WorldSpec()
DEFAULT_OUT = "worlds/default"


@click.command()
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Folder to write train/, val/, pool/ and truth.parquet into.")
@click.option("--seed", default=_DEFAULT.seed, show_default=True, type=int,
              help="Seeds every image's drawing: the same seed and sizes give the same world.")
@click.option("--size", default=_DEFAULT.size, show_default=True, type=int, help="Image side in pixels (224 for realistic benchmarks).")
@click.option("--train-per-class", default=_DEFAULT.train_per_class, show_default=True, type=int,
              help="Images per shape (class) in train/.")
@click.option("--val-per-class", default=_DEFAULT.val_per_class, show_default=True, type=int,
              help="Images per shape (class) in val/.")
@click.option("--pool-size", default=_DEFAULT.pool_size, show_default=True, type=int,
              help="Images in the flat pool/ folder (the stand-in for ImageNet's validation folder).")
@click.option("--shapes", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(SHAPES)}.")
@click.option("--colours", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(COLOURS)}.")
@click.option("--patterns", type=options.Names(), default="all", show_default=True,
              help=f"Comma list from: {', '.join(PATTERNS)}.")
@click.option("--overwrite", is_flag=True, help="Replace a world already in --out.")
@options.experiment_name
def world(out_dir, seed, size, train_per_class, val_per_class, pool_size, shapes, colours, patterns,
          overwrite, experiment_name) -> None:
    """Generate the concept world: shapes (the classes) in known colours and fill patterns.

    Writes an ImageFolder training and validation set, a flat pool folder and a Parquet table of
    ground truth, and logs the table (world/truth.parquet) and a preview to an MLflow run.
    """
    from clipprobe.tracking import configs, runs

    spec = WorldSpec(
        seed=seed, size=size, train_per_class=train_per_class, val_per_class=val_per_class,
        pool_size=pool_size, shapes=shapes or SHAPES, colours=colours or tuple(COLOURS),
        patterns=patterns or PATTERNS,
    )
    try:
        spec.validate()
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise WorldError(f"output folder {out} exists and is not empty: choose another --out or pass --overwrite")
    except WorldError as err:
        raise click.UsageError(str(err)) from None

    params = {"out": str(Path(out_dir).resolve()), "seed": seed, "size": size,
              "train_per_class": train_per_class, "val_per_class": val_per_class,
              "pool_size": pool_size, "shapes": ",".join(spec.shapes),
              "colours": ",".join(spec.colours), "patterns": ",".join(spec.patterns)}
    with runs.step_run("world", experiment_name=experiment_name, params=params) as run:
        configs.log_config(spec)
        try:
            made = generate_world(out_dir, spec, overwrite=overwrite, progress=True)
        except WorldError as err:
            raise click.UsageError(str(err)) from None
        runs.set_tags({runs.WORLD_ROOT_TAG: str(made.root)})
        runs.log_metrics({f"n_{split}": n for split, n in made.n_images.items()})
        runs.log_artifact(made.truth_path, "world")
        with tempfile.TemporaryDirectory() as tmp:
            sheet = Path(tmp) / "preview.png"
            preview(made.root, n=64, split="pool" if made.n_images["pool"] else "train").save(sheet)
            runs.log_artifact(sheet, "world")
    click.echo(f"world written to {made.root}: " + ", ".join(f"{n} {s}" for s, n in made.n_images.items())
               + f" (run {run.info.run_id})")
