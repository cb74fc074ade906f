"""`clipprobe clip`: train a small CLIP on the concept world, report its zero-shot accuracy, register it."""

from __future__ import annotations

import shlex
from dataclasses import fields
from typing import Any

import click

from clipprobe.cli import options
from clipprobe.concepts.config import WorldClipConfig

_D = WorldClipConfig()


@click.command()
@click.option("--world", default=None, type=click.Path(exists=True, file_okay=False),
              help="Concept world folder (with truth.parquet). Default: the latest world run's.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for <model>.pt and <model>.json. Default: <world>/clip.")
@click.option("--epochs", default=_D.epochs, show_default=True, type=int,
              help="Passes over the world's training images (colours are learnt by ~5, patterns later).")
@click.option("--batch-size", default=_D.batch_size, show_default=True, type=int,
              help="Image-caption pairs per step (the contrastive loss's negatives).")
@click.option("--lr", default=_D.lr, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=_D.weight_decay, show_default=True, type=float,
              help="AdamW weight decay on weight matrices (none on gains, biases, positions, temperature).")
@click.option("--warmup-pct", default=_D.warmup_pct, show_default=True, type=float,
              help="Share of the steps warming the learning rate up before its cosine decay.")
@click.option("--seed", default=_D.seed, show_default=True, type=int,
              help="Seeds the initial weights, the data order and the captions drawn.")
@click.option("--clip-model", default=_D.clip_model, show_default=True,
              help="Architecture name: the open_clip config is saved as <name>.json beside the weights.")
@click.option("--prompt", default=_D.prompt, show_default=True,
              help="Prompt template of the zero-shot evaluation on the world's validation images.")
@click.option("--model-name", default=None,
              help="Registered model the CLIP becomes a version of. Default: world_clip.")
@options.device
@options.experiment_name
@click.pass_context
def clip(ctx: click.Context, world: str | None, out: str | None, model_name: str | None, device: str,
         experiment_name: str | None, **_settings: Any) -> None:
    """Train a small open_clip CLIP on the concept world's training images, captioned from their attributes.

    Saves <out>/<clip-model>.pt (a state dict) and <clip-model>.json (its open_clip config), logs and
    registers the model, and reports zero-shot accuracy per attribute (colour, pattern, shape) on the
    world's validation images. Use it with `concepts --clip-model NAME --clip-weights <out>/NAME.pt`.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import clip as step

    with usage_errors():  # a bad setting or no world: one line, before a run exists
        config = WorldClipConfig(**options.given(ctx, [f.name for f in fields(WorldClipConfig)]))
        inputs = step.resolve(config, world=world, out=out, model_name=model_name, experiment_name=experiment_name)
    done = step.run(inputs, device=device, experiment_name=experiment_name)
    made = done.made
    click.echo(f"world CLIP trained in {made.trained.seconds:.0f} s on {made.trained.n_train_images} images "
               f"({config.epochs} epochs); zero-shot accuracy on {made.n_val_images} validation images "
               f"with {config.prompt!r}:")
    click.echo(made.accuracy.set_index("group")[["accuracy", "chance", "n_values"]]
               .to_string(float_format=lambda v: f"{v:.3f}"))
    click.echo(f"weights {made.weights} (+ {made.config_file.name}), registered as {done.registered.uri}, "
               f"run {done.run_id}")
    click.echo("use it: " + shlex.join(["clipprobe", "concepts", "--clip-model", config.clip_model, "--clip-weights",
                                       str(made.weights)]))
