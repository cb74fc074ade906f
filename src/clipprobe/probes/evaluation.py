"""Evaluate probes per concept: stored-split accuracy with an exact interval, re-split spread, baselines, controls.

``evaluate_concepts`` fits every concept of one module in one ``fit_many`` call: per concept the
stored split's real probe, ``repeats`` stratified re-splits (real probe only), ``permutations``
permutation-baseline probes and, where the images carry a class, one control-task probe.

What each number measures (see also docs/statistics.md):

- ``test_acc`` is the accuracy on the stored split's test part, with an exact (Clopper-Pearson)
  binomial interval ``test_acc_ci_low/high`` over its test images.
- ``test_acc_resplit_mean`` and ``test_acc_resplit_ci_low/high``: the mean over the stored split and
  the re-splits (J = 1 + R splits) with the Nadeau-Bengio corrected resampled t interval. The splits
  share images, so a plain t over them is too narrow; the correction multiplies the variance by
  ``1/J + n_test/n_train`` (df J - 1). NaN without re-splits.
- ``test_majority_acc``: always answering the training part's majority class. A probe whose exact
  interval includes it shows no evidence of having learnt anything.
- ``test_permutation_acc`` / ``test_permutation_p``: the permutation baseline asks "is the probe above
  chance at all?". Labels are shuffled within the training part only; the test part keeps its true
  labels, so a probe trained on shuffled labels scores what chance gives on these features. With P
  permutations the p-value is ``(1 + #{permuted acc >= real acc}) / (1 + P)``: its smallest value
  is ``1 / (1 + P)`` (0.05 at the default P = 19).
- ``test_control_acc`` / ``test_selectivity``: the control task of Hewitt and Liang (2019) asks "does
  the probe find the concept, or the class of the image?". Each image class (an ImageNet class, a
  concept-world shape) gets one random label, the same in train and test, chosen so that the share of
  positive images is as close to the concept's as the class sizes allow. A probe that only recognises classes scores high on it; a striped probe must not just
  find zebras. ``test_selectivity`` = ``test_acc - test_control_acc``; both are NaN when the images
  carry no class.
- ``class_alignment``: the share of the concept's positive images whose class is wholly positive (no
  negative image of the concept has that class). At 1 the concept is a class or a union of classes: the
  control task can then draw exactly the concept, so selectivity cannot tell concept from class and the
  report shows it as undefined; between 0 and 1 that share of the positives is class-like. NaN without classes.
- ``mdl_codelength_bits``, ``mdl_uniform_bits``, ``compression``: the online code of Voita and Titov (2020)
  on the stored training part, in bits. The training images in a seeded order, cut at doubling block
  boundaries t1 < 2 t1 < ... < n (t1 = ``mdl_first_block``, at least 8 examples); the first block is
  sent uniformly (t1 log2 K bits, K = 2), every later block with the probe trained on all blocks before it
  (-log2 p(y | x)), or uniformly where that is shorter, one bit per block saying which (our probes train
  to convergence, where Voita and Titov stop early on held-out data: a probe fitted to labels it cannot
  learn is confidently wrong on the next block, 2.4 bits a label on shuffled labels). ``compression`` =
  n log2 K / online codelength: about 1 when the labels cannot be learnt, large when a few examples
  suffice. The block probes are fitted in the same batch as the others.
- ``test_correct`` ('0'/'1' per stored test image, in the task's row order) and ``test_images`` (a
  hash of those images' ids) let two fits on the same test images be compared by a paired test.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from clipprobe.probes.batched import fit_many
from clipprobe.probes.kinds import ProbeKind

DEFAULT_PERMUTATIONS = 19  # the fewest permutations whose p-value can reach 0.05
MDL_FIRST_BLOCK = 8  # examples in the online code's first block (Voita and Titov's 0.1% is under one at n = 210)
MDL_FIRST_FRACTION = 0.001  # their first block's share of the training data, used when it exceeds MDL_FIRST_BLOCK
PREDICTION_FIELDS = ("test_correct", "test_images")  # per-image results: strings, not metrics
_CONTROL_DRAWS = 100  # redraws of the control's class order until both parts hold both labels


@dataclass(frozen=True)
class ConceptTask:
    """One concept's images as rows of X, their 0/1 labels and the stored part (True = train).

    ``classes`` (optional): one class id per row (an ImageNet class, a world shape) for the control
    task; ``images`` (optional): one id per row (e.g. the image path) so test sets can be matched
    across sweeps.
    """

    concept: str
    rows: np.ndarray  # (n,) int rows of X
    labels: np.ndarray  # (n,) 0/1
    train: np.ndarray  # (n,) bool
    classes: np.ndarray | None = None  # (n,) class id per row
    images: np.ndarray | None = None  # (n,) image id per row

    def __post_init__(self) -> None:
        n = len(self.rows)
        if len(self.labels) != n or len(self.train) != n:
            raise ValueError(f"concept {self.concept!r}: rows, labels and train have lengths "
                             f"{n}, {len(self.labels)}, {len(self.train)}: expected equal lengths")
        for name in ("classes", "images"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"concept {self.concept!r}: {name} has length {len(value)}: expected one "
                                 f"per row ({n}) or None")
        if len(np.unique(self.rows)) != n:
            raise ValueError(f"concept {self.concept!r}: an image appears twice in rows: expected unique rows")
        for part, name in ((self.train, "train"), (~np.asarray(self.train, bool), "test")):
            if len(np.unique(np.asarray(self.labels)[np.asarray(part, bool)])) != 2:
                raise ValueError(f"concept {self.concept!r}: the {name} part lacks a class: "
                                 "expected positives and negatives in both parts")


@dataclass(frozen=True)
class ProbeResult:
    """One (concept, module, probe kind) fit; names as in docs/architecture.md, meanings in the module doc."""

    test_acc: float
    test_acc_ci_low: float
    test_acc_ci_high: float
    test_balanced_acc: float
    test_auroc: float
    train_acc: float
    test_majority_acc: float
    test_acc_resplit_mean: float
    test_acc_resplit_ci_low: float
    test_acc_resplit_ci_high: float
    test_permutation_acc: float
    test_permutation_p: float
    test_control_acc: float
    test_selectivity: float
    n_train: int
    n_test: int
    n_test_pos: int
    repeats: int
    permutations: int
    n_dropped_features: int
    test_correct: str
    test_images: str
    class_alignment: float = math.nan
    mdl_codelength_bits: float = math.nan
    mdl_uniform_bits: float = math.nan
    compression: float = math.nan

    def to_dict(self) -> dict[str, float | int | str]:
        """Column name -> value for a results row (metrics and the per-image ``PREDICTION_FIELDS``)."""
        return asdict(self)

    def metrics(self) -> dict[str, float | int]:
        """The numeric columns only, ready for ``log_batch``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in PREDICTION_FIELDS}


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(accuracy_score(np.asarray(y), np.asarray(pred)))


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean of the per-class recalls (classes present in y)."""
    return float(balanced_accuracy_score(np.asarray(y), np.asarray(pred)))


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when y holds a single class."""
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(score, float)))


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy on the test part of always answering the training part's majority class (a tie answers 0)."""
    majority = int(np.mean(np.asarray(y_train)) > 0.5)
    return accuracy(np.full(len(y_test), majority), y_test)


def exact_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of the proportion ``correct / n``."""
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def corrected_resampled_t_interval(values: Sequence[float], n_train: int, n_test: int,
                                   confidence: float = 0.95) -> tuple[float, float]:
    """Nadeau-Bengio corrected resampled t interval of the mean of J split accuracies, clipped to [0, 1].

    The J splits share images, so their accuracies are correlated; the variance of the mean is taken
    as ``(1/J + n_test/n_train) * s^2`` (s^2 the sample variance over splits), with J - 1 degrees of
    freedom. NaN for fewer than two splits; zero width when all J accuracies are equal (s = 0: the t
    interval then says nothing, it is not certainty). (Neither scipy nor statsmodels has this correction; the
    t quantile is scipy's.)
    """
    v = np.asarray(values, float)
    J = len(v)
    if J < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, J - 1) * np.sqrt((1 / J + n_test / n_train) * v.var(ddof=1))
    return float(max(0.0, v.mean() - half)), float(min(1.0, v.mean() + half))


def permutation_p_value(real: float, permuted: Sequence[float]) -> float:
    """``(1 + #{permuted >= real}) / (1 + P)``; NaN without permutations.

    The formula of ``sklearn.model_selection.permutation_test_score``, which cannot be called here: it
    refits one probe per permutation, where ``evaluate_concepts`` fits them all in one batched pass.
    """
    permuted = np.asarray(permuted, float)
    if len(permuted) == 0:
        return float("nan")
    return float((1 + np.sum(permuted >= real)) / (1 + len(permuted)))


def _rng(seed: int, concept: str, split: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(concept.encode()), split, purpose])


def resplit(task: ConceptTask, split: int, seed: int) -> np.ndarray:
    """Train mask of re-split ``split`` (0 = the stored part): stratified, same class counts as stored.

    Not ``sklearn.model_selection.StratifiedShuffleSplit``: it sets each class's train count from the
    class's share of all images, so a stored part that is not exactly proportional (a user's own
    split, rounding per class) would get re-splits of other class counts, and the J accuracies would
    not measure the same task (tests/test_probes_evaluation.py shows the difference).
    """
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


def permutation_labels(task: ConceptTask, permutation: int, seed: int) -> np.ndarray:
    """The permutation baseline's labels: shuffled within the stored training part; test labels kept."""
    rng = _rng(seed, task.concept, permutation, 2)
    labels = np.asarray(task.labels).copy()
    idx = np.flatnonzero(np.asarray(task.train, bool))
    labels[idx] = labels[rng.permutation(idx)]
    return labels


def control_task_labels(task: ConceptTask, seed: int) -> np.ndarray | None:
    """Hewitt-and-Liang control labels: one random 0/1 per image class, the same in train and test, with
    the concept's positive rate as nearly as the class sizes allow (within half a class).

    The classes are taken in a seeded random order; each becomes positive while the positive images stay
    within the concept's count, then the smallest class left joins when that brings the count closer
    (at least one class of each label). With classes of equal size this is a uniformly random set of
    them. One coin per class would leave the share to chance: with the 10 classes of the concept world
    it ranged from 0.09 to 0.73 for a rate of 1/3, and the control's own majority baseline with it.
    Orders that leave a part with one label are redrawn (seeded); None when the images carry no class,
    or fewer than two classes, or no order works."""
    if task.classes is None:
        return None
    _, inverse, counts = np.unique(np.asarray(task.classes), return_inverse=True, return_counts=True)
    n_classes = len(counts)
    if n_classes < 2:
        return None
    target = int(np.sum(task.labels))  # positive images of the concept
    train = np.asarray(task.train, bool)
    rng = _rng(seed, task.concept, 0, 1)
    for _ in range(_CONTROL_DRAWS):
        positive = np.zeros(n_classes, bool)
        taken = 0
        for c in rng.permutation(n_classes):
            if taken + counts[c] <= target:
                positive[c], taken = True, taken + counts[c]
        left = np.flatnonzero(~positive)
        smallest = left[np.argmin(counts[left])]
        if not positive.any() or (len(left) > 1 and abs(taken + counts[smallest] - target) < target - taken):
            positive[smallest] = True
        labels = positive.astype(np.int64)[inverse.ravel()]
        if len(np.unique(labels[train])) == 2 and len(np.unique(labels[~train])) == 2:
            return labels
    return None


def class_alignment(task: ConceptTask) -> float:
    """The share of the concept's positives whose class holds no negative of the concept (NaN without classes).

    1.0: the concept is a class or a union of classes, so a control task that draws whole classes can draw
    the concept itself and selectivity is undefined; 0.0: no class is wholly positive."""
    if task.classes is None:
        return math.nan
    classes, labels = np.asarray(task.classes), np.asarray(task.labels)
    negative_classes = set(classes[labels == 0].tolist())
    positives = classes[labels == 1]
    return float(np.mean([c not in negative_classes for c in positives.tolist()]))


def mdl_blocks(n_train: int, first: int = MDL_FIRST_BLOCK) -> list[int]:
    """The online code's block ends t1 < t2 < ... < n: t1 = max(first, 0.1% of n), then doubling, the last n.

    ``[8, 16, 32, 64, 128, 210]`` for 210 training examples; ``[n]`` (only the uniform block) when n <= t1."""
    if first < 1:
        raise ValueError(f"first block of {first} examples: expected at least 1 (Voita and Titov's code needs one)")
    t = max(first, math.ceil(MDL_FIRST_FRACTION * n_train))
    ends = []
    while t < n_train:
        ends.append(t)
        t *= 2
    return [*ends, n_train]


def mdl_order(task: ConceptTask, seed: int, first: int = MDL_FIRST_BLOCK) -> np.ndarray:
    """The order in which the online code transmits the stored training part: positions into the task's rows.

    Seeded random; when the first block would hold one label only, the earliest image of the missing label
    swaps in for the block's last image, so that every block probe has both labels to learn from."""
    labels = np.asarray(task.labels)
    order = _rng(seed, task.concept, 0, 3).permutation(np.flatnonzero(np.asarray(task.train, bool)))
    t1 = mdl_blocks(len(order), first)[0]
    if t1 < len(order) and len(np.unique(labels[order[:t1]])) < 2:
        missing = 1 - labels[order[0]]
        later = t1 + int(np.argmax(labels[order[t1:]] == missing))
        order[[t1 - 1, later]] = order[[later, t1 - 1]]
    return order


def codelength_bits(scores: np.ndarray, y: np.ndarray) -> float:
    """Bits to send 0/1 labels ``y`` with a probe's logits ``scores``: sum of -log2 p(y | x), computed stably."""
    s = np.asarray(scores, np.float64)
    nats = np.logaddexp(0.0, np.where(np.asarray(y) == 1, -s, s))  # -log sigmoid(+-s)
    return float(nats.sum() / math.log(2))


def hash_test_images(task: ConceptTask) -> str:
    """A short hash of the stored test images, in row order: image ids when known, else rows of X
    (``rows:`` prefix; then only comparable within one sweep)."""
    test = ~np.asarray(task.train, bool)
    if task.images is not None:
        ids, prefix = np.asarray(task.images)[test], ""
    else:
        ids, prefix = np.asarray(task.rows)[test], "rows:"
    digest = hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:16]
    return prefix + digest


def evaluate_concepts(
    X: np.ndarray | torch.Tensor,
    tasks: Sequence[ConceptTask],
    kind: str | ProbeKind,
    params: Mapping[str, Any] | None = None,
    *,
    repeats: int = 0,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    confidence: float = 0.95,
    form: str = "auto",
    fast_gram: bool = True,
    mdl: bool = False,
    mdl_first_block: int = MDL_FIRST_BLOCK,
) -> list[ProbeResult]:
    """Fit and score every concept of one module at once; one ``ProbeResult`` per task, in order.

    Per concept: the stored split (its metrics and exact interval), ``repeats`` stratified re-splits
    (the Nadeau-Bengio interval of their mean), ``permutations`` permutation-baseline probes and,
    when ``task.classes`` is given, one control-task probe; with ``mdl``, one probe per block of the online
    code after the first (``mdl_blocks``: trained on the blocks before it, the labels of the next block coded).
    """
    if repeats < 0:
        raise ValueError(f"repeats={repeats} is negative: expected 0 (stored split only) or more")
    if permutations < 0:
        raise ValueError(f"permutations={permutations} is negative: expected 0 (no permutation baseline) or more")
    N = X.shape[0]
    probes: list[tuple[int, str, int, np.ndarray, np.ndarray]] = []  # (task, role, index, labels, train)
    orders = [mdl_order(task, seed, mdl_first_block) for task in tasks] if mdl else []
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        if rows.min() < 0 or rows.max() >= N:
            raise ValueError(f"concept {task.concept!r}: rows reach {rows.max()}: X has only {N} rows")
        labels, stored = np.asarray(task.labels), np.asarray(task.train, bool)
        for s in range(1 + repeats):
            probes.append((t, "split", s, labels, resplit(task, s, seed)))
        for p in range(permutations):
            probes.append((t, "permutation", p, permutation_labels(task, p, seed), stored))
        control = control_task_labels(task, seed)
        if control is not None:
            probes.append((t, "control", 0, control, stored))
        if mdl:
            for i, end in enumerate(mdl_blocks(len(orders[t]), mdl_first_block)[:-1]):
                prefix = np.zeros(len(rows), bool)
                prefix[orders[t][:end]] = True
                probes.append((t, "mdl", i, labels, prefix))
    B = len(probes)
    Y = np.zeros((B, N), np.int64)
    train = np.zeros((B, N), bool)
    evaluate = np.zeros((B, N), bool)
    for b, (t, _, _, labels, tr) in enumerate(probes):
        rows = np.asarray(tasks[t].rows)
        Y[b, rows] = labels
        train[b, rows[tr]] = True
        evaluate[b, rows] = True
    fit = fit_many(kind, X, Y, train, evaluate, params, device=device, form=form, fast_gram=fast_gram)
    scores = fit.scores.double().numpy()

    by_task: dict[int, dict[str, list[int]]] = {t: {"split": [], "permutation": [], "control": [], "mdl": []}
                                                for t in range(len(tasks))}
    for b, (t, role, _, _, _) in enumerate(probes):
        by_task[t][role].append(b)
    results = []
    for t, task in enumerate(tasks):
        rows = np.asarray(task.rows)
        y = np.asarray(task.labels)
        stored = np.asarray(task.train, bool)
        te = ~stored

        def acc_of(b: int, truth: np.ndarray, rows: np.ndarray = rows) -> float:
            tr = probes[b][4]
            return accuracy((scores[b, rows] > 0).astype(int)[~tr], truth[~tr])

        b0 = by_task[t]["split"][0]
        score = scores[b0, rows]
        pred = (score > 0).astype(int)
        correct = pred[te] == y[te]
        n_test, k = int(te.sum()), int(correct.sum())
        acc = k / n_test
        low, high = exact_interval(k, n_test, confidence)
        split_accs = [acc_of(b, y) for b in by_task[t]["split"]]
        r_low, r_high = corrected_resampled_t_interval(split_accs, int(stored.sum()), n_test, confidence)
        perm_accs = [acc_of(b, y) for b in by_task[t]["permutation"]]
        control = (acc_of(by_task[t]["control"][0], probes[by_task[t]["control"][0]][3])
                   if by_task[t]["control"] else float("nan"))
        online = uniform = math.nan
        if mdl:  # K = 2 labels: the uniform code spends log2 2 = 1 bit per label
            order, ends = orders[t], mdl_blocks(len(orders[t]), mdl_first_block)
            uniform, online = float(len(order)), float(ends[0])
            for b, start, stop in zip(by_task[t]["mdl"], ends[:-1], ends[1:], strict=True):
                block = order[start:stop]
                online += 1 + min(codelength_bits(scores[b, rows[block]], y[block]), float(stop - start))
        results.append(ProbeResult(
            test_acc=acc, test_acc_ci_low=low, test_acc_ci_high=high,
            test_balanced_acc=balanced_accuracy(pred[te], y[te]),
            test_auroc=auroc(score[te], y[te]),
            train_acc=accuracy(pred[stored], y[stored]),
            test_majority_acc=majority_accuracy(y[stored], y[te]),
            test_acc_resplit_mean=float(np.mean(split_accs)) if repeats else float("nan"),
            test_acc_resplit_ci_low=r_low, test_acc_resplit_ci_high=r_high,
            test_permutation_acc=float(np.mean(perm_accs)) if perm_accs else float("nan"),
            test_permutation_p=permutation_p_value(acc, perm_accs),
            test_control_acc=control, test_selectivity=acc - control,
            n_train=int(stored.sum()), n_test=n_test, n_test_pos=int(y[te].sum()), repeats=repeats,
            permutations=permutations, n_dropped_features=int(fit.n_dropped_features[b0]),
            test_correct="".join("1" if c else "0" for c in correct), test_images=hash_test_images(task),
            class_alignment=class_alignment(task),
            mdl_codelength_bits=online, mdl_uniform_bits=uniform, compression=uniform / online,
        ))
    return results


def evaluate_concept(X: np.ndarray | torch.Tensor, task: ConceptTask, kind: str | ProbeKind,
                     params: Mapping[str, Any] | None = None, **options: Any) -> ProbeResult:
    """``evaluate_concepts`` for a single concept."""
    return evaluate_concepts(X, [task], kind, params, **options)[0]
