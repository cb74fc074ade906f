"""Evaluate probes per concept: accuracy with intervals over re-splits, baselines, shuffled-label controls.

``evaluate_concepts`` fits every concept of one module at once: concepts x (stored split + R stratified
re-splits) x {real, control} probes in one ``fit_many`` call.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from clipprobe.probes.batched import fit_many
from clipprobe.probes.kinds import ProbeKind


@dataclass(frozen=True)
class ConceptTask:
    """One concept's images as rows of X, their 0/1 labels and the stored part (True = train)."""

    concept: str
    rows: np.ndarray  # (n,) int rows of X
    labels: np.ndarray  # (n,) 0/1
    train: np.ndarray  # (n,) bool

    def __post_init__(self) -> None:
        n = len(self.rows)
        if len(self.labels) != n or len(self.train) != n:
            raise ValueError(f"concept {self.concept!r}: rows, labels and train have lengths "
                             f"{n}, {len(self.labels)}, {len(self.train)}: expected equal lengths")
        if len(np.unique(self.rows)) != n:
            raise ValueError(f"concept {self.concept!r}: an image appears twice in rows: expected unique rows")
        for part, name in ((self.train, "train"), (~np.asarray(self.train, bool), "test")):
            if len(np.unique(np.asarray(self.labels)[np.asarray(part, bool)])) != 2:
                raise ValueError(f"concept {self.concept!r}: the {name} part lacks a class: "
                                 "expected positives and negatives in both parts")


@dataclass(frozen=True)
class ProbeResult:
    """The metrics of one (concept, module, probe kind) fit; names as in docs/architecture.md."""

    test_acc: float
    test_acc_ci_low: float
    test_acc_ci_high: float
    test_balanced_acc: float
    test_auroc: float
    train_acc: float
    test_majority_acc: float
    test_control_acc: float
    test_selectivity: float
    n_train: int
    n_test: int
    n_test_pos: int
    repeats: int
    n_dropped_features: int

    def to_dict(self) -> dict[str, float | int]:
        """Metric name -> value, ready for a results row or ``log_batch``."""
        return asdict(self)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean of the per-class recalls (classes present in y)."""
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when y holds a single class."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy on the test part of always answering the training part's majority class."""
    y_train = np.asarray(y_train)
    majority = int(np.mean(y_train) > 0.5)
    return accuracy(np.full(len(y_test), majority), y_test)


def wilson_interval(correct: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n``."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (at least two), clipped to [0, 1]."""
    v = np.asarray(values, float)
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(max(0.0, v.mean() - half)), float(min(1.0, v.mean() + half))


def _rng(seed: int, concept: str, split: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(concept.encode()), split, purpose])


def resplit(task: ConceptTask, split: int, seed: int) -> np.ndarray:
    """Train mask of re-split ``split`` (0 = the stored part): stratified, same class counts as stored."""
    train = np.asarray(task.train, bool)
    if split == 0:
        return train
    rng = _rng(seed, task.concept, split, 0)
    labels = np.asarray(task.labels)
    new = np.zeros_like(train)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        new[rng.choice(idx, int((train & (labels == c)).sum()), replace=False)] = True
    return new


def control_labels(task: ConceptTask, train: np.ndarray, split: int, seed: int) -> np.ndarray:
    """Labels permuted within the training part and, independently, within the test part."""
    rng = _rng(seed, task.concept, split, 1)
    labels = np.asarray(task.labels).copy()
    for part in (train, ~train):
        idx = np.flatnonzero(part)
        labels[idx] = labels[rng.permutation(idx)]
    return labels


def evaluate_concepts(
    X: np.ndarray | torch.Tensor,
    tasks: Sequence[ConceptTask],
    kind: str | ProbeKind,
    params: Mapping[str, Any] | None = None,
    *,
    repeats: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    confidence: float = 0.95,
    form: str = "auto",
) -> list[ProbeResult]:
    """Fit and score every concept of one module at once; one ``ProbeResult`` per task, in order.

    Metrics are means over the stored split and ``repeats`` stratified re-splits; the interval is a
    Student-t interval over those 1 + R test accuracies, or a Wilson interval when ``repeats`` is 0.
    """
    if repeats < 0:
        raise ValueError(f"repeats={repeats} is negative: expected 0 (stored split only) or more")
    N = X.shape[0]
    splits = 1 + repeats
    B = len(tasks) * splits * 2
    Y = np.zeros((B, N), np.int64)
    train = np.zeros((B, N), bool)
    evaluate = np.zeros((B, N), bool)
    parts = []
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        if rows.min() < 0 or rows.max() >= N:
            raise ValueError(f"concept {task.concept!r}: rows reach {rows.max()}: X has only {N} rows")
        for s in range(splits):
            tr = resplit(task, s, seed)
            parts.append(tr)
            for c, labels in enumerate((np.asarray(task.labels), control_labels(task, tr, s, seed))):
                b = (t * splits + s) * 2 + c
                Y[b, rows] = labels
                train[b, rows[tr]] = True
                evaluate[b, rows] = True
    fit = fit_many(kind, X, Y, train, evaluate, params, device=device, form=form)
    scores = fit.scores.double().numpy()
    results = []
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        per_split: dict[str, list[float]] = {k: [] for k in ("acc", "bal", "auc", "train", "major", "control")}
        for s in range(splits):
            tr = parts[t * splits + s]
            te = ~tr
            b = (t * splits + s) * 2
            y = Y[b, rows]
            score, score_c = scores[b, rows], scores[b + 1, rows]
            pred, pred_c = (score > 0).astype(int), (score_c > 0).astype(int)
            per_split["acc"].append(accuracy(pred[te], y[te]))
            per_split["bal"].append(balanced_accuracy(pred[te], y[te]))
            per_split["auc"].append(auroc(score[te], y[te]))
            per_split["train"].append(accuracy(pred[tr], y[tr]))
            per_split["major"].append(majority_accuracy(y[tr], y[te]))
            per_split["control"].append(accuracy(pred_c[te], Y[b + 1, rows][te]))
        stored = np.asarray(task.train, bool)
        n_test = int((~stored).sum())
        acc = float(np.mean(per_split["acc"]))
        if repeats == 0:
            low, high = wilson_interval(acc * n_test, n_test, confidence)
        else:
            low, high = t_interval(per_split["acc"], confidence)
        control = float(np.mean(per_split["control"]))
        results.append(ProbeResult(
            test_acc=acc, test_acc_ci_low=low, test_acc_ci_high=high,
            test_balanced_acc=float(np.mean(per_split["bal"])),
            test_auroc=float(np.nanmean(per_split["auc"])) if not np.all(np.isnan(per_split["auc"])) else float("nan"),
            train_acc=float(np.mean(per_split["train"])),
            test_majority_acc=float(np.mean(per_split["major"])),
            test_control_acc=control, test_selectivity=acc - control,
            n_train=int(stored.sum()), n_test=n_test,
            n_test_pos=int(np.asarray(task.labels)[~stored].sum()), repeats=repeats,
            n_dropped_features=int(fit.n_dropped_features[t * splits * 2]),
        ))
    return results


def evaluate_concept(X: np.ndarray | torch.Tensor, task: ConceptTask, kind: str | ProbeKind,
                     params: Mapping[str, Any] | None = None, **options: Any) -> ProbeResult:
    """``evaluate_concepts`` for a single concept."""
    return evaluate_concepts(X, [task], kind, params, **options)[0]
