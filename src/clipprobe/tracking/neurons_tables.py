"""A probe sweep's neurons tables read back for the report: ``neurons/units.parquet`` (only the columns the report
uses, read column-wise: the table can hold millions of rows), ``neurons/summary.parquet`` and the units' top pool
images ``neurons/top_images.parquet``, when the sweep has them; ``None`` when it has no units table."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.core.parquet import read_metadata
from clipprobe.neurons.cards import TOP_IMAGES_ARTIFACT
from clipprobe.report.units import UnitTables
from clipprobe.tracking.runs import download_artifact

log = logging.getLogger(__name__)
UNITS_ARTIFACT = "neurons/units.parquet"
SUMMARY_ARTIFACT = "neurons/summary.parquet"
# What the report reads of the units table (neurons.schema names them all).
REPORT_COLUMNS = ("epoch", "module", "unit", "concept", "group", "auroc", "q_value", "iou", "soft_wpmi", "n_pos",
                  "n_neg", "auroc_label", "wpmi_label", "iou_label")


def _pool_root(run_id: str, client: MlflowClient, top_images: Path | None) -> Path | None:
    """Where the top images' paths are relative to: the table's own ``pool_root``, else the pool of the sweep's
    concepts run (its ``pool`` param)."""
    if top_images is not None and read_metadata(top_images).get("pool_root"):
        return Path(read_metadata(top_images)["pool_root"])
    concepts_id = client.get_run(run_id).data.params.get("splits_run", "")
    try:
        pool = client.get_run(concepts_id).data.params.get("pool") if concepts_id else None
    except MlflowException:
        pool = None
    return Path(pool) if pool else None


def load_unit_tables(sweep_run_id: str) -> UnitTables | None:
    """The sweep's neurons tables for ``report.units``, or ``None`` when the sweep has no ``neurons/units.parquet``."""
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(sweep_run_id, "neurons")}
    if UNITS_ARTIFACT not in names:
        return None
    path = download_artifact(sweep_run_id, UNITS_ARTIFACT)
    have = set(pq.read_schema(path).names)
    units = pq.read_table(path, columns=[c for c in REPORT_COLUMNS if c in have]).to_pandas()
    summary = pd.read_parquet(download_artifact(sweep_run_id, SUMMARY_ARTIFACT)) if SUMMARY_ARTIFACT in names else None
    top_path = download_artifact(sweep_run_id, TOP_IMAGES_ARTIFACT) if TOP_IMAGES_ARTIFACT in names else None
    top = pd.read_parquet(top_path) if top_path is not None else None
    log.info("sweep %s: neurons tables with %d unit rows", sweep_run_id, len(units))
    return UnitTables(units, summary, top, _pool_root(sweep_run_id, client, top_path))
