"""The ``clipprobe`` command: a click group with one sub-command per pipeline step."""

from __future__ import annotations

import logging
import os

import click

from clipprobe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipprobe")
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics (DEBUG level).")
def main(verbose: bool) -> None:
    """What a vision backbone encodes, where (module) and when (epoch).

    Steps, in pipeline order: world -> train / checkpoints -> concepts -> probe -> tune -> compare.
    Runs go to MLFLOW_TRACKING_URI, by default the embedded store sqlite:///mlflow.db with
    artifacts under ./mlruns. `clipprobe demo` chains the steps on the built-in concept world.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _register() -> None:
    # One module per step; each defines a click command named after the step.
    from clipprobe.cli import checkpoints, compare, concepts, demo, train, world

    main.add_command(world.world)
    main.add_command(train.train)
    main.add_command(checkpoints.checkpoints)
    main.add_command(concepts.concepts)
    main.add_command(compare.compare)
    main.add_command(demo.demo)


_register()
