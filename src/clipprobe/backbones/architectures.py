"""Torchvision classification architectures by name, their probe modules and input transforms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torchvision import models
from torchvision.transforms import v2

from clipprobe.backbones.names import LOGITS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's references/classification defaults for evaluation.
DEFAULT_VAL_RESIZE_SIZE = 256
DEFAULT_VAL_CROP_SIZE = 224
DEFAULT_ARCHITECTURE = "mobilenet_v2"  # the seed's backbone: training's, the loader's and the importer's default
# Module containers whose children are the natural probe points, tried in this order.
_PROBE_CONTAINERS = ("features", "layers", "encoder.layers", "trunk_output", "blocks")
_WIDTH_MULT_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# Width multipliers tried when the weights must tell which one they were trained with.
_COMMON_WIDTH_MULTS = (1.0, 0.5, 0.75, 0.25, 0.35, 1.3, 1.4, 1.5, 2.0)
# Output channels of the first conv at width 1.0: the first guess at a file's width multiplier.
_FIRST_CONV_CHANNELS = {"mobilenet_v2": 32, "mobilenet_v3_large": 16, "mobilenet_v3_small": 16}


def architectures() -> list[str]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    return sorted(models.list_models(module=models))


def build_model(architecture: str, *, num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """A randomly initialised torchvision classifier, e.g. ``build_model("mobilenet_v2", num_classes=4)``."""
    check_architecture(architecture, width_mult)
    kwargs: dict = {"num_classes": int(num_classes)}
    if architecture in _WIDTH_MULT_ARCHS:
        kwargs["width_mult"] = float(width_mult)
    if architecture in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return models.get_model(architecture, weights=None, **kwargs)


def check_architecture(architecture: str, width_mult: float = 1.0) -> None:
    """ValueError naming the fix for an unknown architecture or a width_mult it does not take."""
    known = architectures()
    if architecture not in known:
        raise ValueError(
            f"unknown architecture {architecture!r}: expected a torchvision classification model "
            f"such as mobilenet_v2, resnet18, efficientnet_b0 ({len(known)} known)"
        )
    if architecture not in _WIDTH_MULT_ARCHS and float(width_mult) != 1.0:
        raise ValueError(
            f"architecture {architecture!r} takes no width_mult (got {width_mult}); "
            f"leave it at 1.0 or use one of {', '.join(_WIDTH_MULT_ARCHS)}"
        )
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")


def num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int:
    """The output size of a classifier's state dict: rows of its last 2-D weight."""
    for name in reversed(list(state_dict)):
        tensor = state_dict[name]
        if name.endswith("weight") and tensor.ndim == 2:
            return int(tensor.shape[0])
    raise ValueError("state dict has no 2-D weight (no linear classifier head): pass num_classes")


@lru_cache(maxsize=64)
def _shapes(architecture: str, num_classes: int, width_mult: float) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Built on the meta device: shapes only, no memory and no initialisation cost worth counting.
    with torch.device("meta"):
        model = build_model(architecture, num_classes=num_classes, width_mult=width_mult)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def takes_width_mult(architecture: str) -> bool:
    """Whether the architecture has a width multiplier (the MobileNets)."""
    return architecture in _WIDTH_MULT_ARCHS


def same_shapes(architecture: str, num_classes: int, width_mult: float, other: float) -> bool:
    """Whether two width multipliers build the same tensor shapes (then they are the same network)."""
    return _shapes(architecture, num_classes, float(width_mult)) == _shapes(architecture, num_classes, float(other))


def first_conv_channels(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Output channels of the first 4-D (conv) weight of a state dict, else None."""
    for tensor in state_dict.values():
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 4:
            return int(tensor.shape[0])
    return None


def infer_width_mult(architecture: str, state_dict: Mapping[str, torch.Tensor]) -> float | None:
    """The width multiplier whose model has exactly the state dict's tensor shapes, else None.

    Tried in order: the first conv's channels over its width-1.0 count (16 channels of
    MobileNetV2's 32: 0.5), then common values. Two multipliers that give the same shapes give the
    same network, so the first that fits is as good as any. 1.0 for architectures without one.
    """
    if architecture not in _WIDTH_MULT_ARCHS:
        return 1.0
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    given = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        num_classes = num_classes_of(tensors)
    except ValueError:
        return None
    channels = first_conv_channels(state_dict)
    guesses = [channels / _FIRST_CONV_CHANNELS[architecture]] if channels else []
    for width_mult in dict.fromkeys([*guesses, *_COMMON_WIDTH_MULTS]):
        if dict(_shapes(architecture, num_classes, float(width_mult))) == given:
            return float(width_mult)
    return None


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def default_probe_modules(model: nn.Module) -> dict[str, str]:
    """Display name -> module path: the children of ``features`` (or a like container) as
    ``module:0`` .. ``module:N`` (MobileNetV2: ``features.0`` .. ``features.18``); otherwise the
    top-level children that hold weights, minus the classifier head, under their own paths."""
    for container in _PROBE_CONTAINERS:
        sub = _submodule(model, container)
        if isinstance(sub, nn.Sequential | nn.ModuleList) and len(sub) > 0:
            return {f"module:{i}": f"{container}.{name}" for i, (name, _) in enumerate(sub.named_children())}
    weighted = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    return {name: name for name in weighted[:-1]}


def probe_module(model: nn.Module, path: str) -> nn.Module | None:
    """The module a probe path names: a ``named_modules`` path, or the model itself for ``logits`` (its
    output); None for a path the model lacks."""
    named = dict(model.named_modules())
    if path in named and path != "":
        return named[path]
    return model if path == LOGITS else None


def resolve_probe_modules(
    model: nn.Module, modules: Sequence[str] | Mapping[str, str] | None = None
) -> dict[str, str]:
    """Probe modules as an ordered display name -> module path map, checked against the model.

    ``modules`` may be a mapping, or a list of display names (``module:7``) or paths
    (``features.7`` or any ``named_modules`` path), or ``logits`` (the model's output); None gives the default
    list (without ``logits``).
    """
    defaults = default_probe_modules(model)
    if modules is None:
        return defaults
    requested = dict(modules) if isinstance(modules, Mapping) else None
    if requested is None:
        by_path = {path: name for name, path in defaults.items()}
        requested = {}
        for item in modules:
            if item in defaults:
                requested[item] = defaults[item]
            else:
                requested[by_path.get(item, item)] = item
    for name, path in requested.items():
        if probe_module(model, path) is None:
            listed = list(defaults.values())
            span = f"{listed[0]} .. {listed[-1]}" if listed else "no default modules"
            raise ValueError(
                f"unknown module {path!r} (for {name!r}): the model has {span} "
                f"(any path of model.named_modules() works, and {LOGITS} for the model's output)"
            )
    return requested


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised float tensor, like torchvision's reference evaluation transform."""

    resize_size: int = DEFAULT_VAL_RESIZE_SIZE
    crop_size: int = DEFAULT_VAL_CROP_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ValueError(
                f"val_crop_size {self.crop_size} is larger than val_resize_size {self.resize_size}: "
                "the crop must fit in the resized image"
            )
        steps: list = [v2.ToImage(), v2.Resize(self.resize_size, antialias=True)]
        if self.crop_size < self.resize_size:  # equal sizes on square images: no crop at all
            steps.append(v2.CenterCrop(self.crop_size))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        object.__setattr__(self, "_pipeline", v2.Compose(steps))

    def __call__(self, image) -> torch.Tensor:
        if hasattr(image, "convert"):
            image = image.convert("RGB")
        return self._pipeline(image)


def transform_from_args(args: Mapping) -> ImageTransform:
    """The evaluation transform named by a checkpoint's args (``val_resize_size``, ``val_crop_size``)."""
    resize = int(args.get("val_resize_size") or DEFAULT_VAL_RESIZE_SIZE)
    crop = int(args.get("val_crop_size") or min(resize, DEFAULT_VAL_CROP_SIZE))
    return ImageTransform(resize_size=resize, crop_size=crop)
