"""Two sweeps side by side: per cell (concept x module x probe) the difference in test accuracy and
whether it is significant by a paired test on the same test images (McNemar exact, Holm-corrected
over every tested cell of the diff: ``report.significance``). Cells whose test images differ, or
whose sweep predates per-image predictions, are shown but not tested."""

from __future__ import annotations

import html

import pandas as pd

from clipprobe.report.significance import ALPHA, METHOD, describe_test, paired_tests
from clipprobe.report.tables import normalize_results, select_epoch

KEYS = ("concept", "module", "probe")


def diff_sweeps(a: pd.DataFrame, b: pd.DataFrame, *, epoch_a: int | None = None,
                epoch_b: int | None = None, alpha: float = ALPHA, method: str = METHOD) -> pd.DataFrame:
    """One row per cell both sweeps have (each at its chosen epoch, default its last):
    ``acc_a``, ``ci_a_low/high``, ``acc_b``, ``ci_b_low/high``, ``difference`` (b - a), the images
    only A / only B gets right (``n_a_only``, ``n_b_only``), ``p_value``, ``p_adjusted`` and
    ``significant`` (adjusted p below ``alpha``; False where untested)."""
    da, db = normalize_results(a), normalize_results(b)
    ea, eb = select_epoch(da, epoch_a), select_epoch(db, epoch_b)
    cols = [*KEYS, "module_index", "test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_correct",
            "test_images"]
    left = da.loc[da["epoch"] == ea, cols]
    right = db.loc[db["epoch"] == eb, cols].drop(columns="module_index")
    joined = left.merge(right, on=list(KEYS), suffixes=("_a", "_b"), how="inner")
    if joined.empty:
        raise ValueError(
            "the two sweeps have no fit in common (same concept, module and probe): "
            f"A has {_summary(da)}; B has {_summary(db)}"
        )
    tested = paired_tests(joined, alpha=alpha, method=method)
    out = pd.DataFrame({
        "concept": joined["concept"], "module": joined["module"], "probe": joined["probe"],
        "module_index": joined["module_index"], "epoch_a": ea, "epoch_b": eb,
        "acc_a": joined["test_acc_a"], "ci_a_low": joined["test_acc_ci_low_a"],
        "ci_a_high": joined["test_acc_ci_high_a"], "acc_b": joined["test_acc_b"],
        "ci_b_low": joined["test_acc_ci_low_b"], "ci_b_high": joined["test_acc_ci_high_b"],
    })
    out["difference"] = out["acc_b"] - out["acc_a"]
    for col in ("n_a_only", "n_b_only", "p_value", "p_adjusted", "significant"):
        out[col] = tested[col]
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
    """Terminal text of a diff; ``*`` marks significant differences, ``?`` untested cells."""
    lines = [f"{name_a} (epoch {diff['epoch_a'].iloc[0]}) vs {name_b} (epoch {diff['epoch_b'].iloc[0]}); "
             f"* = significant ({describe_test()}), ? = not tested (different test images or no "
             "per-image predictions)",
             f"{'concept':<12} {'module':<10} {'probe':<20} {'A':>6} {'B':>6} {'B-A':>7} {'p adj.':>7}"]
    for r in diff.itertuples():
        tested = pd.notna(r.p_adjusted)
        mark = " *" if r.significant else ("" if tested else " ?")
        p = f"{r.p_adjusted:7.3f}" if tested else f"{'-':>7}"
        lines.append(f"{r.concept:<12} {r.module:<10} {r.probe:<20} {r.acc_a:6.3f} {r.acc_b:6.3f} "
                     f"{r.difference:+7.3f} {p}{mark}")
    lines.append(summary(diff))
    return "\n".join(lines)


def summary(diff: pd.DataFrame) -> str:
    """``k of n tested differences are significant ...; m cells not tested``."""
    tested = int(diff["p_adjusted"].notna().sum())
    n = int(diff["significant"].sum())
    text = f"{n} of {tested} tested differences are significant after correction"
    if tested < len(diff):
        text += f"; {len(diff) - tested} of {len(diff)} cells not tested (different test images or no per-image predictions)"
    return text


def diff_html(diff: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    """HTML fragment of a diff (one table; significant differences are marked)."""
    esc = html.escape
    head = ["concept", "module", "probe", f"{name_a}", f"{name_b}", "B - A", "only A / only B right",
            "p (adjusted)", "significant"]
    rows = [f"<p>{esc(describe_test())}; {esc(summary(diff))}</p>",
            "<table class=\"diff\"><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>"]
    for r in diff.itertuples():
        cls = ' class="significant"' if r.significant else ""
        tested = pd.notna(r.p_adjusted)
        pairs = f"{r.n_a_only} / {r.n_b_only}" if tested else "-"
        p = f"{r.p_adjusted:.3g}" if tested else "not tested"
        rows.append(
            f"<tr{cls}><td>{esc(r.concept)}</td><td>{esc(r.module)}</td><td>{esc(r.probe)}</td>"
            f"<td>{r.acc_a:.3f} [{r.ci_a_low:.3f}, {r.ci_a_high:.3f}]</td>"
            f"<td>{r.acc_b:.3f} [{r.ci_b_low:.3f}, {r.ci_b_high:.3f}]</td>"
            f"<td>{r.difference:+.3f}</td><td>{pairs}</td><td>{p}</td>"
            f"<td>{'yes' if r.significant else ''}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "\n".join(rows)
