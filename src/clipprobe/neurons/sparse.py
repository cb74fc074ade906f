"""Sparse probes (Gurnee et al., 2023): the project's linear probe on a concept's k top-ranked units, for k in
SPARSE_KS and all; every k of every concept of a module fitted in one batched pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """For each task, the linear probe (``SPARSE_PROBE``'s objective: train-standardised units, L2 logistic,
    ``weight_decay`` on the mean loss) on its k top-ranked units, k in ``ks`` below the unit count, and on all.

    Units are ranked on the stored training part only (``rank_units``). The k < all probes of every task
    share one batched Newton solve (``probes.solvers.fit_logistic``, columns zero-padded to the largest k,
    which the L2 term keeps at zero weight); k = all is one ``fit_many`` over the tasks, the same fit as the
    sweep's stored-split probe. Test accuracy on the stored test part with its exact (Clopper-Pearson)
    interval, as the full probe reports it. Results by task, k ascending."""
    hp = probe_kind(SPARSE_PROBE).params(params)
    d = X.shape[1]
    small = sorted({int(k) for k in ks if 0 < int(k) < d})
    rtol = drop_rtol_for(getattr(X, "computed_in", "fp32"), hp["drop_rtol"])
    ranked: list[np.ndarray] = []
    blocks: list[tuple[int, int]] = []  # (task, k) per probe of the batched solve
    n_max = max(len(t.rows) for t in tasks)
    r = max(small) if small else 0
    B = len(tasks) * len(small)
    F = torch.zeros(B, n_max, max(r, 1), dtype=torch.float64)
    y = torch.zeros(B, n_max, dtype=torch.float64)
    w = torch.zeros(B, n_max, dtype=torch.float64)
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        train = np.asarray(task.train, bool)
        x = np.asarray(X[rows], np.float64)
        order = rank_units(x[train], np.asarray(task.labels)[train])
        ranked.append(order)
        if not small:
            continue
        top = torch.as_tensor(x[:, order[:r]])
        mean, std, keep = feature_stats(top[torch.as_tensor(train)], rtol)
        z = standardise(top, mean, std, keep)
        for k in small:
            b = len(blocks)
            F[b, : len(rows), :k] = z[:, :k]
            y[b, : len(rows)] = torch.as_tensor(np.asarray(task.labels), dtype=torch.float64)
            w[b, : len(rows)] = torch.as_tensor(train, dtype=torch.float64)
            blocks.append((t, k))
    logits = None
    if blocks:
        beta, bias = fit_logistic(F, y, w, hp["weight_decay"], hp["max_iter"], hp["tol"])
        logits = (torch.einsum("bnr,br->bn", F, beta) + bias[:, None]).numpy()
    # k = all: the sweep's own probe on every unit, one pass over the tasks
    N = X.shape[0]
    Y = np.zeros((len(tasks), N), np.int64)
    tr = np.zeros((len(tasks), N), bool)
    ev = np.zeros((len(tasks), N), bool)
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        Y[t, rows] = task.labels
        tr[t, rows[np.asarray(task.train, bool)]] = True
        ev[t, rows] = True
    full = fit_many(SPARSE_PROBE, X, Y, tr, ev, hp, device=device).scores.double().numpy()

    out: list[SparseResult] = []
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        test = ~np.asarray(task.train, bool)
        labels = np.asarray(task.labels)
        per_k = [(k, logits[b, : len(rows)]) for b, (tb, k) in enumerate(blocks) if tb == t]
        per_k.append((d, full[t, rows]))
        for k, score in per_k:
            correct = int(((score[test] > 0).astype(int) == labels[test]).sum())
            n_test = int(test.sum())
            low, high = exact_interval(correct, n_test, confidence)
            out.append(SparseResult(task.concept, k, tuple(int(u) for u in ranked[t][:k]), correct / n_test,
                                    low, high, n_test))
    return out


def smallest_k(results: Sequence[SparseResult]) -> int | None:
    """The smallest k whose test accuracy reaches the full probe's (k = all) exact interval (>= its low end);
    one concept's results."""
    if not results:
        return None
    full = max(results, key=lambda s: s.k)
    return min(s.k for s in results if s.test_acc >= full.test_acc_ci_low)
