"""`clipprobe demo`: the whole pipeline on the built-in concept world, as one parent run."""

from __future__ import annotations

from dataclasses import fields

import click

from clipprobe.cli import options
from clipprobe.steps.demo import DemoConfig

_D = DemoConfig()


@click.command()
@click.option("--out", default=_D.out, show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's concept world is (re)generated.")
@click.option("--train-per-class", default=_D.train_per_class, show_default=True, type=int,
              help="Training images per shape (10 shapes).")
@click.option("--val-per-class", default=_D.val_per_class, show_default=True, type=int,
              help="Validation images per shape.")
@click.option("--pool-size", default=_D.pool_size, show_default=True, type=int,
              help="Pool images the concept splits come from (each shape concept needs top-k of them).")
@click.option("--epochs", default=_D.epochs, show_default=True, type=int,
              help="Training epochs after epoch 0 (the random init); every epoch is registered.")
@click.option("--probe-epochs", type=options.Epochs(words=("auto",)), default="auto", show_default=True,
              help="Epochs to probe: auto (0, a quarter, half and the last), all, or a list like 0,2,10 (or 0-3).")
@click.option("--repeats", default=_D.repeats, show_default=True, type=int,
              help="Extra stratified re-splits per probe fit.")
@click.option("--modules", type=options.Names(), default=",".join(_D.modules), show_default=True,
              help="Modules to probe: all (19: several times slower), or a list like module:0,module:18.")
@click.option("--permutations", default=_D.permutations, show_default=True, type=int,
              help="Permutation-baseline refits per probe fit; 0 (off) keeps the demo within minutes, the probe "
                   "step's own default is 19.")
@click.option("--seed", default=_D.seed, show_default=True, type=int, help="Passed as --seed to every step.")
@click.option("--clip/--no-clip", default=_D.clip, show_default=True,
              help="Also train the world CLIP, mine concepts with it and probe the last epoch on its labels; "
                   "--no-clip runs the annotation path only.")
@click.option("--clip-epochs", default=_D.clip_epochs, show_default=True, type=int,
              help="Training epochs of the world CLIP (the clip step's own default, 15, also learns patterns).")
@options.device
@options.experiment_name
@click.pass_context
def demo(ctx: click.Context, device: str, experiment_name: str | None, **_settings) -> None:
    """Run world -> train -> concepts -> probe, then clip -> concepts (CLIP) -> probe, then compare,
    on the concept world, each step a child run.

    The first concepts come from the world's exact annotations: its colours, patterns and some of its
    shapes. The backbone is a MobileNetV2 (width 0.5) trained on the shapes, registered per epoch; a few
    epochs are probed, so "when" has a known answer: shape concepts appear at late modules as the
    network learns them. Then a small CLIP trained on the world mines the same concepts the seed's way
    (its prompt, a softmax per group); the last epoch is probed on CLIP's labels, and compare shows both
    sweeps side by side with CLIP's label precision and how much of the difference label noise explains.
    """
    from clipprobe.cli import main
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import demo as step

    with usage_errors():  # e.g. --probe-epochs outside 0..--epochs
        config = DemoConfig(**options.given(ctx, [f.name for f in fields(DemoConfig)]))

    def invoke(name: str, *args: object) -> None:  # a step as its command line would run it: options given
        command = main.get_command(ctx, name)
        with command.make_context(name, [str(a) for a in args], parent=ctx) as sub:
            command.invoke(sub)

    step.run(config, invoke=invoke, say=click.echo, device=device, experiment_name=experiment_name)
