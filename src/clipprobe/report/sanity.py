"""Sanity flags for a sweep's results: patterns that deserve a second look, not a headline.

- ``uniform_high_module``: a module that scores the same high value for every concept and probe
  and stands out from its neighbours (the seed's ``module:1``);
- ``identical_epochs``: epochs whose results are identical for every fit (same weights?);
- ``at_majority``: accuracies at (or below) the majority-class baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from clipprobe.report.tables import normalize_results, select_epoch


@dataclass(frozen=True)
class SanityFlag:
    kind: str
    message: str


def uniform_high_modules(results: pd.DataFrame, epoch: int | None = None, *, high: float = 0.9,
                         spread: float = 0.07, margin: float = 0.05) -> list[SanityFlag]:
    """Modules whose every cell (concept x probe) is >= ``high`` within ``spread`` of each other,
    and whose mean beats both neighbouring modules' means by ``margin`` (so the first and last
    modules, where uniform high scores are expected, are never flagged)."""
    data = normalize_results(results)
    at = data[data["epoch"] == select_epoch(data, epoch)]
    stats = at.groupby("module_index")["test_acc"].agg(["min", "max", "mean", "count"]).sort_index()
    index = list(stats.index)
    flags = []
    for i, m in enumerate(index):
        s = stats.loc[m]
        if s["count"] < 2 or s["min"] < high or s["max"] - s["min"] > spread:
            continue
        neighbours = [stats.loc[index[j], "mean"] for j in (i - 1, i + 1) if 0 <= j < len(index)]
        if len(neighbours) < 2 or s["mean"] - max(neighbours) < margin:
            continue
        flags.append(SanityFlag(
            "uniform_high_module",
            f"module:{m} scores {s['min']:.3f}-{s['max']:.3f} for every concept and probe "
            f"({int(s['count'])} fits), {s['mean'] - max(neighbours):.3f} above its neighbours: "
            "check it is not seeing the raw image (colour/texture leak) before reading it as a concept",
        ))
    return flags


def identical_epochs(results: pd.DataFrame) -> list[SanityFlag]:
    """Groups of epochs whose test accuracies are identical for every fit they share."""
    data = normalize_results(results)
    wide = data.pivot_table(index=["concept", "module", "probe"], columns="epoch",
                            values="test_acc", aggfunc="first")
    epochs = list(wide.columns)
    seen: set[int] = set()
    flags = []
    for i, a in enumerate(epochs):
        if a in seen:
            continue
        same = [b for b in epochs[i + 1:] if b not in seen and _same(wide[a], wide[b])]
        if not same:
            continue
        seen.update(same)
        group = [a, *same]
        fps = data[data["epoch"].isin(group)].get("fingerprint")
        fp_note = ""
        if fps is not None and fps.notna().all():
            n_fp = fps.nunique()
            fp_note = (" and the same weight fingerprint" if n_fp == 1
                       else f" although their weight fingerprints differ ({n_fp} distinct)")
        flags.append(SanityFlag(
            "identical_epochs",
            f"epochs {', '.join(map(str, group))} give identical test accuracy for all "
            f"{int(wide[a].notna().sum())} fits{fp_note}: are these really different checkpoints?",
        ))
    return flags


def _same(a: pd.Series, b: pd.Series) -> bool:
    both = a.notna() & b.notna()
    return bool(both.any()) and bool((a[both] == b[both]).all())


def at_majority(results: pd.DataFrame, epoch: int | None = None, *, tol: float = 1e-9) -> list[SanityFlag]:
    """Cells whose accuracy does not beat the majority-class baseline (the probe learnt nothing)."""
    data = normalize_results(results)
    at = data[data["epoch"] == select_epoch(data, epoch)]
    at = at[at["test_majority_acc"].notna()]
    low = at[at["test_acc"] <= at["test_majority_acc"] + tol]
    if low.empty:
        return []
    cells = ", ".join(f"{r.concept}/{r.module}/{r.probe}" for r in low.head(8).itertuples())
    more = f" and {len(low) - 8} more" if len(low) > 8 else ""
    return [SanityFlag(
        "at_majority",
        f"{len(low)} of {len(at)} accuracies are at or below the majority baseline "
        f"({cells}{more}): those probes learnt nothing",
    )]


def sanity_flags(results: pd.DataFrame, epoch: int | None = None) -> list[SanityFlag]:
    """Every flag for a sweep at one epoch (identical epochs looks across all epochs)."""
    return [*uniform_high_modules(results, epoch), *identical_epochs(results),
            *at_majority(results, epoch)]
