"""What a unit card shows beside its scores: the unit's top-activating pool images, as a table the neurons step
writes (``neurons/top_images.parquet``) and the report turns into a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TOP_IMAGES_ARTIFACT = "neurons/top_images.parquet"
TOP_IMAGE_COLUMNS = ("epoch", "module", "unit", "rank", "path", "activation")
TOP_K = 20  # images a card shows (a contact sheet of 4 rows of 5)


def top_activating(pooled: np.ndarray, paths: Sequence[str], *, units: Sequence[int] | None = None,
                   k: int = TOP_K, epoch: int = 0, module: str = "") -> pd.DataFrame:
    """The ``k`` images of highest pooled activation per unit (``TOP_IMAGE_COLUMNS``, rank 1 = highest; ties by
    image order). ``pooled``: ``(images, units)`` over ``paths`` (relative to the pool); ``units``: which (all)."""
    pooled = np.asarray(pooled)
    if pooled.ndim != 2 or pooled.shape[0] != len(paths):
        raise ValueError(f"pooled activations of shape {pooled.shape}: expected (images, units) with one row per path "
                         f"({len(paths)} paths)")
    chosen = np.arange(pooled.shape[1]) if units is None else np.asarray(units, dtype=int)
    k = min(k, pooled.shape[0])
    values = pooled[:, chosen]
    order = np.argsort(-values, axis=0, kind="stable")[:k]  # (k, units)
    path_array = np.asarray(paths, dtype=object)
    return pd.DataFrame({
        "epoch": np.full(k * len(chosen), epoch, dtype=np.int32),
        "module": module,
        "unit": np.repeat(chosen, k).astype(np.int32),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(chosen)),
        "path": path_array[order.T.ravel()],
        "activation": np.take_along_axis(values, order, axis=0).T.ravel().astype(np.float32),
    })
