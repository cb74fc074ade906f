"""Paired tests between fits on the same test images, with multiple-comparison control across a table.

Two cells (two modules, two epochs of one concept and probe, two sweeps) are compared on the same
test images: their per-image correctness (``test_correct``) gives the discordant pairs, images one
cell gets right and the other wrong, and McNemar's exact test asks whether those split evenly. The
p-values of a table are adjusted together (Holm by default, which controls the family-wise error;
``fdr_bh`` for Benjamini-Hochberg), so a mark means "significant after correction across the table".

Cells that do not share their test images (different ``test_images`` hashes, or a sweep made before
per-image predictions were stored) are not tested: their p-value is NaN and they are never marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
METHOD = "holm"
METHODS = ("holm", "fdr_bh", "bonferroni")
PAIRED_COLUMNS = ("n_a_only", "n_b_only", "p_value", "p_adjusted", "significant")


def correctness(text: str) -> np.ndarray:
    """'0'/'1' per test image -> bool array."""
    return np.frombuffer(str(text).encode("ascii"), np.uint8) == ord("1")


def mcnemar_exact_p(a_only: np.ndarray | int, b_only: np.ndarray | int) -> np.ndarray:
    """McNemar's exact two-sided p-value for arrays of discordant counts, computed as statsmodels'
    ``mcnemar(table, exact=True)`` computes it for one table: ``2 * Binomial(b + c, 1/2).cdf(min(b, c))``, capped
    at 1 (so equal to it bit for bit: tests/test_report_significance.py); 1 where no image differs."""
    a = np.asarray(a_only, dtype=np.int64)
    b = np.asarray(b_only, dtype=np.int64)
    n = a + b
    p = np.minimum(binom.cdf(np.minimum(a, b), n, 0.5) * 2, 1.0)
    return np.where(n == 0, 1.0, p)


def mcnemar_exact(correct_a: str | Sequence[bool], correct_b: str | Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test on two fits' per-image correctness over the same test images, in the same
    order: (images only A gets right, images only B gets right, two-sided p-value; 1 when none differ)."""
    a = correctness(correct_a) if isinstance(correct_a, str) else np.asarray(correct_a, bool)
    b = correctness(correct_b) if isinstance(correct_b, str) else np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"per-image results of {len(a)} and {len(b)} test images: a paired test needs "
                         "the same test images in the same order")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return a_only, b_only, float(mcnemar_exact_p(a_only, b_only))


def discordant_counts(correct_a: Sequence[str], correct_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images only A gets right, images only B gets right) for many pairs of '0'/'1' strings at once, each
    pair of one length (pairs of different lengths are refused by ``pairable`` before); equal to
    ``mcnemar_exact``'s counts pair by pair, in one pass per string length instead of one per pair."""
    a_only = np.zeros(len(correct_a), np.int64)
    b_only = np.zeros(len(correct_a), np.int64)
    lengths = np.fromiter((len(t) for t in correct_a), np.int64, len(correct_a))
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        if length == 0:
            continue
        a = _bits([correct_a[i] for i in rows], int(length))
        b = _bits([correct_b[i] for i in rows], int(length))
        a_only[rows] = np.count_nonzero(a & ~b, axis=1)
        b_only[rows] = np.count_nonzero(~a & b, axis=1)
    return a_only, b_only


def _bits(texts: Sequence[str], length: int) -> np.ndarray:
    """'0'/'1' strings of one length -> bool matrix (strings x length), '1' = right (as ``correctness``)."""
    joined = "".join(texts).encode("ascii")
    return np.frombuffer(joined, np.uint8).reshape(len(texts), length) == ord("1")


def adjust(p_values: Sequence[float], method: str = METHOD) -> np.ndarray:
    """Adjusted p-values (Holm, Benjamini-Hochberg ``fdr_bh`` or Bonferroni) over the finite ones;
    NaN stays NaN and does not count in the family."""
    if method not in METHODS:
        raise ValueError(f"unknown correction {method!r}: expected one of {', '.join(METHODS)}")
    p = np.asarray(p_values, float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = holm(p[finite]) if method == "holm" else multipletests(p[finite], method=method)[1]
    return out


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, computed as statsmodels' ``multipletests(method="holm")`` computes them
    (sorted p times n, n - 1, .., 1, running maximum, capped at 1; equal to it: tests/test_report_fast_paths.py),
    without its ``gc.collect()`` on every call (a second each with the report's figures in memory)."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    ranked = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
    out = np.empty_like(ranked)
    out[order] = np.minimum(ranked, 1.0)
    return out


def pairable(correct_a: object, correct_b: object, images_a: object, images_b: object) -> bool:
    """True when both cells have per-image results on the same test images (same hash and length)."""
    texts = [correct_a, correct_b, images_a, images_b]
    if not all(isinstance(t, str) and t for t in texts):
        return False
    return images_a == images_b and len(str(correct_a)) == len(str(correct_b))


def paired_tests(frame: pd.DataFrame, *, alpha: float = ALPHA, method: str = METHOD) -> pd.DataFrame:
    """Add ``n_a_only``, ``n_b_only``, ``p_value``, ``p_adjusted`` and ``significant`` to a frame
    with ``test_correct_a/b`` and ``test_images_a/b``; the whole frame is one family. Pairs that are not
    ``pairable`` get no counts and a NaN p-value; the others are counted and tested all at once
    (``discordant_counts``, ``mcnemar_exact_p``: the numbers ``mcnemar_exact`` gives pair by pair)."""
    out = frame.copy()
    columns = [out[c].tolist() for c in ("test_correct_a", "test_correct_b", "test_images_a", "test_images_b")]
    tested = np.fromiter((pairable(*row) for row in zip(*columns, strict=True)), bool, len(out))
    rows = np.flatnonzero(tested)
    a_only, b_only = discordant_counts([columns[0][i] for i in rows], [columns[1][i] for i in rows])
    p = np.full(len(out), math.nan)
    p[rows] = mcnemar_exact_p(a_only, b_only)
    for name, counts in (("n_a_only", a_only), ("n_b_only", b_only)):
        values = np.zeros(len(out), np.int64)
        values[rows] = counts
        out[name] = pd.arrays.IntegerArray(values, ~tested)
    out["p_value"] = p
    out["p_adjusted"] = adjust(p, method)
    out["significant"] = out["p_adjusted"].lt(alpha).to_numpy()
    return out


def _with_predictions(data: pd.DataFrame) -> pd.DataFrame:
    out = data.copy()
    for col in ("test_correct", "test_images"):
        out[col] = out[col].fillna("").astype(str) if col in out.columns else ""
    return out


def epoch_changes(results: pd.DataFrame, *, epochs: Sequence[int] | None = None, alpha: float = ALPHA,
                  method: str = METHOD) -> pd.DataFrame:
    """Every cell (concept, module, probe) from one epoch of the sweep to the next: ``epoch_from``,
    ``epoch_to``, ``acc_from``, ``acc_to``, ``difference`` and the paired-test columns (``a`` = the
    earlier epoch). ``epochs`` restricts the epochs looked at (consecutive within that list); all
    returned rows form one family for the correction."""
    data = _with_predictions(results)
    chosen = sorted({int(e) for e in (epochs if epochs is not None else pd.unique(data["epoch"]))})
    keys = ["concept", "module", "probe"]
    cols = [*keys, "test_acc", "test_correct", "test_images"]
    if len(chosen) < 2:
        empty = pd.DataFrame(columns=[*keys, "epoch_from", "epoch_to", "acc_from", "acc_to", "difference",
                                      *PAIRED_COLUMNS])
        return empty
    # Every consecutive pair in one merge: each earlier row is keyed by the epoch after it; rows in the order
    # of one merge per pair, concatenated (earlier epoch, then the table's order).
    following = dict(zip(chosen, chosen[1:], strict=False))
    a = data.loc[data["epoch"].isin(chosen[:-1]), [*cols, "epoch"]].rename(columns={"epoch": "epoch_from"})
    a = a.assign(epoch_to=a["epoch_from"].map(following)).sort_values("epoch_from", kind="stable")
    b = data.loc[data["epoch"].isin(chosen[1:]), [*cols, "epoch"]].rename(columns={"epoch": "epoch_to"})
    joined = a.merge(b, on=[*keys, "epoch_to"], suffixes=("_a", "_b"))
    tested = paired_tests(joined, alpha=alpha, method=method)
    out = tested.rename(columns={"test_acc_a": "acc_from", "test_acc_b": "acc_to"})
    out["difference"] = out["acc_to"] - out["acc_from"]
    return out[[*keys, "epoch_from", "epoch_to", "acc_from", "acc_to", "difference", *PAIRED_COLUMNS]]


def change_mark(significant: bool, difference: float) -> str:
    """'↑' / '↓' for a significant rise / fall, '' otherwise."""
    if not significant or not np.isfinite(difference) or difference == 0:
        return ""
    return "↑" if difference > 0 else "↓"


def describe_test(method: str = METHOD, alpha: float = ALPHA) -> str:
    names = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}
    return f"McNemar exact test on the same test images, {names[method]}-corrected, alpha {alpha:g}"
