"""Sparse probes: ranking on the training part, each k against scikit-learn on the same columns, k = all
against the sweep's own probe."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from clipprobe.neurons.sparse import rank_units, smallest_k, sparse_probes
from clipprobe.probes.evaluation import ConceptTask, evaluate_concepts
from clipprobe.probes.kinds import probe_kind


def _tasks(seed: int = 0) -> tuple[np.ndarray, list[ConceptTask]]:
    rng = np.random.default_rng(seed)
    N, d = 160, 40
    X = rng.normal(size=(N, d)).astype(np.float32)
    tasks = []
    for c, (units, n) in enumerate([((3, 7), 120), ((11,), 90)]):
        rows = rng.choice(N, n, replace=False)
        labels = (X[rows][:, list(units)].sum(1) + rng.normal(0, 0.7, n) > 0).astype(np.int64)
        train = np.zeros(n, bool)
        train[rng.permutation(n)[: 2 * n // 3]] = True
        tasks.append(ConceptTask(f"c{c}", rows, labels, train))
    return X, tasks


def test_rank_units_by_scaled_mean_difference_on_training_rows() -> None:
    x = np.array([[0.0, 10.0, 1.0], [0.0, 30.0, 1.0], [1.0, 10.0, 2.0], [1.0, 50.0, 2.0]])
    y = np.array([0, 0, 1, 1])
    # scaled mean differences: unit 0: 1/(10*0.5) = 0.2; unit 1: 10/(10*~15.2) ~ 0.07; unit 2: 1/(10*0.5) = 0.2
    assert rank_units(x, y).tolist() == [0, 2, 1]


def test_each_k_matches_sklearn_on_the_same_columns() -> None:
    X, tasks = _tasks()
    results = sparse_probes(X, tasks, ks=(1, 2, 4, 8, 64))
    wd = probe_kind("linear_gap").params({})["weight_decay"]
    assert [(r.concept, r.k) for r in results] == [(t.concept, k) for t in tasks for k in (1, 2, 4, 8, 40)]
    for r in results:
        task = next(t for t in tasks if t.concept == r.concept)
        tr = task.train
        x = X[task.rows][:, list(r.units)].astype(np.float64)
        mean, std = x[tr].mean(0), x[tr].std(0)
        z = (x - mean) / std
        ref = LogisticRegression(C=1 / (wd * tr.sum()), tol=1e-12, max_iter=10_000).fit(z[tr], task.labels[tr])
        acc = (ref.predict(z[~tr]) == task.labels[~tr]).mean()
        assert r.test_acc == acc
        assert r.test_acc_ci_low <= r.test_acc <= r.test_acc_ci_high and r.n_test == (~tr).sum()
    first = {r.concept: r.units for r in results if r.k == 2}
    assert set(first["c0"]) == {3, 7} and first["c1"][0] == 11  # the planted units rank first


def test_all_units_is_the_sweeps_own_probe_and_smallest_k() -> None:
    X, tasks = _tasks(1)
    results = sparse_probes(X, tasks)
    full = evaluate_concepts(X, tasks, "linear_gap", repeats=0, permutations=0)
    for task, ref in zip(tasks, full, strict=True):
        mine = [r for r in results if r.concept == task.concept]
        assert mine[-1].k == 40
        assert (mine[-1].test_acc, mine[-1].test_acc_ci_low, mine[-1].test_acc_ci_high) == (
            ref.test_acc, ref.test_acc_ci_low, ref.test_acc_ci_high)
        k = smallest_k(mine)
        assert k is not None and k <= (2 if task.concept == "c0" else 1) + 2
        assert all(r.test_acc < mine[-1].test_acc_ci_low for r in mine if r.k < k)
