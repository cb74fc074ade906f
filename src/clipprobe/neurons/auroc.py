"""Per-unit AUROC of pooled activations for a concept's positives against its negatives (INVERT's score), the
two-sided Mann-Whitney p-value (exact where a unit has no ties) and Benjamini-Hochberg q over a module's units."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

POOLINGS = ("mean", "max")
EXACT_MAX_CELLS = 2_000_000_000  # n_small * n_pos * n_neg work of the exact null; beyond it the normal approximation


@dataclass(frozen=True)
class UnitAuroc:
    """One concept's scores for every unit of a module, in unit order."""

    auroc: np.ndarray  # (units,) P(a positive's activation > a negative's), ties count half
    u_statistic: np.ndarray  # (units,) Mann-Whitney U of the positives
    p_value: np.ndarray  # (units,) two-sided
    p_method: np.ndarray  # (units,) "exact" (no ties) or "asymptotic" (normal, tie-corrected, continuity-corrected)
    n_pos: int
    n_neg: int


def pool_maps(maps: np.ndarray, channels: int, pooling: str = "mean") -> np.ndarray:
    """``(images, channels*h*w)`` full maps (a ``Bf16Matrix`` or array) -> ``(images, channels)`` by mean or max."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    n, size = maps.shape
    if size % channels:
        raise ValueError(f"maps have {size} values per image: not a multiple of the {channels} channels")
    out = np.empty((n, channels), np.float32)
    for i0 in range(0, n, 256):
        block = np.asarray(maps[i0:i0 + 256], np.float32).reshape(-1, channels, size // channels)
        out[i0:i0 + 256] = block.max(2) if pooling == "max" else block.mean(2)
    return out


@lru_cache(maxsize=64)
def exact_null_cdf(n1: int, n2: int) -> np.ndarray:
    """P(U <= u) for u = 0 .. n1*n2 under the null (no ties): the Gaussian binomial [n1+n2 choose n1]_q normalised.

    Built factor by factor, [n2+i choose i] = [n2+i-1 choose i-1] (1 - q^(n2+i)) / (1 - q^i), each step
    renormalised (its total grows by (n2+i)/i) so the numbers stay probabilities. The lower tail, where the
    p-values are read, is formed by additions only (the subtraction touches u >= n2+i)."""
    n1, n2 = min(n1, n2), max(n1, n2)
    size = n1 * n2 + 1
    poly = np.zeros(size, np.float64)
    poly[0] = 1.0
    for i in range(1, n1 + 1):
        shift = n2 + i
        a = poly.copy()
        a[shift:] -= poly[:size - shift]
        pad = (-size) % i
        c = np.concatenate([a, np.zeros(pad)]).reshape(-1, i).cumsum(0).reshape(-1)[:size]  # divide by 1 - q^i
        poly = np.maximum(c, 0.0) * (i / shift)
    return np.minimum(np.cumsum(poly), 1.0)


def unit_auroc(values: np.ndarray, labels: np.ndarray, *, exact_max_cells: float = EXACT_MAX_CELLS) -> UnitAuroc:
    """AUROC and Mann-Whitney p of every column of ``values`` ``(images, units)`` for 0/1 ``labels`` ``(images,)``.

    Vectorised over units: average ranks per column, U = rank sum of the positives - n1(n1+1)/2, AUROC =
    U / (n1 n0) (``sklearn.metrics.roc_auc_score``). A unit without ties gets the exact two-sided p-value
    of ``scipy.stats.mannwhitneyu(method="exact")``, read from one null distribution per (n1, n0); a unit
    with ties (dead ReLU units tie at 0) the normal approximation with tie and continuity correction
    (``method="asymptotic"``); a constant unit p = 1."""
    x = np.asarray(values, np.float64)
    y = np.asarray(labels).astype(bool)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"values {x.shape} and labels {y.shape}: expected (images, units) and (images,)")
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"labels hold {n1} positives and {n0} negatives: expected both")
    n = n1 + n0
    ranks = stats.rankdata(x, axis=0)  # average ranks per unit
    u1 = ranks[y].sum(0) - n1 * (n1 + 1) / 2
    auroc = u1 / (n1 * n0)
    sorted_x = np.sort(x, 0)
    tied = (np.diff(sorted_x, axis=0) == 0).any(0)
    p = np.empty(x.shape[1])
    exact = ~tied & (min(n1, n0) * n1 * n0 <= exact_max_cells)
    if exact.any():
        cdf = exact_null_cdf(n1, n0)
        u_small = np.rint(np.minimum(u1[exact], n1 * n0 - u1[exact])).astype(np.int64)
        p[exact] = np.minimum(1.0, 2.0 * cdf[u_small])
    normal = ~exact
    if normal.any():
        # tie term sum(t^3 - t) per unit from the sorted columns: run lengths of equal values
        xs = sorted_x[:, normal]
        tie_term = np.zeros(xs.shape[1])
        new = np.vstack([np.ones((1, xs.shape[1]), bool), np.diff(xs, axis=0) != 0])
        for j in np.flatnonzero((~new).any(0)):
            t = np.diff(np.append(np.flatnonzero(new[:, j]), n)).astype(np.float64)
            tie_term[j] = np.sum(t ** 3 - t)
        s = np.sqrt(n1 * n0 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
        u_big = np.maximum(u1[normal], n1 * n0 - u1[normal])
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (u_big - n1 * n0 / 2 - 0.5) / s
        pn = np.minimum(1.0, 2.0 * stats.norm.sf(z))
        p[normal] = np.where(s > 0, pn, 1.0)
    method = np.where(exact, "exact", "asymptotic")
    return UnitAuroc(auroc, u1, p, method, n1, n0)


def bh_q(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q) of one family (``scipy.stats.false_discovery_control``)."""
    p = np.asarray(p_values, np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q
