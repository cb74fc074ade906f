"""Where a probe sweep's labels came from: the source of its concept splits (CLIP or annotations) and,
for mined labels, the label quality its concepts run logged (``concepts/label_quality.parquet``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.tracking.runs import download_artifact

log = logging.getLogger(__name__)
QUALITY_ARTIFACT = "concepts/label_quality.parquet"


def splits_source(sweep_run_id: str) -> tuple[str | None, pd.DataFrame | None]:
    """(``clip``, ``annotations`` or None when unknown; the label quality table when logged, else None)."""
    client = MlflowClient()
    concepts_id = client.get_run(sweep_run_id).data.params.get("splits_run", "")
    try:
        concepts = client.get_run(concepts_id) if concepts_id else None
    except MlflowException:
        concepts = None
    if concepts is None:
        return None, None
    source = concepts.data.params.get("source")
    if source != "clip":
        return source, None
    names = {a.path for a in client.list_artifacts(concepts_id, "concepts")}
    if QUALITY_ARTIFACT not in names:
        return source, None
    return source, pd.read_parquet(download_artifact(concepts_id, QUALITY_ARTIFACT))


def label_sources(run_ids: Sequence[str], names: Sequence[str]) -> tuple[str | None, dict[str, pd.DataFrame]]:
    """(name of the first sweep with true labels, {name: label quality} of sweeps with CLIP-mined labels)."""
    truth, mined = None, {}
    for run_id, name in zip(run_ids, names, strict=True):
        source, quality = splits_source(run_id)
        if source == "annotations" and truth is None:
            truth = name
        elif quality is not None:
            mined[name] = quality
    return truth, mined
