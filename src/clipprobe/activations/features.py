"""Feature matrices as the cache holds them: float32 pooled vectors and full maps as bfloat16 bit patterns
stored against a float32 offset."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)




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


