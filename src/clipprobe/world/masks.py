"""Pixel masks of concepts, one PNG per (concept, image) in a ``masks/`` folder inside the pool:
``masks/<concept>/<image path relative to the pool, suffix .png>``, nonzero = concept. The world writes them;
a user gives their own in the same layout. An image with no file for a concept has an empty mask for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

MASKS_FOLDER = "masks"  # inside the pool root; the pool's image listing skips it


class MaskError(ValueError):
    """A mask that cannot be used as asked; the message is one line naming the file and the fix."""


def mask_path(pool_root: str | Path, concept: str, image: str) -> Path:
    """Where the mask of ``concept`` for pool image ``image`` (POSIX, relative to ``pool_root``) lives."""
    return Path(pool_root) / MASKS_FOLDER / concept / PurePosixPath(image).with_suffix(".png")


def write_mask(pool_root: str | Path, concept: str, image: str, mask: np.ndarray) -> Path:
    """Write one boolean mask (H x W) as an 8-bit PNG (255 = concept); returns its path."""
    dest = mask_path(pool_root, concept, image)
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(dest, format="PNG", optimize=False)
    return dest


def mask_concepts(pool_root: str | Path) -> list[str]:
    """The concepts that have a mask folder in the pool, sorted (none: ``[]``). A concept outside this list
    has no masks at all (its IoU is undefined), unlike an image without a file inside a listed concept."""
    folder = Path(pool_root) / MASKS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    with Image.open(path) as image:
        return image.height, image.width


def load_masks(pool_root: str | Path, paths: Sequence[str], concepts: Sequence[str]) -> np.ndarray:
    """Boolean masks, shape (images, concepts, H, W), for pool images ``paths`` (relative to ``pool_root``).

    Each mask must have its image's size, and the images one common size. A concept with no folder, or an
    image with no file for it, gives an empty (all-False) mask. ``MaskError`` (one line) otherwise.
    """
    root = Path(pool_root)
    if not paths:
        raise MaskError(f"no images asked for: give pool image paths relative to {root}")
    height, width = _image_size(root / paths[0])
    out = np.zeros((len(paths), len(concepts), height, width), dtype=bool)
    for i, image in enumerate(paths):
        size = _image_size(root / image)
        if size != (height, width):
            raise MaskError(f"image {image} is {size[0]}x{size[1]} but {paths[0]} is {height}x{width}: load the "
                            "masks of images of one size at a time")
        for j, concept in enumerate(concepts):
            file = mask_path(root, concept, image)
            if not file.is_file():
                continue
            with Image.open(file) as mask:
                pixels = np.asarray(mask.convert("L"))
            if pixels.shape != (height, width):
                raise MaskError(f"mask {file} is {pixels.shape[0]}x{pixels.shape[1]} but its image {image} is "
                                f"{height}x{width}: write each mask at its image's size")
            out[i, j] = pixels > 0
    return out
