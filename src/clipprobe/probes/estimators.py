"""``LinearProbe`` and ``MLPProbe``: scikit-learn-like faces over the batched solvers (one probe at a time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from clipprobe.probes.batched import first_layer_weights, fit_many
from clipprobe.probes.design import standardise
from clipprobe.probes.kinds import (
    LINEAR_HPARAMS,
    MLP_HPARAMS,
    HParam,
    ProbeKind,
    probe_kind,
    validate,
)

_L, _M = LINEAR_HPARAMS, MLP_HPARAMS


def _as_tensor(X: Any, name: str = "X") -> torch.Tensor:
    arr = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if arr.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(arr.shape)}: expected a 2-d array (images, features)")
    return arr


class _Probe(ClassifierMixin, BaseEstimator):
    """Shared face: validation, label encoding, standardisation, predict/score.

    ``device``, ``form`` and ``fast_gram`` say how a fit computes, not what it fits (``fit_many``).
    """

    _table: dict[str, HParam] = {}
    _kind = ""

    def _check_params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.get_params().items() if k not in ("device", "form", "fast_gram")}
        if self.form not in ("auto", "explicit", "gram"):
            raise ValueError(f"{type(self).__name__}: form={self.form!r} is not allowed: expected auto, explicit or gram")
        return validate(type(self).__name__, self._table, params)

    def fit(self, X: Any, y: Any) -> _Probe:
        """Fit on all rows of X ``(n, d)`` with binary labels y; returns self."""
        params = self._check_params()
        Xt = _as_tensor(X)
        y = np.asarray(y)
        if y.shape != (Xt.shape[0],):
            raise ValueError(f"y has shape {y.shape}: expected ({Xt.shape[0]},) labels, one per row of X")
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            raise ValueError(f"y has classes {classes.tolist()}: a probe needs exactly two")
        fit = fit_many(self._kind, Xt, encoded[None], np.ones((1, len(y)), bool), None, params,
                       device=self.device, form=self.form, keep_stats=True, fast_gram=self.fast_gram)
        mean, std, keep = fit.design.stats[0]
        self.classes_ = classes
        self.n_features_in_ = Xt.shape[1]
        self.mean_, self.std_, self.keep_ = mean, std, keep
        self.n_dropped_features_ = int(fit.n_dropped_features[0])
        self.form_ = fit.form
        self._set_weights(fit, Xt)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, y) first")

    def _standardised(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        Xt = _as_tensor(X)
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xt.shape[1]} features: the probe was fitted on {self.n_features_in_}")
        dt = self.mean_.dtype
        return standardise(Xt.to(dt), self.mean_, self.std_, self.keep_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, 2)``, columns in the order of ``classes_``."""
        p = torch.sigmoid(torch.as_tensor(self.decision_function(X))).numpy()
        return np.stack([1 - p, p], 1)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (values of ``classes_``)."""
        self._check_fitted()
        return self.classes_[(self.decision_function(X) > 0).astype(int)]


class LinearProbe(_Probe):
    """L2 logistic regression on standardised features (sub-precision features dropped); Newton solver.

    ``weight_decay`` is the L2 strength on the mean loss: sklearn's ``C = 1 / (weight_decay * n)``.
    """

    _table = _L
    _kind = "linear_gap"

    def __init__(self, weight_decay: float = _L["weight_decay"].default, max_iter: int = _L["max_iter"].default,
                 tol: float = _L["tol"].default, drop_rtol: float = _L["drop_rtol"].default,
                 device: str = "cpu", form: str = "auto", fast_gram: bool = True) -> None:
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.tol = tol
        self.drop_rtol = drop_rtol
        self.device = device
        self.form = form
        self.fast_gram = fast_gram

    def _set_weights(self, fit: Any, X: torch.Tensor) -> None:
        self.coef_ = first_layer_weights(fit, X).double().cpu()
        self.intercept_ = float(fit.state[1][0])

    def decision_function(self, X: Any) -> np.ndarray:
        """The logit of class ``classes_[1]`` per row."""
        z = self._standardised(X).double()
        return (z @ self.coef_ + self.intercept_).numpy()


class MLPProbe(_Probe):
    """One hidden ReLU layer on standardised features / sqrt(kept), full-batch SGD with momentum and L2.

    With ``optimizer='sgd'`` and more features than rows it trains exactly in the Gram space of the rows.
    """

    _table = _M
    _kind = "non_linear_gap"

    def __init__(self, hidden: int = _M["hidden"].default, lr: float = _M["lr"].default,
                 momentum: float = _M["momentum"].default, weight_decay: float = _M["weight_decay"].default,
                 steps: int = _M["steps"].default, dropout: float = _M["dropout"].default,
                 optimizer: str = _M["optimizer"].default, seed: int = _M["seed"].default,
                 drop_rtol: float = _M["drop_rtol"].default, device: str = "cpu", form: str = "auto",
                 fast_gram: bool = True) -> None:
        self.hidden = hidden
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.steps = steps
        self.dropout = dropout
        self.optimizer = optimizer
        self.seed = seed
        self.drop_rtol = drop_rtol
        self.device = device
        self.form = form
        self.fast_gram = fast_gram

    def _set_weights(self, fit: Any, X: torch.Tensor) -> None:
        self.coefs1_ = first_layer_weights(fit, X).cpu()  # (hidden, d) on standardised features
        self.intercepts1_ = fit.state.bias1[0].cpu()
        self.coefs2_ = fit.state.second[0].cpu()
        self.intercept2_ = float(fit.state.bias2[0])

    def decision_function(self, X: Any) -> np.ndarray:
        """The logit of class ``classes_[1]`` per row."""
        z = self._standardised(X).to(self.coefs1_.dtype)
        hidden = torch.relu(z @ self.coefs1_.T + self.intercepts1_)
        return (hidden @ self.coefs2_ + self.intercept2_).double().numpy()


ESTIMATORS: dict[str, type[_Probe]] = {"linear": LinearProbe, "mlp": MLPProbe}
"""The probe registry: a kind's ``estimator`` name -> its class."""


def make_probe(kind: str | ProbeKind, overrides: Mapping[str, Any] | None = None) -> _Probe:
    """A fresh, unfitted estimator of probe ``kind`` with its defaults, then ``overrides``; validated."""
    pk = probe_kind(kind)
    return ESTIMATORS[pk.estimator](**pk.params(overrides))
