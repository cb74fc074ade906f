"""What a sweep's activation cache will write, said before it writes, and refused when the disk cannot hold it.

At the seed's sizes (224 px, ~2,700 images, MobileNetV2's 19 modules) the full maps take ~5.6 GB per
checkpoint, so 300 kept checkpoints want ~1.7 TB; with ``--no-keep-cache`` one checkpoint's maps at a
time per worker running at once (one in this process, one per running task under Ray). The sizes come from the module output shapes of one forward pass on one image, times the images.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from clipprobe.activations.cache import ActivationCache, has_maps, holds
from clipprobe.activations.hooks import forward_activations
from clipprobe.activations.options import ExtractOptions

NPY_HEADER = 128  # bytes numpy writes before an .npy file's data at these ranks


def module_shapes(model: nn.Module, modules: Mapping[str, str], image: np.ndarray) -> dict[str, tuple[int, ...]]:
    """``(channels, height, width)`` per module path (``(classes,)`` for logits), from one hooked pass over
    ``image`` (``(3, H, W)``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    device = next((p.device for p in model.parameters()), "cpu")
    forward_activations(model, modules, image[None].astype(np.float32),
                        lambda path, _start, out: shapes.__setitem__(path, tuple(out.shape[1:])),
                        options=ExtractOptions(batch_size=1, channels_last=False, fold_batchnorm=False),
                        device=device, progress=False)
    return shapes


def activation_bytes(shapes: Mapping[str, Sequence[int]], n_images: int, *, maps: bool = True) -> int:
    """Bytes ``ActivationCache`` writes for these modules over ``n_images``: per module the pooled float32
    vectors and, with ``maps``, the full maps (bf16, 2 bytes a value) and their float32 offsets."""
    total = 0
    for shape in shapes.values():
        values, channels = int(np.prod(shape)), int(shape[0])
        total += n_images * channels * 4 + NPY_HEADER
        if maps and has_maps(shape):
            total += n_images * values * 2 + values * 4 + 2 * NPY_HEADER
    return total


def free_bytes(folder: str | Path) -> int:
    """Free bytes on the filesystem that holds ``folder`` (or would, once its nearest existing parent makes it)."""
    path = Path(folder).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class CacheBudget:
    """The disk a sweep's cache needs under ``folder``: ``images`` (decoded once, 0 when cached) and
    ``per_checkpoint`` for each of ``to_write`` checkpoints not cached yet (of ``checkpoints``).

    ``workers``: checkpoints processed at once (each holds its own until done, so without ``keep_cache``
    the peak is one per worker); ``workers_from``: where that number came from, said in ``describe()``."""

    folder: Path
    per_checkpoint: int
    images: int
    checkpoints: int
    to_write: int
    keep_cache: bool
    free: int
    workers: int = 1
    workers_from: str = ""

    @property
    def held(self) -> int:
        """Checkpoints' activations on the disk at once: every new one kept, or one per worker."""
        return self.to_write if self.keep_cache else min(self.workers, self.to_write)

    @property
    def peak(self) -> int:
        """The most the sweep adds to the disk at once: every new checkpoint kept, or one per worker."""
        return self.images + self.held * self.per_checkpoint

    def describe(self) -> str:
        workers = f" ({self.workers} workers at once: {self.workers_from})" if self.workers > 1 else ""
        kept = (f"kept: {gib(self.peak)} for {self.to_write} checkpoints not cached yet"
                if self.keep_cache else f"--no-keep-cache: at most {gib(self.peak)} at a time{workers}")
        return (f"activation cache ({self.folder}): {gib(self.per_checkpoint)} per checkpoint + {gib(self.images)} "
                f"of decoded images; {kept}; {gib(self.free)} free")

    def check(self) -> None:
        """``ValueError`` naming the sizes and the fixes when the sweep would fill the disk."""
        if self.peak <= self.free:
            return
        fixes = ["--cache-dir on a disk with more room", "fewer --epochs or --modules"]
        bounded = min(self.workers, self.to_write)
        if self.keep_cache and self.to_write > bounded:
            fixes.insert(0, f"--no-keep-cache (then at most {gib(self.images + bounded * self.per_checkpoint)} at a "
                            "time)")
        if self.workers > 1:
            fixes.append(f"fewer checkpoints at once ({self.workers} assumed: {self.workers_from})")
        raise ValueError(f"the activation cache needs {gib(self.peak)} under {self.folder} ({gib(self.per_checkpoint)} "
                         f"per checkpoint x {self.held} + {gib(self.images)} of images) "
                         f"but only {gib(self.free)} is free: pass {', or '.join(fixes)}")


def cache_budget(cache: ActivationCache, *, shapes: Mapping[str, Sequence[int]], image_shape: Sequence[int],
                 images_key: str, n_images: int, fingerprints: Sequence[str], options: ExtractOptions,
                 keep_cache: bool, maps: bool = True, workers: int = 1, workers_from: str = "") -> CacheBudget:
    """The budget of probing ``fingerprints``' checkpoints on one image set (``maps``: full maps too): a
    checkpoint whose folder already holds every module in ``shapes`` writes nothing, nor do images already
    decoded under the cache. ``workers`` checkpoints run at once (``workers_from``: how that is known)."""
    def cached(fingerprint: str) -> bool:
        stored = cache.stored(cache.folder(fingerprint, images_key, options))
        return all(any(holds(stored.get(path, []), p, maps and has_maps(shape)) for p in ("fp32", "bf16"))
                   for path, shape in shapes.items())

    images_file = cache.root / "images" / f"{images_key}.npy"
    images = 0 if images_file.is_file() else n_images * int(np.prod(image_shape)) * 4 + NPY_HEADER
    to_write = sum(not cached(f) for f in fingerprints)
    return CacheBudget(cache.root, activation_bytes(shapes, n_images, maps=maps), images, len(fingerprints), to_write,
                       keep_cache, free_bytes(cache.root), max(1, workers), workers_from)


def describe_plan(n_checkpoints: int, modules: int, concepts: int, probes: Sequence[str], n_images: int) -> str:
    """The sweep's size in one line: fits, and the images of each checkpoint's forward pass."""
    fits = n_checkpoints * modules * concepts * len(probes)
    return (f"plan: {n_checkpoints} checkpoints x {modules} modules x {concepts} concepts x {len(probes)} probe kinds "
            f"= {fits:,} fits; {n_images:,} images through one forward pass per checkpoint")
