"""`clipprobe train`: the torchvision recipe on an ImageFolder; every checkpoint a registered model."""

from __future__ import annotations

from dataclasses import fields

import click

from clipprobe.backbones.config import LR_SCHEDULERS, OPTIMIZERS, TrainConfig
from clipprobe.cli import options

_D = TrainConfig()


@click.command()
@click.option("--train-dir", type=click.Path(file_okay=False), default=None,
              help="ImageFolder to train on (default: train/ of the latest `world` run's world).")
@click.option("--val-dir", type=click.Path(file_okay=False), default=None,
              help="ImageFolder to validate on (default: val/ beside the train folder, if any).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where model_<epoch>.pth go (default: checkpoints/<model-name>).")
@click.option("--arch", default=_D.arch, show_default=True,
              help="torchvision classification model name.")
@click.option("--width-mult", default=_D.width_mult, show_default=True, type=float,
              help="MobileNet width multiplier (0.5 trains fast on the concept world).")
@click.option("--epochs", default=_D.epochs, show_default=True, type=int, help="Last epoch (the reference: 300).")
@click.option("--batch-size", default=_D.batch_size, show_default=True, type=int,
              help="Images per training step (the learning rate scales with it, see --lr).")
@click.option("--opt", default=_D.opt, show_default=True, type=click.Choice(OPTIMIZERS),
              help="Optimizer (the reference's --opt): SGD with momentum, or AdamW.")
@click.option("--lr", default=None, type=float,
              help="Learning rate; omitted or 0: base-lr x batch-size / 256.")
@click.option("--base-lr", default=_D.base_lr, show_default=True, type=float, help="Learning rate at batch 256.")
@click.option("--momentum", default=_D.momentum, show_default=True, type=float, help="SGD momentum (--opt sgd).")
@click.option("--weight-decay", default=_D.weight_decay, show_default=True, type=float,
              help="L2 penalty on every parameter (the optimizer's weight_decay).")
@click.option("--lr-scheduler", default=_D.lr_scheduler, show_default=True, type=click.Choice(LR_SCHEDULERS),
              help="steplr: x lr-gamma every lr-step-size epochs; cosineannealinglr: down to lr-min over the "
              "epochs; onecycle: per batch, up to lr over the first lr-warmup-pct of the steps, then down.")
@click.option("--lr-step-size", default=_D.lr_step_size, show_default=True, type=int,
              help="steplr: epochs between learning-rate drops.")
@click.option("--lr-gamma", default=_D.lr_gamma, show_default=True, type=float,
              help="steplr: factor the learning rate is multiplied by at each drop.")
@click.option("--lr-min", default=_D.lr_min, show_default=True, type=float,
              help="Last learning rate of cosineannealinglr.")
@click.option("--lr-warmup-pct", default=_D.lr_warmup_pct, show_default=True, type=float,
              help="Share of all steps onecycle spends warming up.")
@click.option("--zero-init-residual/--no-zero-init-residual", default=_D.zero_init_residual, show_default=True,
              help="Start each residual block as the identity (its last BatchNorm scale at zero).")
@click.option("--label-smoothing", default=_D.label_smoothing, show_default=True, type=float,
              help="Share of each target's probability spread over the other classes (0: none).")
@click.option("--train-crop-size", default=None, type=int, help="Omitted or 0: the data's image size.")
@click.option("--val-resize-size", default=None, type=int, help="Omitted or 0: the data's image size.")
@click.option("--val-crop-size", default=None, type=int, help="Omitted or 0: the data's image size (no crop).")
@click.option("--min-crop-scale", default=_D.min_crop_scale, show_default=True, type=float,
              help="Smallest area fraction of RandomResizedCrop.")
@click.option("--hflip-prob", default=_D.hflip_prob, show_default=True, type=float,
              help="Probability of flipping a training image left-right.")
@click.option("--seed", default=_D.seed, show_default=True, type=int,
              help="Seeds the initial weights, the data order and the augmentations.")
@click.option("--workers", default=_D.workers, show_default=True, type=int, help="DataLoader worker processes.")
@click.option("--model-name", default=None, help="Registered model name (default: the architecture name).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the last model_<N>.pth in --out-dir.")
@options.experiment_name
@options.device
@click.pass_context
def train(ctx: click.Context, train_dir: str | None, val_dir: str | None, out_dir: str | None,
          model_name: str | None, resume: bool, experiment_name: str | None, device: str, **_recipe) -> None:
    """Train a backbone with the torchvision reference recipe (MobileNetV2 row).

    Saves model_<epoch>.pth for epochs 0 (random init) .. EPOCHS, logs train/val loss and accuracy
    per epoch, and logs every checkpoint as a registered model version with the alias epoch-NNN.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import train as step

    with usage_errors():  # a bad setting, no data, before a run exists
        config = TrainConfig(**options.given(ctx, [f.name for f in fields(TrainConfig)]))
        inputs = step.resolve(config, train_dir=train_dir, val_dir=val_dir, out_dir=out_dir, model_name=model_name,
                              resume=resume, device=device)
    made = step.run(inputs, experiment_name=experiment_name)
    click.echo(made.describe())
    if made.duplicates:
        click.echo(f"WARNING: {len(made.duplicates)} group(s) of epochs share identical weights", err=True)
