"""Sparse probes (Gurnee et al., 2023): the project's linear probe on a concept's k top-ranked units, for k in
SPARSE_KS and all; every k of every concept of a module fitted in one batched pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from clipprobe.neurons.schema import SPARSE_KS
from clipprobe.probes.batched import fit_many
from clipprobe.probes.design import feature_stats, standardise
from clipprobe.probes.evaluation import ConceptTask, exact_interval
from clipprobe.probes.kinds import drop_rtol_for, probe_kind
from clipprobe.probes.solvers import fit_logistic

SPARSE_PROBE = "linear_gap"  # the probe kind fitted on the chosen units (k = all is the sweep's own probe)
STD_FLOOR = 1e-3  # Gurnee et al.: x / (10 * max(std, 1e-3)) before the mean difference


@lru_cache(maxsize=4096)
def _interval(correct: int, n: int, confidence: float) -> tuple[float, float]:
    return exact_interval(correct, n, confidence)  # a root search each: the 7 k x concepts x modules share few (correct, n)


@dataclass(frozen=True)
class SparseResult:
    """One concept's probe on its k top-ranked units (k = the module's unit count for "all")."""

    concept: str
    k: int
    units: tuple[int, ...]
    test_acc: float
    test_acc_ci_low: float
    test_acc_ci_high: float
    n_test: int


def rank_units(x_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Unit indices by Gurnee et al.'s mean difference, largest first: |mean_pos - mean_neg| of
    x / (10 * max(std, 1e-3)), std over the given (training) rows; ties keep unit order."""
    x = np.asarray(x_train, np.float64)
    y = np.asarray(y_train).astype(bool)
    z = x / (10 * np.maximum(x.std(0), STD_FLOOR))
    score = np.abs(z[y].mean(0) - z[~y].mean(0))
    return np.argsort(-score, kind="stable")


def sparse_probes(X: np.ndarray, tasks: Sequence[ConceptTask], *, ks: Sequence[int] = SPARSE_KS,
                  params: Mapping[str, Any] | None = None, confidence: float = 0.95,
                  device: str | torch.device = "cpu") -> list[SparseResult]:
    """``sparse_probes_of_modules`` for one module's features ``X`` ``(images, units)``."""
    return sparse_probes_of_modules({"": X}, tasks, ks=ks, params=params, confidence=confidence, device=device)[""]


def sparse_probes_of_modules(features: Mapping[str, np.ndarray], tasks: Sequence[ConceptTask], *,
                             ks: Sequence[int] = SPARSE_KS, params: Mapping[str, Any] | None = None,
                             confidence: float = 0.95, device: str | torch.device = "cpu",
                             full: Mapping[tuple[str, str], tuple[int, int]] | None = None,
                             ) -> dict[str, list[SparseResult]]:
    """For each module's features ``(images, units)`` and each task, the linear probe (``SPARSE_PROBE``'s
    objective: train-standardised units, L2 logistic, ``weight_decay`` on the mean loss) on its k top-ranked
    units, k in ``ks`` below the unit count, and on all units.

    Units are ranked on the stored training part only (``rank_units``). The probes of one k share one batched
    Newton solve over every module and task (``probes.solvers.fit_logistic``); k = all is one ``fit_many`` per
    module over the tasks, the same fit as the sweep's stored-split probe, unless ``full`` already holds its
    (correct, n_test) per (module, concept) (the sweep's ``linear_gap`` result with the same parameters).
    Test accuracy on the stored test part with its exact (Clopper-Pearson) interval, as the full probe reports
    it. Results per module by task, k ascending."""
    hp = probe_kind(SPARSE_PROBE).params(params)
    n_max = max(len(t.rows) for t in tasks)
    ranked: dict[tuple[str, int], np.ndarray] = {}
    standardised: dict[tuple[str, int], torch.Tensor] = {}  # the top max(k) units, train-standardised
    for module, X in features.items():
        rtol = drop_rtol_for(getattr(X, "computed_in", "fp32"), hp["drop_rtol"])
        top_k = max((int(k) for k in ks if 0 < int(k) < X.shape[1]), default=0)
        for t, task in enumerate(tasks):
            train = np.asarray(task.train, bool)
            x = np.asarray(X[np.asarray(task.rows)], np.float64)
            order = ranked[(module, t)] = rank_units(x[train], np.asarray(task.labels)[train])
            if top_k:
                top = torch.as_tensor(x[:, order[:top_k]])
                standardised[(module, t)] = standardise(top, *feature_stats(top[torch.from_numpy(train.copy())], rtol))
    correct: dict[tuple[str, int, int], tuple[int, int]] = {}  # (module, task, k) -> (correct, n_test)
    for k in sorted({int(k) for k in ks if int(k) > 0}):
        blocks = [(m, t) for m, X in features.items() if k < X.shape[1] for t in range(len(tasks))]
        if not blocks:
            continue
        F = torch.zeros(len(blocks), n_max, k, dtype=torch.float64)
        y = torch.zeros(len(blocks), n_max, dtype=torch.float64)
        w = torch.zeros(len(blocks), n_max, dtype=torch.float64)
        for b, (m, t) in enumerate(blocks):
            n = len(tasks[t].rows)
            F[b, :n] = standardised[(m, t)][:, :k]
            y[b, :n] = torch.as_tensor(np.array(tasks[t].labels), dtype=torch.float64)
            w[b, :n] = torch.as_tensor(np.array(tasks[t].train, bool), dtype=torch.float64)
        beta, bias = fit_logistic(F, y, w, hp["weight_decay"], hp["max_iter"], hp["tol"])
        pred = ((torch.einsum("bnr,br->bn", F, beta) + bias[:, None]) > 0).numpy()
        for b, (m, t) in enumerate(blocks):
            correct[(m, t, k)] = _count(pred[b, : len(tasks[t].rows)], tasks[t])
    for module, X in features.items():
        d = X.shape[1]
        if full is not None and all((module, task.concept) in full for task in tasks):
            for t, task in enumerate(tasks):
                correct[(module, t, d)] = full[(module, task.concept)]
            continue
        N = X.shape[0]
        Y = np.zeros((len(tasks), N), np.int64)
        tr = np.zeros((len(tasks), N), bool)
        ev = np.zeros((len(tasks), N), bool)
        for t, task in enumerate(tasks):
            rows = np.asarray(task.rows)
            Y[t, rows] = task.labels
            tr[t, rows[np.asarray(task.train, bool)]] = True
            ev[t, rows] = True
        scores = fit_many(SPARSE_PROBE, X, Y, tr, ev, hp, device=device).scores.numpy()
        for t, task in enumerate(tasks):
            correct[(module, t, d)] = _count(scores[t, np.asarray(task.rows)] > 0, task)

    out: dict[str, list[SparseResult]] = {}
    for module, X in features.items():
        results = out[module] = []
        for t, task in enumerate(tasks):
            for k in sorted({int(k) for k in ks if 0 < int(k) < X.shape[1]} | {X.shape[1]}):
                c, n_test = correct[(module, t, k)]
                low, high = _interval(c, n_test, confidence)
                results.append(SparseResult(task.concept, k, tuple(int(u) for u in ranked[(module, t)][:k]),
                                            c / n_test, low, high, n_test))
    return out


def _count(pred: np.ndarray, task: ConceptTask) -> tuple[int, int]:
    """(correct, n_test) of 0/1 predictions on a task's rows, over its stored test part."""
    test = ~np.asarray(task.train, bool)
    return int((np.asarray(pred).astype(int)[test] == np.asarray(task.labels)[test]).sum()), int(test.sum())


def smallest_k(results: Sequence[SparseResult]) -> int | None:
    """The smallest k whose test accuracy reaches the full probe's (k = all) exact interval (>= its low end);
    one concept's results."""
    if not results:
        return None
    full = max(results, key=lambda s: s.k)
    return min(s.k for s in results if s.test_acc >= full.test_acc_ci_low)
