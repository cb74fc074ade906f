"""The torchvision reference recipe for MobileNetV2, small enough to run on the concept world.

Every value is a parameter of TrainConfig (backbones.config). Each saved checkpoint (epoch 0 is the random
initialisation) is handed to the caller's callback; this module never logs to MLflow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2
from tqdm import tqdm

from clipprobe.backbones.architectures import (
    DEFAULT_VAL_CROP_SIZE,
    DEFAULT_VAL_RESIZE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    build_model,
)
from clipprobe.backbones.checkpoints import (
    checkpoint_name,
    epoch_from_name,
    read_checkpoint,
    write_checkpoint,
)
from clipprobe.backbones.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochReport:
    """What the recipe hands its caller after saving one checkpoint."""

    epoch: int
    path: Path
    model: nn.Module
    metrics: dict[str, float]
    args: dict[str, Any]


def _image_size(folder: datasets.ImageFolder, probe: int = 8) -> int | None:
    """The common side of the first few images when they are all square and equal, else None."""
    from PIL import Image

    sizes = set()
    for path, _ in folder.samples[:probe]:
        with Image.open(path) as img:
            sizes.add(img.size)
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return int(w)
    return None


def resolve_sizes(config: TrainConfig, image_size: int | None) -> TrainConfig:
    """Fill in crop / resize sizes from the data (square images of one size: no crop)."""
    if image_size is not None:
        defaults = {"train_crop_size": image_size, "val_resize_size": image_size, "val_crop_size": image_size}
    else:
        defaults = {"train_crop_size": DEFAULT_VAL_CROP_SIZE, "val_resize_size": DEFAULT_VAL_RESIZE_SIZE,
                    "val_crop_size": DEFAULT_VAL_CROP_SIZE}
    return replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


def _train_transform(config: TrainConfig) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(config.train_crop_size, scale=(config.min_crop_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(config.hflip_prob),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
    ])


def _rgb(image):
    return image.convert("RGB")


def _run_epoch(model, loader, criterion, device, optimizer=None, batch_scheduler=None) -> tuple[float, float]:
    """Mean loss and accuracy over one pass; trains when an optimizer is given (stepping a per-batch schedule)."""
    model.train(optimizer is not None)
    total, loss_sum, correct = 0, 0.0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            output = model(images)
            loss = criterion(output, targets)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if batch_scheduler is not None:
                    batch_scheduler.step()
            n = targets.shape[0]
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int((output.argmax(1) == targets).sum())
    if total == 0:
        return math.nan, math.nan
    return loss_sum / total, correct / total


def zero_init_residual(model: nn.Module) -> int:
    """Zero the last BatchNorm scale of every residual block (MobileNetV2, ResNet); returns how many."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    zeroed = 0
    for block in model.modules():
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            bn = block.conv[-1]
        elif isinstance(block, Bottleneck):
            bn = block.bn3
        elif isinstance(block, BasicBlock):
            bn = block.bn2
        else:
            continue
        nn.init.zeros_(bn.weight)
        zeroed += 1
    if zeroed == 0:
        raise ValueError(f"zero_init_residual: {type(model).__name__} has no residual block this recipe knows "
                         "(MobileNetV2's inverted residuals, ResNet's blocks): leave it off")
    return zeroed


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The reference's ``--opt``: SGD with momentum, or AdamW; weight decay on every parameter."""
    if config.opt == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.scaled_lr(), weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.scaled_lr(), momentum=config.momentum,
                           weight_decay=config.weight_decay)


def build_lr_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The reference's ``--lr-scheduler`` (stepped once per epoch), or OneCycle (stepped per batch)."""
    if config.lr_scheduler == "onecycle":
        # One step more than the batches: the step after the last batch lands on the schedule's end.
        # The learning rate only: momentum (SGD's, AdamW's beta1) stays what the optimizer was given.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.scaled_lr(), pct_start=config.lr_warmup_pct,
                                                   total_steps=max(config.epochs, 1) * steps_per_epoch + 1,
                                                   cycle_momentum=False)
    if config.lr_scheduler == "cosineannealinglr":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1), eta_min=config.lr_min)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The ``model_<N>.pth`` with the highest N in a folder, or None."""
    files = [(epoch_from_name(p), p) for p in Path(out_dir).glob("model_*.pth")]
    files = [(e, p) for e, p in files if e is not None]
    return max(files)[1] if files else None


def default_val_dir(train_dir: str | Path) -> Path | None:
    """The validation ImageFolder taken when none is named: ``val/`` beside the training folder, if it exists."""
    beside = Path(train_dir).parent / "val"
    return beside if beside.is_dir() else None


def train(
    config: TrainConfig,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    val_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    resume: bool = True,
    on_checkpoint: Callable[[EpochReport], None] | None = None,
    progress: bool = True,
) -> list[EpochReport]:
    """Train on an ImageFolder and save ``model_<epoch>.pth`` for epochs 0..``config.epochs``.

    With checkpoints already in ``out_dir`` and ``resume`` the last one is continued (model,
    optimizer, scheduler); only newly saved checkpoints reach ``on_checkpoint``.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    train_set = datasets.ImageFolder(str(train_dir))
    if val_dir is None:
        val_dir = default_val_dir(train_dir)
    config = resolve_sizes(config, _image_size(train_set))
    train_set.transform = v2.Compose([_rgb, _train_transform(config)])
    val_transform = ImageTransform(config.val_resize_size, config.val_crop_size)
    val_set = datasets.ImageFolder(str(val_dir), transform=val_transform) if val_dir else None
    if val_set is not None and val_set.classes != train_set.classes:
        raise ValueError(f"{val_dir}: classes {val_set.classes} differ from {train_dir}'s {train_set.classes}")

    args = {**config.checkpoint_args(), "num_classes": len(train_set.classes), "classes": list(train_set.classes),
            "train_dir": str(Path(train_dir).resolve()),
            "val_dir": str(Path(val_dir).resolve()) if val_dir else None}
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes=args["num_classes"], width_mult=config.width_mult)
    if config.zero_init_residual:
        zero_init_residual(model)
    model = model.to(device)
    optimizer = build_optimizer(config, model)
    scheduler = build_lr_scheduler(config, optimizer, steps_per_epoch=math.ceil(len(train_set) / config.batch_size))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    val_loader = (DataLoader(val_set, batch_size=config.batch_size, shuffle=False, num_workers=config.workers)
                  if val_set is not None else None)

    start = 0
    last = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if last is not None:
        if not resume:
            raise ValueError(f"{out_dir} already holds checkpoints (last {last.name}): resume, or choose another folder")
        saved = read_checkpoint(last)
        # Checkpoints from before a key existed were made with its default.
        before = asdict(TrainConfig())
        clash = {k: (saved.args.get(k, before.get(k)), args[k]) for k in config.resume_keys()
                 if saved.args.get(k, before.get(k)) != args[k]}
        if clash:
            detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in clash.items())
            raise ValueError(f"{last}: cannot resume, the recipe differs ({detail}); use another output folder")
        obj = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(obj["model"])
        optimizer.load_state_dict(obj["optimizer"])
        scheduler.load_state_dict(obj["lr_scheduler"])
        start = saved.epoch + 1
        log.info("resuming from %s (epoch %d)", last, saved.epoch)

    reports: list[EpochReport] = []

    def save(epoch: int, metrics: dict[str, float]) -> None:
        path = write_checkpoint(out_dir / checkpoint_name(epoch), model=model, epoch=epoch, args=args,
                                optimizer=optimizer, lr_scheduler=scheduler)
        report = EpochReport(epoch=epoch, path=path, model=model, metrics=metrics, args=args)
        reports.append(report)
        if on_checkpoint is not None:
            on_checkpoint(report)

    def validate_metrics() -> dict[str, float]:
        if val_loader is None:
            return {}
        val_loss, val_acc = _run_epoch(model, val_loader, criterion, device)
        return {"val_loss": val_loss, "val_acc": val_acc}

    if start == 0:
        save(0, validate_metrics())  # epoch 0: the random initialisation, the "when" axis's origin
        start = 1
    epochs = range(start, config.epochs + 1)
    for epoch in tqdm(epochs, desc="train", unit="epoch", disable=not progress or len(epochs) == 0):
        # Seeded per epoch so a resumed run sees the same batches and crops as an unbroken one.
        torch.manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=False,
                            num_workers=config.workers,
                            generator=torch.Generator().manual_seed(config.seed + epoch))
        train_loss, train_acc = _run_epoch(model, loader, criterion, device, optimizer,
                                           batch_scheduler=scheduler if config.per_batch_schedule else None)
        if not config.per_batch_schedule:
            scheduler.step()
        metrics = {"train_loss": train_loss, "train_acc": train_acc, **validate_metrics()}
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        save(epoch, metrics)
    return reports
