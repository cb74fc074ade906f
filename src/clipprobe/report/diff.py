"""Two sweeps side by side: per cell (concept x module x probe) the difference in test accuracy
and whether it exceeds the 95% intervals (the two intervals do not overlap)."""

from __future__ import annotations

import html

import pandas as pd

from clipprobe.report.tables import normalize_results, select_epoch

KEYS = ("concept", "module", "probe")


def diff_sweeps(a: pd.DataFrame, b: pd.DataFrame, *, epoch_a: int | None = None,
                epoch_b: int | None = None) -> pd.DataFrame:
    """One row per cell both sweeps have (each at its chosen epoch, default its last):
    ``acc_a``, ``ci_a_low/high``, ``acc_b``, ``ci_b_low/high``, ``difference`` (b - a) and
    ``exceeds_intervals`` (the intervals are disjoint)."""
    da, db = normalize_results(a), normalize_results(b)
    ea, eb = select_epoch(da, epoch_a), select_epoch(db, epoch_b)
    cols = [*KEYS, "module_index", "test_acc", "test_acc_ci_low", "test_acc_ci_high"]
    left = da.loc[da["epoch"] == ea, cols]
    right = db.loc[db["epoch"] == eb, cols].drop(columns="module_index")
    joined = left.merge(right, on=list(KEYS), suffixes=("_a", "_b"), how="inner")
    if joined.empty:
        raise ValueError(
            "the two sweeps have no fit in common (same concept, module and probe): "
            f"A has {_summary(da)}; B has {_summary(db)}"
        )
    out = pd.DataFrame({
        "concept": joined["concept"], "module": joined["module"], "probe": joined["probe"],
        "module_index": joined["module_index"], "epoch_a": ea, "epoch_b": eb,
        "acc_a": joined["test_acc_a"], "ci_a_low": joined["test_acc_ci_low_a"],
        "ci_a_high": joined["test_acc_ci_high_a"], "acc_b": joined["test_acc_b"],
        "ci_b_low": joined["test_acc_ci_low_b"], "ci_b_high": joined["test_acc_ci_high_b"],
    })
    out["difference"] = out["acc_b"] - out["acc_a"]
    out["exceeds_intervals"] = (out["ci_a_high"] < out["ci_b_low"]) | (out["ci_b_high"] < out["ci_a_low"])
    order = list(dict.fromkeys(da["concept"]))
    out["_c"] = out["concept"].map(order.index)
    out = out.sort_values(["_c", "module_index", "probe"]).drop(columns=["_c", "module_index"])
    return out.reset_index(drop=True)


def _summary(data: pd.DataFrame) -> str:
    def few(col: str) -> str:
        vals = list(dict.fromkeys(data[col]))
        return ", ".join(vals[:6]) + (" ..." if len(vals) > 6 else "")
    return f"concepts {few('concept')} / probes {few('probe')}"


def diff_text(diff: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    """Terminal text of a diff; ``!`` marks cells whose difference exceeds the intervals."""
    lines = [f"{name_a} (epoch {diff['epoch_a'].iloc[0]}) vs {name_b} (epoch {diff['epoch_b'].iloc[0]}); "
             "! = intervals disjoint",
             f"{'concept':<12} {'module':<10} {'probe':<20} {'A':>6} {'B':>6} {'B-A':>7}"]
    for r in diff.itertuples():
        mark = " !" if r.exceeds_intervals else ""
        lines.append(f"{r.concept:<12} {r.module:<10} {r.probe:<20} {r.acc_a:6.3f} {r.acc_b:6.3f} "
                     f"{r.difference:+7.3f}{mark}")
    n = int(diff["exceeds_intervals"].sum())
    lines.append(f"{n} of {len(diff)} differences exceed the 95% intervals")
    return "\n".join(lines)


def diff_html(diff: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    """HTML fragment of a diff (one table; cells beyond the intervals are marked)."""
    esc = html.escape
    head = ["concept", "module", "probe", f"{name_a}", f"{name_b}", "B - A", "beyond intervals"]
    rows = ["<table class=\"diff\"><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>"]
    for r in diff.itertuples():
        cls = ' class="beyond"' if r.exceeds_intervals else ""
        rows.append(
            f"<tr{cls}><td>{esc(r.concept)}</td><td>{esc(r.module)}</td><td>{esc(r.probe)}</td>"
            f"<td>{r.acc_a:.3f} [{r.ci_a_low:.3f}, {r.ci_a_high:.3f}]</td>"
            f"<td>{r.acc_b:.3f} [{r.ci_b_low:.3f}, {r.ci_b_high:.3f}]</td>"
            f"<td>{r.difference:+.3f}</td><td>{'yes' if r.exceeds_intervals else ''}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "\n".join(rows)
