"""A concepts run's tables read back by run id: CLIP's cosine similarity of every pool image to every concept
(``concepts/similarities.parquet``), what the neurons step's soft-WPMI reads."""

from __future__ import annotations

from typing import Any

import pandas as pd

from clipprobe.concepts.build import SIMILARITIES_FILE, SIMILARITIES_KIND
from clipprobe.core.parquet import read_table
from clipprobe.tracking import runs

SIMILARITIES_ARTIFACT = f"concepts/{SIMILARITIES_FILE}"  # a CLIP concepts run's cosines (not an annotations run)


def read_similarities(run_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``path`` (relative to the metadata's ``pool_root``) + one cosine column per concept, one row per readable
    pool image, and the table's provenance (CLIP model, prompt, vocabulary, pool fingerprint, logit_scale).

    ``LookupError`` (one line) for a run that is no concepts run, or one without the table: an annotations run
    (its labels are the truth, there is no CLIP), or a CLIP run made before the table existed.
    """
    run = runs.get_step_run(run_id, "concepts", source=f"concepts run {run_id}", error=LookupError,
                            fix="pass the id of a finished `clipprobe concepts` run")
    if run.data.params.get("source") == "annotations":
        raise LookupError(f"concepts run {run_id} takes its labels from annotations: it has no CLIP similarities "
                          "(label units from the truth, or pass a `clipprobe concepts --source clip` run)")
    try:
        path = runs.download_artifact(run_id, SIMILARITIES_ARTIFACT)
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        path = None
    if path is None or not path.is_file():
        raise LookupError(f"concepts run {run_id} has no {SIMILARITIES_ARTIFACT} (made before clipprobe kept "
                          "CLIP's cosines): run `clipprobe concepts` again on the same pool")
    table, meta = read_table(path)
    if meta.get("kind") != SIMILARITIES_KIND:
        raise LookupError(f"{SIMILARITIES_ARTIFACT} of run {run_id} is a {meta.get('kind')!r} table, not "
                          f"{SIMILARITIES_KIND!r}: run `clipprobe concepts` again")
    return table, meta
