"""`clipprobe demo`: the whole pipeline on the built-in concept world, as one parent run."""

from __future__ import annotations

import click

from clipprobe.cli import options

DEMO_MODEL = "demo_mobilenet_v2"


@click.command()
@click.option("--out", "out_dir", default="worlds/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's concept world is (re)generated.")
@click.option("--epochs", default=2, show_default=True, type=int, help="Training epochs after epoch 0 (the random init).")
@click.option("--repeats", default=1, show_default=True, type=int, help="Extra stratified re-splits per probe fit.")
@click.option("--modules", default="all", show_default=True, help="Modules to probe: all, or a list like module:0,module:18.")
@click.option("--seed", default=0, show_default=True, type=int)
@options.device
@options.experiment_name
@click.pass_context
def demo(ctx: click.Context, out_dir: str, epochs: int, repeats: int, modules: str, seed: int, device: str,
         experiment_name: str | None) -> None:
    """Run world -> train -> concepts -> probe -> compare on the concept world, each step a child run.

    The concepts come from the world's exact annotations (CLIP weights would need a download);
    the backbone is a MobileNetV2 (width 0.5) trained for a few epochs, registered per epoch.
    """
    from clipprobe.cli.compare import compare
    from clipprobe.cli.concepts import concepts
    from clipprobe.cli.probe import probe
    from clipprobe.cli.train import train
    from clipprobe.cli.world import world
    from clipprobe.tracking import runs

    params = {"out": out_dir, "epochs": epochs, "repeats": repeats, "modules": modules, "seed": seed}
    with runs.step_run("main", experiment_name=experiment_name, params=params):
        click.echo("== world: the built-in concept world")
        ctx.invoke(world, out_dir=out_dir, seed=seed, overwrite=True)
        click.echo(f"== train: MobileNetV2 on the world's shapes, epochs 0..{epochs}, each a registered model")
        ctx.invoke(train, epochs=epochs, width_mult=0.5, seed=seed, model_name=DEMO_MODEL,
                   out_dir=f"{out_dir}/checkpoints", resume=False, device=device)
        click.echo("== concepts: top-k splits from the world's ground truth")
        ctx.invoke(concepts, source="annotations", seed=seed)
        click.echo("== probe: every (epoch, module, concept, probe kind), each fit a nested run")
        ctx.invoke(probe, model_name=DEMO_MODEL, repeats=repeats, modules=modules, seed=seed, device=device)
        click.echo("== compare: the seed's tables and the what-where-when plot")
        ctx.invoke(compare)
