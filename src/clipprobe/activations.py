"""Activations of probe modules: one hooked forward pass per checkpoint, pooled and full maps, on-disk cache.

Pooled ("gap", mean over height x width) vectors are kept in float32. Full maps are stored on disk
centred: a per-feature offset (``map_offset``: the float32 mean of the first batch of images where it
exceeds their spread, kept in float32) is subtracted and the remainder stored as bfloat16 bit patterns
(uint16 ``.npy``). Rounding then costs
2^-9 of each value's distance from its offset, not of its size: deep features of a trained network
sit at 1e4 to 1e7 times their spread from zero, which bf16 of the raw values would erase. bf16 keeps
float32's exponent range, so the ~1e-9 activations of a randomly initialised network survive too.
A cache folder is keyed by the checkpoint fingerprint, the image set, the transform and the layout
options; inside it each module's files carry the precision its forward pass ran in (fp32 or bf16),
so an ``auto`` pass shares files with explicit passes of the precision it chose per module.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from clipprobe.concepts.pool import DECODING, open_rgb, pool_fingerprint

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = ".cache/activations"
PRECISIONS = ("fp32", "bf16", "auto")
_FORMAT_VERSION = 2  # 2: per-module precision in file names, maps stored centred on a float32 offset
CALIBRATION_QUANTILE = 0.99  # auto: the share of a module's features whose bf16 error must be within calibration_rtol


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
    """A read-only ``(images, features)`` matrix stored as bf16 bit patterns of ``value - offset``.

    Indexing yields float32 values ``bits -> float + offset`` (``offset`` per feature, float32; None
    means 0), so it works where the probes take a numpy array (``X[rows, c0:c1]``) without holding the
    matrix in memory. Readers that only need the centred values (the probes standardise anyway) read
    ``bits`` directly (``clipprobe.probes.design.load_columns``) and the ``offset`` beside them.

    ``computed_in`` and ``stored_in`` say in which precision the values were computed and stored: the
    probes' near-constant-feature rule judges a feature against that resolution
    (``clipprobe.probes.kinds.drop_rtol_for``).
    """

    stored_in = "bf16"

    def __init__(self, bits: np.ndarray, offset: np.ndarray | None = None, computed_in: str = "fp32") -> None:
        if bits.dtype != np.uint16 or bits.ndim != 2:
            raise ValueError(f"expected a 2-d uint16 array of bf16 bits, got {bits.dtype} {bits.shape}")
        if offset is not None:
            offset = np.asarray(offset, dtype=np.float32)
            if offset.shape != (bits.shape[1],):
                raise ValueError(f"offset has shape {offset.shape}: expected ({bits.shape[1]},), one per feature")
        self.bits = bits
        self.offset = offset
        self.computed_in = computed_in

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.bits.shape)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.bits.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        values = from_bf16_bits(self.bits[key])
        if self.offset is None:
            return values
        cols = key[1] if isinstance(key, tuple) and len(key) > 1 else slice(None)
        return values + self.offset[cols]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


class PooledFeatures(np.ndarray):
    """A float32 ``(images, channels)`` array that says which precision its forward pass ran in (``computed_in``)."""

    stored_in = "fp32"
    offset = None

    def __array_finalize__(self, obj: Any) -> None:
        self.computed_in = getattr(obj, "computed_in", "fp32")


# ---------------------------------------------------------------- images: decoded and transformed once


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


def image_set_key(root: str | Path, paths: Sequence[str], transform: Any) -> str:
    """The images' part of a cache key: which files (path, size, mtime), decoded how, transformed how."""
    return f"{pool_fingerprint(root, paths, with_mtime=True)}-{_short(repr(transform) + DECODING)}"


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
    key = image_set_key(root, paths, transform)
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
        tmp = _temporary(target)
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


def _temporary(target: Path) -> Path:
    """A name beside ``target`` no other process or thread uses (pid + uuid): processes sharing a cache
    each write their own file and ``os.replace`` it onto ``target`` in one atomic step, so a reader sees
    a whole file or none, whoever wins."""
    return target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _save_atomic(target: Path, array: np.ndarray) -> None:
    tmp = _temporary(target)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, target)


def _decode(root: Path, rel: str, transform: Callable) -> torch.Tensor:
    try:
        out = transform(open_rgb(root / rel))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"image {root / rel} cannot be read ({err}): fix or remove it and rerun the concepts step") from None
    return out.float()


# ---------------------------------------------------------------- the hooked forward pass


@dataclass(frozen=True)
class ExtractOptions:
    """How the forward pass computes.

    ``precision``: ``fp32`` (the default, on every device) computes exactly. ``bf16`` runs the pass
    under bf16 autocast: about 3 significant digits, which erases deep features of a trained network
    (their spread is 1e-5 to 1e-7 of their mean; tests/test_activations_precision.py shows probe
    accuracies collapsing). ``auto`` proves bf16 per module on each checkpoint: on a device that
    computes bf16 natively (``devices.native_bf16``: a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute
    capability 8.0+) the first ``calibration_images`` images go through the probed modules in fp32 and
    under bf16 autocast; a module keeps bf16 only if, for its pooled and its full-map features alike,
    the ``CALIBRATION_QUANTILE`` (99th percentile) over features of the centred relative error
    ``||bf16_j - fp32_j|| / ||fp32_j - mean_j(fp32)||`` (over the calibration images) is at most
    ``calibration_rtol`` (see ``calibrate``). Other modules run in fp32, in a second pass: auto costs the
    calibration plus, where modules fall back, an fp32 pass to the deepest of them, so on a trained
    network (deep modules fail) it is slower than fp32. Elsewhere ``auto`` is fp32 with no calibration.
    The precision each module ran in is in the cache (``CheckpointActivations.precision_of``).

    Folding BatchNorm into the convolutions and the channels_last layout change activations by
    float32 rounding only.
    """

    batch_size: int = 32
    precision: str = "fp32"
    channels_last: bool = True
    fold_batchnorm: bool = True
    calibration_images: int = 64
    calibration_rtol: float = 0.1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.calibration_images < 2:
            raise ValueError(f"calibration_images must be at least 2 (features are centred over them), "
                             f"got {self.calibration_images}")
        if not self.calibration_rtol > 0:
            raise ValueError(f"calibration_rtol must be positive, got {self.calibration_rtol}")

    def resolve(self, device: str | torch.device, native_bf16: bool | None = None) -> ExtractOptions:
        """These options with ``auto`` replaced by ``fp32`` where ``device`` has no native bf16; ``auto``
        stays (calibrated per module) where it has. ``native_bf16`` overrides ``devices.native_bf16(device)``."""
        if self.precision != "auto":
            return self
        if native_bf16 is None:
            from clipprobe.devices import native_bf16 as device_bf16

            native_bf16 = device_bf16(device)
        return self if native_bf16 else dataclasses.replace(self, precision="fp32")

    def key(self) -> str:
        """The part of the cache folder's key that changes values (not the batch size, nor the precision:
        each module's files carry the precision they were computed in)."""
        return f"v{_FORMAT_VERSION}{'-cl' if self.channels_last else ''}{'-fold' if self.fold_batchnorm else ''}"

    def calibration_key(self) -> str:
        """What an ``auto`` decision depends on besides the weights and images."""
        return f"{self.calibration_images}img-q{CALIBRATION_QUANTILE:g}-rtol{self.calibration_rtol:g}"


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


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """fp32 means fp32 on a GPU too: cuDNN convolutions default to TF32 on compute capability 8.0+ (a 10-bit
    mantissa, as lossy as bf16 for deep features far from zero); switched off for the block, then restored."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


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
    ``options.precision`` must be fp32 or bf16 (``auto`` is decided per module by ``ActivationCache.get``).
    Hooks on every module path in ``modules.values()``; the pass stops once all fired."""
    device = torch.device(device)
    if options.precision not in ("fp32", "bf16"):
        raise ValueError(f"forward_activations runs fp32 or bf16, got {options.precision!r}: "
                         "auto is decided per module by ActivationCache.get")
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
        with torch.inference_mode(), ieee_fp32(device):
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
                if len(captured) != len(targets):
                    lost = [p for p in targets if p not in captured]
                    raise RuntimeError(f"modules {lost} never ran in the forward pass: probe other modules")
                for path in targets:
                    sink(path, start, captured[path])
    finally:
        for h in handles:
            h.remove()


def map_offset(first: torch.Tensor) -> torch.Tensor:
    """The per-feature offset full maps are stored against, from the first batch ``(batch, ...)``, float32.

    A feature's mean over the batch where it lies farther from zero than the batch's spread (std), else 0:
    bf16 rounding then costs 2^-9 of a value's distance from its offset, so a feature at 1e4 times its
    spread keeps its variation, and one near zero (a ReLU's exact zeros) keeps its own bits.
    """
    mean = first.mean(0, keepdim=True)
    spread = first.std(0, keepdim=True, correction=0) if len(first) > 1 else torch.zeros_like(mean)
    return torch.where(mean.abs() > spread, mean, torch.zeros_like(mean))


# ---------------------------------------------------------------- auto: bf16 where it is proven


def _quantile_error(exact: torch.Tensor, fast: torch.Tensor) -> float:
    """``CALIBRATION_QUANTILE`` over features of ``||fast_j - exact_j|| / ||exact_j - mean(exact_j)||``.

    ``(rows, features)`` float32. A feature constant in fp32 scores 0 when bf16 keeps it exactly, else inf.
    """
    num = (fast.double() - exact.double()).norm(dim=0)
    den = (exact.double() - exact.double().mean(0)).norm(dim=0)
    err = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, float("inf"), 0.0))
    return float(np.quantile(err.cpu().numpy(), CALIBRATION_QUANTILE, method="higher"))


def calibrate(
    model: nn.Module,
    paths: Sequence[str],
    pixels: np.ndarray | torch.Tensor,
    *,
    options: ExtractOptions = ExtractOptions(precision="auto"),
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """Per module path: ``{"precision": "bf16" or "fp32", "gap_error", "map_error", "images"}``.

    Runs the first ``options.calibration_images`` of ``pixels`` through the modules in fp32 and under
    bf16 autocast (same layout and folding) and scores each module's pooled and full-map features by
    ``_quantile_error`` (the 99th percentile over features of the centred relative error). bf16 is
    accepted when both errors are at most ``options.calibration_rtol``. Centring matters: a deep feature
    at 1e4 times its spread from zero has a small error relative to its size and none of its variation.
    """
    m = min(len(pixels), options.calibration_images)
    batch = pixels[:m]
    outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for precision in ("fp32", "bf16"):
        got: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
        run = dataclasses.replace(options, precision=precision)
        forward_activations(model, {p: p for p in paths}, batch, lambda p, _s, out, got=got: got[p].append(out.float()),
                            options=run, device=device, progress=False)
        outputs[precision] = got
    result = {}
    for path in paths:
        exact, fast = (torch.cat(outputs[p][path]) for p in ("fp32", "bf16"))
        gap_error = _quantile_error(exact.mean((2, 3)), fast.mean((2, 3)))
        map_error = _quantile_error(exact.flatten(1), fast.flatten(1))
        ok = max(gap_error, map_error) <= options.calibration_rtol
        result[path] = {"precision": "bf16" if ok else "fp32", "gap_error": gap_error, "map_error": map_error,
                        "images": m}
        log.info("calibration %s: bf16 centred error gap %.3g, map %.3g (limit %g): %s", path, gap_error,
                 map_error, options.calibration_rtol, result[path]["precision"])
    return result


# ---------------------------------------------------------------- the cache


class CheckpointActivations:
    """The activations of one checkpoint over one image set, read per module from a cache folder.

    ``precisions`` maps each module path to the precision its forward pass ran in (fp32 or bf16);
    ``calibration`` holds the ``auto`` decisions behind them (``calibrate``'s entries), if any.
    """

    def __init__(self, folder: Path, meta: Mapping[str, Any], precisions: Mapping[str, str],
                 calibration: Mapping[str, Mapping[str, Any]] | None = None, lease: Path | None = None) -> None:
        self.folder = folder
        self.lease = lease  # this reader's lease file in the folder (``ActivationCache.release`` gives it back)
        self.meta = dict(meta)
        self.precisions = dict(precisions)
        self.calibration = {p: dict(c) for p, c in (calibration or {}).items()}

    @property
    def modules(self) -> list[str]:
        """Module paths held."""
        return list(self.precisions)

    def precision_of(self, path: str) -> str:
        """``fp32`` or ``bf16``: the precision the forward pass ran in for this module."""
        self._check(path)
        return self.precisions[path]

    def calibration_of(self, path: str) -> dict[str, Any] | None:
        """The ``auto`` decision for this module (``calibrate``'s entry), or None for an explicit precision."""
        self._check(path)
        return self.calibration.get(path)

    def _check(self, path: str) -> None:
        if path not in self.precisions:
            raise KeyError(f"module {path!r} is not in the cache {self.folder}: it holds {', '.join(self.modules)}")

    def _file(self, path: str, what: str) -> Path:
        return self.folder / f"{path}.{self.precision_of(path)}.{what}.npy"

    def gap(self, path: str) -> PooledFeatures:
        """Pooled activations ``(images, channels)``, float32 (a ndarray that carries ``computed_in``)."""
        out = np.load(self._file(path, "gap")).view(PooledFeatures)
        out.computed_in = self.precision_of(path)
        return out

    def map_offset(self, path: str) -> np.ndarray:
        """The float32 per-feature offset subtracted from the full maps before bf16 storage."""
        return np.load(self._file(path, "map_offset"))

    def map(self, path: str) -> Bf16Matrix:
        """Full maps ``(images, channels*height*width)``: bf16 bits of ``value - offset`` on disk, read as float32."""
        if not self._file(path, "map").is_file():
            raise KeyError(f"module {path!r} has no full maps in {self.folder}: its pass stored pooled vectors only "
                           "(ActivationCache.get(..., maps=False)); get it again with maps=True")
        return Bf16Matrix(np.load(self._file(path, "map"), mmap_mode="r"), self.map_offset(path),
                          computed_in=self.precision_of(path))

    def map_shape(self, path: str) -> tuple[int, ...]:
        """``(channels, height, width)`` of a module's output."""
        self._check(path)
        return tuple(self.meta["shapes"][path])

    def features(self, path: str, kind: str) -> PooledFeatures | Bf16Matrix:
        """``gap`` or ``map`` features of a module; both say the precision they were computed (and stored) in."""
        if kind == "gap":
            return self.gap(path)
        if kind == "map":
            return self.map(path)
        raise ValueError(f"unknown feature kind {kind!r}: expected gap or map")


def _merge_meta(meta_path: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """``mine`` plus what another process sharing the folder recorded in meta.json since it was read (its
    stored modules, shapes and calibration decisions), so neither process's work is forgotten."""
    try:
        theirs = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return mine
    if theirs.get("format") != mine.get("format"):
        return mine
    merged = {**mine, "stored": {}, "shapes": {**theirs.get("shapes", {}), **mine["shapes"]},
              "calibration": {k: {**theirs.get("calibration", {}).get(k, {}), **v}
                              for k, v in {**theirs.get("calibration", {}), **mine["calibration"]}.items()}}
    for source in (theirs.get("stored", {}), mine["stored"]):
        for path, precisions in source.items():
            merged["stored"].setdefault(path, [])
            merged["stored"][path] += [p for p in precisions if p not in merged["stored"][path]]
    return merged


GAP_ONLY = ":gap"  # a meta.json ``stored`` entry "fp32:gap": that precision's pooled vectors, no full maps


def holds(stored: Sequence[str], precision: str, maps: bool = True) -> bool:
    """Whether a module's ``stored`` entries (meta.json) hold its ``precision`` files, with full maps if ``maps``."""
    return precision in stored or (not maps and f"{precision}{GAP_ONLY}" in stored)


LEASES = "leases"  # in a cache folder: one file per process reading it, named <pid>@<host>.<random>


def _lease_alive(lease: Path) -> bool:
    """Whether the process named by a lease file may still read its folder: on this host, while its pid
    lives; on another host (a shared filesystem), always, as nothing here can tell."""
    pid, _, rest = lease.name.partition("@")
    host = rest.rsplit(".", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class ActivationCache:
    """Folders of per-module activation files under ``root``, one per (checkpoint, images, transform, layout);
    in a folder, each module's files per precision it was computed in.

    Every ``get`` takes a lease on its folder (a file in ``leases/``) and ``release`` gives it back; with
    ``delete=True`` the folder goes only when no live process holds a lease on it, so a sweep with
    ``--no-keep-cache`` never deletes activations another process is computing or reading. Leases and
    deletions are ordered by a lock file per folder under ``root/.locks``.
    """

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root)

    def folder(self, fingerprint: str, images: ImageSet | str, options: ExtractOptions) -> Path:
        """The folder of one checkpoint's activations on an image set (or its ``image_set_key``)."""
        key = images if isinstance(images, str) else images.key
        return self.root / f"{fingerprint[:16]}-{key}-{options.key()}"

    def stored(self, folder: Path) -> dict[str, list[str]]:
        """What ``folder``'s meta.json says it holds (module path -> precisions); empty when nothing yet."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return meta.get("stored", {}) if meta.get("format") == _FORMAT_VERSION else {}

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
        native_bf16: bool | None = None,
        maps: bool = True,
    ) -> CheckpointActivations:
        """The activations of ``modules`` (display name -> path); runs a pass for the ones not cached.

        ``maps=False`` (no probe of the sweep reads full maps) stores the pooled vectors only: at 224 px the
        maps are ~2 MB an image, the pooled vectors ~12 KB. Such a module is recorded as ``<precision>:gap``
        in meta.json's ``stored``, and a later ``get`` that wants its maps runs its pass again.

        With ``auto`` precision on a device with native bf16 (``native_bf16`` overrides
        ``devices.native_bf16(device)``), each module not yet decided is calibrated (``calibrate``) and the
        decision kept in the folder's meta.json; then one bf16 pass for the modules that passed and one
        fp32 pass for the others, each only for files not already cached (explicit passes share them).
        """
        options = options.resolve(device, native_bf16)
        folder = self.folder(fingerprint, images, options)
        lease = self._take_lease(folder)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("format") != _FORMAT_VERSION:
            meta = {"format": _FORMAT_VERSION, "fingerprint": fingerprint, "images": images.key,
                    "n_images": len(images), "options": options.key(), "stored": {}, "shapes": {},
                    "calibration": {}}
        wanted = list(dict.fromkeys(modules.values()))
        changed = False
        chosen: dict[str, dict[str, Any]] = {}
        if options.precision == "auto":
            decided = meta["calibration"].setdefault(options.calibration_key(), {})
            undecided = [p for p in wanted if p not in decided]
            if undecided:
                log.info("activations %s: calibrating bf16 on %d images for %d modules", folder.name,
                         min(len(images), options.calibration_images), len(undecided))
                decided.update(calibrate(model, undecided, images.pixels, options=options, device=device))
                changed = True
            chosen = {p: decided[p] for p in wanted}
            plan = {p: decided[p]["precision"] for p in wanted}
        else:
            plan = dict.fromkeys(wanted, options.precision)
        for precision in ("bf16", "fp32"):
            todo = [p for p in wanted if plan[p] == precision and not holds(meta["stored"].get(p, []), precision, maps)]
            if not todo:
                continue
            log.info("activations %s: one %s pass over %d images for %d modules", folder.name, precision,
                     len(images), len(todo))
            shapes = self._extract(model, todo, images, folder, dataclasses.replace(options, precision=precision),
                                   device, progress, maps=maps)
            meta["shapes"].update(shapes)
            for p in todo:
                meta["stored"].setdefault(p, []).append(precision if maps else f"{precision}{GAP_ONLY}")
            changed = True
        if changed:
            meta = _merge_meta(meta_path, meta)
            tmp = _temporary(meta_path)
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, meta_path)
        else:
            log.info("activations %s: read from cache", folder.name)
        return CheckpointActivations(folder, meta, plan, chosen, lease=lease)

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        """The folder's lock (an ``flock`` on ``root/.locks/<folder>``), held for the block."""
        import fcntl  # POSIX; the lock file outlives the folder, so a deleter and a new reader share it

        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / folder.name, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _take_lease(self, folder: Path) -> Path:
        """Create ``folder`` if needed and a lease on it for this process, under the folder's lock (so a
        deletion either happened before, and the folder is new, or waits for the next check)."""
        with self._locked(folder):
            (folder / LEASES).mkdir(parents=True, exist_ok=True)
            lease = folder / LEASES / f"{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
            lease.touch()
        return lease

    def release(self, acts: CheckpointActivations, *, delete: bool = False) -> bool:
        """Give back ``acts``'s lease; with ``delete``, delete its folder unless a live process still holds
        one (leases of dead processes on this host are dropped). True when the folder was deleted."""
        folder = acts.folder
        with self._locked(folder):
            if acts.lease is not None:
                acts.lease.unlink(missing_ok=True)
                acts.lease = None
            if not delete or not folder.is_dir():
                return False
            leases = list((folder / LEASES).glob("*")) if (folder / LEASES).is_dir() else []
            holders = [lease for lease in leases if _lease_alive(lease)]
            for stale in set(leases) - set(holders):
                stale.unlink(missing_ok=True)
            if holders:
                log.info("activations %s: kept, still read by %s", folder.name,
                         ", ".join(sorted(h.name.rsplit(".", 1)[0] for h in holders)))
                return False
            trash = folder.with_name(f"{folder.name}.deleting-{uuid.uuid4().hex[:12]}")
            os.replace(folder, trash)  # gone from its name at once; the files go after the lock is released
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _extract(self, model: nn.Module, todo: list[str], images: ImageSet, folder: Path,
                 options: ExtractOptions, device: str | torch.device, progress: bool,
                 maps: bool = True) -> dict[str, list[int]]:
        n = len(images)
        precision = options.precision
        want_maps = maps
        gaps: dict[str, np.ndarray] = {}
        stored_maps: dict[str, np.ndarray] = {}
        offsets: dict[str, torch.Tensor] = {}
        shapes: dict[str, list[int]] = {}

        def sink(path: str, start: int, out: torch.Tensor) -> None:
            if out.ndim != 4:
                raise ValueError(f"module {path!r} outputs shape {tuple(out.shape)}: expected (batch, channels, height, width)")
            values = out.float()
            if path not in gaps:
                shapes[path] = list(out.shape[1:])
                gaps[path] = np.empty((n, out.shape[1]), dtype=np.float32)
            if want_maps and path not in stored_maps:
                stored_maps[path] = np.lib.format.open_memmap(
                    _temporary(folder / f"{path}.{precision}.map.npy"), mode="w+", dtype=np.uint16, shape=(n, out[0].numel()))
                offsets[path] = map_offset(values)
            stop = start + out.shape[0]
            gaps[path][start:stop] = values.mean((2, 3)).cpu().numpy()
            if not want_maps:
                return
            # torch copies the centred bf16 bits from the output's layout (channels_last) into the memmap's rows
            bits = (values - offsets[path]).to(torch.bfloat16).view(torch.int16)
            torch.from_numpy(stored_maps[path][start:stop].view(np.int16)).view(out.shape).copy_(bits)

        forward_activations(model, {p: p for p in todo}, images.pixels, sink, options=options,
                            device=device, progress=progress)
        for path in todo:
            _save_atomic(folder / f"{path}.{precision}.gap.npy", gaps[path])
            if not want_maps:
                continue
            _save_atomic(folder / f"{path}.{precision}.map_offset.npy", offsets[path].reshape(-1).cpu().numpy())
            stored_maps[path].flush()
            tmp = stored_maps[path].filename
            del stored_maps[path]
            os.replace(tmp, folder / f"{path}.{precision}.map.npy")
        return shapes
