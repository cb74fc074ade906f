"""The Gram-space MLP equals an explicit torch.nn MLP trained the same way (same init, same steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipprobe.probes import design, fit_many
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
    mlp32 = fit_many("non_linear_non_gap", X.float(), Y, train, params=HP, dtype=torch.float32, fast_gram=False)
    assert (mlp32.scores.double() - mlp64.scores).abs().max() < 1e-3


def test_probes_gram_bf16_products_move_accuracy_by_less_than_one_test_row(monkeypatch) -> None:
    monkeypatch.setattr(design, "native_bf16", lambda device: True)  # as on a CPU with AVX512-BF16 or AMX
    rng = np.random.default_rng(4)
    latent = rng.normal(size=(120, 4))
    X = torch.tensor(latent @ rng.normal(size=(4, 9000)) + rng.normal(size=(120, 9000)) * 2 + 5)
    Y = torch.tensor(np.stack([latent[:, b % 4] + 0.3 * rng.normal(size=120) > 0 for b in range(6)])).long()
    train = torch.zeros(6, 120, dtype=torch.bool)
    for b in range(6):
        train[b, rng.permutation(120)[:80]] = True
    X = X.float()
    assert design.gram_product_dtype(torch.device("cpu"), torch.float32, 9000) == torch.bfloat16
    assert design.gram_product_dtype(torch.device("cpu"), torch.float32, 1280) is None  # pooled vectors stay exact
    for kind in ("linear_non_gap", "non_linear_non_gap"):
        fast = fit_many(kind, X, Y, train, params=HP if kind.startswith("non") else None)
        exact = fit_many(kind, X, Y, train, params=HP if kind.startswith("non") else None, fast_gram=False)
        assert not torch.equal(fast.scores, exact.scores)  # the bf16 products really ran
        test = ~train
        acc_fast = ((fast.scores > 0).long() == Y)[test].reshape(6, 40).double().mean(1)
        acc_exact = ((exact.scores > 0).long() == Y)[test].reshape(6, 40).double().mean(1)
        assert acc_exact.mean() > 0.75, acc_exact  # a learnable concept: the comparison means something
        moved_rows = ((acc_fast - acc_exact).abs() * int(test[0].sum())).mean()
        assert moved_rows < 1.0, (kind, moved_rows)


def test_probes_gram_estimator_weights_predict_like_the_batch() -> None:
    from clipprobe.probes import MLPProbe

    X, Y, train = _problem(seed=3)
    # the weights are rebuilt from float32 products
    probe = MLPProbe(**HP, fast_gram=False).fit(X[train[0]], Y[0][train[0]])
    fit = fit_many("non_linear_non_gap", X, Y[:1], train[:1], params=HP, fast_gram=False)
    assert probe.form_ == "gram"
    np.testing.assert_allclose(probe.decision_function(X), fit.scores[0].numpy(), atol=2e-4)


@pytest.mark.parametrize("d", [8, 30, 700], ids=["features-only", "kernel-explicit", "kernel-wide"])
def test_probes_explicit_mlp_equals_torch_mlp(d: int) -> None:
    """The hand-written SGD (feature form when rows >= 2 x features, else the kernel form) is torch's."""
    X, Y, train = _problem(d=d, seed=4)
    fit = fit_many("non_linear_non_gap", X, Y, train, params=HP, dtype=torch.float64, form="explicit")
    for b in range(Y.shape[0]):
        ref = _explicit_reference(X, Y[b], train[b])
        torch.testing.assert_close(fit.scores[b], ref, rtol=1e-9, atol=1e-9)


def _offset_problem(n: int = 60, d: int = 300, seed: int = 6):
    """Half the features sit at 1e4 times their spread from zero (as deep features of trained networks)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    spread = latent @ rng.normal(size=(3, d)) + 0.5 * rng.normal(size=(n, d))
    offset = np.where(np.arange(d) < d // 2, 1e4, 0.0) * rng.uniform(1, 2, size=d)
    Y = torch.tensor(np.stack([latent[:, b] > 0 for b in range(3)])).long()
    train = torch.zeros(3, n, dtype=torch.bool)
    for b in range(3):
        train[b, rng.permutation(n)[:40]] = True
    return spread.astype(np.float32), offset.astype(np.float32), Y, train


def test_probes_drop_rule_judges_the_precision_features_were_computed_in() -> None:
    from clipprobe.activations.features import PooledFeatures
    from clipprobe.probes.kinds import DEFAULT_DROP_RTOL, PRECISION_DROP_RTOL, drop_rtol_for

    assert drop_rtol_for("fp32", 0.0) == 0.0 and drop_rtol_for("fp32") == DEFAULT_DROP_RTOL  # fp32: as given
    assert drop_rtol_for("bf16", 1e-6) == PRECISION_DROP_RTOL["bf16"] == 1e-2 and drop_rtol_for("bf16", 0.5) == 0.5
    spread, _, Y, train = _offset_problem(d=8)
    X = spread[:, :8] * np.r_[np.full(4, 3e-3), np.ones(4)].astype(np.float32) + 1.0  # 4 features spread 3e-3 of 1
    fp32 = fit_many("linear_gap", X, Y, train)
    assert fp32.n_dropped_features.tolist() == [0, 0, 0]  # above float32 resolution: kept
    bf16 = fit_many("linear_gap", X, Y, train, computed_in="bf16")
    assert bf16.n_dropped_features.tolist() == [4, 4, 4]  # below bf16's: rounding noise, dropped
    tagged = X.view(PooledFeatures)
    tagged.computed_in = "bf16"  # what CheckpointActivations.gap returns for a bf16 pass
    assert fit_many("linear_gap", tagged, Y, train).n_dropped_features.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="unknown feature precision 'fp16'"):
        fit_many("linear_gap", X, Y, train, computed_in="fp16")


@pytest.mark.parametrize("form", ["explicit", "gram"])
def test_probes_on_offset_bf16_maps_equal_probes_on_their_float32_values(form: str) -> None:
    from clipprobe.activations.features import Bf16Matrix, to_bf16_bits

    spread, offset, Y, train = _offset_problem()
    stored = Bf16Matrix(to_bf16_bits(torch.from_numpy(spread)), offset)  # bf16 of the centred values
    values = stored[:, :]  # the float32 values it stands for (what a float32 cache would hold)
    HPL = {"weight_decay": 0.05, "tol": 1e-10}
    a = fit_many("linear_non_gap", stored, Y, train, params=HPL, form=form, fast_gram=False)
    b = fit_many("linear_non_gap", torch.from_numpy(values).double(), Y, train, params=HPL, form=form,
                 dtype=torch.float64)
    assert a.n_dropped_features.tolist() == b.n_dropped_features.tolist() == [0, 0, 0]
    # centred products lose nothing to the 1e4 offsets; float32 values of 1e4 + x carry 1e-3 of x's spread
    torch.testing.assert_close(a.scores.double(), b.scores, rtol=0, atol=2e-3 * float(b.scores.abs().max()))
    raw = Bf16Matrix(to_bf16_bits(torch.from_numpy(values)))  # bf16 of the raw values: the variation is gone
    dropped = fit_many("linear_non_gap", raw, Y, train, params=HPL, form=form).n_dropped_features
    assert dropped.tolist() == [150, 150, 150]  # judged at bf16 storage resolution: the offset half is noise
