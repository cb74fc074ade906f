"""A sweep's representation similarity (``probe/cka.parquet``): written on the sweep run, read back for the report."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.core.parquet import provenance, write_table
from clipprobe.tracking.runs import download_artifact

log = logging.getLogger(__name__)

CKA_ARTIFACT = "probe/cka.parquet"


def log_cka(sweep_run_id: str, table: pd.DataFrame, *, max_images: int, client: MlflowClient | None = None) -> None:
    """Write ``probe/cka.parquet`` on the sweep run (replacing an earlier one); its provenance says how many
    images CKA read at most."""
    client = client or MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CKA_ARTIFACT).name
        write_table(table, path, provenance("probe_cka", sweep_run_id=sweep_run_id, max_images=max_images,
                                            features="pooled (gap)"))
        client.log_artifact(sweep_run_id, str(path), str(Path(CKA_ARTIFACT).parent))


def load_cka(sweep_run_id: str) -> pd.DataFrame | None:
    """The sweep's CKA table, or None when it has none (a sweep made with ``--no-cka`` or before CKA existed)."""
    folder = CKA_ARTIFACT.rsplit("/", 1)[0]
    try:
        if not any(f.path == CKA_ARTIFACT for f in MlflowClient().list_artifacts(sweep_run_id, folder)):
            return None
    except (MlflowException, OSError):
        return None
    log.info("sweep %s: reading %s", sweep_run_id, CKA_ARTIFACT)
    return pd.read_parquet(download_artifact(sweep_run_id, CKA_ARTIFACT))
