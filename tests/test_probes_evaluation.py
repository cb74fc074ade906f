"""Evaluation: metrics, intervals, re-splits, controls, planted concepts and the dropped-feature rule."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from clipprobe.probes import ConceptTask, LinearProbe, ProbeResult, evaluate_concepts, fit_many
from clipprobe.probes.evaluation import (
    PREDICTION_FIELDS,
    auroc,
    balanced_accuracy,
    class_alignment,
    control_task_labels,
    corrected_resampled_t_interval,
    exact_interval,
    majority_accuracy,
    permutation_labels,
    permutation_p_value,
    resplit,
)
from clipprobe.world.config import WorldSpec
from clipprobe.world.generate import _plan, render_item


def _tasks(X: np.ndarray, planted: float, n_concepts: int = 3, seed: int = 0) -> list[ConceptTask]:
    rng = np.random.default_rng(seed)
    tasks = []
    for c in range(n_concepts):
        rows = rng.choice(len(X), 300, replace=False)
        labels = np.r_[np.ones(100, int), np.zeros(200, int)]
        X[rows[:100], c] += planted
        train = np.zeros(300, bool)
        train[rng.choice(100, 70, replace=False)] = True
        train[100 + rng.choice(200, 140, replace=False)] = True
        tasks.append(ConceptTask(f"concept{c}", rows, labels, train))
    return tasks


def test_probes_result_names_match_architecture() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    paragraph = doc[doc.index("Metrics:"):].split("\n\n")[0]
    metrics, per_image = paragraph.split("Per-image predictions")
    names = [f.name for f in fields(ProbeResult)]
    assert [n for n in names if n not in PREDICTION_FIELDS] == re.findall(r"`(\w+)`", metrics)
    assert list(PREDICTION_FIELDS) == [n for n in re.findall(r"`(\w+)`", per_image) if n in names]


def test_probes_metric_functions() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0, 1.0, 1.0]), y) == pytest.approx(0.5)
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert balanced_accuracy(np.array([0, 0, 0, 1]), y) == pytest.approx(0.75)
    assert majority_accuracy(np.array([0, 0, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)


def test_exact_interval_is_clopper_pearson_and_covers_a_known_binomial() -> None:
    # Clopper-Pearson from its beta-quantile form, written out here: 81 of 90 correct
    low, high = exact_interval(81, 90)
    assert low == pytest.approx(stats.beta.ppf(0.025, 81, 10), abs=1e-9)
    assert high == pytest.approx(stats.beta.ppf(0.975, 82, 9), abs=1e-9)
    assert (round(low, 3), round(high, 3)) == (0.819, 0.953)
    assert exact_interval(0, 90)[0] == 0.0 and exact_interval(90, 90)[1] == 1.0
    # exact coverage (no simulation): sum of P(k) over the k whose interval holds the true p
    n = 90
    intervals = [exact_interval(k, n) for k in range(n + 1)]
    for p in (0.5, 0.667, 0.8, 0.9, 0.97):
        coverage = sum(stats.binom.pmf(k, n, p) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi)
        assert coverage >= 0.95, (p, coverage)


def test_nadeau_bengio_interval_matches_the_formula_by_hand() -> None:
    # J = 3 splits, 210 train / 90 test: mean 0.82, s^2 = 0.0004, variance x (1/3 + 90/210), t(2) = 4.302653
    low, high = corrected_resampled_t_interval([0.80, 0.82, 0.84], n_train=210, n_test=90)
    half = 4.302652729911275 * (0.0004 * (1 / 3 + 90 / 210)) ** 0.5
    assert (low, high) == (pytest.approx(0.82 - half, abs=1e-9), pytest.approx(0.82 + half, abs=1e-9))
    assert (round(low, 4), round(high, 4)) == (0.7449, 0.8951)  # a plain t would give 0.770-0.870
    # J = 2 (one re-split): t(1) = 12.706, honest and wide, clipped to [0, 1]
    low, high = corrected_resampled_t_interval([0.80, 0.90], n_train=210, n_test=90)
    assert (low, high) == (0.0, 1.0)
    assert all(np.isnan(corrected_resampled_t_interval([0.8], 210, 90)))


def test_permutation_p_value_counts_ties_and_adds_one() -> None:
    assert permutation_p_value(0.9, [0.6] * 19) == pytest.approx(1 / 20)
    assert permutation_p_value(0.7, [0.6, 0.7, 0.8, 0.5]) == pytest.approx(3 / 5)
    assert np.isnan(permutation_p_value(0.7, []))


def test_probes_resplit_and_permutation_keep_counts_and_true_test_labels() -> None:
    X = np.zeros((400, 2))
    task = _tasks(X, 0.0, 1)[0]
    for s in range(4):
        tr = resplit(task, s, seed=3)
        assert tr.sum() == 210 and task.labels[tr].sum() == 70
        perm = permutation_labels(task, s, seed=3)
        np.testing.assert_array_equal(perm[~task.train], task.labels[~task.train])  # test keeps its truth
        assert perm[task.train].sum() == 70 and not np.array_equal(perm, task.labels)
    assert not np.array_equal(resplit(task, 1, 3), resplit(task, 2, 3))
    np.testing.assert_array_equal(resplit(task, 0, 3), task.train)
    assert not np.array_equal(permutation_labels(task, 0, 3), permutation_labels(task, 1, 3))


def test_resplits_keep_the_stored_class_counts_where_stratified_shuffle_split_would_not() -> None:
    from sklearn.model_selection import StratifiedShuffleSplit

    labels = np.array([1] * 10 + [0] * 20)
    train = np.zeros(30, bool)
    train[:8] = True  # 8 of 10 positives
    train[10:22] = True  # 12 of 20 negatives: not proportional (the pool's share would give 7 and 13)
    task = ConceptTask("c", np.arange(30), labels, train)
    for s in range(1, 6):
        tr = resplit(task, s, seed=0)
        assert (labels[tr].sum(), (tr & (labels == 0)).sum()) == (8, 12)
    sss_train, _ = next(StratifiedShuffleSplit(1, train_size=20, random_state=0).split(np.zeros(30), labels))
    assert labels[sss_train].sum() == 7  # the library's split would probe another task


def test_control_task_labels_are_one_per_class_same_in_train_and_test() -> None:
    rng = np.random.default_rng(5)
    X = np.zeros((400, 2))
    task = _tasks(X, 0.0, 1)[0]
    assert control_task_labels(task, seed=0) is None  # no classes known
    classes = rng.integers(0, 40, 300)
    task = ConceptTask(task.concept, task.rows, task.labels, task.train, classes=classes)
    ctrl = control_task_labels(task, seed=0)
    for c in np.unique(classes):
        assert len(np.unique(ctrl[classes == c])) == 1  # constant per class, across train and test
    for part in (task.train, ~task.train):
        assert len(np.unique(ctrl[part])) == 2
    assert 0.1 < ctrl.mean() < 0.6  # drawn with the concept's positive rate (1/3)
    np.testing.assert_array_equal(ctrl, control_task_labels(task, seed=0))  # seeded
    one = ConceptTask(task.concept, task.rows, task.labels, task.train, classes=np.zeros(300, int))
    assert control_task_labels(one, seed=0) is None


def _seed_split(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The seed's concept split: 100 positives and 200 negatives, 70% of each in the training part."""
    labels = np.r_[np.ones(100, int), np.zeros(200, int)]
    train = np.zeros(300, bool)
    train[rng.choice(100, 70, replace=False)] = True
    train[100 + rng.choice(200, 140, replace=False)] = True
    return labels, train


def test_control_task_has_the_concepts_positive_rate_with_few_classes() -> None:
    # The concept world: 10 shapes, ~30 of a concept's 300 images each, a third positive. One coin per
    # class made the control's positive share anything from 0.09 to 0.73 (the demo's dotted: 0.09,
    # so its control majority baseline was 0.88 and every dotted selectivity about -0.2 by the draw alone).
    rng = np.random.default_rng(3)
    labels, train = _seed_split(rng)
    shapes = np.array(["circle", "square", "star", "triangle", "cross", "hexagon", "ellipse", "diamond",
                       "pentagon", "trapezoid"])
    positive_count = dict.fromkeys(shapes, 0)
    for i in range(200):
        classes = shapes[rng.permutation(np.arange(300) % 10)]
        task = ConceptTask(f"concept{i}", np.arange(300), labels, train, classes=classes)
        ctrl = control_task_labels(task, seed=0)
        assert abs(ctrl.mean() - 1 / 3) <= 0.05 + 1e-9, (i, ctrl.mean())  # half a class's share of the images
        for part in (train, ~train):
            assert len(np.unique(ctrl[part])) == 2
        for s in shapes:
            assert len(np.unique(ctrl[classes == s])) == 1
            positive_count[s] += int(ctrl[classes == s][0])
    # every class equally likely to be a control positive (3 or 4 of 10 per draw: 0.3-0.4 of 200 draws)
    assert all(40 <= n <= 100 for n in positive_count.values()), positive_count


def test_control_task_rate_with_uneven_classes_and_imagenet_scale() -> None:
    rng = np.random.default_rng(4)
    labels, train = _seed_split(rng)
    # ImageNet-like: 300 images from ~250 classes, mostly one image each
    many = rng.integers(0, 1000, 300)
    ctrl = control_task_labels(ConceptTask("striped", np.arange(300), labels, train, classes=many), seed=1)
    assert abs(ctrl.mean() - 1 / 3) <= 0.01
    # one class holds 80% of the images: the rate cannot be met, but both labels still occur in each part
    skewed = np.where(np.arange(300) < 240, 0, 1 + np.arange(300) % 5)
    ctrl = control_task_labels(ConceptTask("dotted", np.arange(300), labels, train, classes=skewed), seed=0)
    assert ctrl is not None and 0 < ctrl.mean() < 1
    assert len(np.unique(ctrl[skewed == 0])) == 1


@pytest.mark.parametrize("kind", ["linear_gap", "non_linear_gap"])
def test_probes_planted_concept_is_found_and_permutations_are_not(kind: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(700, 24)).astype(np.float32)
    tasks = _tasks(X, planted=6.0)
    params = {"steps": 150, "hidden": 32} if kind.startswith("non") else {}
    results = evaluate_concepts(X, tasks, kind, params, repeats=2, seed=0)
    for r in results:
        assert r.test_acc > 0.97 and r.test_auroc > 0.99
        assert r.test_acc_ci_low <= r.test_acc <= r.test_acc_ci_high
        assert (r.test_acc_ci_low, r.test_acc_ci_high) == exact_interval(round(r.test_acc * 90), 90)
        assert r.test_acc_resplit_ci_low <= r.test_acc_resplit_mean <= r.test_acc_resplit_ci_high
        assert abs(r.test_majority_acc - 200 / 300) < 1e-9
        assert r.test_permutation_acc < r.test_majority_acc + 0.06
        assert r.test_permutation_p == pytest.approx(1 / 20)  # the smallest p 19 permutations allow
        assert np.isnan(r.test_control_acc) and np.isnan(r.test_selectivity)  # no classes: no control task
        assert (r.n_train, r.n_test, r.n_test_pos, r.repeats, r.permutations) == (210, 90, 30, 2, 19)
        assert len(r.test_correct) == 90 and r.test_correct.count("1") == round(r.test_acc * 90)
        assert r.test_images.startswith("rows:")
        assert set(r.metrics()) == {f.name for f in fields(ProbeResult)} - set(PREDICTION_FIELDS)
    assert len({r.test_images for r in results}) == 3


def test_probes_no_signal_gives_chance_and_a_large_permutation_p() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 8)).astype(np.float32)
    [r] = evaluate_concepts(X, _tasks(X, planted=0.0, n_concepts=1), "linear_gap")
    assert r.repeats == 0 and r.test_acc < 0.75
    assert np.isnan(r.test_acc_resplit_mean) and np.isnan(r.test_acc_resplit_ci_low)
    assert r.test_acc_ci_low <= r.test_majority_acc  # the interval includes the baseline
    assert r.test_permutation_p > 0.2, r


def _class_world(concept_follows_class: bool, seed: int = 7):
    """40 classes; features say only which class an image is (a one-hot code). The concept is either
    a property of whole classes ("zebra" -> striped) or drawn per image, independent of the class."""
    rng = np.random.default_rng(seed)
    n, n_classes = 600, 40
    classes = rng.permutation(np.arange(n) % n_classes)
    if concept_follows_class:
        labels = (classes < n_classes // 3).astype(int)
    else:
        labels = (rng.random(n) < 1 / 3).astype(int)
    X = np.eye(n_classes, dtype=np.float32)[classes] + 0.05 * rng.normal(size=(n, n_classes)).astype(np.float32)
    train = np.zeros(n, bool)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        train[rng.choice(idx, int(0.7 * len(idx)), replace=False)] = True
    return X, ConceptTask("striped", np.arange(n), labels, train, classes=classes, images=np.arange(n))


def test_control_task_tells_a_class_detector_from_a_concept() -> None:
    # features that only know the class: the class-aligned concept is decodable, but so is the control
    X, task = _class_world(concept_follows_class=True)
    [r] = evaluate_concepts(X, [task], "linear_gap", permutations=0)
    assert r.test_acc > 0.95 and r.test_control_acc > 0.95
    assert abs(r.test_selectivity) < 0.05
    assert r.test_selectivity == pytest.approx(r.test_acc - r.test_control_acc)
    assert not r.test_images.startswith("rows:")
    # the same features for a concept that cuts across classes: nothing to find, and the control still scores
    X, task = _class_world(concept_follows_class=False)
    [r] = evaluate_concepts(X, [task], "linear_gap", permutations=0)
    assert r.test_acc < 0.75 and r.test_control_acc > 0.95 and r.test_selectivity < -0.2
    assert r.class_alignment == 0.0  # every class holds negatives too


def test_selectivity_is_flagged_undefined_for_a_class_aligned_concept() -> None:
    X, task = _class_world(concept_follows_class=True)
    [r] = evaluate_concepts(X, [task], "linear_gap", permutations=0)
    assert r.class_alignment == 1.0  # a union of classes: the control task can draw the concept itself
    [r] = evaluate_concepts(X, [replace(task, classes=None)], "linear_gap", permutations=0)
    assert np.isnan(r.class_alignment)


def _world_task(concept: str, truth: list, rng: np.random.Generator) -> ConceptTask:
    """A concept of the generated world with its true positives and as many random negatives, classes = shapes."""
    has = np.array([concept in (item.shape, item.colour) for item in truth])
    pos, neg = np.flatnonzero(has), rng.choice(np.flatnonzero(~has), int(has.sum()), replace=False)
    rows = np.r_[pos, neg]
    labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    train = np.zeros(len(rows), bool)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        train[rng.choice(idx, int(0.7 * len(idx)), replace=False)] = True
    classes = np.array([truth[i].shape for i in rows])
    return ConceptTask(concept, rows, labels, train, classes=classes)


def test_class_alignment_of_the_worlds_shapes_and_colours() -> None:
    # the world's shapes are its classes: a shape concept is its class (selectivity undefined); colours are
    # drawn independently of the shape, so every colour's positives share their classes with negatives
    spec = WorldSpec(size=16, train_per_class=0, val_per_class=0, pool_size=400)
    truth = [render_item(np.random.default_rng([0, i]), spec, rel, split, shape)[1]
             for i, (split, rel, shape) in enumerate(_plan(spec))]
    rng = np.random.default_rng(0)
    for shape in ("star", "circle"):
        assert class_alignment(_world_task(shape, truth, rng)) == 1.0
    for colour in ("red", "blue", "green"):
        assert class_alignment(_world_task(colour, truth, rng)) < 0.1


def test_probes_drops_sub_precision_feature_instead_of_amplifying_it() -> None:
    rng = np.random.default_rng(4)
    n = 300
    y = np.r_[np.ones(100, int), np.zeros(200, int)]
    noise = rng.normal(size=(n, 3))
    # a feature at 1.0 whose label signal (1e-9) and rounding noise (1e-12) are far below float32 precision
    tiny = 1.0 + 1e-9 * y + 1e-12 * rng.normal(size=n)
    X = np.c_[tiny, noise]
    tr = np.zeros(n, bool)
    tr[rng.choice(100, 70, replace=False)] = True
    tr[100 + rng.choice(200, 140, replace=False)] = True
    probe = LinearProbe().fit(X[tr], y[tr])
    assert probe.n_dropped_features_ == 1 and not bool(probe.keep_[0])
    assert probe.score(X[~tr], y[~tr]) < 0.8
    # in float64 without the rule, standardising turns the 1e-9 wiggle into a "perfect" probe
    labels, train = torch.tensor(y)[None], torch.tensor(tr)[None]
    amplified = fit_many("linear_gap", X[:, :1], labels, train, params={"drop_rtol": 0.0}, dtype=torch.float64)
    assert int(amplified.n_dropped_features[0]) == 0
    assert (amplified.predictions()[0].numpy() == y)[~tr].mean() == 1.0
    guarded = fit_many("linear_gap", X[:, :1], labels, train, dtype=torch.float64)
    assert int(guarded.n_dropped_features[0]) == 1
    assert (guarded.predictions()[0].numpy() == y)[~tr].mean() == pytest.approx(200 / 300)
    [r] = evaluate_concepts(X.astype(np.float32), [ConceptTask("tiny", np.arange(n), y, tr)], "linear_gap")
    assert r.n_dropped_features == 1 and r.test_acc < 0.8


def test_every_reported_number_comes_from_the_stored_test_part() -> None:
    """A feature that gives the label away, except on 7 known test images where it lies: every number
    the user reads is fixed by hand. Computed on the train part, on all rows, on a re-split or with an
    off-by-one count, each would come out different."""
    n_pos_train, n_neg_train, n_pos_test, n_neg_test, lies = 70, 140, 50, 40, 7  # test part not stratified
    labels = np.r_[np.ones(n_pos_train), np.zeros(n_neg_train), np.ones(n_pos_test), np.zeros(n_neg_test)].astype(int)
    train = np.r_[np.ones(n_pos_train + n_neg_train, bool), np.zeros(n_pos_test + n_neg_test, bool)]
    shown = labels.copy()
    test_rows = np.flatnonzero(~train)
    shown[test_rows[:lies]] = 1 - shown[test_rows[:lies]]  # 7 positives of the test part look negative
    X = np.c_[shown * 4.0 - 2.0, np.random.default_rng(0).normal(size=len(labels)) * 0.01]
    task = ConceptTask("lies", np.arange(len(labels)), labels, train)
    [r] = evaluate_concepts(X, [task], "linear_gap", repeats=3, permutations=0, seed=1)
    n_test = n_pos_test + n_neg_test
    assert (r.n_train, r.n_test, r.n_test_pos) == (210, 90, 50)
    assert r.train_acc == 1.0
    assert r.test_acc == pytest.approx((n_test - lies) / n_test)  # 83/90, not 293/300 (all rows) nor 1 (train)
    k = n_test - lies  # the exact interval of 83 of 90, from the beta quantiles (not the code's binomtest)
    assert (r.test_acc_ci_low, r.test_acc_ci_high) == (
        pytest.approx(stats.beta.ppf(0.025, k, n_test - k + 1), abs=1e-9),
        pytest.approx(stats.beta.ppf(0.975, k + 1, n_test - k), abs=1e-9))
    assert r.test_majority_acc == pytest.approx(n_neg_test / n_test)  # train majority (negative) on test: 40/90
    assert r.test_correct == "0" * lies + "1" * (n_test - lies)  # the stored test images, in row order
    # re-splits move the lying images into training: their mean is not the stored split's accuracy
    assert r.repeats == 3 and r.test_acc_resplit_mean != pytest.approx(r.test_acc)
    assert np.isnan(r.test_control_acc)  # no classes given: no control, rather than a made-up one
