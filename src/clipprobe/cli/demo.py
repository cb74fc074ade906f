"""`clipprobe demo`: the whole pipeline on the built-in concept world, as one parent run."""

from __future__ import annotations

import click

from clipprobe.cli import options


@click.command()
@click.option("--out", "out_dir", default="worlds/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's concept world is (re)generated.")
@click.option("--seed", default=0, show_default=True, type=int)
@options.experiment_name
@click.pass_context
def demo(ctx: click.Context, out_dir: str, seed: int, experiment_name: str | None) -> None:
    """Run world -> train -> concepts -> probe -> compare on the concept world, each step a child run."""
    from clipprobe.cli.concepts import concepts
    from clipprobe.cli.world import world
    from clipprobe.tracking import runs

    with runs.step_run("main", experiment_name=experiment_name, params={"out": out_dir, "seed": seed}):
        click.echo("== world")
        ctx.invoke(world, out_dir=out_dir, seed=seed, overwrite=True)
        click.echo("== concepts (ground-truth annotations of the world; CLIP weights need a download)")
        ctx.invoke(concepts, source="annotations", seed=seed)
