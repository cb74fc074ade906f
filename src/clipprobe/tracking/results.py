"""Read a probe sweep's results back from MLflow: its Parquet artifact, else its nested fit runs."""

from __future__ import annotations

import logging

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.tracking.fit_records import RESULTS_ARTIFACT
from clipprobe.tracking.runs import download_artifact, find_latest_run, get_step_run
from clipprobe.tracking.sweep_fits import SweepFits

log = logging.getLogger(__name__)

PROBE_STEP = "probe"


class NotAProbeSweepError(ValueError):
    """The run exists but is not a probe sweep (or does not exist at all)."""


def get_sweep(run_id: str) -> Run:
    """The probe sweep run with this id; one clear error when it is missing or another step's run."""
    return get_step_run(run_id, PROBE_STEP, source=f"run {run_id}", fix="pass the parent run of `clipprobe probe`",
                        error=NotAProbeSweepError)


def find_latest_sweep(experiment_name: str | None = None) -> Run:
    """The newest finished probe sweep, or one clear error saying how to make one."""
    run = find_latest_run(PROBE_STEP, experiment_name=experiment_name)
    if run is None:
        where = f"experiment {experiment_name!r}" if experiment_name else "any experiment"
        raise NotAProbeSweepError(
            f"no finished probe sweep in {where}: run `clipprobe probe` first or pass a run id"
        )
    return run


def load_sweep_results(run_id: str, *, prefer_artifact: bool = True) -> pd.DataFrame:
    """One row per fit of the sweep ``run_id`` (columns as in docs/architecture.md).

    The parent's ``probe/results.parquet`` is read when present; otherwise (or with
    ``prefer_artifact=False``) it is assembled as the sweep does (``SweepFits.results``: the finished
    checkpoints' results parts, and the fit runs below open ones), so fits logged by other workers are included.
    """
    get_sweep(run_id)
    if prefer_artifact and _has_results_artifact(run_id):
        # MLflow draws a progress bar for the download unless the user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false:
        # their choice, so it is not switched here.
        path = download_artifact(run_id, RESULTS_ARTIFACT)
        log.info("sweep %s: reading %s", run_id, RESULTS_ARTIFACT)
        return pd.read_parquet(path)
    table = SweepFits(run_id).results()
    if table.empty:
        raise NotAProbeSweepError(
            f"probe sweep {run_id} has neither {RESULTS_ARTIFACT} nor finished nested fit runs"
        )
    log.info("sweep %s: assembled %d fits from its checkpoints", run_id, len(table))
    return table


def _has_results_artifact(run_id: str) -> bool:
    folder = RESULTS_ARTIFACT.rsplit("/", 1)[0]
    try:
        return any(f.path == RESULTS_ARTIFACT for f in MlflowClient().list_artifacts(run_id, folder))
    except (MlflowException, OSError):
        return False


def ui_address() -> str:
    """The MLflow UI's address when the tracking URI is an http(s) server (the UI runs there), else ""."""
    uri = MlflowClient().tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""


def provenance(run_id: str, name: str, table: pd.DataFrame, *, ui_url: str = ""):
    """Where a sweep's numbers come from, for the report: run, model and versions, concepts run, date."""
    from datetime import UTC, datetime

    from clipprobe.report.intro import Provenance

    run = get_sweep(run_id)
    pairs = table[["model_version", "epoch"]].drop_duplicates().sort_values("epoch") if not table.empty else table
    versions = ", ".join(f"v{v} = epoch {int(e)}" if str(v) else f"epoch {int(e)}"
                         for v, e in zip(pairs.get("model_version", []), pairs.get("epoch", []), strict=True))
    models = ", ".join(dict.fromkeys(str(m) for m in table.get("model_name", []) if str(m)))
    started = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Provenance(name=name, run_id=run_id, run_name=run.info.run_name or "", experiment_id=run.info.experiment_id,
                      model=models or run.data.params.get("model_name", ""), versions=versions,
                      concepts_run=run.data.params.get("splits_run", ""), date=started, ui_url=ui_url)
