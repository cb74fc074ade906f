"""The image pool: every image file under a folder (recursive), read one by one, corrupt files skipped."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def list_images(root: str | Path) -> list[str]:
    """POSIX paths, relative to ``root``, of every image file below it, sorted (hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image pool folder not found: {root} (give an existing folder of images)")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(Path(dirpath, name).relative_to(root).as_posix())
    if not paths:
        raise ValueError(
            f"image pool {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
            "point the pool at a folder of images"
        )
    return sorted(paths)


def pool_fingerprint(root: str | Path, paths: Sequence[str], *, with_mtime: bool = False) -> str:
    """sha256 (16 hex) over each image's relative path and byte size: cheap for 50,000 files, stable
    across copies. ``with_mtime``: the modification time too (a cache key that notices an edited file)."""
    digest = hashlib.sha256()
    root = Path(root)
    for rel in paths:
        st = (root / rel).stat()
        digest.update(f"{rel}|{st.st_size}{f'|{st.st_mtime_ns}' if with_mtime else ''}\n".encode())
    return digest.hexdigest()[:16]


class PoolImages(Dataset):
    """``(index, tensor)`` per image; ``(index, None)`` for a file that cannot be decoded."""

    def __init__(self, root: str | Path, paths: Sequence[str], transform: Callable[[Image.Image], Any]):
        self.root = Path(root)
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        try:
            with Image.open(self.root / self.paths[index]) as image:
                return index, self.transform(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            log.debug("unreadable image %s: %s", self.paths[index], err)
            return index, None


def collate_readable(batch: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """Stack the readable images of a batch; return (their indices, images, unreadable indices)."""
    good = [(i, x) for i, x in batch if x is not None]
    bad = [i for i, x in batch if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad
