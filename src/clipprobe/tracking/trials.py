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

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from clipprobe.tracking.runs import (
    LEVEL_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    download_artifact,
    end_run_quietly,
    get_step_run,
    tracking_uri,
)
from clipprobe.tuning.studies import ERROR_ATTR, WORKER_ATTR

log = logging.getLogger(__name__)

BEST_PARAMS_ARTIFACT = "tune/best_params.json"
TRIAL_TAG = "clipprobe.trial"
STATE_TAG = "clipprobe.trial_state"
PROBE_TAG = "clipprobe.probe"
STUDY_TAG = "clipprobe.study"
RUN_ATTR = "clipprobe.run_id"  # trial user attr: the id of the trial's nested run
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
    """One nested run per trial under a tune run: ``start`` opens it when the trial starts (an Optuna
    objective wrapper calls it), the logger as an Optuna callback ends it with the trial's params, values
    and state. A trial lost with its worker gets its run ended FAILED by whoever fails the trial
    (``tuning.run_share`` or Optuna's heartbeat, ``on_stale``)."""

    def __init__(self, parent_run_id: str, kind: str, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.parent_run_id = parent_run_id
        self.kind = kind
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self.run_ids: dict[int, str] = {}  # trials this logger ended
        self._open: dict[int, str] = {}  # trials it started and has not ended yet

    def _tags(self, study_name: str, number: int, state: str) -> dict[str, str]:
        return {PARENT_TAG: self.parent_run_id, LEVEL_TAG: "trial", TRIAL_TAG: str(number), STATE_TAG: state,
                PROBE_TAG: self.kind, STUDY_TAG: study_name, RUN_NAME_TAG: f"{self.kind} trial {number}"}

    def start(self, trial: Any) -> str:
        """Open the RUNNING run of a starting ``optuna.Trial``; its id goes in the trial's user attrs."""
        tags = self._tags(trial.study.study_name, trial.number, "running")
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker:
            tags[WORKER_ATTR] = worker
        run = self.client.create_run(self.experiment_id, start_time=_now_ms(), tags=tags)
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        self._open[trial.number] = run.info.run_id
        return run.info.run_id

    def __call__(self, study: Any, trial: FrozenTrial) -> None:
        self.log_trial(study.study_name, trial)

    def _find(self, study_name: str, trial: FrozenTrial) -> Any:
        """The run of an ended trial this logger did not start, or None: by the run id in its user attrs,
        else by its tags under this tune run (a worker killed between opening the run and noting its id)."""
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            try:
                return self.client.get_run(run_id)
            except MlflowException:
                log.warning("trial %d: its run %s is not in this tracking store", trial.number, run_id)
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{STUDY_TAG}` = "
            f"'{study_name}' and tags.`{TRIAL_TAG}` = '{trial.number}'")
        return found[0] if found else None

    def log_trial(self, study_name: str, trial: FrozenTrial) -> str:
        """End the run of an ended trial (opening it first if none was): params, value (``val_acc``),
        per-fold running means (``val_acc_running``, step = fold), state (tag ``clipprobe.trial_state``:
        complete, pruned or failed; a failed trial's error in ``clipprobe.error``). A run already ended is
        left as it is, so a retried share may hand its trials over again."""
        if trial.number in self.run_ids:
            return self.run_ids[trial.number]
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
            trial.state, trial.state.name.lower())
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else _now_ms()
        run_id = self._open.pop(trial.number, None)
        if run_id is None:
            run = self._find(study_name, trial)
            if run is not None and run.info.status != "RUNNING":
                self.run_ids[trial.number] = run.info.run_id
                return run.info.run_id
            run_id = run.info.run_id if run is not None else None
        if run_id is None:
            start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else end
            run_id = self.client.create_run(self.experiment_id, start_time=start,
                                            tags=self._tags(study_name, trial.number, state)).info.run_id
        # timestamps from the trial itself: logging a trial again (after a kill) repeats the same rows
        metrics = [Metric("val_acc_running", float(v), end, int(step))
                   for step, v in sorted(trial.intermediate_values.items()) if v is not None and not math.isnan(v)]
        if trial.value is not None:
            metrics.append(Metric("val_acc", float(trial.value), end, 0))
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        tags = [RunTag(STATE_TAG, state)]
        if ERROR_ATTR in trial.user_attrs:
            tags.append(RunTag(ERROR_ATTR, str(trial.user_attrs[ERROR_ATTR])))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        end_run_quietly(self.client, run_id, _RUN_STATUS.get(trial.state, "KILLED"), end)
        self.run_ids[trial.number] = run_id
        return run_id


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
