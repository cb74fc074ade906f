"""CKA over a sweep's checkpoints: every pair of probed modules at each epoch and, per module, every pair of epochs.

Read from the sweep's pooled activations (the activation cache: no forward pass when the sweep kept them) on
the sweep's images, the same images in the same order for every module and epoch. No MLflow here: the probe
step logs the table (``tracking.similarity``) and the report draws it (``report.similarity``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from clipprobe.similarity.cka import cka_matrix
from clipprobe.sweep.plan import CheckpointRef, Sweep

log = logging.getLogger(__name__)

CKA_COLUMNS = ("comparison", "epoch_a", "epoch_b", "module_a", "module_b", "module_index_a", "module_index_b",
               "cka_debiased", "cka_biased", "n_images")
COMPARISONS = ("modules", "epochs")  # module x module at one epoch; epoch x epoch of one module
DEFAULT_MAX_IMAGES = 1000  # images CKA reads at most (a seeded sample beyond): memory R n^2 float64 per comparison


def cka_table(features: Mapping[int, Mapping[str, np.ndarray]], module_index: Mapping[str, int]) -> pd.DataFrame:
    """The long CKA table (``CKA_COLUMNS``) of pooled features by epoch, then module (the same images in each).

    ``comparison`` = ``modules``: every ordered pair of modules at one epoch (``epoch_a`` = ``epoch_b``);
    ``epochs``: every ordered pair of epochs of one module (``module_a`` = ``module_b``). Both CKAs are linear,
    ``cka_debiased`` the one to read at small n (``similarity.cka``)."""
    epochs = sorted(features)
    modules = sorted({m for e in epochs for m in features[e]}, key=lambda m: (module_index[m], m))
    rows: list[tuple] = []

    def add(kind: str, keys: Sequence[tuple[int, str]], reps: Sequence[np.ndarray]) -> None:
        if not reps:
            return
        debiased, biased = cka_matrix(reps, debiased=True), cka_matrix(reps, debiased=False)
        for i, (ea, ma) in enumerate(keys):
            for j, (eb, mb) in enumerate(keys):
                rows.append((kind, ea, eb, ma, mb, module_index[ma], module_index[mb], float(debiased[i, j]),
                             float(biased[i, j]), int(reps[0].shape[0])))

    for e in epochs:
        keys = [(e, m) for m in modules if m in features[e]]
        add("modules", keys, [features[e][m] for _, m in keys])
    for m in modules:
        keys = [(e, m) for e in epochs if m in features[e]]
        add("epochs", keys, [features[e][m] for e, _ in keys])
    return pd.DataFrame(rows, columns=list(CKA_COLUMNS))


def image_sample(n_images: int, max_images: int = DEFAULT_MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """Rows of the sweep's images CKA reads: all of them, or a seeded sample of ``max_images`` (sorted)."""
    if max_images < 4:
        raise ValueError(f"max_images={max_images}: debiased CKA needs at least 4 images")
    if n_images <= max_images:
        return np.arange(n_images)
    return np.sort(np.random.default_rng([seed, 23]).choice(n_images, max_images, replace=False))


def sweep_cka(sweep: Sweep, checkpoints: Sequence[CheckpointRef], *, max_images: int = DEFAULT_MAX_IMAGES,
              progress: bool = False) -> pd.DataFrame:
    """CKA between the sweep's modules and epochs (``cka_table``) from each checkpoint's pooled activations.

    Each checkpoint's activations come from the sweep's cache (computed, as the sweep would, when it no longer
    holds them) and are released afterwards as the sweep does. Holds every epoch's pooled vectors of the read
    images in memory: epochs x images x (sum of the modules' channels) float32."""
    rows = image_sample(len(sweep.paths), max_images, sweep.plan.seed)
    features: dict[int, dict[str, np.ndarray]] = {}
    module_index: dict[str, int] = {}
    for ref in tqdm(sorted(checkpoints, key=lambda c: c.epoch), desc="CKA: pooled activations", unit="checkpoint",
                    disable=not progress):
        backbone = ref.backbone()
        modules = sweep.modules_of(backbone)
        order = list(dict.fromkeys([*(backbone.probe_modules or {}), *modules]))
        acts = sweep.activations(backbone, modules, maps=False)
        del backbone
        try:
            features[int(ref.epoch)] = {m: np.asarray(acts.gap(path))[rows].astype(np.float32, copy=True)
                                        for m, path in modules.items()}
        finally:
            sweep.cache.release(acts, delete=not sweep.keep_cache)
        for m in modules:
            module_index.setdefault(m, order.index(m))
    log.info("CKA over %d epochs x %d modules on %d images", len(features), len(module_index), len(rows))
    return cka_table(features, module_index)
