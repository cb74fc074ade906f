"""`clipprobe train`: the torchvision recipe on an ImageFolder; every checkpoint a registered model."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from clipprobe.backbones.training import LR_SCHEDULERS, OPTIMIZERS, TrainConfig
from clipprobe.cli import options

_D = TrainConfig()


@click.command()
@click.option("--train-dir", type=click.Path(file_okay=False), default=None,
              help="ImageFolder to train on (default: train/ of the latest `world` run's world).")
@click.option("--val-dir", type=click.Path(file_okay=False), default=None,
              help="ImageFolder to validate on (default: val/ beside the train folder, if any).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where model_<epoch>.pth go (default: checkpoints/<model-name>).")
@click.option("--arch", "architecture", default=_D.architecture, show_default=True,
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
def train(train_dir, val_dir, out_dir, model_name, resume, experiment_name, device, **recipe) -> None:
    """Train a backbone with the torchvision reference recipe (MobileNetV2 row).

    Saves model_<epoch>.pth for epochs 0 (random init) .. EPOCHS, logs train/val loss and accuracy
    per epoch, and logs every checkpoint as a registered model version with the alias epoch-NNN.
    """
    from clipprobe.backbones import training
    from clipprobe.cli.failures import usage_errors
    from clipprobe.core.devices import resolve_device
    from clipprobe.tracking import configs, discovery, registry, runs

    # 0 (as MLproject passes it) or nothing: the learning rate from the batch size, the data's image size.
    optional = ("lr", "train_crop_size", "val_resize_size", "val_crop_size")
    config = TrainConfig(**{f.name: recipe[f.name] or None if f.name in optional else recipe[f.name]
                            for f in fields(TrainConfig)})
    model_name = model_name or config.architecture
    with usage_errors():
        config.validate()
        torch_device = resolve_device(device)
    if train_dir is None:
        with usage_errors():
            train_dir = discovery.require_world_root("--train-dir")[0] / "train"
    train_path = Path(train_dir)
    if not train_path.is_dir():
        raise click.UsageError(f"train folder {train_path} does not exist: pass --train-dir")
    out_path = Path(out_dir) if out_dir else Path("checkpoints") / model_name
    val_path = Path(val_dir) if val_dir else training.default_val_dir(train_path)

    params = {**config.to_params(), "train_dir": str(train_path.resolve()),
              "val_dir": str(val_path.resolve()) if val_path else "none", "out_dir": str(out_path.resolve()),
              "model_name": model_name,
              "resume": resume}
    tags = {runs.MODEL_NAME_TAG: model_name, registry.ARCHITECTURE_TAG: config.architecture}
    with runs.step_run("train", experiment_name=experiment_name, params=params, tags=tags) as run:
        configs.log_config(config)
        if resume and out_path.is_dir() and training.latest_checkpoint(out_path) is not None:
            # Earlier epochs of an interrupted run: registered already, or now (no duplicates either way).
            try:
                registry.import_checkpoints(sorted(out_path.glob("model_*.pth")), name=model_name,
                                            architecture=config.architecture, progress=False)
            except registry.RegistryConflict as err:
                raise click.ClickException(str(err)) from None

        def on_checkpoint(report: training.EpochReport) -> None:
            registry.log_checkpoint(report.model, name=model_name, epoch=report.epoch,
                                    source=report.path.resolve(), metadata=report.args, metrics=report.metrics)

        try:
            reports = training.train(config, train_path, out_path, val_dir=val_path, device=torch_device,
                                     resume=resume, on_checkpoint=on_checkpoint)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        duplicates = registry.mark_duplicates(model_name)
    last = reports[-1].metrics if reports else {}
    summary = ", ".join(f"{k}={v:.3f}" for k, v in last.items())
    click.echo(f"trained {config.architecture} to epoch {config.epochs} in {out_path} ({len(reports)} new "
               f"checkpoints{', ' + summary if summary else ''}); registered as '{model_name}' (run {run.info.run_id})")
    if duplicates:
        click.echo(f"WARNING: {len(duplicates)} group(s) of epochs share identical weights", err=True)
