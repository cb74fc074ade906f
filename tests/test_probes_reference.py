"""Reference check: linear_gap matches scikit-learn LogisticRegression (same L2, standardised features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from clipprobe.probes import fit_many
from clipprobe.probes.batched import first_layer_weights


def _problem(d: int, n: int = 300, n_train: int = 210, fits: int = 75):
    rng = np.random.default_rng(d)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.2, 5, size=d) + rng.normal(size=d) * 3).astype(np.float32)
    Y = np.zeros((fits, n), np.int64)
    train = np.zeros((fits, n), bool)
    for b in range(fits):
        separability = [0.3, 1.0, 3.0, 10.0][b % 4]
        w = rng.normal(size=d)
        logit = separability * (X - X.mean(0)) / X.std(0) @ w / np.sqrt(d)
        Y[b] = (logit + rng.logistic(size=n) > 0).astype(int)
        pos, neg = np.flatnonzero(Y[b] == 1), np.flatnonzero(Y[b] == 0)
        k = round(len(pos) * n_train / n)
        train[b, rng.choice(pos, k, replace=False)] = True
        train[b, rng.choice(neg, n_train - k, replace=False)] = True
    return X, Y, train


@pytest.mark.parametrize("d", [16, 120])
def test_probes_linear_coefficients_and_intercepts_equal_sklearns(d: int) -> None:
    """Same L2 logistic regression on the same standardised features: the same solution, to 1e-6."""
    X, Y, train = _problem(d)
    X = X.astype(np.float64)
    n_train, wd = 210, 5e-3
    fit = fit_many("linear_gap", X, Y, train, params={"weight_decay": wd, "tol": 1e-12}, dtype=torch.float64,
                   keep_stats=True)
    for b in range(len(Y)):
        tr = train[b]
        scaler = StandardScaler().fit(X[tr])
        ref = LogisticRegression(C=1 / (wd * n_train), max_iter=5000, tol=1e-8, solver="newton-cholesky")
        ref.fit(scaler.transform(X[tr]), Y[b, tr])
        coef = first_layer_weights(fit, X, b).double().numpy()
        np.testing.assert_allclose(coef, ref.coef_[0], rtol=0, atol=1e-6, err_msg=f"fit {b}")
        assert float(fit.state[1][b]) == pytest.approx(ref.intercept_[0], abs=1e-5), b


@pytest.mark.parametrize(
    "d", [16, 120, pytest.param(48, marks=pytest.mark.slow), pytest.param(320, marks=pytest.mark.slow)]
)
def test_probes_linear_float32_matches_sklearn_within_one_test_sample(d: int) -> None:
    """The default float32 path: accuracies agree with scikit-learn's to one test image."""
    n_train, wd = 210, 5e-3
    X, Y, train = _problem(d)
    fits = len(Y)
    fit = fit_many("linear_gap", X, Y, train, params={"weight_decay": wd})
    ours = fit.predictions().numpy()
    agree = []
    for b in range(fits):
        tr, te = train[b], ~train[b]
        scaler = StandardScaler().fit(X[tr])
        ref = LogisticRegression(C=1 / (wd * n_train), max_iter=5000, tol=1e-8)
        ref.fit(scaler.transform(X[tr]), Y[b, tr])
        acc_ref = ref.score(scaler.transform(X[te]), Y[b, te])
        acc_ours = np.mean(ours[b, te] == Y[b, te])
        agree.append(abs(acc_ref - acc_ours) <= 1 / te.sum() + 1e-12)
    assert np.mean(agree) >= 0.95, f"{np.mean(agree):.2%} of fits within one test sample"
