"""Synthetic concept tasks for the tune tests: a signal in a few feature directions, a stored 70/30 split."""

from __future__ import annotations

import numpy as np

from clipprobe.probes.evaluation import ConceptTask
from clipprobe.tuning.studies import TuneTask, training_part


def concept_data(seed: int = 0, n_pos: int = 60, n_neg: int = 120, d: int = 12,
                 signal: float = 1.2) -> tuple[np.ndarray, ConceptTask]:
    """X (n, d) and a ConceptTask over all its rows: positives shifted along the first two features."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.int64)
    X = rng.normal(size=(len(y), d)).astype(np.float32)
    X[:, :2] += signal * y[:, None]
    train = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        train[idx[: int(round(0.7 * len(idx)))]] = True
    return X, ConceptTask(f"concept{seed}", np.arange(len(y)), y, train)


def tune_tasks(n: int = 2) -> list[TuneTask]:
    out = []
    for seed in range(n):
        X, task = concept_data(seed)
        out.append(training_part(X, task))
    return out
