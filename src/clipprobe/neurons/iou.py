"""NetDissect's IoU (Bau et al., CVPR 2017) of every unit against pixel masks: per-unit top-0.5% threshold over all
images and positions, maps upsampled bilinearly to the mask size, intersection and union summed over images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TOP_QUANTILE = 0.005  # T_k: the activation exceeded by 0.5% of unit k's values over all images and positions


def unit_thresholds(maps: np.ndarray, quantile: float = TOP_QUANTILE) -> np.ndarray:
    """T_k per unit of ``maps`` ``(images, units, h, w)``: the (1 - quantile) quantile over images and positions."""
    m = torch.as_tensor(np.asarray(maps, np.float32))
    flat = m.permute(1, 0, 2, 3).reshape(m.shape[1], -1)
    return torch.quantile(flat.double(), 1 - quantile, dim=1).numpy()


def unit_iou(maps: np.ndarray, masks: np.ndarray, *, quantile: float = TOP_QUANTILE,
             thresholds: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
    """IoU ``(units, concepts)`` of ``maps`` ``(images, units, h, w)`` against boolean ``masks``
    ``(images, concepts, H, W)``: sum_i |M_k,i & L_c,i| / sum_i |M_k,i | L_c,i| with M_k,i = upsample(A_k,i) > T_k.

    Upsampling is bilinear (``align_corners=False``) to the masks' (H, W). An image-level label is a
    full-image mask. A concept whose masks and unit whose top region are both empty gets 0."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 4 or masks.ndim != 4 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape}: expected (images, units, h, w) and "
                         "(images, concepts, H, W) over the same images")
    T = torch.as_tensor(unit_thresholds(maps, quantile) if thresholds is None else np.asarray(thresholds),
                        dtype=torch.float32)
    n, units = maps.shape[:2]
    concepts, H, W = masks.shape[1:]
    inter = torch.zeros(units, concepts, dtype=torch.float64)
    unit_area = torch.zeros(units, dtype=torch.float64)
    mask_area = torch.zeros(concepts, dtype=torch.float64)
    for i0 in range(0, n, batch):
        a = torch.as_tensor(np.asarray(maps[i0:i0 + batch], np.float32))
        up = F.interpolate(a, size=(H, W), mode="bilinear", align_corners=False) > T[None, :, None, None]
        L = torch.as_tensor(masks[i0:i0 + batch]).bool()
        Mu = up.permute(1, 0, 2, 3).reshape(units, -1).float()  # (units, b*H*W)
        Lc = L.permute(1, 0, 2, 3).reshape(concepts, -1).float()
        inter += (Mu @ Lc.T).double()
        unit_area += Mu.sum(1).double()
        mask_area += Lc.sum(1).double()
    union = unit_area[:, None] + mask_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros(())).numpy()
