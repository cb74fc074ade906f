"""Evaluation: metrics, intervals, re-splits, controls, planted concepts and the dropped-feature rule."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from clipprobe.probes import ConceptTask, LinearProbe, ProbeResult, evaluate_concepts, fit_many
from clipprobe.probes.evaluation import (
    auroc,
    balanced_accuracy,
    control_labels,
    majority_accuracy,
    resplit,
    t_interval,
    wilson_interval,
)


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
    names = re.findall(r"`(\w+)`", paragraph)
    assert [f.name for f in fields(ProbeResult)] == names


def test_probes_metric_functions() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0, 1.0, 1.0]), y) == pytest.approx(0.5)
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert balanced_accuracy(np.array([0, 0, 0, 1]), y) == pytest.approx(0.75)
    assert majority_accuracy(np.array([0, 0, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    low, high = wilson_interval(81, 90)  # 0.9 on 90 test images
    assert (round(low, 3), round(high, 3)) == (0.821, 0.946)
    low, high = t_interval([0.8, 0.82, 0.84])
    assert (round(low, 3), round(high, 3)) == (0.770, 0.870)


def test_probes_resplit_and_control_keep_counts() -> None:
    X = np.zeros((400, 2))
    task = _tasks(X, 0.0, 1)[0]
    for s in range(4):
        tr = resplit(task, s, seed=3)
        assert tr.sum() == 210 and task.labels[tr].sum() == 70
        ctrl = control_labels(task, tr, s, seed=3)
        assert ctrl[tr].sum() == 70 and ctrl[~tr].sum() == 30
        assert not np.array_equal(ctrl, task.labels)
    assert not np.array_equal(resplit(task, 1, 3), resplit(task, 2, 3))
    np.testing.assert_array_equal(resplit(task, 0, 3), task.train)


@pytest.mark.parametrize("kind", ["linear_gap", "non_linear_gap"])
def test_probes_planted_concept_is_found_and_control_is_not(kind: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(700, 24)).astype(np.float32)
    tasks = _tasks(X, planted=6.0)
    params = {"steps": 150, "hidden": 32} if kind.startswith("non") else {}
    results = evaluate_concepts(X, tasks, kind, params, repeats=2, seed=0)
    for r in results:
        assert r.test_acc > 0.97 and r.test_auroc > 0.99
        assert r.test_acc_ci_low <= r.test_acc <= r.test_acc_ci_high
        assert abs(r.test_majority_acc - 200 / 300) < 1e-9
        assert r.test_control_acc < r.test_majority_acc + 0.06
        assert r.test_selectivity > 0.3
        assert (r.n_train, r.n_test, r.n_test_pos, r.repeats) == (210, 90, 30, 2)


def test_probes_no_signal_gives_chance_and_wilson_interval() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 8)).astype(np.float32)
    [r] = evaluate_concepts(X, _tasks(X, planted=0.0, n_concepts=1), "linear_gap")
    assert r.repeats == 0 and r.test_acc < 0.75
    assert (r.test_acc_ci_low, r.test_acc_ci_high) == wilson_interval(round(r.test_acc * 90), 90)


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
