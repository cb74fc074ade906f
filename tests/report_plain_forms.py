"""The report's plain forms, kept as they were before their fast paths (one statsmodels call per pair, one merge
per epoch pair, every epoch against every later one), and a sweep shaped like a real one to hold them against.
Used by tests/test_report_fast_paths.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from report_fakes import synthetic_results
from statsmodels.stats.contingency_tables import mcnemar

from clipprobe.report.significance import PAIRED_COLUMNS, adjust, correctness, pairable
from clipprobe.report.tables import normalize_results


def plain_mcnemar(correct_a: str, correct_b: str) -> tuple[int, int, float]:
    a, b = correctness(correct_a), correctness(correct_b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if a_only + b_only == 0:
        return 0, 0, 1.0
    table = [[int(np.sum(a & b)), a_only], [b_only, int(np.sum(~a & ~b))]]
    return a_only, b_only, float(mcnemar(table, exact=True).pvalue)


def plain_paired_tests(frame: pd.DataFrame, *, alpha: float = 0.05, method: str = "holm") -> pd.DataFrame:
    out = frame.copy()
    a_only, b_only, p = [], [], []
    for ca, cb, ia, ib in zip(out["test_correct_a"], out["test_correct_b"], out["test_images_a"],
                              out["test_images_b"], strict=True):
        x, y, q = plain_mcnemar(ca, cb) if pairable(ca, cb, ia, ib) else (-1, -1, math.nan)
        a_only.append(x)
        b_only.append(y)
        p.append(q)
    out["n_a_only"] = pd.array([v if v >= 0 else None for v in a_only], dtype="Int64")
    out["n_b_only"] = pd.array([v if v >= 0 else None for v in b_only], dtype="Int64")
    out["p_value"] = p
    out["p_adjusted"] = adjust(p, method)
    out["significant"] = out["p_adjusted"].lt(alpha).to_numpy()
    return out


def plain_epoch_changes(results: pd.DataFrame, *, epochs=None) -> pd.DataFrame:
    data = results.copy()
    for col in ("test_correct", "test_images"):
        data[col] = data[col].fillna("").astype(str) if col in data.columns else ""
    chosen = sorted(int(e) for e in (epochs if epochs is not None else pd.unique(data["epoch"])))
    keys = ["concept", "module", "probe"]
    cols = [*keys, "test_acc", "test_correct", "test_images"]
    frames = []
    for e_from, e_to in zip(chosen, chosen[1:], strict=False):
        a = data.loc[data["epoch"] == e_from, cols]
        b = data.loc[data["epoch"] == e_to, cols]
        frames.append(a.merge(b, on=keys, suffixes=("_a", "_b")).assign(epoch_from=e_from, epoch_to=e_to))
    tested = plain_paired_tests(pd.concat(frames, ignore_index=True))
    out = tested.rename(columns={"test_acc_a": "acc_from", "test_acc_b": "acc_to"})
    out["difference"] = out["acc_to"] - out["acc_from"]
    return out[[*keys, "epoch_from", "epoch_to", "acc_from", "acc_to", "difference", *PAIRED_COLUMNS]]


def plain_identical_groups(results: pd.DataFrame) -> list[list[int]]:
    """The groups of epochs ``identical_epochs`` flags, found by comparing every epoch with every later one."""
    data = normalize_results(results)
    value = "test_correct" if bool((data["test_correct"] != "").all()) else "test_acc"
    wide = data.pivot_table(index=["concept", "module", "probe"], columns="epoch", values=value, aggfunc="first")
    epochs, seen, groups = list(wide.columns), set(), []

    def same(a: pd.Series, b: pd.Series) -> bool:
        both = a.notna() & b.notna()
        return bool(both.any()) and bool((a[both] == b[both]).all())

    for i, a in enumerate(epochs):
        if a in seen:
            continue
        found = [b for b in epochs[i + 1:] if b not in seen and same(wide[a], wide[b])]
        if found:
            seen.update(found)
            groups.append([a, *found])
    return groups


def sweep_like(seed: int = 0, epochs: int = 24) -> pd.DataFrame:
    """A sweep as a long run leaves it: many epochs whose accuracies rise, an epoch saved twice (identical
    predictions), a sudden collapse, a fit that failed, a fit from before per-image predictions, another test set for one concept."""
    data = synthetic_results(seed, epochs=tuple(range(epochs)), modules=tuple(range(6)))
    rng = np.random.default_rng(seed)
    flip = rng.random(len(data)) < 0.3  # some images change answer between epochs, as in training
    data["test_correct"] = [t if not f else t[::-1] for t, f in zip(data["test_correct"], flip, strict=True)]
    data.loc[data["epoch"] == 7, "test_correct"] = data.loc[data["epoch"] == 6, "test_correct"].to_numpy()
    data.loc[data["epoch"] == 7, "test_acc"] = data.loc[data["epoch"] == 6, "test_acc"].to_numpy()
    jump = (data["concept"] == "red") & (data["epoch"] == 12)  # a collapse: every probe of a concept fails
    data.loc[jump, "test_correct"], data.loc[jump, "test_acc"] = "0" * 90, 0.0
    data = data.drop(index=data.index[5]).reset_index(drop=True)  # a fit that failed
    data.loc[11, "test_correct"] = ""  # made before per-image predictions
    data.loc[(data["concept"] == "blue") & (data["epoch"] == 12), "test_images"] = "another-test-set"
    return data


def plain_with_changes(data: pd.DataFrame, epoch: int, earlier: int) -> pd.DataFrame:
    """The table's change columns, one ``.loc`` per cell."""
    from clipprobe.report.significance import change_mark

    at = data[data["epoch"] == epoch]
    out = at.assign(change_from=math.nan, change_p=math.nan, change="")
    keyed = plain_epoch_changes(data, epochs=[earlier, epoch]).set_index(["concept", "module", "probe"])
    for i, row in out.iterrows():
        key = (row["concept"], row["module"], row["probe"])
        if key in keyed.index:
            c = keyed.loc[key]
            out.at[i, "change_from"] = earlier
            out.at[i, "change_p"] = c["p_adjusted"]
            out.at[i, "change"] = change_mark(bool(c["significant"]), float(c["difference"]))
    return out


def plain_heatmap(data: pd.DataFrame, probe: str, concept: str, metric: str = "test_acc") -> np.ndarray:
    """One panel's module x epoch grid, one pivot table per panel."""
    data = data[data["probe"] == probe]
    names = list(data.drop_duplicates("module").sort_values(["module_index", "module"])["module"])
    modules = [int(data.loc[data["module"] == m, "module_index"].iloc[0]) for m in names]
    epochs = sorted(int(e) for e in pd.unique(data["epoch"]))
    sub = data[data["concept"] == concept]
    grid = sub.pivot_table(index="module_index", columns="epoch", values=metric, aggfunc="mean")
    return grid.reindex(index=modules, columns=epochs).to_numpy(dtype=float)


def plain_line(data: pd.DataFrame, probe: str, concept: str, module: str) -> pd.DataFrame:
    """One accuracy line's points, one groupby per line."""
    sub = data[(data["probe"] == probe) & (data["concept"] == concept)]
    return sub[sub["module"] == module].groupby("epoch")[
        ["test_acc", "test_acc_ci_low", "test_acc_ci_high"]].mean().sort_index()
