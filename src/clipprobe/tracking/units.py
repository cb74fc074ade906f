"""Unit scores in MLflow: per-checkpoint parts and the three ``neurons/*.parquet`` tables on the sweep run, summary
metrics on each checkpoint run (never one run per unit), and which checkpoints are already scored (resume)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from clipprobe.core.parquet import METADATA_KEY, provenance
from clipprobe.core.step_config import StepConfig
from clipprobe.neurons.cards import TOP_IMAGE_COLUMNS
from clipprobe.neurons.schema import SPARSE_COLUMNS, SUMMARY_COLUMNS, UNIT_COLUMNS
from clipprobe.tracking.fit_records import BAD_NAME_CHARS, now_ms
from clipprobe.tracking.fits import CheckpointRuns
from clipprobe.tracking.runs import (
    EPOCH_TAG,
    LEVEL_TAG,
    NOTE_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    STEP_TAG,
    search_all_runs,
)

TABLES = ("units", "sparse", "summary", "top_images")  # top_images: the best units' top pool images (cards)
ARTIFACT_DIR = "neurons"
PARTS_DIR = f"{ARTIFACT_DIR}/parts"  # neurons/parts/epoch_<NNNN>/<modules key>/<table>.parquet: a checkpoint's rows
SWEEP_RUN_TAG = "clipprobe.sweep_run"  # on the run `mlflow run -e neurons` opens: the sweep it scored
SCORED_TAG = "clipprobe.neurons"  # on a checkpoint run: JSON list of the modules whose parts and metrics are logged
SUMMARY_METRICS = {  # summary column -> metric name under neurons/<module>/<concept>/
    "n_detectors_auroc": "n_detectors", "n_detectors_iou": "n_detectors_iou", "smallest_k": "smallest_k",
    "best_auroc": "best_auroc", "best_unit": "best_unit", "full_test_acc": "full_test_acc",
}


_INTS = {"epoch", "unit", "n_pos", "n_neg", "k", "n_test", "n_units", "n_detectors_auroc", "n_detectors_iou",
         "best_unit", "smallest_k", "rank"}
_FLOATS = {"auroc", "p_value", "q_value", "soft_wpmi", "iou", "test_acc", "test_acc_ci_low", "test_acc_ci_high",
           "best_auroc", "full_test_acc", "full_test_acc_ci_low", "full_test_acc_ci_high", "activation"}


def _schema(columns: tuple[str, ...]) -> pa.Schema:
    """Arrow types of a neurons table: the same in every part whatever its values (a label column all null in
    one part is still a string column)."""
    return pa.schema([(c, pa.int64() if c in _INTS else pa.float64() if c in _FLOATS else pa.string())
                      for c in columns])


SCHEMAS = {"units": _schema(UNIT_COLUMNS), "sparse": _schema(SPARSE_COLUMNS), "summary": _schema(SUMMARY_COLUMNS),
           "top_images": _schema(TOP_IMAGE_COLUMNS)}


def _arrow(name: str, frame: pd.DataFrame, metadata: Mapping[str, Any]) -> pa.Table:
    schema = SCHEMAS[name]
    arrays = []
    for field in schema:
        col = frame[field.name]
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object:
            col = col.astype(object).where(col.notna(), None)
        arrays.append(pa.array(col, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata({METADATA_KEY: json.dumps(dict(metadata)).encode()}))


def _write(name: str, frame: pd.DataFrame, path: Path, metadata: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_arrow(name, frame, metadata), path)


def artifact_of(table: str) -> str:
    """``neurons/<table>.parquet``."""
    return f"{ARTIFACT_DIR}/{table}.parquet"


def metric_name(module: str, concept: str, name: str) -> str:
    """``neurons/<module>/<concept>/<name>`` (``neurons/module:3/red/n_detectors``)."""
    return BAD_NAME_CHARS.sub("_", f"neurons/{module}/{concept}/{name}")


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """The checkpoint run's metrics from its summary rows (NaN / null values left out)."""
    out = {}
    for row in summary.to_dict("records"):
        for column, name in SUMMARY_METRICS.items():
            value = row.get(column)
            if value is not None and not pd.isna(value):
                out[metric_name(row["module"], row["concept"], name)] = float(value)
    return out


def scored_modules(sweep_run_id: str, *, client: MlflowClient | None = None) -> dict[int, set[str]]:
    """Epoch -> the modules already scored at that checkpoint (its run's ``SCORED_TAG``: a JSON list)."""
    client = client or MlflowClient()
    experiment_id = client.get_run(sweep_run_id).info.experiment_id
    found = search_all_runs(client, [experiment_id],
                            f"tags.`{PARENT_TAG}` = '{sweep_run_id}' and tags.`{LEVEL_TAG}` = 'checkpoint' "
                            f"and tags.`{SCORED_TAG}` LIKE '[%'")
    return {int(r.data.tags[EPOCH_TAG]): set(json.loads(r.data.tags[SCORED_TAG]))
            for r in found if r.data.tags.get(EPOCH_TAG, "").isdigit()}


def note_entry_run(sweep_run_id: str, *, client: MlflowClient | None = None) -> None:
    """Under `mlflow run -e neurons`, the run MLflow opened: a `neurons` step run whose note points at the sweep
    the unit scores were logged on (the tables live there, beside the fits they score)."""
    made = os.environ.get("MLFLOW_RUN_ID")
    if not made or made == sweep_run_id:
        return
    client = client or MlflowClient()
    if STEP_TAG in client.get_run(made).data.tags:  # a step's own run (the demo's main, a probe sweep): not ours
        return
    client.log_batch(made, tags=[RunTag(STEP_TAG, "neurons"), RunTag(RUN_NAME_TAG, f"neurons: sweep {sweep_run_id}"),
                                 RunTag(SWEEP_RUN_TAG, sweep_run_id),
                                 RunTag(NOTE_TAG, f"Unit scores of the probe sweep {sweep_run_id}: its artifacts "
                                                  f"`{ARTIFACT_DIR}/` and its checkpoint runs' `neurons/*` metrics.")])


def log_config(sweep_run_id: str, config: StepConfig, *, client: MlflowClient | None = None) -> None:
    """``neurons/config.json`` on the sweep run (the resolved config the tables were computed with)."""
    client = client or MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(config.to_json())
        client.log_artifact(sweep_run_id, str(path), ARTIFACT_DIR)


def log_checkpoint(sweep_run_id: str, epoch: int, tables: Mapping[str, pd.DataFrame], metadata: Mapping[str, Any],
                   *, client: MlflowClient | None = None) -> None:
    """One checkpoint's rows (some modules) as a part on the sweep run, then their summary metrics and the
    modules added to ``SCORED_TAG`` on the checkpoint run, the tag in the last ``log_batch`` (so modules count
    as scored only with everything logged). A part is named by its modules: scoring the same modules again
    (after an interrupt) replaces it, never duplicates it."""
    client = client or MlflowClient()
    modules = sorted(set(tables["summary"]["module"].astype(str)))
    key = hashlib.sha1("\n".join(modules).encode()).hexdigest()[:12]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / key
        for name in TABLES:
            _write(name, tables[name], folder / f"{name}.parquet",
                   provenance(f"neurons_{name}", **{**metadata, "epoch": int(epoch), "modules": modules}))
        client.log_artifacts(sweep_run_id, str(folder), f"{PARTS_DIR}/epoch_{int(epoch):04d}/{key}")
    run_id = CheckpointRuns(sweep_run_id, client).run_id(epoch)
    run = client.get_run(run_id)
    scored = sorted(set(json.loads(run.data.tags.get(SCORED_TAG, "[]"))) | set(modules))
    now = now_ms()
    metrics = [Metric(k, v, now, int(epoch)) for k, v in sorted(summary_metrics(tables["summary"]).items())]
    for i in range(0, max(len(metrics), 1), 999):  # MLflow's 1000 entities per batch; the tag goes with the last
        last = i + 999 >= len(metrics)
        client.log_batch(run_id, metrics=metrics[i:i + 999], tags=[RunTag(SCORED_TAG, json.dumps(scored))] if last else [])
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "FINISHED", end_time=now_ms())


def log_tables(sweep_run_id: str, metadata: Mapping[str, Any], *, client: MlflowClient | None = None) -> dict[str, int]:
    """Join every part into ``neurons/units.parquet``, ``neurons/sparse.parquet`` and ``neurons/summary.parquet``
    on the sweep run (row groups streamed part by part, never the whole table in memory), with the project's
    provenance; returns the rows per table."""
    client = client or MlflowClient()
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        parts = Path(client.download_artifacts(sweep_run_id, PARTS_DIR, tmp))
        out = Path(tmp) / "out"
        for name in TABLES:
            files = sorted(parts.glob(f"epoch_*/*/{name}.parquet"))
            counts[name] = 0
            if not files:
                continue
            meta = provenance(f"neurons_{name}", **{**metadata, "sweep_run_id": sweep_run_id,
                                                    "epochs": sorted({int(f.parent.parent.name.split("_")[1]) for f in files})})
            schema = SCHEMAS[name].with_metadata({METADATA_KEY: json.dumps(meta).encode()})
            (out / f"{name}.parquet").parent.mkdir(parents=True, exist_ok=True)
            with pq.ParquetWriter(out / f"{name}.parquet", schema) as writer:
                for f in files:
                    part = pq.read_table(f).replace_schema_metadata(schema.metadata)
                    counts[name] += part.num_rows
                    writer.write_table(part)
        client.log_artifacts(sweep_run_id, str(out), ARTIFACT_DIR)
    return counts


def read_table(sweep_run_id: str, table: str = "units", *, columns: list[str] | None = None) -> pd.DataFrame:
    """One of the sweep's neurons tables (only ``columns`` when given: the units table is read column-wise)."""
    if table not in TABLES:
        raise ValueError(f"unknown neurons table {table!r}: expected one of {', '.join(TABLES)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient().download_artifacts(sweep_run_id, artifact_of(table), tmp)
        return pq.read_table(path, columns=columns).to_pandas()
