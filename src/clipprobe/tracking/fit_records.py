"""What a fit run holds, both ways: a results row -> the run's tags, params and metrics, and a fit run ->
a typed results row. The one schema the writer, the reader and ``probe/results.parquet`` share."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Run

from clipprobe.tracking.bulk import FinishedRun
from clipprobe.tracking.runs import (  # noqa: F401 - PARENT_TAG, RUN_NAME_TAG, RESULTS_*ARTIFACT: read from here too
    LEVEL_TAG,
    PARENT_TAG,
    RESULTS_ARTIFACT,
    RESULTS_PART_ARTIFACT,
    RUN_NAME_TAG,
)

SWEEP_TAG = "clipprobe.sweep_run_id"

# The results columns of docs/architecture.md, in order; also the fit runs' params and metrics.
IDENTITY_COLUMNS = ("concept", "group", "module", "module_index", "module_path", "probe", "epoch", "model_name",
                    "model_version", "fingerprint", "precision", "hparams_source", "hparams")
METRIC_COLUMNS = ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_balanced_acc", "test_auroc",
                  "train_acc", "test_majority_acc", "test_acc_resplit_mean", "test_acc_resplit_ci_low",
                  "test_acc_resplit_ci_high", "test_permutation_acc", "test_permutation_p", "test_control_acc",
                  "test_selectivity", "n_train", "n_test", "n_test_pos", "repeats", "permutations",
                  "n_dropped_features", "class_alignment", "mdl_codelength_bits", "mdl_uniform_bits", "compression")
INT_COLUMNS = ("epoch", "module_index", "n_train", "n_test", "n_test_pos", "repeats", "permutations", "n_dropped_features")
# Per-image results for paired tests: strings, so Parquet columns and fit-run params, never metrics.
# `test_correct`: '0'/'1' per stored test image; `test_images`: hash of those images (same hash = same test set).
PREDICTION_COLUMNS = ("test_correct", "test_images")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value; longer per-image strings live in the Parquet only
FIT_KEY = ("concept", "module", "probe", "epoch")  # what makes two fits the same fit
SPLIT_SIZE_PARAMS = ("n_train", "n_test", "n_test_pos")
BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")

FitKey = tuple[str, str, str, int]


def fit_key(row: Mapping[str, Any]) -> FitKey:
    """(concept, module, probe, epoch) of a results row or a fit run's params."""
    return (str(row["concept"]), str(row["module"]), str(row["probe"]), int(row["epoch"]))


def now_ms() -> int:
    return int(time.time() * 1000)


def param_text(value: Any) -> str:
    """A param value as MLflow stores it: JSON for dicts and lists, cut to MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def fit_record(sweep_run_id: str, checkpoint_run_id: str, row: Mapping[str, Any], *,
               hparams: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> FinishedRun:
    """What a fit run holds: identity columns, hparams, split sizes and the per-image prediction strings
    (when short enough for a param) as params; metric columns as metrics (step = epoch); the tags that
    place it below its checkpoint run and the sweep."""
    now = now_ms()
    name = f"{row['concept']} {row['module']} {row['probe']} @{row['epoch']}"
    all_tags = {PARENT_TAG: checkpoint_run_id, LEVEL_TAG: "fit", SWEEP_TAG: sweep_run_id,
                RUN_NAME_TAG: name, **{k: str(v) for k, v in (tags or {}).items()}}
    params = {c: row[c] for c in IDENTITY_COLUMNS}
    params.update({c: row[c] for c in SPLIT_SIZE_PARAMS if c in row})
    params.update({c: row[c] for c in PREDICTION_COLUMNS
                   if isinstance(row.get(c), str) and 0 < len(row[c]) <= MAX_PARAM_CHARS})
    for k, v in (hparams or {}).items():
        params.setdefault(k, v)
    epoch = int(row["epoch"])
    metrics = [Metric(c, float(row[c]), now, epoch) for c in METRIC_COLUMNS if c in row and row[c] is not None]
    return FinishedRun(all_tags, {k: param_text(v) for k, v in params.items()}, metrics, now, now)


def fit_row(run: Run) -> dict[str, Any]:
    """A fit run as a results row (typed by ``results_frame``): identity params, metric columns (NaN where
    missing), per-image strings ("" where the run has none) and its run id."""
    return _row(run.data.params, run.data.metrics, run.info.run_id)


def record_row(record: FinishedRun, run_id: str) -> dict[str, Any]:
    """The results row ``fit_row`` reads back from the run ``record`` was written as (``run_id``), without
    reading it: what a checkpoint's results part is made of."""
    return _row(record.params, {m.key: _as_stored(m.value) for m in record.metrics}, run_id)


def _as_stored(value: float) -> float:
    """A metric value as MLflow's SQL store keeps it (an infinity becomes the largest float of its sign)."""
    return value if not math.isinf(value) else math.copysign(sys.float_info.max, value)


def _row(p: Mapping[str, str], m: Mapping[str, float], run_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: p.get(c) for c in IDENTITY_COLUMNS}
    row.update({c: m.get(c, float("nan")) for c in METRIC_COLUMNS})
    row.update({c: p.get(c, "") for c in PREDICTION_COLUMNS})
    row["fit_run_id"] = run_id
    return row


def results_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame) -> the results table: architecture columns first, ints as ints, per-image strings as
    strings ("" where unknown), sorted by fit identity."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in (*IDENTITY_COLUMNS, *METRIC_COLUMNS, *PREDICTION_COLUMNS):
        if c not in frame.columns:
            frame[c] = pd.Series(dtype="float64" if c in METRIC_COLUMNS else "object")
    for c in PREDICTION_COLUMNS:
        frame[c] = frame[c].fillna("").astype(str)
    for c in INT_COLUMNS:
        values = pd.to_numeric(frame[c])
        frame[c] = values.round().astype("int64") if values.notna().all() else values.astype("float64")
    for c in METRIC_COLUMNS:
        if c not in INT_COLUMNS:
            frame[c] = pd.to_numeric(frame[c]).astype("float64")
    for c in IDENTITY_COLUMNS:
        if c not in INT_COLUMNS:
            frame[c] = frame[c].astype(str)
    known = (*IDENTITY_COLUMNS, *METRIC_COLUMNS, *PREDICTION_COLUMNS)
    frame = frame[[*known, *(c for c in frame.columns if c not in known)]]
    return frame.sort_values(["epoch", "module_index", "module", "concept", "probe"], kind="stable").reset_index(drop=True)
