"""Probes on mined labels beside probes on true labels, and how much of the difference label noise explains.

A sweep whose concept splits were mined by CLIP is scored against CLIP's test labels, not against the
truth. If a fraction ``a`` of a concept's test labels agree with the truth (the *label agreement*,
``a = (n_pos * p_pos + n_neg * p_neg) / n`` from the precision of the test positives and negatives),
a probe that is right about the truth with probability ``A`` and errs independently of the label
noise scores, in expectation,

    expected = A * a + (1 - A) * (1 - a)

against the mined labels: ``a`` itself for a probe that knows the truth, 0.5 for a
coin. With ``A`` the true-label sweep's accuracy of the same concept, module and probe kind, the
noise explains ``A - expected`` of the gap ``A - acc_mined``; the rest (``acc_mined - expected``) is
what training on mined labels changed beyond noisy scoring (a different concept, fewer informative
images). The two sweeps test on different images, so single cells carry their own sampling error.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

FORMULA = "expected = A * a + (1 - A) * (1 - a)"
COLUMNS = ("concept", "group", "module", "probe", "epoch", "label_agreement", "acc_true", "acc_mined",
           "expected_from_noise", "gap", "explained_by_noise", "unexplained")


@dataclass
class LabelSources:
    """Which compared sweep used true labels, and the label quality of each sweep with mined labels."""

    truth: str | None = None
    mined: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # sweep name -> label_quality table


def expected_accuracy(true_accuracy, agreement):
    """Expected accuracy against labels that agree with the truth at rate ``agreement``, of a probe whose
    accuracy on the truth is ``true_accuracy`` (errors independent of the label noise)."""
    return true_accuracy * agreement + (1 - true_accuracy) * (1 - agreement)


def _at_epoch(data: pd.DataFrame, epoch: int | None) -> pd.DataFrame:
    chosen = int(data["epoch"].max()) if epoch is None else epoch
    return data[data["epoch"] == chosen]


def label_noise_table(truth: pd.DataFrame | None, mined: pd.DataFrame, quality: pd.DataFrame,
                      epoch: int | None = None) -> pd.DataFrame:
    """One row per concept x module x probe of the mined sweep at ``epoch`` (default: its last), with the
    true-label sweep's accuracy beside it where that sweep has the cell (:data:`COLUMNS`)."""
    at = _at_epoch(mined, epoch)
    cells = at[["concept", "group", "module", "probe", "epoch", "test_acc"]].rename(columns={"test_acc": "acc_mined"})
    agreement = quality.set_index("concept")["test_label_agreement"]
    cells = cells.assign(label_agreement=cells["concept"].map(agreement).astype(float))
    if truth is not None:
        true_at = _at_epoch(truth, int(cells["epoch"].iloc[0]) if not cells.empty else epoch)
        true_acc = true_at.set_index(["concept", "module", "probe"])["test_acc"].rename("acc_true")
        cells = cells.join(true_acc, on=["concept", "module", "probe"])
    else:
        cells["acc_true"] = float("nan")
    cells["expected_from_noise"] = expected_accuracy(cells["acc_true"], cells["label_agreement"])
    cells["gap"] = cells["acc_true"] - cells["acc_mined"]
    cells["explained_by_noise"] = cells["acc_true"] - cells["expected_from_noise"]
    cells["unexplained"] = cells["acc_mined"] - cells["expected_from_noise"]
    return cells[list(COLUMNS)].reset_index(drop=True)


READING = ("mined above expected: the probes decode what CLIP labelled (its own notion of the concept, e.g. a "
           "colour it takes for it), not the concept the truth names; mined below expected: training on noisy "
           "labels cost accuracy beyond the noisy scoring.")


def concept_summary(table: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Per concept, means over its modules and probe kinds (concepts in ``order``, default the table's)."""
    numeric = ["label_agreement", "acc_true", "acc_mined", "expected_from_noise", "gap", "explained_by_noise"]
    out = table.groupby(["concept", "group"], sort=False)[numeric].mean().reset_index()
    if order:
        rank = {c: i for i, c in enumerate(order)}
        out = out.sort_values("concept", key=lambda s: s.map(rank).fillna(len(rank)), kind="stable")
    return out.reset_index(drop=True)


def summary_text(table: pd.DataFrame, truth_name: str | None, mined_name: str,
                 order: list[str] | None = None) -> str:
    """The terminal's view: the formula, then per concept true vs mined accuracy and the noise's share."""
    summary = concept_summary(table, order)
    head = (f"labels: sweep {mined_name} (CLIP-mined labels) beside "
            + (f"sweep {truth_name} (true labels)" if truth_name else "no true-label sweep")
            + f", epoch {int(table['epoch'].iloc[0])}, means over modules and probe kinds.\n"
            f"a = share of the mined test labels that are right; A = accuracy with true labels; "
            f"{FORMULA} is what a probe as good as A scores against labels of agreement a.")
    shown = summary.set_index("concept")[["label_agreement", "acc_true", "acc_mined", "expected_from_noise",
                                          "explained_by_noise", "gap"]]
    shown.columns = ["a", "A true", "mined", "expected", "noise explains", "gap"]
    return head + "\n" + shown.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-") + "\n" + READING


def summary_html(table: pd.DataFrame, truth_name: str | None, mined_name: str,
                 order: list[str] | None = None) -> str:
    summary = concept_summary(table, order)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" if i < 2 else f"<td>{v:.3f}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in summary[["concept", "group", "label_agreement", "acc_true", "acc_mined", "expected_from_noise",
                          "explained_by_noise", "gap"]].itertuples(index=False))
    return (f"<p>Probe accuracy at epoch {int(table['epoch'].iloc[0])} with CLIP-mined labels (sweep "
            f"{html.escape(mined_name)}) beside true labels (sweep {html.escape(truth_name or 'none')}), "
            "means over modules and probe kinds. <i>a</i> is the share of the mined test labels that agree with "
            "the truth (a probe that knows the truth scores <i>a</i> against them; one that learnt CLIP's labels can score more); <i>A</i> the "
            f"accuracy with true labels; <code>{html.escape(FORMULA)}</code> is what a probe as good as <i>A</i> "
            "scores against labels of agreement <i>a</i> when its errors are independent of the label noise. "
            "&ldquo;noise explains&rdquo; = <i>A</i> &minus; expected; the rest of the gap is what training on "
            "mined labels changed. Per cell: <code>labels.csv</code>.</p>"
            "<table><tr><th>concept</th><th>group</th><th>a</th><th>A true</th><th>mined</th>"
            f"<th>expected</th><th>noise explains</th><th>gap</th></tr>{rows}</table>"
            f"<p>{html.escape(READING)}</p>")


def label_sections(sweeps: Mapping[str, pd.DataFrame], sources: LabelSources,
                   epoch: int | None = None) -> list[tuple[str, pd.DataFrame, str, str]]:
    """Per mined sweep: (name, per-cell table, text, html)."""
    truth = sweeps.get(sources.truth) if sources.truth else None
    out = []
    for name, quality in sources.mined.items():
        if name not in sweeps:
            continue
        table = label_noise_table(truth, sweeps[name], quality, epoch)
        if table.empty:
            continue
        order = list(quality["concept"])  # the vocabulary's order, as the concepts step wrote it
        out.append((name, table, summary_text(table, sources.truth, name, order),
                    summary_html(table, sources.truth, name, order)))
    return out
