"""`clipprobe compare`: the seed's tables and the what-where-when plot, built from probe sweeps."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.report.config import CompareConfig

_D = CompareConfig()


@click.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--epoch", type=options.Epoch(), default="last", show_default=True,
              help="Checkpoint epoch the tables show; it must be in every sweep.")
@click.option("--modules", type=options.Names(), default="",
              help="Modules for the accuracy-over-epoch lines, comma-separated, as the sweep names them "
              "(module:1,module:10 for MobileNetV2, layer1,layer4 for a ResNet); default: all, or eight "
              "spread from first to last.")
@click.option("--reference", default="",
              help="CSV in the seed's table shape (group, concept, module, one column per probe) "
              "to print ours beside, e.g. tests/fixtures/seed_tables.csv.")
@click.option("--out", default=str(_D.out), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the report files.")
@click.option("--ui-url", default="",
              help="Address of the MLflow UI showing this store (e.g. http://127.0.0.1:5000), for links to the "
              "runs in the report. Default: the tracking URI when it is an http(s) server, else no links.")
@options.experiment_name
@click.pass_context
def compare(ctx: click.Context, experiment_name: str | None, **_settings) -> None:
    """Tables, plots and sanity flags for probe sweep RUN_IDS (default: the latest sweep).

    With several sweeps, each later one is also compared cell by cell with the first. A sweep with neurons tables
    (neurons/units.parquet) also gets its units: detectors per module over epochs, when units emerge, unit cards.
    Everything is written to --out and logged as artifacts of a `compare` run.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import compare as step

    with usage_errors():  # a bad setting or sweep, before a run exists
        config = CompareConfig(**options.given(ctx, [f.name for f in fields(CompareConfig)]))
        inputs = step.resolve(config, experiment_name=experiment_name)
        made = step.run(inputs, experiment_name=experiment_name)  # its ValueErrors come before its run opens
    click.echo(made.report.text)
    click.echo(f"report: {inputs.config.out / made.report.html.name}  (compare run {made.run_id}, "
               "artifacts under compare/)")
