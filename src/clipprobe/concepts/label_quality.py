"""How good mined labels are: each split row's true label, and per concept the precision of the
positives and of the negatives against the truth (the world's annotations), overall and on the
stored test part.

On the test part, a probe that predicts the truth perfectly scores the *label agreement*
``a = (n_pos * p_pos + n_neg * p_neg) / n`` against the mined labels (``p_pos``, ``p_neg``: the
test positives' and negatives' precision): knowing the truth is worth no more than that against them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipprobe.concepts.splits import TRUTH_COLUMN

QUALITY_COLUMNS = ("concept", "group", "n_positives", "n_negatives", "positive_precision", "negative_precision",
                   "n_test_positives", "n_test_negatives", "test_positive_precision", "test_negative_precision",
                   "test_label_agreement")


def with_truth(splits: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``splits`` plus a ``truth`` column: whether the labels table says the row's image holds its concept.

    ``labels`` is ``path`` + one bool column per concept (:func:`~clipprobe.concepts.annotations.concept_labels`).
    ValueError naming the first such image when a split image has no row in ``labels``.
    """
    truth = labels.set_index("path")
    missing = ~splits["path"].isin(truth.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} split image(s) have no ground-truth row, e.g. "
                         f"{splits.loc[missing, 'path'].iloc[0]}: the labels table must cover the pool")
    out = splits.copy()
    values = np.zeros(len(out), dtype=bool)
    for concept, index in out.groupby("concept", sort=False).groups.items():
        values[out.index.get_indexer(index)] = truth.loc[out.loc[index, "path"], concept].to_numpy(dtype=bool)
    out[TRUTH_COLUMN] = values
    return out


def _share(mask: pd.Series) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def label_quality(splits: pd.DataFrame) -> pd.DataFrame:
    """One row per concept (:data:`QUALITY_COLUMNS`) from splits that carry a ``truth`` column.

    ``positive_precision``: share of the positives (label 1) whose truth is 1; ``negative_precision``:
    share of the negatives (label 0) whose truth is 0; ``test_*``: the same on the stored test part,
    and ``test_label_agreement`` the share of test rows whose label equals the truth.
    """
    if TRUTH_COLUMN not in splits.columns:
        raise ValueError("these concept splits carry no `truth` column: label quality needs ground truth "
                         "(concepts --truth FILE, automatic on the concept world)")
    rows = []
    for concept, df in splits.groupby("concept", sort=False):
        truth, label = df[TRUTH_COLUMN].astype(bool), df["label"] == 1
        test = df["part"] == "test"
        rows.append({
            "concept": concept, "group": df["group"].iloc[0],
            "n_positives": int(label.sum()), "n_negatives": int((~label).sum()),
            "positive_precision": _share(truth[label]), "negative_precision": _share(~truth[~label]),
            "n_test_positives": int((label & test).sum()), "n_test_negatives": int((~label & test).sum()),
            "test_positive_precision": _share(truth[label & test]),
            "test_negative_precision": _share(~truth[~label & test]),
            "test_label_agreement": _share(truth[test] == label[test]),
        })
    return pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))


def quality_text(quality: pd.DataFrame) -> str:
    """The per-concept table as the terminal shows it."""
    shown = quality.set_index("concept")[["group", "positive_precision", "negative_precision",
                                          "test_label_agreement"]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}")


def quality_metrics(quality: pd.DataFrame) -> dict[str, float]:
    """MLflow metrics: ``positive_precision.<concept>``, ``negative_precision.<concept>``,
    ``test_label_agreement.<concept>`` and the means over concepts."""
    out: dict[str, float] = {}
    for column in ("positive_precision", "negative_precision", "test_label_agreement"):
        for concept, value in zip(quality["concept"], quality[column], strict=True):
            out[f"{column}.{concept}"] = float(value)
        out[f"{column}_mean"] = float(quality[column].mean())
    return out
