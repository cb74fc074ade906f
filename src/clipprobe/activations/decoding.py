"""Images decoded and transformed once (memory or a memmap in the cache), and atomic file writes."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipprobe.concepts.pool import DECODING, open_rgb, pool_fingerprint

log = logging.getLogger(__name__)




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
        tmp = temporary_beside(target)
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


def temporary_beside(target: Path) -> Path:
    """A name beside ``target`` no other process or thread uses (pid + uuid): processes sharing a cache
    each write their own file and ``os.replace`` it onto ``target`` in one atomic step, so a reader sees
    a whole file or none, whoever wins."""
    return target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def save_atomic(target: Path, array: np.ndarray) -> None:
    tmp = temporary_beside(target)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, target)


def _decode(root: Path, rel: str, transform: Callable) -> torch.Tensor:
    try:
        out = transform(open_rgb(root / rel))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"image {root / rel} cannot be read ({err}): fix or remove it and rerun the concepts step") from None
    return out.float()


