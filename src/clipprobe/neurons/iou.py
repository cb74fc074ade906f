"""NetDissect's IoU (Bau et al., CVPR 2017) of every unit against pixel masks: per-unit top-0.5% threshold over all
images and positions, maps upsampled bilinearly to the mask size, intersection and union summed over images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DENSE_SHARE = 0.2  # a batch where more of its (image, unit) maps reach T_k is upsampled whole
TOP_QUANTILE = 0.005  # T_k: the activation exceeded by 0.5% of unit k's values over all images and positions


def _batches(maps: Any, batch: int) -> Iterator[torch.Tensor]:
    """``maps`` ``(images, units, h, w)`` (an array, or a ``MapReader``) in float32 batches of images."""
    for i0 in range(0, maps.shape[0], batch):
        yield torch.as_tensor(np.asarray(maps[i0:i0 + batch], np.float32))


def unit_thresholds(maps: Any, quantile: float = TOP_QUANTILE, *, batch: int = 64) -> np.ndarray:
    """T_k per unit of ``maps`` ``(images, units, h, w)``: the value exceeded by the top ``round(quantile * n)``
    (at least 1) of the unit's n = images x h x w values, kept as a running top-k over image batches (so no
    unit's values are ever all in memory)."""
    n_images, units = maps.shape[:2]
    n = n_images * int(np.prod(maps.shape[2:]))
    k = max(1, int(round(quantile * n))) + 1  # T = the (k+1)-th largest: exactly k values lie above it
    top = torch.full((units, 0), float("-inf"))
    for block in _batches(maps, batch):
        values = torch.cat([top, block.permute(1, 0, 2, 3).reshape(units, -1)], 1)
        top = torch.topk(values, min(k, values.shape[1]), dim=1).values
    return top[:, -1].double().numpy()


class MapReader:
    """A module's cached maps ``(images, channels*h*w)`` (``Bf16Matrix``) seen as ``(images, channels, h, w)``,
    read a slice of images at a time."""

    def __init__(self, flat: Any, shape: tuple[int, ...]) -> None:
        self.flat, self.shape = flat, (flat.shape[0], *shape)

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.asarray(self.flat[key], np.float32).reshape(-1, *self.shape[1:])


def unit_iou(maps: Any, masks: np.ndarray, *, quantile: float = TOP_QUANTILE,
             thresholds: np.ndarray | None = None, batch: int = 16) -> np.ndarray:
    """IoU ``(units, concepts)`` of ``maps`` ``(images, units, h, w)`` (an array or a ``MapReader``) against boolean
    ``masks`` ``(images, concepts, H, W)``: sum_i |M_k,i & L_c,i| / sum_i |M_k,i | L_c,i| with
    M_k,i = upsample(A_k,i) > T_k.

    Upsampling is bilinear (``align_corners=False``) to the masks' (H, W). An image-level label is a
    full-image mask. A concept whose masks and unit whose top region are both empty gets 0. Only the maps whose
    peak reaches T_k are upsampled (the others cannot pass it), which gives the dense computation's numbers
    (tests/test_neurons_scores.py; up to pixels interpolated to T itself, which float32 rounding puts either side
    of it in either form) at a small share of its cost: by construction about 0.5% of a unit's values lie
    above T_k."""
    masks = np.asarray(masks)
    if len(maps.shape) != 4 or masks.ndim != 4 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {masks.shape}: expected (images, units, h, w) and "
                         "(images, concepts, H, W) over the same images")
    T = torch.as_tensor(unit_thresholds(maps, quantile) if thresholds is None else np.asarray(thresholds),
                        dtype=torch.float32)
    units = maps.shape[1]
    concepts, H, W = masks.shape[1:]
    inter = torch.zeros(units, concepts, dtype=torch.float64)
    unit_area = torch.zeros(units, dtype=torch.float64)
    mask_area = torch.zeros(concepts, dtype=torch.float64)
    for b, a in enumerate(_batches(maps, batch)):
        L = torch.as_tensor(masks[b * batch:b * batch + len(a)]).bool().reshape(len(a), concepts, -1).float()
        mask_area += L.sum((0, 2)).double()
        # Only maps that reach T_k can have an upsampled pixel above it: bilinear values are convex combinations
        # of the map's own, so the others add nothing (the margin covers float32 rounding of the weights). Deep
        # modules (small maps, many units) have few such maps; where most reach it, all are upsampled at once.
        reach = a.amax((2, 3)) >= T - (T.abs() * 1e-5 + 1e-30)
        if reach.float().mean() > DENSE_SHARE:
            up = F.interpolate(a, size=(H, W), mode="bilinear", align_corners=False) > T[None, :, None, None]
            Mu = up.permute(1, 0, 2, 3).reshape(units, -1).float()  # (units, b*H*W)
            inter += (Mu @ L.permute(1, 0, 2).reshape(concepts, -1).T).double()
            unit_area += Mu.sum(1).double()
            continue
        for i, row in enumerate(reach):
            k = torch.nonzero(row).flatten()
            if not len(k):
                continue
            up = F.interpolate(a[i, k][:, None], size=(H, W), mode="bilinear", align_corners=False)
            Mu = (up[:, 0] > T[k][:, None, None]).reshape(len(k), -1).float()  # (units reaching, H*W)
            inter.index_add_(0, k, (Mu @ L[i].T).double())
            unit_area.index_add_(0, k, Mu.sum(1).double())
    union = unit_area[:, None] + mask_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros((), dtype=torch.float64)).numpy()
