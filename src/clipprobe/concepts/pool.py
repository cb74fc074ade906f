"""The image pool: every image file under a folder (recursive), read one by one, corrupt files skipped;
``open_rgb``, the one way every step turns an image file into the RGB picture it scores or probes."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from clipprobe.world.masks import MASKS_FOLDER

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# How open_rgb decodes; part of the cache keys of anything computed from decoded pixels, so a change of it
# never reuses scores or activations of the old decoding.
DECODING = "rgb8-exif-upright-16bit-scaled-float-scaled-alpha-on-white"
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # how PIL opens 16-bit PNG and TIFF files
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What a transparent pixel shows: white, as a browser shows an image on a page (and ImageNet's RGBA files
# were made from photos on white).
BACKGROUND = (255, 255, 255)


def open_rgb(path: str | Path) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB, the right way up.

    A photo whose EXIF orientation says "rotated" is turned as an image viewer shows it (a phone's
    portrait photo is stored sideways); a 16-bit greyscale image is scaled to 8 bits (PIL's ``convert``
    clips it at 255, which turns almost every pixel white); a float image (a 32-bit TIFF) is scaled too,
    ``[0, 1]`` to ``[0, 255]``, or its own range when it leaves ``[0, 1]``; a transparent image is laid on
    ``BACKGROUND`` (PIL's ``convert`` drops the alpha, showing whatever colour hides under it). Raises what
    PIL raises for a file it cannot decode (``OSError``, ``ValueError``, ``SyntaxError``,
    ``Image.DecompressionBombError``).
    """
    with Image.open(path) as image:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in _SIXTEEN_BIT_MODES:
            return _grey8(np.asarray(image, dtype=np.float64) / 257.0)
        if image.mode == "F":
            return _grey8(_unit_or_own_range(np.asarray(image, dtype=np.float64)) * 255.0)
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
        return image.convert("RGB")


def _grey8(pixels: np.ndarray) -> Image.Image:
    """Grey levels on the 0..255 scale (floats) as an 8-bit RGB picture."""
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")


def _unit_or_own_range(pixels: np.ndarray) -> np.ndarray:
    """Float pixels on ``[0, 1]``: as they are when they lie there, else their finite range mapped onto it (a
    constant image: 0); NaN and infinities as 0."""
    finite = np.isfinite(pixels)
    pixels = np.where(finite, pixels, 0.0)
    low, high = (pixels[finite].min(), pixels[finite].max()) if finite.any() else (0.0, 0.0)
    if 0.0 <= low and high <= 1.0:
        return pixels
    return (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)


def list_images(root: str | Path) -> list[str]:
    """POSIX paths, relative to ``root``, of every image file below it, sorted (hidden files and the pixel
    masks' folder ``masks/`` at the top skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image pool folder not found: {root} (give an existing folder of images)")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        top = Path(dirpath) == root
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (top and d == MASKS_FOLDER))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(Path(dirpath, name).relative_to(root).as_posix())
    if not paths:
        raise ValueError(
            f"image pool {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
            "point the pool at a folder of images"
        )
    return sorted(paths)


def content_digest(path: str | Path) -> str:
    """sha256 (16 hex) of an image file's bytes: the image's id wherever the pool lies and whatever it is named."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def pool_fingerprint(root: str | Path, paths: Sequence[str], *, with_mtime: bool = False) -> str:
    """sha256 (16 hex) over each image's relative path and byte size: cheap for 50,000 files, stable
    across copies. ``with_mtime``: the modification time too (a cache key that notices an edited file)."""
    digest = hashlib.sha256()
    root = Path(root)
    for rel in paths:
        st = (root / rel).stat()
        digest.update(f"{rel}|{st.st_size}{f'|{st.st_mtime_ns}' if with_mtime else ''}\n".encode())
    return digest.hexdigest()[:16]


class PoolImages:
    """``(index, tensor)`` per image; ``(index, None)`` for a file that cannot be decoded. A map-style dataset for
    ``torch.utils.data.DataLoader`` (``__len__`` and ``__getitem__``), so that this module, and every report that
    decodes a picture through ``open_rgb``, does not import torch."""

    def __init__(self, root: str | Path, paths: Sequence[str], transform: Callable[[Image.Image], Any]):
        self.root = Path(root)
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        try:
            return index, self.transform(open_rgb(self.root / self.paths[index]))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            log.debug("unreadable image %s: %s", self.paths[index], err)
            return index, None


def collate_readable(batch: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """Stack the readable images of a batch; return (their indices, images, unreadable indices)."""
    import torch

    good = [(i, x) for i, x in batch if x is not None]
    bad = [i for i, x in batch if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad
