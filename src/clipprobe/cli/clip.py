"""`clipprobe clip`: train a small CLIP on the concept world, report its zero-shot accuracy, register it."""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT
from clipprobe.concepts.world_clip import WorldClipConfig

_DEFAULT = WorldClipConfig()
DEFAULT_REGISTERED_NAME = "world_clip"


@click.command()
@click.option("--world", "world_root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Concept world folder (with truth.parquet). Default: the latest world run's.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for <model>.pt and <model>.json. Default: <world>/clip.")
@click.option("--epochs", default=_DEFAULT.epochs, show_default=True, type=int,
              help="Passes over the world's training images (colours are learnt by ~5, patterns later).")
@click.option("--batch-size", default=_DEFAULT.batch_size, show_default=True, type=int,
              help="Image-caption pairs per step (the contrastive loss's negatives).")
@click.option("--lr", default=_DEFAULT.lr, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=_DEFAULT.weight_decay, show_default=True, type=float,
              help="AdamW weight decay on weight matrices (none on gains, biases, positions, temperature).")
@click.option("--warmup-pct", default=_DEFAULT.warmup_pct, show_default=True, type=float,
              help="Share of the steps warming the learning rate up before its cosine decay.")
@click.option("--seed", default=_DEFAULT.seed, show_default=True, type=int,
              help="Seeds the initial weights, the data order and the captions drawn.")
@click.option("--clip-model", default=_DEFAULT.model_name, show_default=True,
              help="Architecture name: the open_clip config is saved as <name>.json beside the weights.")
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True,
              help="Prompt template of the zero-shot evaluation on the world's validation images.")
@click.option("--model-name", default=DEFAULT_REGISTERED_NAME, show_default=True,
              help="Registered model the CLIP becomes a version of.")
@options.device
@options.experiment_name
def clip(world_root, out_dir, epochs, batch_size, lr, weight_decay, warmup_pct, seed, clip_model, prompt,
         model_name, device, experiment_name) -> None:
    """Train a small open_clip CLIP on the concept world's training images, captioned from their attributes.

    Saves <out>/<clip-model>.pt (a state dict) and <clip-model>.json (its open_clip config), logs and
    registers the model, and reports zero-shot accuracy per attribute (colour, pattern, shape) on the
    world's validation images. Use it with `concepts --clip-model NAME --clip-weights <out>/NAME.pt`.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.concepts import world_clip
    from clipprobe.core.devices import resolve_device
    from clipprobe.tracking import clip_models, configs, discovery, runs

    if world_root is None:
        with usage_errors():
            world_root = discovery.require_world_root("--world", experiment_name=experiment_name)[0]
    world_root = Path(world_root).resolve()
    config = WorldClipConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                             warmup_pct=warmup_pct, seed=seed, model_name=clip_model, prompt=prompt)
    with usage_errors():
        config.validate()
        world_clip.attribute_values(world_root)  # a concept world is there
    out = Path(out_dir) if out_dir else world_root / "clip"
    params = {**asdict(config), "world": str(world_root), "out": str(out.resolve()), "registered_model": model_name}
    with runs.step_run("clip", experiment_name=experiment_name, params=params) as run:
        configs.log_config(config)
        try:
            made = world_clip.make_world_clip(
                world_root, out, config, device=resolve_device(device),
                on_epoch=lambda epoch, loss: runs.log_metrics({"train_loss": loss}, step=epoch))
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        registered = clip_models.log_world_clip(made, name=model_name)
    click.echo(f"world CLIP trained in {made.trained.seconds:.0f} s on {made.trained.n_train_images} images "
               f"({config.epochs} epochs); zero-shot accuracy on {made.n_val_images} validation images "
               f"with {prompt!r}:")
    click.echo(made.accuracy.set_index("group")[["accuracy", "chance", "n_values"]]
               .to_string(float_format=lambda v: f"{v:.3f}"))
    click.echo(f"weights {made.weights} (+ {made.config_file.name}), registered as {registered.uri}, "
               f"run {run.info.run_id}")
    click.echo("use it: " + shlex.join(["clipprobe", "concepts", "--clip-model", clip_model, "--clip-weights",
                                       str(made.weights)]))
