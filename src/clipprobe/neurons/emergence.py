"""Units over training, as pure functions of the units table (``neurons.schema``): which units are detectors at
each epoch, when a unit emerges (a significant rise into detector status, tested as the module-level "when" is),
whether it stays, and detector counts per module and epoch.

The checkpoints come from one training run, so unit ``module:3/17`` is the same unit at every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests

from clipprobe.neurons.schema import DETECTOR_IOU, DETECTOR_Q

ALPHA = 0.05
METHOD = "holm"  # as the module-level "when" (report.significance): family-wise error over every comparison
METHODS = ("holm", "fdr_bh", "bonferroni")
UNIT_KEYS = ("module", "unit", "concept")
UNIT_WHEN_COLUMNS = (
    "module", "unit", "concept", "group",
    "first_epoch",     # first epoch the unit passes the detector thresholds
    "emerged_epoch",   # first epoch it passes after failing at the epoch before, the rise tested significant; <NA> if none
    "epoch_from",      # the epoch before emerged_epoch
    "auroc_from", "auroc_to", "z", "p_value", "p_adjusted",
    "stays",           # passing at every epoch from emerged_epoch (else first_epoch) to the last
    "last_auroc",      # at the last epoch of the frame
)
MODULE_WHEN_COLUMNS = (
    "module", "concept", "group", "n_units",
    "best_unit", "best_auroc",          # the unit of highest AUROC at the last epoch
    "best_first_epoch", "best_emerged_epoch", "best_stays",
    "first_epoch",                      # first epoch with any detector in the module
    "emerged_epoch",                    # first epoch any unit of the module emerged (tested)
    "stays",                            # a detector at every epoch from first_epoch on
    "n_emerged",                        # units that emerged (tested) at some epoch
    "n_detectors_last",                 # detectors at the last epoch
)


def is_detector(units: pd.DataFrame, *, q: float = DETECTOR_Q, iou: float = DETECTOR_IOU) -> np.ndarray:
    """Per row: AUROC above 0.5 with ``q_value`` below ``q`` and, where masks exist (``iou`` not null), IoU above
    ``iou``. The AUROC part is INVERT's test against chance; the IoU part NetDissect's threshold."""
    passing = (units["auroc"].to_numpy(float) > 0.5) & (units["q_value"].to_numpy(float) < q)
    if "iou" in units.columns:
        values = pd.to_numeric(units["iou"], errors="coerce").to_numpy(float)
        passing &= np.isnan(values) | (values > iou)
    return passing


def auroc_variance(auroc: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Hanley and McNeil's (1982) variance of an AUROC from ``n_pos`` positives and ``n_neg`` negatives."""
    a = np.asarray(auroc, float)
    n1, n2 = np.asarray(n_pos, float), np.asarray(n_neg, float)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)


def _adjust(p: np.ndarray, method: str) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"unknown correction {method!r}: expected one of {', '.join(METHODS)}")
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method=method)[1]
    return out


def _groups(units: pd.DataFrame) -> dict[str, str]:
    """Concept -> its group (empty names when the frame has no ``group`` column)."""
    if "group" not in units.columns:
        return {}
    first = units.drop_duplicates("concept")
    return dict(zip(first["concept"], first["group"], strict=True))


def _check(units: pd.DataFrame) -> None:
    needed = {"epoch", "module", "unit", "concept", "auroc", "q_value", "n_pos", "n_neg"}
    missing = sorted(needed - set(units.columns))
    if missing:
        raise ValueError(f"units table lacks column(s) {', '.join(missing)}: expected neurons/units.parquet's columns "
                         "(clipprobe.neurons.schema.UNIT_COLUMNS)")


def epoch_steps(units: pd.DataFrame, *, alpha: float = ALPHA, method: str = METHOD) -> pd.DataFrame:
    """Every (module, unit, concept) from one epoch of the frame to the next: ``epoch_from``, ``epoch_to``,
    ``auroc_from``, ``auroc_to``, ``passing_from``, ``passing_to``, ``z``, ``p_value``, ``p_adjusted``,
    ``significant`` (a rise or fall of AUROC, two-sided). All rows form one family for the correction.

    The test is a z-test on the AUROC difference with Hanley-McNeil variances, the two epochs taken as
    independent. Both epochs score the same images, so their AUROCs correlate positively and the true variance
    of the difference is smaller: the test is conservative (it may miss a rise, it does not invent one).
    """
    _check(units)
    cols = [*UNIT_KEYS, "epoch", "auroc", "n_pos", "n_neg"]
    data = units[cols].assign(passing=is_detector(units)).sort_values([*UNIT_KEYS, "epoch"], kind="stable")
    same = np.ones(len(data), dtype=bool)
    for key in UNIT_KEYS:
        values = data[key].to_numpy()
        same[1:] &= values[1:] == values[:-1]
    same[0] = False
    prev = np.flatnonzero(same) - 1
    now = np.flatnonzero(same)
    a_from, a_to = data["auroc"].to_numpy(float)[prev], data["auroc"].to_numpy(float)[now]
    n_pos, n_neg = data["n_pos"].to_numpy(float), data["n_neg"].to_numpy(float)
    var = auroc_variance(a_from, n_pos[prev], n_neg[prev]) + auroc_variance(a_to, n_pos[now], n_neg[now])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (a_to - a_from) / np.sqrt(var), np.where(a_to == a_from, 0.0, np.sign(a_to - a_from) * np.inf))
    p = 2 * norm.sf(np.abs(z))
    p_adjusted = _adjust(p, method)
    out = pd.DataFrame({key: data[key].to_numpy()[now] for key in UNIT_KEYS})
    out["epoch_from"] = data["epoch"].to_numpy()[prev]
    out["epoch_to"] = data["epoch"].to_numpy()[now]
    out["auroc_from"], out["auroc_to"] = a_from, a_to
    out["passing_from"] = data["passing"].to_numpy()[prev]
    out["passing_to"] = data["passing"].to_numpy()[now]
    out["z"], out["p_value"], out["p_adjusted"] = z, p, p_adjusted
    out["significant"] = p_adjusted < alpha
    return out


def unit_emergence(units: pd.DataFrame, *, alpha: float = ALPHA, method: str = METHOD) -> pd.DataFrame:
    """One row per (module, unit, concept) that passes the detector thresholds at some epoch (``UNIT_WHEN_COLUMNS``).

    A unit emerges at epoch e when it is a detector at e, was not at the epoch before, and its AUROC rose
    significantly between them (``epoch_steps``: one family over every step of the frame). A unit that is a
    detector at the first epoch has a ``first_epoch`` but did not emerge: nothing earlier shows it was not one.
    """
    _check(units)
    passing = is_detector(units)
    last_epoch = units["epoch"].max()
    ever = units.loc[passing].groupby(list(UNIT_KEYS), sort=False, observed=True)["epoch"].min().rename("first_epoch")
    if ever.empty:
        return pd.DataFrame(columns=list(UNIT_WHEN_COLUMNS))
    steps = epoch_steps(units, alpha=alpha, method=method)
    rises = steps[steps["passing_to"] & ~steps["passing_from"] & steps["significant"]
                  & (steps["auroc_to"] > steps["auroc_from"])]
    first_rise = rises.sort_values("epoch_to", kind="stable").drop_duplicates(list(UNIT_KEYS)).set_index(list(UNIT_KEYS))
    out = ever.to_frame()
    out = out.join(first_rise[["epoch_from", "epoch_to", "auroc_from", "auroc_to", "z", "p_value", "p_adjusted"]])
    out = out.rename(columns={"epoch_to": "emerged_epoch"})
    for col in ("first_epoch", "emerged_epoch", "epoch_from"):
        out[col] = out[col].astype("Int64")
    # stays: no failing epoch at or after the start (emerged epoch, else first epoch)
    start = out["emerged_epoch"].fillna(out["first_epoch"]).astype(int)
    flags = units[[*UNIT_KEYS, "epoch"]].assign(passing=passing).merge(
        start.rename("start").reset_index(), on=list(UNIT_KEYS))
    failing_after = flags[(flags["epoch"] >= flags["start"]) & ~flags["passing"]]
    failed = failing_after.groupby(list(UNIT_KEYS), sort=False, observed=True).size()
    out["stays"] = ~out.index.isin(failed.index)
    last = units.loc[units["epoch"] == last_epoch].set_index(list(UNIT_KEYS))
    out["last_auroc"] = last["auroc"].reindex(out.index).to_numpy(float)
    out = out.reset_index()
    out["group"] = out["concept"].map(_groups(units)).fillna("")
    return out[list(UNIT_WHEN_COLUMNS)].sort_values(["module", "concept", "unit"], kind="stable", ignore_index=True)


def module_emergence(units: pd.DataFrame, *, alpha: float = ALPHA, method: str = METHOD,
                     unit_when: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (module, concept) (``MODULE_WHEN_COLUMNS``): its best unit at the last epoch and when that unit
    first passed and emerged, whether it stays; the module's first detector, first tested emergence, whether it
    keeps a detector, how many units emerged. ``unit_when``: ``unit_emergence``'s frame when already computed."""
    _check(units)
    when = unit_emergence(units, alpha=alpha, method=method) if unit_when is None else unit_when
    passing = units.assign(_passing=is_detector(units))
    last_epoch = units["epoch"].max()
    last = passing[passing["epoch"] == last_epoch].sort_values(["auroc", "unit"], ascending=[False, True],
                                                               kind="stable")
    best = last.drop_duplicates(["module", "concept"]).set_index(["module", "concept"])
    counts = passing.groupby(["module", "concept", "epoch"], observed=True)["_passing"].sum()
    n_units = units.groupby(["module", "concept"], sort=False, observed=True)["unit"].nunique()
    per_unit = when.set_index(list(UNIT_KEYS)) if not when.empty else None
    group_of = _groups(units)
    emerged = (when.dropna(subset=["emerged_epoch"]).groupby(["module", "concept"], sort=False, observed=True)["emerged_epoch"]
               .agg(["min", "size"]) if not when.empty else pd.DataFrame(columns=["min", "size"]))
    with_detector = counts[counts > 0].reset_index().groupby(["module", "concept"], sort=False, observed=True)["epoch"].min()
    rows = []
    for (module, concept), n in n_units.items():
        row: dict = {"module": module, "concept": concept, "group": group_of.get(concept, ""), "n_units": int(n)}
        if (module, concept) in best.index:
            b = best.loc[(module, concept)]
            row["best_unit"], row["best_auroc"] = int(b["unit"]), float(b["auroc"])
            key = (module, int(b["unit"]), concept)
            found = per_unit is not None and key in per_unit.index
            row["best_first_epoch"] = per_unit.loc[key, "first_epoch"] if found else pd.NA
            row["best_emerged_epoch"] = per_unit.loc[key, "emerged_epoch"] if found else pd.NA
            row["best_stays"] = bool(per_unit.loc[key, "stays"]) if found else False
        by_epoch = counts.loc[(module, concept)].sort_index()
        first = with_detector.get((module, concept))
        row["first_epoch"] = pd.NA if first is None else int(first)
        row["stays"] = first is not None and bool((by_epoch[by_epoch.index >= first] > 0).all())
        found = (module, concept) in emerged.index
        row["emerged_epoch"] = int(emerged.loc[(module, concept), "min"]) if found else pd.NA
        row["n_emerged"] = int(emerged.loc[(module, concept), "size"]) if found else 0
        row["n_detectors_last"] = int(by_epoch.get(last_epoch, 0))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(MODULE_WHEN_COLUMNS))
    for col in ("best_unit", "best_first_epoch", "best_emerged_epoch", "first_epoch", "emerged_epoch"):
        out[col] = out[col].astype("Int64")
    return out


def detector_counts(units: pd.DataFrame, *, by: str = "group") -> pd.DataFrame:
    """Detectors per (epoch, module, ``by``): ``n_detectors`` = units that pass the thresholds for at least one
    concept of that group (``by="group"``) or for that concept (``by="concept"``), each unit counted once, and
    ``n_units``. NetDissect's training-dynamics figure counts these per layer over iterations."""
    if by not in ("group", "concept"):
        raise ValueError(f"count detectors by 'group' or 'concept', got {by!r}")
    _check(units)
    data = units[["epoch", "module", "unit", by]].assign(_passing=is_detector(units))
    hits = data[data["_passing"]].drop_duplicates(["epoch", "module", by, "unit"])
    counts = hits.groupby(["epoch", "module", by], sort=False, observed=True).size().rename("n_detectors")
    grid = data.drop_duplicates(["epoch", "module", by])[["epoch", "module", by]]
    n_units = units.groupby(["epoch", "module"], sort=False, observed=True)["unit"].nunique().rename("n_units")
    out = grid.merge(counts.reset_index(), on=["epoch", "module", by], how="left").merge(
        n_units.reset_index(), on=["epoch", "module"])
    out["n_detectors"] = out["n_detectors"].fillna(0).astype(int)
    return out.sort_values(["epoch", "module", by], kind="stable", ignore_index=True)


def unit_name(module: str, unit: int) -> str:
    """``module:3/17``: the same unit at every epoch of one training run."""
    return f"{module}/{int(unit)}"


def when_lines(module_when: pd.DataFrame, unit_when: pd.DataFrame, *, limit: int = 20,
               modules: Sequence[str] | None = None) -> list[str]:
    """The unit-level "when" in words: per (module, concept) with a tested emergence, its first emerged unit and
    the best unit; then a line on the test. Empty input: one line saying no unit emerged."""
    rows = module_when[module_when["emerged_epoch"].notna()]
    if modules is not None:
        rows = rows[rows["module"].isin(modules)]
    test = (f"(a unit emerges at epoch E: AUROC > 0.5 with BH q < {DETECTOR_Q:g}, and IoU > {DETECTOR_IOU:g} where "
            f"masks exist, at E but not at the epoch before, the AUROC rise significant by a z-test with "
            f"Hanley-McNeil variances, {METHOD.capitalize()}-corrected over every epoch-to-epoch step, alpha {ALPHA:g})")
    if rows.empty:
        return ["no unit rises significantly into a detector from one epoch to the next " + test]
    lines = []
    for r in rows.sort_values(["emerged_epoch", "module", "concept"], kind="stable").head(limit).itertuples():
        mine = unit_when[(unit_when["module"] == r.module) & (unit_when["concept"] == r.concept)
                         & (unit_when["emerged_epoch"] == r.emerged_epoch)].sort_values("p_adjusted")
        first = mine.iloc[0]
        line = (f"{r.concept} / {r.module}: unit {unit_name(r.module, first['unit'])} emerges at epoch "
                f"{int(r.emerged_epoch)} (AUROC {first['auroc_from']:.3f} -> {first['auroc_to']:.3f}, adjusted p "
                f"{first['p_adjusted']:.3g}){', stays' if first['stays'] else ', does not stay'}; "
                f"{r.n_emerged} unit(s) emerged, {r.n_detectors_last} detector(s) at the last epoch")
        if pd.notna(r.best_unit):
            line += f"; best unit {unit_name(r.module, r.best_unit)} (AUROC {r.best_auroc:.3f})"
        lines.append(line)
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more (unit_when.csv)")
    lines.append(test)
    return lines
