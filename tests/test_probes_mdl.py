"""MDL probing (Voita and Titov's online code): blocks, order, bits, and the paper's properties on constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipprobe.probes import ConceptTask, LinearProbe, evaluate_concepts
from clipprobe.probes.evaluation import codelength_bits, mdl_blocks, mdl_order

N, D = 300, 32


def _task(labels: np.ndarray, seed: int = 0, name: str = "c") -> ConceptTask:
    rng = np.random.default_rng(seed)
    train = np.zeros(len(labels), bool)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        train[rng.choice(idx, int(0.7 * len(idx)), replace=False)] = True
    return ConceptTask(name, np.arange(len(labels)), labels, train)


def _features(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)


def test_blocks_double_from_at_least_eight_examples_and_end_at_n() -> None:
    assert mdl_blocks(210) == [8, 16, 32, 64, 128, 210]
    assert mdl_blocks(256) == [8, 16, 32, 64, 128, 256]
    assert mdl_blocks(20_000) == [20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20_000]  # 0.1% once above 8
    assert mdl_blocks(6) == [6]  # one uniform block: compression 1
    with pytest.raises(ValueError, match="first block of 0 examples"):
        mdl_blocks(10, first=0)


def test_order_is_a_seeded_permutation_of_the_training_part_whose_first_block_has_both_labels() -> None:
    labels = np.r_[np.ones(10, int), np.zeros(290, int)]  # 7 training positives among 210
    task = _task(labels)
    for seed in range(20):
        order = mdl_order(task, seed)
        assert sorted(order) == sorted(np.flatnonzero(task.train))
        assert set(labels[order[:8]]) == {0, 1}
        np.testing.assert_array_equal(order, mdl_order(task, seed))


def test_codelength_is_minus_log2_of_the_probability_of_the_true_label() -> None:
    s, y = np.array([0.0, 2.0, -3.0, 40.0, -40.0]), np.array([1, 1, 1, 0, 0])
    p = 1 / (1 + np.exp(-s[:3]))  # the last two: a confident hit costs ~0 bits, a confident miss ~40 / ln 2
    assert codelength_bits(s, y) == pytest.approx(float(-np.log2(p).sum()) + 40 / math.log(2), rel=1e-9)
    assert codelength_bits(np.zeros(7), np.ones(7)) == pytest.approx(7.0)  # p = 1/2: one bit a label


def test_batched_blocks_equal_one_probe_fitted_per_prefix() -> None:
    X = _features()
    X[:, 0] += np.where(X[:, 1] > 0, 1.5, -1.5)
    labels = (X[:, 1] > 0).astype(int)
    task = _task(labels)
    [r] = evaluate_concepts(X, [task], "linear_gap", permutations=0, mdl=True)
    order, ends = mdl_order(task, 0), mdl_blocks(int(task.train.sum()))
    online = float(ends[0])
    for start, stop in zip(ends[:-1], ends[1:], strict=True):
        probe = LinearProbe().fit(X[order[:start]], labels[order[:start]])
        bits = codelength_bits(probe.decision_function(X[order[start:stop]]), labels[order[start:stop]])
        online += 1 + min(bits, stop - start)
    assert r.mdl_uniform_bits == int(task.train.sum()) == 210
    assert r.mdl_codelength_bits == pytest.approx(online, rel=1e-3)
    assert r.compression == pytest.approx(210 / online, rel=1e-3)


@pytest.mark.parametrize("kind", ["linear_gap", "non_linear_gap"])
def test_a_separable_concept_compresses_far_more_than_a_shuffled_one(kind: str) -> None:
    X = _features()
    separable = (X[:, 0] > 0).astype(int)
    X[:, 0] += np.where(separable == 1, 3.0, -3.0)
    shuffled = np.random.default_rng(1).permutation(separable)
    [sep] = evaluate_concepts(X, [_task(separable)], kind, permutations=0, mdl=True)
    [shuf] = evaluate_concepts(X, [_task(shuffled, name="s")], kind, permutations=0, mdl=True)
    assert sep.test_acc == 1.0 and sep.compression > 3.0
    assert 0.95 < shuf.compression < 1.05  # nothing to learn: the online code is the uniform one
    assert sep.compression > 3 * shuf.compression


def test_compression_ranks_two_cells_that_accuracy_ties_at_one() -> None:
    X = _features()
    labels = (X[:, 0] > 0).astype(int)
    cells = {}
    for margin in (1.0, 4.0):  # both linearly separable; the wide margin is learnt from fewer examples
        Xm = X.copy()
        Xm[:, 0] += np.where(labels == 1, margin, -margin)
        [cells[margin]] = evaluate_concepts(Xm, [_task(labels)], "linear_gap", permutations=0, mdl=True)
    assert cells[1.0].test_acc == cells[4.0].test_acc == 1.0
    assert cells[1.0].test_acc_ci_low == cells[4.0].test_acc_ci_low  # the same exact interval: accuracy ties
    assert cells[4.0].compression > cells[1.0].compression + 1.0


def test_permuted_labels_cost_about_n_log2_k_bits() -> None:
    X = _features()
    labels = np.random.default_rng(3).permutation(np.r_[np.ones(150, int), np.zeros(150, int)])
    [r] = evaluate_concepts(X, [_task(labels)], "linear_gap", permutations=0, mdl=True)
    n = 210  # training images; K = 2 labels: log2 K = 1 bit each
    assert r.mdl_uniform_bits == n
    assert abs(r.mdl_codelength_bits - n) <= 0.05 * n


def test_mdl_off_leaves_the_columns_nan_and_the_other_numbers_unchanged() -> None:
    X = _features()
    task = _task((X[:, 0] > 0).astype(int))
    [on] = evaluate_concepts(X, [task], "linear_gap", permutations=3, repeats=1, mdl=True)
    [off] = evaluate_concepts(X, [task], "linear_gap", permutations=3, repeats=1)  # off by default
    assert math.isnan(off.mdl_codelength_bits) and math.isnan(off.compression)
    assert on.test_correct == off.test_correct and on.test_permutation_acc == off.test_permutation_acc
