"""One loader for the rest of the pipeline: a backbone from a registry name + epoch, a URI or a file."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from clipprobe.backbones.architectures import (
    DEFAULT_ARCHITECTURE,
    ImageTransform,
    resolve_probe_modules,
    transform_from_args,
)
from clipprobe.backbones.checkpoints import fingerprint, load_into, model_shape, read_checkpoint
from clipprobe.core.devices import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A module loaded from a model registry (or a logged model) with what clipprobe stored beside it."""

    module: nn.Module
    metadata: dict[str, Any]
    name: str | None
    version: str | None


class ModelRegistry(Protocol):
    """What ``load_backbone`` needs from a model registry; ``clipprobe.tracking.registry.MLFLOW_REGISTRY``
    is MLflow's. Passed in, so backbones/ never imports tracking/."""

    def uri(self, name: str, epoch: int | None) -> str:
        """The ``models:/`` URI of a registered model's ``epoch`` (None: its highest epoch)."""
        ...

    def load(self, uri: str) -> LoadedModel:
        """The module and its stored metadata behind a ``models:/`` URI."""
        ...


@dataclass(frozen=True)
class Backbone:
    """A loaded checkpoint: the module (eval mode) and what probing it needs."""

    module: nn.Module
    probe_modules: dict[str, str]  # display name (module:7) -> module path (features.7), in order
    transform: ImageTransform
    fingerprint: str
    epoch: int | None
    name: str | None
    version: str | None
    architecture: str | None


def load_backbone(
    source: str | Path,
    *,
    epoch: int | None = None,
    modules: Sequence[str] | Mapping[str, str] | None = None,
    device: str | torch.device = "cpu",
    architecture: str = DEFAULT_ARCHITECTURE,
    width_mult: float | None = None,
    weights: str = "model",
    registry: ModelRegistry | None = None,
) -> Backbone:
    """Load a backbone, trying ``source`` in this order:

    1. a ``models:/`` URI (``models:/mobilenet_v2@epoch-007``, ``models:/mobilenet_v2/3``);
    2. a checkpoint file (``model_7.pth``; ``architecture``/``width_mult`` apply when its args lack
       them; the width multiplier is otherwise read from the weights; ``weights="ema"`` takes
       the file's ``model_ema``);
    3. a registered model name with ``epoch`` (None: the highest registered epoch).
    The weights' fingerprint is recomputed and must match the registered one. Sources 1 and 3 need
    ``registry`` (``clipprobe.tracking.registry.MLFLOW_REGISTRY`` for MLflow's).
    """
    text = str(source)
    is_file = text.endswith((".pth", ".pt")) or Path(text).is_file()
    if not is_file and registry is None:
        raise ValueError(f"{text}: a models:/ URI or registered model name needs a model registry: pass "
                         "registry=clipprobe.tracking.registry.MLFLOW_REGISTRY, or give a .pth file")
    if text.startswith("models:/"):
        backbone = _from_registry(text, registry)
    elif is_file:
        backbone = _from_file(Path(text), architecture=architecture, width_mult=width_mult, weights=weights)
    else:
        backbone = _from_registry(registry.uri(text, epoch), registry)
    if epoch is not None and backbone.epoch is not None and backbone.epoch != epoch:
        raise ValueError(f"{source}: holds epoch {backbone.epoch}, but epoch {epoch} was asked for")
    module = backbone.module.to(resolve_device(device) if isinstance(device, str) else device).eval()
    return Backbone(
        module=module, probe_modules=resolve_probe_modules(module, modules), transform=backbone.transform,
        fingerprint=backbone.fingerprint, epoch=backbone.epoch, name=backbone.name,
        version=backbone.version, architecture=backbone.architecture,
    )


def _from_file(path: Path, *, architecture: str, width_mult: float | None, weights: str) -> Backbone:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist: give a .pth file, a models:/ URI "
                                "or a registered model name")
    ckpt = read_checkpoint(path, weights=weights)
    arch = ckpt.args.get("model") or architecture
    shape = model_shape(ckpt, arch, width_mult=width_mult)
    model = load_into(shape.build(), ckpt, shape.label)
    return Backbone(module=model, probe_modules={}, transform=transform_from_args(ckpt.args),
                    fingerprint=fingerprint(ckpt.state_dict), epoch=ckpt.epoch, name=None, version=None,
                    architecture=arch)


def _from_registry(uri: str, registry: ModelRegistry) -> Backbone:
    loaded = registry.load(uri)
    meta = loaded.metadata
    digest = fingerprint(loaded.module.state_dict())
    stored = meta.get("fingerprint")
    if stored and stored != digest:
        raise ValueError(f"{uri}: the weights' fingerprint {digest[:12]}... differs from the registered "
                         f"{stored[:12]}...: the stored model was changed; re-import its checkpoint")
    epoch = meta.get("epoch")
    return Backbone(module=loaded.module, probe_modules={}, transform=transform_from_args(meta),
                    fingerprint=digest, epoch=None if epoch is None else int(epoch), name=loaded.name,
                    version=loaded.version, architecture=meta.get("architecture"))
