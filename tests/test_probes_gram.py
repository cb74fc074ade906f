"""The Gram-space MLP equals an explicit torch.nn MLP trained the same way (same init, same steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipprobe.probes import fit_many
from clipprobe.probes.design import feature_stats, init_first_layer, standardise
from clipprobe.probes.solvers import init_head

HP = {"hidden": 24, "steps": 60, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01, "seed": 5}


def _problem(n: int = 50, d: int = 700, probes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d) * 4)
    Y = torch.tensor(rng.integers(0, 2, size=(probes, n)))
    train = torch.zeros(probes, n, dtype=torch.bool)
    for b in range(probes):
        train[b, rng.permutation(n)[:35]] = True
    return X, Y, train


def _explicit_reference(X: torch.Tensor, y: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """A plain torch.nn MLP on all d standardised features, torch.optim.SGD, same init: logits of every row."""
    mean, std, keep = feature_stats(X[train], 0.0)
    u = standardise(X, mean, std, keep) / keep.sum().double().sqrt()
    H = HP["hidden"]
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], H), torch.nn.ReLU(), torch.nn.Linear(H, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(init_first_layer(HP["seed"], H, 0, X.shape[1]))
        net[0].bias.zero_()
        net[2].weight.copy_(init_head(HP["seed"], H)[None])
        net[2].bias.zero_()
    opt = torch.optim.SGD([{"params": [net[0].weight, net[2].weight], "weight_decay": HP["weight_decay"]},
                           {"params": [net[0].bias, net[2].bias], "weight_decay": 0.0}],
                          lr=HP["lr"], momentum=HP["momentum"])
    for _ in range(HP["steps"]):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(u[train])[:, 0], y[train].double())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(u)[:, 0]


def test_probes_gram_mlp_equals_explicit_torch_mlp() -> None:
    X, Y, train = _problem()
    fit = fit_many("non_linear_non_gap", X, Y, train, params=HP, dtype=torch.float64, form="gram")
    assert fit.form == "gram"
    for b in range(Y.shape[0]):
        ref = _explicit_reference(X, Y[b], train[b])
        assert ref.abs().max() > 0.5  # the net has learned something: not a trivially equal pair
        torch.testing.assert_close(fit.scores[b], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("extra", [{}, {"dropout": 0.3}], ids=["plain", "hidden-dropout"])
def test_probes_gram_equals_explicit_form(extra: dict) -> None:
    X, Y, train = _problem(seed=1)
    params = {**HP, **extra}
    gram = fit_many("non_linear_non_gap", X, Y, train, params=params, dtype=torch.float64, form="gram")
    explicit = fit_many("non_linear_non_gap", X, Y, train, params=params, dtype=torch.float64, form="explicit")
    torch.testing.assert_close(gram.scores, explicit.scores, rtol=1e-9, atol=1e-9)


def test_probes_gram_linear_equals_explicit_and_float32_is_close() -> None:
    X, Y, train = _problem(seed=2)
    params = {"weight_decay": 0.05, "tol": 1e-12}
    gram = fit_many("linear_non_gap", X, Y, train, params=params, dtype=torch.float64, form="gram")
    explicit = fit_many("linear_non_gap", X, Y, train, params=params, dtype=torch.float64, form="explicit")
    torch.testing.assert_close(gram.scores, explicit.scores, rtol=1e-6, atol=1e-6)
    mlp64 = fit_many("non_linear_non_gap", X, Y, train, params=HP, dtype=torch.float64)
    mlp32 = fit_many("non_linear_non_gap", X.float(), Y, train, params=HP, dtype=torch.float32)
    assert (mlp32.scores.double() - mlp64.scores).abs().max() < 1e-3


def test_probes_gram_estimator_weights_predict_like_the_batch() -> None:
    from clipprobe.probes import MLPProbe

    X, Y, train = _problem(seed=3)
    probe = MLPProbe(**HP).fit(X[train[0]], Y[0][train[0]])
    assert probe.form_ == "gram"
    fit = fit_many("non_linear_non_gap", X, Y[:1], train[:1], params=HP)
    np.testing.assert_allclose(probe.decision_function(X), fit.scores[0].numpy(), atol=2e-4)


@pytest.mark.parametrize("d", [8, 30, 700], ids=["features-only", "kernel-explicit", "kernel-wide"])
def test_probes_explicit_mlp_equals_torch_mlp(d: int) -> None:
    """The hand-written SGD (feature form when rows >= 2 x features, else the kernel form) is torch's."""
    X, Y, train = _problem(d=d, seed=4)
    fit = fit_many("non_linear_non_gap", X, Y, train, params=HP, dtype=torch.float64, form="explicit")
    for b in range(Y.shape[0]):
        ref = _explicit_reference(X, Y[b], train[b])
        torch.testing.assert_close(fit.scores[b], ref, rtol=1e-9, atol=1e-9)
