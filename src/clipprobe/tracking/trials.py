"""Optuna trials as nested MLflow runs of a tune run (three store calls each), and the tune run's
best hyper-parameters read back for ``probe --params-from``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from clipprobe.tracking.runs import (
    LEVEL_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    download_artifact,
    get_step_run,
    tracking_uri,
)

log = logging.getLogger(__name__)

BEST_PARAMS_ARTIFACT = "tune/best_params.json"
TRIAL_TAG = "clipprobe.trial"
STATE_TAG = "clipprobe.trial_state"
PROBE_TAG = "clipprobe.probe"
STUDY_TAG = "clipprobe.study"
_RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


def default_journal_dir(uri: str | None = None) -> Path:
    """The folder of the embedded sqlite tracking store (where ``optuna.journal`` goes by default);
    the working directory for any other store."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    return Path(".")


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialLogger:
    """Writes one nested run per finished trial under a tune run; use ``log_trial`` as an Optuna callback."""

    def __init__(self, parent_run_id: str, kind: str, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.parent_run_id = parent_run_id
        self.kind = kind
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self.run_ids: dict[int, str] = {}

    def __call__(self, study: Any, trial: FrozenTrial) -> None:
        self.log_trial(study.study_name, trial)

    def log_trial(self, study_name: str, trial: FrozenTrial) -> str:
        """Params, value (``val_acc``), per-fold running means (``val_acc_running``, step = fold) and
        state (tag ``clipprobe.trial_state``: complete, pruned or failed) of one trial."""
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
            trial.state, trial.state.name.lower())
        start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else _now_ms()
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else _now_ms()
        tags = {PARENT_TAG: self.parent_run_id, LEVEL_TAG: "trial", TRIAL_TAG: str(trial.number),
                STATE_TAG: state, PROBE_TAG: self.kind, STUDY_TAG: study_name,
                RUN_NAME_TAG: f"{self.kind} trial {trial.number}"}
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
        metrics = [Metric("val_acc_running", float(v), end, int(step))
                   for step, v in sorted(trial.intermediate_values.items()) if v is not None and not math.isnan(v)]
        if trial.value is not None:
            metrics.append(Metric("val_acc", float(trial.value), end, 0))
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, _RUN_STATUS.get(trial.state, "KILLED"), end_time=end)
        self.run_ids[trial.number] = run.info.run_id
        return run.info.run_id


def best_params_json(best: Mapping[str, Mapping[str, Any]]) -> str:
    """``{kind: {param: value}}`` as the text of ``tune/best_params.json``."""
    return json.dumps({k: dict(v) for k, v in best.items()}, indent=1, sort_keys=True)


def load_best_params(run_id: str) -> dict[str, dict[str, Any]]:
    """``{kind: {param: value}}`` from a tune run's ``tune/best_params.json``; one clear ValueError otherwise."""
    get_step_run(run_id, "tune", source=f"--params-from {run_id}", fix="pass the parent run id of `clipprobe tune`")
    try:
        path = download_artifact(run_id, BEST_PARAMS_ARTIFACT)
    except (MlflowException, OSError):
        raise ValueError(f"--params-from {run_id}: no {BEST_PARAMS_ARTIFACT} in that run (did the tune run "
                         "finish?); pass a finished `clipprobe tune` run") from None
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"--params-from {run_id}: {BEST_PARAMS_ARTIFACT} is not {{kind: {{param: value}}}}")
    return {str(k): dict(v) for k, v in data.items()}
