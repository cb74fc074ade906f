"""Activations of probe modules: one hooked forward pass per checkpoint, pooled and full maps, on-disk cache.

Pooled ("gap", mean over height x width) vectors are kept in float32. Full maps are stored on disk
as bfloat16 bit patterns (uint16 ``.npy``): bf16 keeps float32's exponent range, so the ~1e-9
activations of a randomly initialised network survive, where float16 would flush them to zero.
A cache entry is keyed by the checkpoint fingerprint, the image set and the transform (and the
compute options, with the precision the pass really ran in); a second sweep over the same checkpoint
reads it instead of running the network.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = ".cache/activations"
PRECISIONS = ("auto", "fp32", "bf16")
_FORMAT_VERSION = 1


# ---------------------------------------------------------------- bfloat16 bit patterns in numpy


def to_bf16_bits(x: torch.Tensor) -> np.ndarray:
    """float tensor -> uint16 numpy array (same shape and strides) of its bfloat16 bit patterns.

    A bf16 tensor gives its own bits, uncopied on CPU; other dtypes are rounded to nearest even once.
    """
    return x.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class Bf16Matrix:
    """A read-only ``(images, features)`` view of bf16 bit patterns that yields float32 on indexing.

    Works where the probes take a numpy array (``X[rows, c0:c1]``) without holding the matrix in memory.
    """

    def __init__(self, bits: np.ndarray) -> None:
        if bits.dtype != np.uint16 or bits.ndim != 2:
            raise ValueError(f"expected a 2-d uint16 array of bf16 bits, got {bits.dtype} {bits.shape}")
        self.bits = bits

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.bits.shape)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.bits.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return from_bf16_bits(self.bits[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = from_bf16_bits(self.bits)
        return out if dtype is None else out.astype(dtype)


# ---------------------------------------------------------------- images: decoded and transformed once


def image_set_hash(root: str | Path, paths: Sequence[str]) -> str:
    """sha256 (16 hex) over each image's relative path, byte size and modification time."""
    digest = hashlib.sha256()
    root = Path(root)
    for rel in paths:
        st = (root / rel).stat()
        digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageSet:
    """Images decoded and transformed once: a float32 ``(N, 3, H, W)`` array (memory or memmap)."""

    root: Path
    paths: tuple[str, ...]
    pixels: np.ndarray
    key: str  # image set hash + transform: the part of a cache key that does not depend on weights

    def __len__(self) -> int:
        return len(self.paths)


def load_images(
    root: str | Path,
    paths: Sequence[str],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ImageSet:
    """Decode and transform every image once; with ``cache_dir`` the result is a memmap kept there.

    An unreadable image raises with its path: probes need every image of every concept.
    """
    root = Path(root)
    paths = tuple(paths)
    if not paths:
        raise ValueError("no images to load: the concept splits select none")
    key = f"{image_set_hash(root, paths)}-{_short(repr(transform))}"
    target = None
    if cache_dir is not None:
        target = Path(cache_dir) / "images" / f"{key}.npy"
        if target.is_file():
            log.info("images: reading %d transformed images from %s", len(paths), target)
            return ImageSet(root, paths, np.load(target, mmap_mode="r"), key)
    first = _decode(root, paths[0], transform)
    shape = (len(paths), *first.shape)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    else:
        pixels = np.empty(shape, dtype=np.float32)
    pixels[0] = first.numpy()
    for i in tqdm(range(1, len(paths)), desc="decode images", unit="img", disable=not progress):
        pixels[i] = _decode(root, paths[i], transform).numpy()
    if target is not None:
        pixels.flush()
        del pixels
        os.replace(tmp, target)
        pixels = np.load(target, mmap_mode="r")
    return ImageSet(root, paths, pixels, key)


def _decode(root: Path, rel: str, transform: Callable) -> torch.Tensor:
    try:
        with Image.open(root / rel) as image:
            out = transform(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"image {root / rel} cannot be read ({err}): fix or remove it and rerun the concepts step") from None
    return out.float()


# ---------------------------------------------------------------- the hooked forward pass


@dataclass(frozen=True)
class ExtractOptions:
    """How the forward pass computes. Folding BatchNorm into the convolutions and the channels_last
    layout change activations by float32 rounding only. ``precision="auto"`` runs the pass under
    bf16 autocast where the device computes bf16 natively (``devices.native_bf16``: a CPU with
    AVX512-BF16 or AMX, a CUDA GPU of compute capability 8.0+) and in fp32 elsewhere; bf16 moves probe
    accuracies by less than one test image on average (tests/test_activations_precision.py)."""

    batch_size: int = 32
    precision: str = "auto"
    channels_last: bool = True
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def resolve(self, device: str | torch.device) -> ExtractOptions:
        """These options with ``auto`` precision replaced by what it means on ``device`` (bf16 or fp32)."""
        if self.precision != "auto":
            return self
        from clipprobe.devices import native_bf16

        return dataclasses.replace(self, precision="bf16" if native_bf16(device) else "fp32")

    def key(self) -> str:
        """The part of the cache key that changes values (the batch size does not); needs a concrete precision,
        so that an ``auto`` pass and an explicit one of the same precision share a cache, fp32 and bf16 never."""
        if self.precision == "auto":
            raise ValueError("precision 'auto' has no cache key: call options.resolve(device) first")
        return f"{self.precision}{'-cl' if self.channels_last else ''}{'-fold' if self.fold_batchnorm else ''}"


def fold_batchnorm(model: nn.Module, keep: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm2d that directly follows a Conv2d in an
    ``nn.Sequential`` folded into that convolution and replaced by Identity. Block outputs change
    by float32 rounding only; modules named in ``keep`` (probed paths) stay as they are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    keep = set(keep)
    for path, seq in folded.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = [n for n, _ in seq.named_children()]
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            full = f"{path}.{b}" if path else b
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and full not in keep and f"{path}.{a}".lstrip(".") not in keep):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded


class _StopForward(Exception):
    """Raised by the last hook to fire: layers after the deepest probed module are never computed."""


class ForwardCounter:
    """Counts forward passes (batches) of the extractor: lets tests prove a cache was read."""

    batches = 0
    images = 0


def forward_activations(
    model: nn.Module,
    modules: Mapping[str, str],
    pixels: np.ndarray | torch.Tensor,
    sink: Callable[[str, int, torch.Tensor], None],
    *,
    options: ExtractOptions = ExtractOptions(),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> None:
    """One forward pass over ``pixels`` in batches; ``sink(module_path, first_row, output)`` per module
    and batch, ``output`` as the module computed it (bf16 under bf16 autocast, in its memory format).
    Hooks on every module path in ``modules.values()``; the pass stops once all fired."""
    device = torch.device(device)
    options = options.resolve(device)
    targets = list(dict.fromkeys(modules.values()))
    named = dict(model.named_modules())
    missing = [p for p in targets if p not in named]
    if missing:
        raise ValueError(f"unknown module {missing[0]!r}: not a path of model.named_modules()")
    captured: dict[str, torch.Tensor] = {}

    def make_hook(path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {path!r} returns {type(output).__name__}, expected a tensor")
            captured[path] = output
            if len(captured) == len(targets):
                raise _StopForward
        return hook

    model.eval()
    if options.fold_batchnorm:
        model = fold_batchnorm(model, keep=targets)
    elif options.channels_last:
        model = copy.deepcopy(model)  # the caller's model keeps its layout
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    named = dict(model.named_modules())
    handles = [named[p].register_forward_hook(make_hook(p)) for p in targets]
    n = len(pixels)
    bf16 = options.precision == "bf16"
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, options.batch_size), desc="forward", unit="batch",
                              disable=not progress):
                batch = torch.from_numpy(np.array(pixels[start:start + options.batch_size], dtype=np.float32)).to(device)
                if options.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                captured.clear()
                try:
                    # autocast the model only: the sink computes in the dtypes it asks for
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        model(batch)
                except _StopForward:
                    pass
                ForwardCounter.batches += 1
                ForwardCounter.images += len(batch)
                if len(captured) != len(targets):
                    lost = [p for p in targets if p not in captured]
                    raise RuntimeError(f"modules {lost} never ran in the forward pass: probe other modules")
                for path in targets:
                    sink(path, start, captured[path])
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- the cache


class CheckpointActivations:
    """The activations of one checkpoint over one image set, read per module from a cache folder."""

    def __init__(self, folder: Path, meta: Mapping[str, Any]) -> None:
        self.folder = folder
        self.meta = dict(meta)

    @property
    def modules(self) -> list[str]:
        """Module paths held in full."""
        return list(self.meta["modules"])

    def _file(self, path: str, what: str) -> Path:
        if path not in self.meta["modules"]:
            raise KeyError(f"module {path!r} is not in the cache {self.folder}: it holds {', '.join(self.modules)}")
        return self.folder / f"{path}.{what}.npy"

    def gap(self, path: str) -> np.ndarray:
        """Pooled activations ``(images, channels)``, float32."""
        return np.load(self._file(path, "gap"))

    def map(self, path: str) -> Bf16Matrix:
        """Full maps ``(images, channels*height*width)`` as a lazy float32 view of bf16 values on disk."""
        return Bf16Matrix(np.load(self._file(path, "map"), mmap_mode="r"))

    def map_shape(self, path: str) -> tuple[int, ...]:
        """``(channels, height, width)`` of a module's output."""
        return tuple(self.meta["shapes"][path])

    def features(self, path: str, kind: str) -> np.ndarray | Bf16Matrix:
        """``gap`` or ``map`` features of a module."""
        if kind == "gap":
            return self.gap(path)
        if kind == "map":
            return self.map(path)
        raise ValueError(f"unknown feature kind {kind!r}: expected gap or map")


class ActivationCache:
    """Folders of per-module activation files under ``root``, one per (checkpoint, images, transform, options)."""

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root)

    def folder(self, fingerprint: str, images: ImageSet, options: ExtractOptions) -> Path:
        return self.root / f"{fingerprint[:16]}-{images.key}-{options.key()}"

    def get(
        self,
        model: nn.Module,
        modules: Mapping[str, str],
        images: ImageSet,
        *,
        fingerprint: str,
        options: ExtractOptions = ExtractOptions(),
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> CheckpointActivations:
        """The activations of ``modules`` (display name -> path); runs one pass for the ones not cached."""
        options = options.resolve(device)
        folder = self.folder(fingerprint, images, options)
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {
            "format": _FORMAT_VERSION, "fingerprint": fingerprint, "images": images.key,
            "n_images": len(images), "options": options.key(), "modules": [], "shapes": {},
        }
        wanted = list(dict.fromkeys(modules.values()))
        todo = [p for p in wanted if p not in meta["modules"]]
        if todo:
            log.info("activations %s: one pass over %d images for %d modules", folder.name, len(images), len(todo))
            shapes = self._extract(model, todo, images, folder, options, device, progress)
            meta["modules"] = [p for p in wanted if p in meta["modules"] or p in shapes] + [
                p for p in meta["modules"] if p not in wanted]
            meta["shapes"].update(shapes)
            tmp = meta_path.with_name(f"meta.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, meta_path)
        else:
            log.info("activations %s: read from cache", folder.name)
        return CheckpointActivations(folder, meta)

    def _extract(self, model: nn.Module, todo: list[str], images: ImageSet, folder: Path,
                 options: ExtractOptions, device: str | torch.device, progress: bool) -> dict[str, list[int]]:
        n = len(images)
        gaps: dict[str, np.ndarray] = {}
        maps: dict[str, np.ndarray] = {}
        shapes: dict[str, list[int]] = {}

        def sink(path: str, start: int, out: torch.Tensor) -> None:
            if out.ndim != 4:
                raise ValueError(f"module {path!r} outputs shape {tuple(out.shape)}: expected (batch, channels, height, width)")
            if path not in maps:
                shapes[path] = list(out.shape[1:])
                gaps[path] = np.empty((n, out.shape[1]), dtype=np.float32)
                maps[path] = np.lib.format.open_memmap(
                    folder / f"{path}.map.npy.tmp", mode="w+", dtype=np.uint16, shape=(n, out[0].numel()))
            stop = start + out.shape[0]
            gaps[path][start:stop] = out.mean((2, 3), dtype=torch.float32).cpu().numpy()
            # bf16 output: its own bits; torch copies them from its layout (channels_last) into the memmap's rows
            # (measured here: 1.5 GB/s, a numpy strided assignment 0.3 GB/s: 19 s of a 2,700-image extraction)
            bits = (out if out.dtype == torch.bfloat16 else out.to(torch.bfloat16)).view(torch.int16)
            torch.from_numpy(maps[path][start:stop].view(np.int16)).view(out.shape).copy_(bits)

        forward_activations(model, {p: p for p in todo}, images.pixels, sink, options=options,
                            device=device, progress=progress)
        for path in todo:
            np.save(folder / f"{path}.gap.npy", gaps[path])
            maps[path].flush()
            tmp = maps[path].filename
            del maps[path]
            os.replace(tmp, folder / f"{path}.map.npy")
        return shapes
