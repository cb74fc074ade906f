"""Sanity flags and claims for a sweep's results, each backed by an interval or a paired test.

- ``uniform_high_module``: a module that scores high for every concept and probe and stands out
  from its neighbours (the seed's ``module:1``); "stands out" means at least half of its cells beat
  the same cell at both neighbouring modules by McNemar's exact test, Holm-corrected;
- ``identical_epochs``: epochs whose per-image test predictions are identical for every fit they
  share (0 discordant images: same weights?); test accuracy when per-image results are missing;
- ``at_majority``: fits whose exact 95% interval includes (or lies below) the majority baseline;
- ``missing_fits``: cells of the sweep's grid (concepts x modules x probes x epochs it holds) with no fit (a fit
  that failed, a sweep that stopped): the tables show "-" there;
- ``emergences``: "concept X emerges at epoch E at module M": the first epoch whose accuracy rose
  significantly since the previous epoch (paired test, Holm over every epoch-to-epoch comparison of
  the sweep) and whose interval lies above the majority baseline.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipprobe.report.significance import (
    ALPHA,
    METHOD,
    adjust,
    describe_test,
    epoch_changes,
    mcnemar_exact,
    pairable,
)
from clipprobe.report.tables import normalize_results, select_epoch


@dataclass(frozen=True)
class SanityFlag:
    kind: str
    message: str


def uniform_high_modules(results: pd.DataFrame, epoch: int | None = None, *, high: float = 0.9,
                         spread: float = 0.07, margin: float = 0.05, alpha: float = ALPHA,
                         method: str = METHOD) -> list[SanityFlag]:
    """Modules whose every cell (concept x probe) is >= ``high`` within ``spread`` of each other,
    whose mean beats both neighbouring modules' means by ``margin`` (so the first and last modules,
    where uniform high scores are expected, are never flagged), and where at least half the cells
    beat the same cell at both neighbours by a paired test (Holm over all those tests), among the cells
    tested against both or refuted by one. Without per-image predictions on the same test images as
    both neighbours the flag is raised on the point estimates and says it is untested."""
    data = normalize_results(results)
    at = data[data["epoch"] == select_epoch(data, epoch)]
    stats = at.groupby("module_index")["test_acc"].agg(["min", "max", "mean", "count"]).sort_index()
    name_of = dict(zip(at["module_index"], at["module"], strict=False))
    index = list(stats.index)
    candidates = []
    for i, m in enumerate(index):
        s = stats.loc[m]
        if s["count"] < 2 or s["min"] < high or s["max"] - s["min"] > spread:
            continue
        neighbours = [index[j] for j in (i - 1, i + 1) if 0 <= j < len(index)]
        means = [stats.loc[n, "mean"] for n in neighbours]
        if len(neighbours) < 2 or s["mean"] - max(means) < margin:
            continue
        candidates.append((m, neighbours, s, s["mean"] - max(means)))
    tests = []  # (module, cell key, neighbour, p) for every candidate cell vs each neighbour
    cells = at.set_index(["module_index", "concept", "probe"])
    for m, neighbours, _, _ in candidates:
        for (concept, probe), cell in at[at["module_index"] == m].set_index(["concept", "probe"]).iterrows():
            for n in neighbours:
                key = (n, concept, probe)
                if key not in cells.index:
                    continue
                other = cells.loc[key]
                p = math.nan
                if pairable(cell["test_correct"], other["test_correct"], cell["test_images"], other["test_images"]):
                    gained, lost, p = mcnemar_exact(cell["test_correct"], other["test_correct"])
                    if gained <= lost:
                        p = 1.0  # not better than the neighbour: one-sided claim, count it as a failure
                tests.append((m, (concept, probe), n, p))
    adjusted = adjust([t[3] for t in tests], method)
    flags = []
    for m, _, s, lead in candidates:
        by_cell: dict[tuple[str, str], list[float]] = {}
        for t, q in zip(tests, adjusted, strict=True):
            if t[0] == m:
                by_cell.setdefault(t[1], []).append(q)
        # a cell beats both neighbours with a significant test against each; one test that is not
        # significant refutes it; a cell lacking a test against a neighbour is neither
        beat = [c for c, qs in by_cell.items() if len(qs) == 2 and all(q < alpha for q in qs)]
        failed = [c for c, qs in by_cell.items() if any(q >= alpha for q in qs)]
        untested = int(s["count"]) - len(beat) - len(failed)
        text = (f"{name_of[m]} scores {s['min']:.3f}-{s['max']:.3f} for every concept and probe "
                f"({int(s['count'])} fits), {lead:.3f} above its neighbours")
        if beat or failed:
            if len(beat) * 2 < len(beat) + len(failed):
                continue
            family = int(sum(not math.isnan(q) for q in adjusted))
            text += (f"; {len(beat)} of {len(beat) + len(failed)} cells beat both neighbours "
                     f"({describe_test(method, alpha)} over {family} tests)")
            if untested:
                text += f"; {untested} cells not tested against both (no per-image predictions on the same test images)"
        else:
            text += " (not tested against both neighbours: no per-image predictions on the same test images)"
        flags.append(SanityFlag("uniform_high_module", text + ": check it is not seeing the raw image "
                                "(colour/texture leak) before reading it as a concept"))
    return flags


def identical_epochs(results: pd.DataFrame) -> list[SanityFlag]:
    """Groups of epochs whose per-image test predictions (else test accuracies) are identical for
    every fit they share."""
    data = normalize_results(results)
    per_image = bool((data["test_correct"] != "").all())
    value = "test_correct" if per_image else "test_acc"
    wide = data.pivot_table(index=["concept", "module", "probe"], columns="epoch",
                            values=value, aggfunc="first")
    epochs = list(wide.columns)
    values, known = _cells(wide)
    seen = np.zeros(len(epochs), bool)
    flags = []
    for i, a in enumerate(epochs):
        if seen[i]:
            continue
        later = np.arange(i + 1, len(epochs))
        later = later[~seen[later]]
        matched = later[_same_as(values, known, i, later)]
        if not len(matched):
            continue
        seen[matched] = True
        group = [a, *(epochs[j] for j in matched)]
        fps = data[data["epoch"].isin(group)].get("fingerprint")
        fp_note = ""
        if fps is not None and fps.notna().all():
            n_fp = fps.nunique()
            fp_note = (" and the same weight fingerprint" if n_fp == 1
                       else f" although their weight fingerprints differ ({n_fp} distinct)")
        what = ("identical per-image test predictions (0 discordant images)" if per_image
                else "identical test accuracy")
        flags.append(SanityFlag(
            "identical_epochs",
            f"epochs {', '.join(map(str, group))} give {what} for all "
            f"{int(wide[a].notna().sum())} fits{fp_note}: are these really different checkpoints?",
        ))
    return flags


def _cells(wide: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(values, known) of a cells x epochs frame: floats as they are, strings as codes (equal codes = equal
    strings); ``known`` is False where the cell has no fit at that epoch."""
    if all(pd.api.types.is_numeric_dtype(t) for t in wide.dtypes):
        values = wide.to_numpy(float)
        return values, ~np.isnan(values)
    codes, _ = pd.factorize(wide.to_numpy(object).ravel())
    values = codes.reshape(wide.shape)
    return values, values >= 0


def _same_as(values: np.ndarray, known: np.ndarray, a: int, others: np.ndarray) -> np.ndarray:
    """For each epoch column in ``others``: it shares at least one fit with column ``a`` and agrees with it on
    every fit they share (the pairwise test, for all of ``others`` at once)."""
    both = known[:, [a]] & known[:, others]
    agree = (values[:, [a]] == values[:, others]) | ~both
    return both.any(axis=0) & agree.all(axis=0)


def at_majority(results: pd.DataFrame, epoch: int | None = None) -> list[SanityFlag]:
    """Cells whose exact 95% interval includes (or lies below) the majority-class baseline."""
    data = normalize_results(results)
    at = data[data["epoch"] == select_epoch(data, epoch)]
    at = at[at["test_majority_acc"].notna()]
    low = at[at["test_acc_ci_low"] <= at["test_majority_acc"]]
    if low.empty:
        return []
    cells = ", ".join(f"{r.concept}/{r.module}/{r.probe}" for r in low.head(8).itertuples())
    more = f" and {len(low) - 8} more" if len(low) > 8 else ""
    return [SanityFlag(
        "at_majority",
        f"{len(low)} of {len(at)} fits have a 95% interval that includes (or lies below) the majority "
        f"baseline ({cells}{more}): no evidence those probes learnt anything",
    )]


def missing_fits(results: pd.DataFrame) -> list[SanityFlag]:
    """Cells of the grid the results span (every concept x module x probe x epoch that occurs) without a fit."""
    data = normalize_results(results)
    keys = ["concept", "module", "probe", "epoch"]
    distinct = data[keys].drop_duplicates()
    axes = [list(dict.fromkeys(data[k])) for k in keys]
    if len(distinct) == math.prod(len(a) for a in axes):  # every cell of the grid is there
        return []
    present = set(distinct.itertuples(index=False, name=None))
    expected = list(itertools.product(*axes))
    missing = [cell for cell in expected if cell not in present]
    if not missing:
        return []
    cells = ", ".join(f"{c}/{m}/{p} at epoch {e}" for c, m, p, e in missing[:8])
    more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
    return [SanityFlag(
        "missing_fits",
        f"{len(missing)} of {len(expected)} fits of the sweep's grid (concepts x modules x probes x epochs) are "
        f"missing ({cells}{more}): a fit failed or the sweep stopped; the tables show - there, and "
        "`clipprobe probe --resume SWEEP_RUN_ID` fits what is missing",
    )]


def emergences(results: pd.DataFrame, *, alpha: float = ALPHA, method: str = METHOD) -> pd.DataFrame:
    """Per cell (concept, module, probe), the first epoch whose accuracy rose significantly since the
    previous epoch of the sweep (paired test, one family over all epoch-to-epoch comparisons) and whose
    exact interval lies above the majority baseline: ``concept, module, probe, epoch, acc_from,
    acc_to, n_gained, n_lost, p_adjusted``."""
    data = normalize_results(results)
    changes = epoch_changes(data, alpha=alpha, method=method)
    rises = changes[changes["significant"] & (changes["difference"] > 0)]
    above = data.assign(_above=data["test_acc_ci_low"] > data["test_majority_acc"])
    keyed = above.set_index(["concept", "module", "probe", "epoch"])["_above"]
    rows = []
    for key, group in rises.groupby(["concept", "module", "probe"], sort=False):
        for r in group.sort_values("epoch_to").itertuples():
            if bool(keyed.get((*key, r.epoch_to), False)):
                rows.append({"concept": key[0], "module": key[1], "probe": key[2], "epoch": int(r.epoch_to),
                             "acc_from": r.acc_from, "acc_to": r.acc_to, "n_gained": int(r.n_b_only),
                             "n_lost": int(r.n_a_only), "p_adjusted": r.p_adjusted})
                break
    return pd.DataFrame(rows, columns=["concept", "module", "probe", "epoch", "acc_from", "acc_to",
                                       "n_gained", "n_lost", "p_adjusted"])


def emergence_text(found: pd.DataFrame, limit: int = 20) -> str:
    """One line per emergence (at most ``limit``), or a line saying there is none."""
    if found.empty:
        return (f"no cell rises significantly from one epoch to the next above its majority baseline "
                f"({describe_test()})")
    lines = [f"{r.concept} / {r.module} / {r.probe} emerges at epoch {r.epoch}: {r.acc_from:.3f} -> "
             f"{r.acc_to:.3f} ({r.n_gained} test images gained, {r.n_lost} lost, adjusted p {r.p_adjusted:.3g})"
             for r in found.head(limit).itertuples()]
    if len(found) > limit:
        lines.append(f"... and {len(found) - limit} more (emergences.csv)")
    lines.append(f"({describe_test()}, over every epoch-to-epoch comparison; the new accuracy's "
                 "95% interval lies above the majority baseline)")
    return "\n".join(lines)


def sanity_flags(results: pd.DataFrame, epoch: int | None = None) -> list[SanityFlag]:
    """Every flag for a sweep at one epoch (identical epochs looks across all epochs)."""
    return [*missing_fits(results), *uniform_high_modules(results, epoch), *identical_epochs(results),
            *at_majority(results, epoch)]
