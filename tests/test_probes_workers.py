"""Probes shared out over CPU worker threads give the same numbers as one thread, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipprobe.probes import fit_many
from clipprobe.probes.solvers import cpu_workers, map_slices, slices

HP = {"hidden": 16, "steps": 40, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01, "seed": 3}


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _problem(d: int, probes: int = 7, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(n, d)) + rng.normal(size=d), dtype=torch.float32)
    Y = torch.tensor(rng.integers(0, 2, size=(probes, n)))
    train = torch.zeros(probes, n, dtype=torch.bool)
    for b in range(probes):
        train[b, rng.permutation(n)[: n * 2 // 3]] = True
    return X, Y, train


def test_slices_cover_the_range_in_order_without_overlap():
    assert slices(7, 2) == [(0, 4), (4, 7)]
    assert slices(2, 5) == [(0, 1), (1, 2)]
    assert slices(0, 3) == [(0, 0)]
    assert map_slices(lambda lo, hi: list(range(lo, hi)), 10, 3) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]


def test_cpu_workers_follow_the_thread_count_and_stay_one_for_big_steps(threads):
    threads(2)
    assert cpu_workers(torch.device("cpu")) == 2
    assert cpu_workers(torch.device("cpu"), flops=1e12) == 1  # big programs keep torch's own threads
    assert cpu_workers(torch.device("cuda")) == 1
    threads(1)
    assert cpu_workers(torch.device("cpu")) == 1


@pytest.mark.parametrize(("kind", "d"), [("linear_gap", 12), ("linear_non_gap", 300),
                                         ("non_linear_gap", 12), ("non_linear_non_gap", 300)])
def test_two_workers_give_the_scores_of_one(threads, kind, d):
    X, Y, train = _problem(d)
    params = HP if kind.startswith("non") else None
    threads(1)
    one = fit_many(kind, X, Y, train, params=params)
    threads(2)
    two = fit_many(kind, X, Y, train, params=params)
    assert torch.get_num_threads() == 2  # the caller's thread count is back
    assert one.form == two.form == ("gram" if d > 40 else "explicit")
    assert torch.isfinite(one.scores).all() and one.scores.abs().max() > 0.1
    assert torch.equal(one.scores, two.scores)
    assert torch.equal(one.n_dropped_features, two.n_dropped_features)


def test_threads_for_restores_the_callers_thread_count_even_on_error(threads):
    from clipprobe.probes.solvers import SMALL_STEP_FLOPS, threads_for

    threads(2)
    with threads_for(SMALL_STEP_FLOPS / 10):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"), threads_for(0.0):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    with threads_for(SMALL_STEP_FLOPS):  # big steps keep the caller's threads
        assert torch.get_num_threads() == 2
