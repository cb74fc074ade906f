"""Contract tests run over every probe kind: the scikit-learn face, validation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from clipprobe.probes import PROBE_KINDS, LinearProbe, MLPProbe, make_probe, probe_kind
from clipprobe.probes.kinds import validate

FAST = {"steps": 40, "hidden": 16}


def _data(n: int = 80, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return X, y


def _make(kind: str, **extra: object):
    pk = probe_kind(kind)
    overrides = {**(FAST if pk.estimator == "mlp" else {}), **extra}
    return make_probe(pk, overrides)


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_fit_returns_self_and_learns(kind: str) -> None:
    X, y = _data()
    probe = _make(kind)
    assert probe.fit(X, y) is probe
    assert probe.score(X, y) > 0.8
    proba = probe.predict_proba(X)
    assert proba.shape == (len(y), 2) and np.allclose(proba.sum(1), 1)
    assert set(np.unique(probe.predict(X))) <= {0, 1}
    assert probe.n_dropped_features_ == 0


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_unfitted_predict_raises(kind: str) -> None:
    with pytest.raises(NotFittedError, match="not fitted yet"):
        _make(kind).predict(np.zeros((3, 12)))


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_bad_hyperparameter_is_one_clear_error(kind: str) -> None:
    X, y = _data()
    probe = _make(kind).set_params(weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"weight_decay=-1.0 is not allowed: expected float in"):
        probe.fit(X, y)


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_deterministic_for_a_seed(kind: str) -> None:
    X, y = _data(seed=3)
    a = _make(kind).fit(X, y).decision_function(X)
    b = _make(kind).fit(X, y).decision_function(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_clone_and_set_params(kind: str) -> None:
    probe = _make(kind)
    copy = clone(probe).set_params(weight_decay=0.05)
    assert copy.get_params()["weight_decay"] == 0.05
    assert probe.get_params()["weight_decay"] != 0.05
    assert not hasattr(copy, "classes_")


def test_probes_keeps_label_values() -> None:
    X, y = _data()
    labels = np.where(y == 1, "red", "other")
    probe = LinearProbe().fit(X, labels)
    assert list(probe.classes_) == ["other", "red"]
    assert probe.score(X, labels) > 0.8


def test_probes_rejects_bad_inputs() -> None:
    X, y = _data()
    with pytest.raises(ValueError, match="a probe needs exactly two"):
        LinearProbe().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="expected a 2-d array"):
        LinearProbe().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="unknown probe kind 'mlp_gap': expected one of linear_gap"):
        probe_kind("mlp_gap")
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not allowed: expected one of 'sgd', 'adam'"):
        MLPProbe(optimizer="rmsprop").fit(X, y)
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['width'\]"):
        validate("MLPProbe", probe_kind("non_linear_gap").hparams, {"width": 3})


def test_probes_adam_is_explicit_only() -> None:
    X, y = _data(d=200)
    probe = MLPProbe(optimizer="adam", lr=0.01, steps=30, hidden=8)
    assert probe.fit(X, y).form_ == "explicit"
    with pytest.raises(ValueError, match="adam' cannot run in the Gram form"):
        clone(probe).set_params(form="gram").fit(X, y)


@pytest.mark.parametrize("kind", list(PROBE_KINDS))
def test_probes_kind_table_is_consistent(kind: str) -> None:
    pk = probe_kind(kind)
    params = pk.params()
    assert set(params) == set(pk.hparams)
    assert pk.features in ("gap", "map")
    names = {dim.name for dim in pk.search_space}
    assert "weight_decay" in names and names <= set(pk.hparams)
    if pk.estimator == "mlp":
        assert {"lr", "steps", "hidden", "dropout"} <= names

    class Trial:  # the corners of the space must be valid hyper-parameters
        def suggest_float(self, name, low, high, log=False):
            return high

        def suggest_int(self, name, low, high, step=1, log=False):
            return low

        def suggest_categorical(self, name, choices):
            return choices[0]

    pk.params(pk.suggest(Trial()))
