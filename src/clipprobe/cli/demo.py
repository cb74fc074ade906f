"""`clipprobe demo`: the whole pipeline on the built-in concept world, as one parent run."""

from __future__ import annotations

import click

from clipprobe.cli import options

DEMO_MODEL = "demo_mobilenet_v2"
# The demo's recipe: MobileNetV2 (width 0.5) learns the world's 10 shapes at 64 px in ten epochs with
# AdamW, small batches, a one-cycle schedule (a short warm-up, then a cosine down, stepped per batch),
# residual blocks that start as the identity, and no random crops (a crop can cut off the shape that
# is the class). Without the zero-initialised residuals it sits at chance for about half the epochs;
# the reference SGD recipe needs far more epochs here.
DEMO_TRAINING = {"width_mult": 0.5, "batch_size": 16, "opt": "adamw", "lr": 0.01, "weight_decay": 1e-4,
                 "lr_scheduler": "onecycle", "lr_warmup_pct": 0.1, "zero_init_residual": True,
                 "min_crop_scale": 1.0}

# The world CLIP's epochs in the demo: the `clip` step's own default. 5 epochs learn colours (zero-shot 0.995)
# but not patterns (0.225, chance 0.25); 15 learn patterns too. Quiet, 5 epochs trained in 12 s, so 15 fit the
# demo's time budget (README: the demo's measured time).
DEMO_CLIP_EPOCHS = 15

# Every third of MobileNetV2's 19 modules, first and last included: "where" at a third of the cost.
DEMO_MODULES = ",".join(f"module:{i}" for i in range(0, 19, 3))


# Measures beyond accuracy the demo shows whatever the sweep's defaults: MDL costs more where, as in the demo,
# there are no permutations (55% of its sweep: benchmarks/results/bench_measures_small.md), but the demo shows it.
DEMO_MEASURES = ("--mdl",)


def probe_epochs(epochs: int) -> list[int]:
    """Early, middle and late epochs to probe out of 0..``epochs``: the random init, a quarter, half, the end."""
    return sorted({0, epochs // 4, epochs // 2, epochs})


@click.command()
@click.option("--out", "out_dir", default="worlds/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's concept world is (re)generated.")
@click.option("--train-per-class", default=200, show_default=True, type=int,
              help="Training images per shape (10 shapes).")
@click.option("--val-per-class", default=20, show_default=True, type=int, help="Validation images per shape.")
@click.option("--pool-size", default=2000, show_default=True, type=int,
              help="Pool images the concept splits come from (each shape concept needs top-k of them).")
@click.option("--epochs", default=10, show_default=True, type=int,
              help="Training epochs after epoch 0 (the random init); every epoch is registered.")
@click.option("--probe-epochs", type=options.Epochs(words=("auto",)), default="auto", show_default=True,
              help="Epochs to probe: auto (0, a quarter, half and the last), all, or a list like 0,2,10 (or 0-3).")
@click.option("--repeats", default=1, show_default=True, type=int, help="Extra stratified re-splits per probe fit.")
@click.option("--modules", type=options.Names(), default=DEMO_MODULES, show_default=True,
              help="Modules to probe: all (19: several times slower), or a list like module:0,module:18.")
@click.option("--permutations", default=0, show_default=True, type=int,
              help="Permutation-baseline refits per probe fit; 0 (off) keeps the demo within minutes, the probe "
                   "step's own default is 19.")
@click.option("--seed", default=0, show_default=True, type=int, help="Passed as --seed to every step.")
@click.option("--clip/--no-clip", "with_clip", default=True, show_default=True,
              help="Also train the world CLIP, mine concepts with it and probe the last epoch on its labels; "
                   "--no-clip runs the annotation path only.")
@click.option("--clip-epochs", default=DEMO_CLIP_EPOCHS, show_default=True, type=int,
              help="Training epochs of the world CLIP (the clip step's own default, 15, also learns patterns).")
@options.device
@options.experiment_name
@click.pass_context
def demo(ctx: click.Context, out_dir: str, train_per_class: int, val_per_class: int, pool_size: int, epochs: int,
         probe_epochs: tuple[int, ...] | str | None, repeats: int, modules: tuple[str, ...] | None, permutations: int,
         seed: int, with_clip: bool, clip_epochs: int, device: str, experiment_name: str | None) -> None:
    """Run world -> train -> concepts -> probe, then clip -> concepts (CLIP) -> probe, then compare,
    on the concept world, each step a child run.

    The first concepts come from the world's exact annotations: its colours, patterns and some of its
    shapes. The backbone is a MobileNetV2 (width 0.5) trained on the shapes, registered per epoch; a few
    epochs are probed, so "when" has a known answer: shape concepts appear at late modules as the
    network learns them. Then a small CLIP trained on the world mines the same concepts the seed's way
    (its prompt, a softmax per group); the last epoch is probed on CLIP's labels, and compare shows both
    sweeps side by side with CLIP's label precision and how much of the difference label noise explains.
    """
    from clipprobe.cli.clip import clip
    from clipprobe.cli.compare import compare
    from clipprobe.cli.concepts import concepts
    from clipprobe.cli.neurons import neurons
    from clipprobe.cli.probe import probe
    from clipprobe.cli.train import train
    from clipprobe.cli.world import world
    from clipprobe.tracking import discovery, runs

    probed = ",".join(map(str, probe_epochs_of(probe_epochs, epochs)))
    modules = ",".join(modules) if modules else "all"
    params = {"out": out_dir, "train_per_class": train_per_class, "val_per_class": val_per_class,
              "pool_size": pool_size, "epochs": epochs, "probe_epochs": probed, "repeats": repeats,
              "modules": modules, "permutations": permutations, "seed": seed, "clip": with_clip,
              "clip_epochs": clip_epochs}
    train_args = [_option(k, v) for k, v in DEMO_TRAINING.items()]
    with runs.step_run("main", experiment_name=experiment_name, params=params):
        click.echo("== world: the built-in concept world")
        _step(ctx, world, "--out", out_dir, "--seed", seed, "--train-per-class", train_per_class,
              "--val-per-class", val_per_class, "--pool-size", pool_size, "--overwrite")
        click.echo(f"== train: MobileNetV2 on the world's shapes, epochs 0..{epochs}, each a registered model")
        _step(ctx, train, "--epochs", epochs, "--seed", seed, "--model-name", DEMO_MODEL,
              "--out-dir", f"{out_dir}/checkpoints", "--no-resume", "--device", device, *train_args)
        click.echo("== concepts: top-k splits from the world's ground truth")
        _step(ctx, concepts, "--source", "annotations", "--seed", seed)
        click.echo(f"== probe: epochs {probed} x every module, concept and probe kind, each fit a nested run; "
                   "then every unit of them scored against the concepts (--neurons)")
        _step(ctx, probe, "--model-name", DEMO_MODEL, "--epochs", probed, "--repeats", repeats,
              "--permutations", permutations, "--modules", modules, "--seed", seed, "--device", device, "--neurons",
              *DEMO_MEASURES)
        sweeps = [_latest("probe")]
        click.echo("== neurons: the classifier's own units (logits) of the same checkpoints")
        _step(ctx, neurons, "--sweep", sweeps[0].info.run_id, "--modules", "logits", "--device", device)
        if with_clip:
            click.echo("== clip: a small CLIP learns the world from captions of its known attributes")
            _step(ctx, clip, "--world", out_dir, "--out", f"{out_dir}/clip", "--epochs", clip_epochs,
                  "--seed", seed, "--device", device)
            clip_run = _latest("clip")
            click.echo("== concepts: top-k splits mined by the world CLIP (the seed's prompt, softmax per group)")
            _step(ctx, concepts, "--source", "clip", "--clip-model", clip_run.data.tags[discovery.CLIP_MODEL_TAG],
                  "--clip-weights", clip_run.data.tags[discovery.CLIP_WEIGHTS_TAG], "--num-workers", 0,
                  "--seed", seed, "--device", device)
            click.echo(f"== probe: epoch {epochs} on CLIP's labels (same modules and probe kinds)")
            _step(ctx, probe, "--model-name", DEMO_MODEL, "--epochs", epochs, "--repeats", repeats,
                  "--permutations", permutations, "--modules", modules, "--seed", seed, "--device", device,
                  "--splits-run", _latest("concepts").info.run_id, *DEMO_MEASURES)
            sweeps.append(_latest("probe"))
        click.echo("== compare: the seed's tables, the what-where-when plot"
                   + (", CLIP's labels beside the truth" if with_clip else ""))
        _step(ctx, compare, *(r.info.run_id for r in sweeps))


def _latest(step: str):
    """The step's run just finished under this demo (the newest finished run of the step)."""
    from clipprobe.tracking import discovery

    try:
        return discovery.latest_run(step)
    except LookupError as err:  # pragma: no cover - the step above raised instead
        raise click.ClickException(f"the demo's {step} step left no finished run ({err})") from None


def _option(name: str, value: object) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag}={value}"


def _step(ctx: click.Context, command: click.Command, *args: object) -> None:
    """Run a step as its command line would: each option counts as given, not as a default."""
    with command.make_context(command.name, [str(a) for a in args], parent=ctx) as sub:
        command.invoke(sub)


def probe_epochs_of(value: tuple[int, ...] | str | None, epochs: int) -> list[int]:
    """``--probe-epochs`` (as ``options.Epochs`` reads it) as epochs: ``auto`` -> :func:`probe_epochs`,
    all (``None``) -> 0..``epochs``, else the given ones, each within 0..``epochs``."""
    if value == "auto":
        return probe_epochs(epochs)
    if value is None:
        return list(range(epochs + 1))
    outside = [e for e in value if not 0 <= e <= epochs]
    if not value or outside:
        raise click.BadParameter(f"epochs to probe must lie in 0..{epochs}, got {','.join(map(str, value))!r}",
                                 param_hint="--probe-epochs")
    return list(value)
