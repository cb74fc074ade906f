"""Torchvision-reference checkpoints on disk: read (weights_only), write, epoch, fingerprint."""

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

log = logging.getLogger(__name__)

# torchvision's references/classification/train.py names its files model_<epoch>.pth.
_EPOCH_IN_NAME = re.compile(r"(?:^|[_\-])(?:model|epoch|checkpoint)[_\-]?(\d+)\.(?:pth|pt)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint read from disk: its weights, epoch and the training args it carries."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    epoch: int
    args: dict[str, Any] = field(default_factory=dict)


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


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """Read a torchvision reference dict or a plain state dict with ``torch.load(weights_only=True)``.

    The epoch comes from the dict's ``epoch`` key, else from the file name (``model_<N>.pth``).
    Raises CheckpointError with one line naming the file when it is unreadable or has no epoch.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
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
    if "model" in obj and isinstance(obj["model"], Mapping):
        state_dict = obj["model"]
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
            "rename it model_<epoch>.pth"
        )
    return CheckpointFile(path=path, state_dict=_strip_prefix(tensors), epoch=epoch, args=args)


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
