"""Synthetic concept tasks for the tune tests (a signal in a few feature directions, a stored 70/30 split), a
hopeless default learning rate to tune away, and a tune run's trial runs read back."""

from __future__ import annotations

import numpy as np

from clipprobe.probes.evaluation import ConceptTask
from clipprobe.probes.kinds import ProbeKind, SearchDim
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


# An MLP whose default learning rate is hopeless: 100 steps at lr=1e-6 leave it at its initial weights.
BAD_LR = ProbeKind("non_linear_gap", "mlp", "gap", {"lr": 1e-6, "steps": 100, "hidden": 16},
                   (SearchDim("lr", "float", 1e-3, 1.0, log=True),))


def trial_runs(parent: str) -> list:
    """The trial runs nested under the tune run ``parent``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`clipprobe.level` = 'trial'")
