"""Per probe group: standardise with training-part statistics, drop sub-precision features, build the design.

Sub-precision means below the resolution of the precision the features were computed and stored in:
a feature matrix may say so with ``computed_in`` / ``stored_in`` ("fp32" or "bf16") and an ``offset``
subtracted before storage (``clipprobe.activations.features.Bf16Matrix``, ``PooledFeatures``); plain arrays are float32.

A *group* is a set of rows of X (training rows first) shared by probes that differ only in their labels.
Its design is either the standardised features themselves ("explicit") or, when there are more features
than training rows, exact coordinates in the span of the training rows ("gram"): with V an orthonormal
basis of that span, every solver here only ever moves weights inside it, so X V carries all that matters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from clipprobe.core.devices import native_bf16
from clipprobe.probes.kinds import drop_rtol_for
from clipprobe.probes.solvers import cpu_workers, slices, threads_for, worker_pool

INIT_BLOCK = 4096  # columns per seeded block of the first-layer init: any slice is reproducible
_TINY = torch.finfo(torch.float32).tiny

FAST_PRODUCTS_MIN_FEATURES = 8192  # below this the float32 products cost too little to trade precision for


def gram_product_dtype(device: torch.device, dtype: torch.dtype, features: int | None = None) -> torch.dtype | None:
    """The dtype float32 Gram-form products over ``features`` columns are computed in, or None for ``dtype``.

    bf16 copies of the standardised features where the device multiplies bf16 natively (CPUs with
    AVX512-BF16 or AMX: about twice the float32 rate, benchmarks/results/code_timings.md; CUDA GPUs of compute capability 8.0+), for
    wide inputs only (full maps, not pooled vectors: at least ``FAST_PRODUCTS_MIN_FEATURES`` columns).
    Each column chunk's product is rounded to bf16 before it is added to the float32 Gram matrix.
    benchmarks/bench_sweep.py measures what this moves against ``fast_gram=False`` (``fit_many``,
    ``evaluate_concepts``, ``SweepPlan``), which turns it off; float64 is always exact.
    """
    if dtype != torch.float32:
        return None
    if features is not None and features < FAST_PRODUCTS_MIN_FEATURES:
        return None
    return torch.bfloat16 if native_bf16(device) else None


_RANK_RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def feature_stats(train: torch.Tensor, drop_rtol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, std (population, 1 where dropped) and keep mask of training rows ``(n, d)``.

    A feature is dropped when its std <= ``drop_rtol`` * max(|mean|, tiny): its spread is rounding noise.
    """
    mean = train.mean(0)
    std = train.std(0, correction=0) if train.shape[0] > 1 else torch.zeros_like(mean)
    keep = std > drop_rtol * mean.abs().clamp_min(_TINY)
    return mean, torch.where(keep, std, torch.ones_like(std)), keep


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with dropped features set to 0 (so they carry nothing)."""
    return torch.where(keep, (x - mean) / std, torch.zeros((), dtype=x.dtype, device=x.device))


def _standardised(x: torch.Tensor, t: int, drop_rtol: float, *, offset: torch.Tensor | None = None,
                  stored_rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``standardise(x, *feature_stats(x[:t], drop_rtol))`` and those stats, in fewer passes over x.

    With ``offset``, x holds stored values ``value - offset``: the rule compares the spread with the size
    of the values (mean + offset) by ``drop_rtol`` and, with ``stored_rtol``, with the size of the stored
    values (their mean) by ``stored_rtol``. The returned mean is the values' (offset added back).
    """
    mean = x[:t].mean(0)
    c = x - mean
    if t > 1:
        ct = c[:t]
        std = (ct * ct).mean(0).sqrt_()
    else:
        std = torch.zeros_like(mean)
    value_mean = mean if offset is None else mean + offset
    keep = std > drop_rtol * value_mean.abs().clamp_min(_TINY)
    if stored_rtol is not None:
        keep &= std > stored_rtol * mean.abs().clamp_min(_TINY)
    std = torch.where(keep, std, torch.ones_like(std))
    c *= torch.where(keep, 1.0 / std, torch.zeros((), dtype=x.dtype, device=x.device))
    return c, value_mean, std, keep


def _stored_bits(X: object) -> np.ndarray | None:
    bits = getattr(X, "bits", None)
    return bits if isinstance(bits, np.ndarray) and bits.dtype == np.uint16 else None


def precision_rule(X: object, drop_rtol: float, computed_in: str | None = None
                   ) -> tuple[float, float | None, np.ndarray | None]:
    """The drop rule for feature matrix X: ``(rtol against the values' size, rtol against the stored
    values' size or None, per-feature offset of the stored values or None)``.

    ``computed_in`` (default: X's ``computed_in``, else "fp32") sets the first; a matrix stored in a
    coarser precision than it was computed in (X's ``stored_in``) adds the second, judged on the values
    as stored (``value - offset`` for a ``Bf16Matrix`` with an offset), whose rounding scales with them.
    """
    computed_in = computed_in or getattr(X, "computed_in", "fp32")
    stored_in = getattr(X, "stored_in", "fp32")
    value_rtol = drop_rtol_for(computed_in, drop_rtol)
    stored_rtol = drop_rtol_for(stored_in, drop_rtol)
    offset = getattr(X, "offset", None) if _stored_bits(X) is not None else None
    if offset is None and stored_rtol <= value_rtol:
        return value_rtol, None, None
    return value_rtol, stored_rtol, offset


def init_first_layer(seed: int, hidden: int, start: int, stop: int) -> torch.Tensor:
    """Columns ``start:stop`` of the N(0, 1) first-layer init ``(hidden, stop - start)``, float32 on CPU."""
    blocks = []
    for b in range(start // INIT_BLOCK, math.ceil(stop / INIT_BLOCK)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        block = torch.randn(hidden, INIT_BLOCK, generator=gen)
        lo = max(start, b * INIT_BLOCK) - b * INIT_BLOCK
        hi = min(stop, (b + 1) * INIT_BLOCK) - b * INIT_BLOCK
        blocks.append(block[:, lo:hi])
    return torch.cat(blocks, 1) if blocks else torch.zeros(hidden, 0)


def load_columns(X: np.ndarray | torch.Tensor, rows: torch.Tensor | None, c0: int, c1: int,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``rows`` (all when None) and columns ``c0:c1`` of X as a tensor on ``device``.

    X may be a numpy array or memmap, or a ``Bf16Matrix`` of bf16 bit patterns: those come back as a
    bfloat16 tensor of the values as stored, i.e. minus the matrix's ``offset`` if it has one (a view
    of the memmap on CPU: nothing is read until the rows are used), to be cast to ``dtype`` row group
    by row group; every other input comes back in ``dtype``.
    """
    bits = _stored_bits(X)
    if bits is not None:
        with warnings.catch_warnings():  # a read-only memmap: the view is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            block = torch.from_numpy(bits[:, c0:c1]).view(torch.bfloat16)
        if rows is not None:
            block = block[rows]
        return block.to(device)
    if isinstance(X, torch.Tensor):
        block = X[:, c0:c1] if rows is None else X[rows.to(X.device), c0:c1]
    else:
        block = torch.from_numpy(np.ascontiguousarray(X[:, c0:c1] if rows is None else X[rows.numpy(), c0:c1]))
    return block.to(device=device, dtype=dtype)


@dataclass
class Design:
    """Each group's rows in solver coordinates (explicit features or exact Gram-span coordinates)."""

    rows: torch.Tensor  # (G, n) row of X per position (train rows first); padding repeats row 0
    valid: torch.Tensor  # (G, n) bool: a real row, not padding
    train: torch.Tensor  # (G, n) bool: a training row of the group
    features: torch.Tensor  # (G, n, r)
    init: torch.Tensor | None  # (G or 1, H, r): the first-layer init in these coordinates (MLP only)
    offset: torch.Tensor | None  # (G, n, H): init applied to the part of each row outside the span
    n_dropped: torch.Tensor  # (G,) features dropped by the precision rule
    form: str  # "explicit" or "gram"
    basis: torch.Tensor | None = None  # (G, n_train, r): V = Z_train^T basis (gram form)
    scale: torch.Tensor | None = None  # (G,): factor applied to standardised features (MLP: 1/sqrt(kept))
    stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # per group, when kept


def build_design(
    X: np.ndarray | torch.Tensor,
    group_rows: list[torch.Tensor],
    group_ntrain: list[int],
    *,
    form: str,
    hidden: int | None = None,
    seed: int = 0,
    drop_rtol: float,
    unit_norm: bool = False,
    device: torch.device,
    dtype: torch.dtype,
    chunk: int = 4 * INIT_BLOCK,
    keep_stats: bool = False,
    fast_gram: bool = True,
    computed_in: str | None = None,
) -> Design:
    """Stream X in column chunks once and build every group's design.

    ``group_rows[g]`` lists the group's rows, its first ``group_ntrain[g]`` being the training part.
    ``hidden`` asks for an MLP init (seeded by ``seed``); ``unit_norm`` divides the standardised
    features by sqrt(number kept) so one learning rate suits 16 or 400,000 features.
    ``fast_gram`` lets the Gram-form products use ``gram_product_dtype`` (bf16 where fast); False: float32.
    Features are dropped by ``precision_rule(X, drop_rtol, computed_in)``; a ``Bf16Matrix`` stored on an
    offset is standardised from its stored (centred) values, so the products never see the offset.
    """
    n_rows, d = X.shape
    G = len(group_rows)
    n_max = max(len(r) for r in group_rows)
    t_max = max(group_ntrain)
    rows = torch.zeros(G, n_max, dtype=torch.long)
    valid = torch.zeros(G, n_max, dtype=torch.bool)
    train = torch.zeros(G, n_max, dtype=torch.bool)
    for g, (r, t) in enumerate(zip(group_rows, group_ntrain, strict=True)):
        rows[g, : len(r)] = r
        valid[g, : len(r)] = True
        train[g, :t] = True
    used = torch.unique(rows[valid])
    whole = len(used) == n_rows
    pos = rows if whole else torch.searchsorted(used, rows)  # position of each row in the loaded block

    value_rtol, stored_rtol, offset = precision_rule(X, drop_rtol, computed_in)
    gram = form == "gram"
    low = gram_product_dtype(device, dtype, d) if gram and fast_gram else None
    kept = torch.zeros(G, dtype=torch.float64)
    if gram:
        K = torch.zeros(G, n_max, t_max, dtype=dtype, device=device)
        P = torch.zeros(G, n_max, hidden, dtype=dtype, device=device) if hidden else None
        feats, init = None, None
    else:
        feats = torch.zeros(G, n_max, d, dtype=dtype, device=device)
        init = torch.zeros(1, hidden, d, dtype=dtype, device=device) if hidden else None
    stats: list[list[torch.Tensor]] | None = [[] for _ in range(G)] if keep_stats else None

    # products here are far below SMALL_STEP_FLOPS: on CPU the groups are shared by single-threaded workers
    # (about twice as fast as intra-op threads on a busy CPU: benchmarks/results/code_timings.md)
    small = 2.0 * n_max * chunk * (t_max + (hidden or 0)) if device.type == "cpu" else float("inf")
    parts = slices(G, cpu_workers(device, small))

    def load(c0: int) -> tuple[int, int, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        c1 = min(d, c0 + chunk)
        block = load_columns(X, None if whole else used, c0, c1, device, dtype)
        w0 = init_first_layer(seed, hidden, c0, c1).to(device=device, dtype=dtype) if hidden else None
        w0_low = w0.to(low) if low is not None and w0 is not None else None
        off = torch.from_numpy(np.asarray(offset[c0:c1])).to(device, dtype) if offset is not None else None
        return c0, c1, block, w0, w0_low, off

    def add(lo: int, hi: int, c0: int, c1: int, block: torch.Tensor, w0: torch.Tensor | None,
            w0_low: torch.Tensor | None, off: torch.Tensor | None) -> None:
        for g in range(lo, hi):  # each group is touched by one worker only
            n_g, t_g = len(group_rows[g]), group_ntrain[g]
            xg = block[pos[g, :n_g].to(device)].to(dtype)
            z, mean, std, keep = _standardised(xg, t_g, value_rtol, offset=off, stored_rtol=stored_rtol)
            kept[g] += int(keep.sum())
            if stats is not None:
                stats[g].append(torch.stack([mean, std, keep.to(dtype)]).cpu())
            if gram:
                if low is not None:  # products in bf16 (fp32 accumulation inside each product)
                    z = z.to(low)
                    K[g, :n_g, :t_g] += (z @ z[:t_g].T).to(dtype)
                    if P is not None:
                        P[g, :n_g] += (z @ w0_low.T).to(dtype)
                else:
                    K[g, :n_g, :t_g] += z @ z[:t_g].T
                    if P is not None:
                        P[g, :n_g] += z @ w0.T
            else:
                feats[g, :n_g, c0:c1] = z

    starts = list(range(0, d, chunk))
    with threads_for(small), worker_pool(1) as loader, worker_pool(len(parts)) as pool:
        ahead = loader.submit(load, starts[0]) if starts else None
        for i in range(len(starts)):
            c0, c1, block, w0, w0_low, off = ahead.result()
            if i + 1 < len(starts):  # read the next columns while this block's products run
                ahead = loader.submit(load, starts[i + 1])
            if init is not None:
                init[0, :, c0:c1] = w0
            if len(parts) == 1:
                add(0, G, c0, c1, block, w0, w0_low, off)
            else:
                for f in [pool.submit(add, lo, hi, c0, c1, block, w0, w0_low, off) for lo, hi in parts]:
                    f.result()

    n_dropped = (d - kept).round().long()
    scale = torch.ones(G, dtype=torch.float64)
    if unit_norm:
        scale = 1.0 / kept.clamp_min(1.0).sqrt()
    s = scale.to(device=device, dtype=dtype)
    kept_stats = None
    if stats is not None:
        kept_stats = []
        for parts in stats:
            m, sd, k = torch.cat(parts, 1)
            kept_stats.append((m, sd, k.bool()))

    if not gram:
        feats *= s[:, None, None]
        return Design(rows, valid, train, feats, init, None, n_dropped, "explicit", None, scale, kept_stats)

    K *= (s * s)[:, None, None]
    if P is not None:
        P *= s[:, None, None]
    basis, features = gram_coordinates(K, train[:, :t_max], dtype)
    init_c = offset = None
    if P is not None:
        init_c = P[:, :t_max].mT @ basis  # (G, H, r): W0 V
        offset = P - features @ init_c.mT  # (G, n, H): W0 (I - V V^T) u
    return Design(rows, valid, train, features, init_c, offset, n_dropped, "gram", basis, scale, kept_stats)


def gram_coordinates(K: torch.Tensor, train: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """From K = Z Z_train^T ``(G, n, t)``: basis ``U S^-1/2`` of the training span and coordinates K basis."""
    Ktt = K[:, : K.shape[2]].double()
    Ktt = 0.5 * (Ktt + Ktt.mT)
    mask = train.to(Ktt.device)
    Ktt = Ktt * (mask[:, :, None] & mask[:, None, :])
    with threads_for(0.0):  # small eigh: one thread, by far faster on a busy CPU (benchmarks/results/code_timings.md)
        eigval, eigvec = torch.linalg.eigh(Ktt)
    top = eigval.amax(-1, keepdim=True).clamp_min(_TINY)
    good = eigval > _RANK_RTOL.get(dtype, 1e-6) * top
    inv = torch.where(good, eigval.clamp_min(_TINY).rsqrt(), torch.zeros_like(eigval))
    basis = eigvec * inv[:, None, :]
    features = K.double() @ basis
    return basis.to(dtype), features.to(dtype)
