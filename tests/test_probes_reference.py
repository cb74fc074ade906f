"""Reference check: linear_gap matches scikit-learn LogisticRegression (same L2, standardised features)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from clipprobe.probes import fit_many


@pytest.mark.parametrize(
    "d", [16, 120, pytest.param(48, marks=pytest.mark.slow), pytest.param(320, marks=pytest.mark.slow)]
)
def test_probes_linear_matches_sklearn_within_one_test_sample(d: int) -> None:
    n, n_train, fits, wd = 300, 210, 75, 5e-3
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
