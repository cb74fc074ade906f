"""Torchvision-reference checkpoints on disk: read (weights_only, raw or EMA weights), write, epoch,
fingerprint, and the model shape (width multiplier, classes) their weights determine."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipprobe.backbones.architectures import (
    build_model,
    first_conv_channels,
    infer_width_mult,
    num_classes_of,
    same_shapes,
    takes_width_mult,
)
from clipprobe.backbones.config import WEIGHTS

log = logging.getLogger(__name__)

# torchvision's references/classification/train.py names its files model_<epoch>.pth.
_EPOCH_IN_NAME = re.compile(r"(?:^|[_\-])(?:model|epoch|checkpoint)[_\-]?(\d+)\.(?:pth|pt|safetensors)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint read from disk: its weights, epoch and the training args it carries."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    epoch: int
    args: dict[str, Any] = field(default_factory=dict)
    weights: str = "model"  # "ema": state_dict holds the file's model_ema weights
    has_ema: bool = False


def epoch_from_name(path: str | Path) -> int | None:
    """The epoch in a file name like ``model_7.pth`` (also ``epoch_7.pth``), else None."""
    match = _EPOCH_IN_NAME.search(Path(path).name)
    return int(match.group(1)) if match else None


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DataParallel/DDP wrappers save keys as "module.features.0..."; torch.compile as "_orig_mod.".
    out = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _ema_state_dict(ema: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    # The recipe's ExponentialMovingAverage is an AveragedModel: its state dict is the averaged
    # model under "module." plus an "n_averaged" counter.
    return {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}


def read_checkpoint(path: str | Path, *, weights: str = "model") -> CheckpointFile:
    """Read a torchvision reference dict or a plain state dict with ``torch.load(weights_only=True)``.

    ``weights="ema"`` takes the dict's ``model_ema`` (written by the recipe's ``--model-ema``)
    instead of ``model``. The epoch comes from the dict's ``epoch`` key, else from the file name
    (``model_<N>.pth``). Raises CheckpointError with one line naming the file when it is
    unreadable, has no epoch, or lacks the asked-for weights.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}: expected one of {', '.join(WEIGHTS)}")
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if refused:  # a whole pickled model (torch.save(model)): weights_only never runs its code
            raise CheckpointError(
                f"{path}: a pickled {refused.group(1)} object, not a state dict (weights-only loading refuses "
                "pickled classes): re-save it as torch.save({'model': model.state_dict(), 'epoch': N}, ...)"
            ) from err
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or corrupt ({reason}); "
            "re-save it or move it out of the folder"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a state dict or a dict with a 'model' key"
        )
    args: dict[str, Any] = {}
    dict_epoch = None
    is_reference = "model" in obj and isinstance(obj["model"], Mapping)
    has_ema = is_reference and isinstance(obj.get("model_ema"), Mapping)
    if weights == "ema" and not has_ema:
        raise CheckpointError(
            f"{path}: has no model_ema weights (trained without --model-ema); "
            "import it with --weights model"
        )
    if is_reference:
        state_dict = _ema_state_dict(obj["model_ema"]) if weights == "ema" else obj["model"]
        args = _args_dict(obj.get("args"))
        dict_epoch = obj.get("epoch")
    else:
        state_dict = obj
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors, expected a state dict of a model")
    name_epoch = epoch_from_name(path)
    if dict_epoch is not None:
        epoch = int(dict_epoch)
        if name_epoch is not None and name_epoch != epoch:
            log.warning("%s: the file name says epoch %d, the dict says %d; using %d",
                        path, name_epoch, epoch, epoch)
    elif name_epoch is not None:
        epoch = name_epoch
    else:
        raise CheckpointError(
            f"{path}: no epoch in the file (no 'epoch' key) nor in its name; "
            f"rename it model_<epoch>{path.suffix or '.pth'}"
        )
    return CheckpointFile(path=path, state_dict=_strip_prefix(tensors), epoch=epoch, args=args,
                          weights=weights, has_ema=has_ema)


@dataclass(frozen=True)
class ModelShape:
    """The architecture hyper-parameters a checkpoint's weights need: what to build to load them."""

    architecture: str
    width_mult: float
    num_classes: int

    @property
    def label(self) -> str:
        return f"{self.architecture}(width_mult={self.width_mult}, num_classes={self.num_classes})"

    def build(self) -> nn.Module:
        return build_model(self.architecture, num_classes=self.num_classes, width_mult=self.width_mult)


def model_shape(
    checkpoint: CheckpointFile,
    architecture: str,
    *,
    width_mult: float | None = None,
    num_classes: int | None = None,
) -> ModelShape:
    """What to build for ``checkpoint``: each hyper-parameter from its ``args``, else the one given,
    else read from the weights (classes: rows of the last linear weight; width multiplier: the
    one whose shapes fit, e.g. MobileNetV2's first conv with 16 channels is width 0.5).

    A given value that contradicts the weights raises CheckpointError naming the value they fit.
    """
    path, weights = checkpoint.path, checkpoint.state_dict
    try:
        read_classes = num_classes_of(weights)
    except ValueError:
        read_classes = None
    nc = checkpoint.args.get("num_classes") or num_classes
    if nc is None:
        nc = read_classes
    elif read_classes is not None and int(nc) != read_classes and not checkpoint.args.get("num_classes"):
        raise CheckpointError(
            f"{path}: its classifier has {read_classes} outputs, not num_classes {nc}: "
            f"pass --num-classes {read_classes} or leave it out"
        )
    if nc is None:
        raise CheckpointError(f"{path}: no linear classifier head to read the classes from: pass --num-classes")
    wm = checkpoint.args.get("width_mult") or width_mult
    if takes_width_mult(architecture):
        fitted = infer_width_mult(architecture, weights)
        if wm is None:
            wm = fitted if fitted is not None else 1.0  # no fit: loading names what is wrong
        elif (fitted is not None and not checkpoint.args.get("width_mult")
              and not same_shapes(architecture, int(nc), float(wm), fitted)):
            channels = first_conv_channels(weights)
            raise CheckpointError(
                f"{path}: its weights are {architecture} width_mult {fitted:g} (first conv: {channels} "
                f"channels), not {float(wm):g}: pass --width-mult {fitted:g} or leave it out"
            )
    return ModelShape(architecture, float(wm or 1.0), int(nc))


def write_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    epoch: int,
    args: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
) -> Path:
    """Save ``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` as torchvision's reference does.

    ``args`` is stored as a plain dict (not an argparse.Namespace) so weights_only loading needs
    no allow-list.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "epoch": int(epoch),
        "args": dict(args),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written model_<N>.pth behind
    return path


def checkpoint_name(epoch: int) -> str:
    """The reference file name of an epoch: ``model_<epoch>.pth``."""
    return f"model_{int(epoch)}.pth"


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted tensor names, dtypes, shapes and raw bytes of a state dict."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(f"|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def load_into(
    model: torch.nn.Module, checkpoint: CheckpointFile, label: str, *, assign: bool = False
) -> torch.nn.Module:
    """Put a checkpoint's weights into ``model`` (``assign``: take its tensors, no copy);
    CheckpointError (one line) when they do not fit."""
    own = model.state_dict()
    given = checkpoint.state_dict
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatched = [k for k in own if k in given and tuple(own[k].shape) != tuple(given[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {what} keys (e.g. {keys[0]})")
        raise CheckpointError(
            f"{checkpoint.path}: its state dict does not fit {label}: {', '.join(parts)}; "
            "give the architecture it was saved from (--arch) and its --width-mult / --num-classes"
        )
    model.load_state_dict(given, assign=assign)
    return model
