"""Options shared by several commands, defined once so their names and help never drift."""

from __future__ import annotations

import click

experiment_name = click.option(
    "--experiment-name",
    default=None,
    help="MLflow experiment for this run (default: MLflow's default experiment). "
    "Under `mlflow run`, use its own --experiment-name instead.",
)

device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where tensors run; auto picks cuda when available.",
)
