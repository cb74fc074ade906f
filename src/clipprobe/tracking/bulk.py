"""Many finished nested runs in one database transaction, where the tracking store is SQL.

MLflow's public calls cost three transactions and about a dozen queries per run (``create_run``,
``log_batch``, ``set_terminated``; timings in benchmarks/results/code_timings.md). A sweep's fit runs are
complete when they are written, so on a SQL store (sqlite, PostgreSQL, MySQL) ``insert_finished_runs``
writes a batch of them, already FINISHED, as the same rows MLflow's own calls write (runs, tags,
params, metrics, latest_metrics; tests/test_tracking_bulk.py compares the two field by field), after
MLflow's own validation, in one transaction: a batch lands whole or not at all. Other stores (a
tracking server over REST) keep the public calls.

The tables are MLflow's private models, so the fast path only runs on a store whose schema revision
(its ``alembic_version`` row) is one it was tested against (``TESTED_SCHEMA_REVISIONS``); on any other
revision ``fast_store`` says why in one log line and the caller keeps MLflow's public calls.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Metric, Param, RunStatus, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_param_keys_unique,
)
from sqlalchemy import text

log = logging.getLogger(__name__)

# Alembic revisions of MLflow's tracking schema that tests/test_tracking_bulk.py compared, row by row,
# with what MLflow's own calls write (dc11669786a5: the head of MLflow 3.17). Add a revision only
# after that test passes on it.
TESTED_SCHEMA_REVISIONS = ("dc11669786a5",)
# sqlite lets one writer in at a time; MLflow waits 20 s for the lock (busy_timeout), then gives up with
# "database is locked". Four writer processes on one sqlite file hit that (bench_tracking_writers.md), so a
# batch is tried again after a growing, jittered wait, this long in all, before its error is raised.
LOCKED_RETRY_SECONDS = 300.0
T = TypeVar("T")


@dataclass(frozen=True)
class FinishedRun:
    """A run to write in one piece: its tags (``mlflow.runName`` names it), params and metrics."""

    tags: Mapping[str, str]
    params: Mapping[str, str]
    metrics: Sequence[Metric]
    start_time: int
    end_time: int


def sql_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The client's tracking store when it is a SQL database, else None."""
    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def schema_revision(store: SqlAlchemyStore) -> str | None:
    """The store's alembic schema revision (its ``alembic_version`` row), or None when it has none."""
    with store.engine.connect() as connection:
        row = connection.execute(text("SELECT version_num FROM alembic_version")).fetchone()
    return None if row is None else str(row[0])


def fast_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The SQL store ``insert_finished_runs`` may write to: the client's, when it is SQL and its schema
    revision is in ``TESTED_SCHEMA_REVISIONS``; else None (one log line says why, for a SQL store)."""
    store = sql_store(client)
    if store is None:
        return None
    revision = schema_revision(store)
    if revision not in TESTED_SCHEMA_REVISIONS:
        log.warning("tracking store schema revision %s is not one the fast fit writer was tested on (%s): "
                    "logging fits through MLflow's public calls", revision, ", ".join(TESTED_SCHEMA_REVISIONS))
        return None
    return store


def _rows(store: SqlAlchemyStore, run: FinishedRun, run_id: str, experiment_id: str,
          artifact_root: str) -> SqlRun:
    metrics, params, tags = _validate_batch_log_data(
        list(run.metrics), [Param(k, v) for k, v in run.params.items()],
        [RunTag(k, v) for k, v in run.tags.items()])
    _validate_batch_log_limits(metrics, params, tags)
    _validate_param_keys_unique(params)
    name = run.tags.get(MLFLOW_RUN_NAME) or run_id
    sql = SqlRun(
        name=name, artifact_uri=append_to_uri_path(artifact_root, run_id, SqlAlchemyStore.ARTIFACTS_FOLDER_NAME),
        run_uuid=run_id, experiment_id=experiment_id, source_type=SourceType.to_string(SourceType.UNKNOWN),
        source_name="", entry_point_name="", user_id=run.tags.get(MLFLOW_USER, "unknown"),
        status=RunStatus.to_string(RunStatus.FINISHED), start_time=run.start_time, end_time=run.end_time,
        deleted_time=None, source_version="", lifecycle_stage=LifecycleStage.ACTIVE,
    )
    all_tags = {t.key: t.value for t in tags}
    all_tags.setdefault(MLFLOW_RUN_NAME, name)
    sql.tags = [SqlTag(key=k, value=v) for k, v in all_tags.items()]
    sql.params = [SqlParam(key=p.key, value=p.value) for p in params]
    history: dict[tuple, SqlMetric] = {}
    latest: dict[str, tuple] = {}
    for m in metrics:
        is_nan, value = store.sanitize_metric_value(m.value)
        key = (m.key, m.timestamp, m.step, value, is_nan)
        history.setdefault(key, SqlMetric(key=m.key, value=value, timestamp=m.timestamp, step=m.step,
                                          is_nan=is_nan))
        order = (m.step, m.timestamp, value)  # MLflow keeps the metric of the largest (step, timestamp, value)
        if m.key not in latest or order > latest[m.key][0]:
            latest[m.key] = (order, is_nan)
    sql.metrics = list(history.values())
    sql.latest_metrics = [SqlLatestMetric(key=k, value=o[2], timestamp=o[1], step=o[0], is_nan=nan)
                          for k, (o, nan) in latest.items()]
    return sql


def insert_finished_runs(store: SqlAlchemyStore, experiment_id: str, runs: Sequence[FinishedRun]) -> list[str]:
    """Write ``runs`` into an active experiment, FINISHED, in one transaction; their run ids in order."""
    experiment = store.get_experiment(experiment_id)
    store._check_experiment_is_active(experiment)
    ids = [uuid.uuid4().hex for _ in runs]

    def write() -> list[str]:  # fresh row objects on every try: a rolled-back session keeps its own
        rows = [_rows(store, run, run_id, experiment_id, experiment.artifact_location)
                for run, run_id in zip(runs, ids, strict=True)]
        with store.ManagedSessionMaker(read_only=False) as session:
            session.add_all(rows)
        return ids

    return retry_when_locked(write)


def database_locked(err: BaseException) -> bool:
    """Whether ``err`` is sqlite's "database is locked" (as MLflow's session wraps it, or bare)."""
    while err is not None:
        if "database is locked" in str(err):
            return True
        err = err.__cause__
    return False


def retry_when_locked(write: Callable[[], T], *, budget_s: float = LOCKED_RETRY_SECONDS,
                      first_wait_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> T:
    """``write()``, tried again while sqlite says the database is locked, for ``budget_s`` seconds in
    all; any other error, or the lock after that, is raised. ``write`` must be one transaction."""
    waited, wait = 0.0, first_wait_s
    while True:
        try:
            return write()
        except MlflowException as err:
            if not database_locked(err) or waited >= budget_s:
                raise
        pause = min(wait * (0.5 + random.random()), budget_s - waited)
        log.info("sqlite store locked by another writer: writing the batch again in %.1f s", pause)
        sleep(pause)
        waited, wait = waited + pause, min(wait * 2, 30.0)
