"""Fit many independent probes on one feature matrix in one tensor program: ``fit_many``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipprobe.probes.design import Design, build_design, init_first_layer, standardise
from clipprobe.probes.kinds import ProbeKind, probe_kind
from clipprobe.probes.solvers import (
    MLPState,
    cpu_workers,
    fit_logistic,
    fit_mlp,
    map_slices,
    threads_for,
)

log = logging.getLogger(__name__)

FORMS = ("auto", "explicit", "gram")


@dataclass
class BatchedFit:
    """Per-probe decision values for every row of X (NaN where a probe was not evaluated)."""

    kind: str
    params: dict[str, Any]
    form: str  # "explicit" or "gram"
    scores: torch.Tensor  # (B, N) logits on CPU, in the dtype of the fit
    n_dropped_features: torch.Tensor  # (B,) long
    group: torch.Tensor  # (B,) index of each probe's design group
    design: Design | None = field(default=None, repr=False)
    state: Any = field(default=None, repr=False)  # solver output, in design coordinates

    def predictions(self) -> torch.Tensor:
        """Predicted labels ``(B, N)`` as 0/1 (rows not evaluated give 0; mask them yourself)."""
        return (self.scores > 0).long()

    def probabilities(self) -> torch.Tensor:
        """P(label = 1) ``(B, N)``."""
        return torch.sigmoid(self.scores)


def _as_mask(name: str, value: Any, shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).bool().cpu()
    if mask.ndim == 1:
        mask = mask[None]
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}: expected {shape} (probes x rows of X)")
    return mask


def _groups(train: torch.Tensor, evaluate: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Probes sharing (train rows, evaluated rows) share one design; rows list training rows first."""
    key = torch.cat([train, evaluate | train], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    N = train.shape[1]
    rows, ntrain = [], []
    for u in uniq:
        tr = torch.nonzero(u[:N]).flatten()
        ev = torch.nonzero(u[N:] & ~u[:N]).flatten()
        rows.append(torch.cat([tr, ev]))
        ntrain.append(len(tr))
    return inverse, rows, ntrain


def fit_many(
    kind: str | ProbeKind,
    X: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    train_mask: np.ndarray | torch.Tensor,
    eval_mask: np.ndarray | torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    form: str = "auto",
    keep_stats: bool = False,
    computed_in: str | None = None,
    fast_gram: bool = True,
) -> BatchedFit:
    """Fit B probes of ``kind`` on X ``(N, d)``: probe b learns ``labels[b]`` (0/1) on rows ``train_mask[b]``.

    Scores come back for rows ``eval_mask[b]`` (default: all) and the training rows. ``params`` override
    the kind's defaults. ``form`` "auto" uses the exact Gram form when d exceeds the training rows
    (SGD MLPs and linear probes), else explicit features. Deterministic for ``params['seed']``.

    The near-constant-feature rule (``drop_rtol``) judges the precision X was computed in: ``computed_in``
    ("fp32" or "bf16"), by default X's own ``computed_in`` attribute (``CheckpointActivations.features``
    sets it), else fp32; a ``Bf16Matrix`` adds the resolution of its storage (``design.precision_rule``).
    ``fast_gram=False`` computes float32 Gram-form products in float32 (``design.gram_product_dtype``).
    """
    pk = probe_kind(kind)
    hp = pk.params(params)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}: expected one of {', '.join(FORMS)}")
    if X.ndim != 2:
        raise ValueError(f"X has shape {tuple(X.shape)}: expected (images, features)")
    N, d = X.shape
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    if y.ndim == 1:
        y = y[None]
    B = y.shape[0]
    if tuple(y.shape) != (B, N):
        raise ValueError(f"labels has shape {tuple(y.shape)}: expected ({B}, {N}) (probes x rows of X)")
    train = _as_mask("train_mask", train_mask, (B, N))
    evaluate = torch.ones_like(train) if eval_mask is None else _as_mask("eval_mask", eval_mask, (B, N))
    y = y.long()
    for b in range(B):
        classes = torch.unique(y[b][train[b]])
        if len(classes) != 2 or not bool(((classes == 0) | (classes == 1)).all()):
            raise ValueError(f"probe {b}: training labels are {classes.tolist()}: expected both classes 0 and 1")
    mlp = pk.estimator == "mlp"
    inverse, rows, ntrain = _groups(train, evaluate)
    if form == "auto":
        form = "gram" if d > max(ntrain) and not (mlp and hp["optimizer"] == "adam") else "explicit"
    if form == "gram" and mlp and hp["optimizer"] == "adam":
        raise ValueError("optimizer='adam' cannot run in the Gram form: use form='explicit' or optimizer='sgd'")
    dev = torch.device(device)
    design = build_design(
        X, rows, ntrain, form=form, hidden=hp["hidden"] if mlp else None, seed=hp.get("seed", 0),
        drop_rtol=hp["drop_rtol"], unit_norm=mlp, device=dev, dtype=dtype, keep_stats=keep_stats,
        computed_in=computed_in, fast_gram=fast_gram,
    )
    g = inverse.to(dev)
    Fb = design.features[g]  # (B, n, r)
    yb = torch.gather(y.to(dev), 1, design.rows[inverse].to(dev))
    wb = design.train[inverse].to(dev, dtype)
    t_max = max(ntrain)
    log.debug("fit_many %s: %d probes, %d groups, form %s, d=%d", pk.name, B, len(rows), form, d)
    step_flops = 6.0 * B * t_max * Fb.shape[2] * (hp["hidden"] if mlp else Fb.shape[2])
    workers = cpu_workers(Fb.device, step_flops)
    with threads_for(step_flops if Fb.device.type == "cpu" else float("inf")):  # workers run single-threaded
        parts = map_slices(lambda lo, hi: _solve(hp, mlp, design, g[lo:hi], Fb[lo:hi], yb[lo:hi], wb[lo:hi], t_max),
                           B, workers)
    state, out = _join(parts)
    scores = torch.full((B, N), float("nan"), dtype=dtype)
    valid = design.valid[inverse]
    scores[torch.arange(B)[:, None].expand_as(valid)[valid], design.rows[inverse][valid]] = out.cpu().to(dtype)[valid]
    return BatchedFit(pk.name, hp, form, scores, design.n_dropped[inverse], inverse, design, state)


def _solve(hp: dict[str, Any], mlp: bool, design: Design, g: torch.Tensor, Fb: torch.Tensor,
           yb: torch.Tensor, wb: torch.Tensor, t_max: int) -> tuple[Any, torch.Tensor]:
    """Train every probe on its training rows; return the solver state and logits on all its rows."""
    B = Fb.shape[0]
    if mlp:
        init = design.init[g] if design.init.shape[0] > 1 else design.init.expand(B, -1, -1)
        offset = design.offset[g] if design.offset is not None else None
        state = fit_mlp(
            Fb[:, :t_max], yb[:, :t_max], wb[:, :t_max], init,
            offset[:, :t_max] if offset is not None else None,
            lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"], steps=hp["steps"],
            dropout=hp["dropout"], optimizer=hp["optimizer"], seed=hp["seed"],
        )
        with torch.no_grad():
            out = state.logits(Fb, offset)
    else:
        beta, bias = fit_logistic(Fb[:, :t_max], yb[:, :t_max], wb[:, :t_max], hp["weight_decay"],
                                  hp["max_iter"], hp["tol"])
        state = (beta, bias)
        out = torch.einsum("bnr,br->bn", Fb, beta) + bias[:, None]
    return state, out


def _join(parts: list[tuple[Any, torch.Tensor]]) -> tuple[Any, torch.Tensor]:
    """Concatenate the solver states and logits of consecutive probe slices."""
    if len(parts) == 1:
        return parts[0]
    states, outs = zip(*parts, strict=True)
    out = torch.cat(outs)
    if isinstance(states[0], MLPState):
        return MLPState(*(torch.cat([getattr(st, f) for st in states]) for f in ("first", "bias1", "second", "bias2")),
                        decay=states[0].decay), out
    return (torch.cat([st[0] for st in states]), torch.cat([st[1] for st in states])), out


def first_layer_weights(fit: BatchedFit, X: np.ndarray | torch.Tensor, probe: int = 0) -> torch.Tensor:
    """Probe ``probe``'s weights on standardised kept features: linear ``(d,)``, MLP first layer ``(H, d)``.

    Needs ``fit_many(..., keep_stats=True)``. Gram form: one more pass over the training rows of X.
    """
    design = fit.design
    if design is None or design.stats is None:
        raise ValueError("first_layer_weights needs a fit made with keep_stats=True")
    g = int(fit.group[probe])
    scale = float(design.scale[g])
    if isinstance(fit.state, MLPState):
        coef = fit.state.first[probe]  # (H, r)
    else:
        coef = fit.state[0][probe][None]  # (1, r)
    if design.form == "explicit":
        out = coef * scale
        return out[0] if not isinstance(fit.state, MLPState) else out
    mean, std, keep = design.stats[g]
    t = int(design.train[g].sum())
    basis = design.basis[g][:t]  # (t, r)
    dev, dt = coef.device, coef.dtype
    if isinstance(fit.state, MLPState):
        a = fit.state.decay
        A = (coef - a * design.init[g]) @ basis.mT  # (H, t)
    else:
        a, A = 0.0, coef @ basis.mT
    d = X.shape[1]
    rows = design.rows[g][:t]
    Ztr = standardise(torch.as_tensor(np.asarray(X[rows.numpy()]) if not isinstance(X, torch.Tensor) else X[rows])
                      .to(dev, dt), mean.to(dev, dt), std.to(dev, dt), keep.to(dev)) * scale
    W = A @ Ztr
    if a:
        W = W + a * init_first_layer(fit.params["seed"], W.shape[0], 0, d).to(dev, dt)
    W = W * scale  # weights act on standardised features z; u = scale * z
    return W if isinstance(fit.state, MLPState) else W[0]
