"""The one reader of a sweep's fit runs: which fits are done (resume), and their typed results table
(``probe/results.parquet``, assembled from the checkpoints' results parts; compare and the report read it)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from clipprobe.tracking.bulk import sql_store
from clipprobe.tracking.fit_records import (
    RESULTS_PART_ARTIFACT,
    SWEEP_TAG,
    FitKey,
    fit_key,
    fit_row,
    results_frame,
)
from clipprobe.tracking.runs import EPOCH_TAG, LEVEL_TAG, PARENT_TAG, search_all_runs

log = logging.getLogger(__name__)

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
_CHECKPOINT_RUNS = text(
    "SELECT r.run_uuid, r.status, r.artifact_uri, e.value FROM runs r "
    "JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = :parent AND p.value = :sweep "
    "JOIN tags l ON l.run_uuid = r.run_uuid AND l.key = :level AND l.value = 'checkpoint' "
    "LEFT JOIN tags e ON e.run_uuid = r.run_uuid AND e.key = :epoch "
    "WHERE r.lifecycle_stage = 'active'")


@dataclass(frozen=True)
class CheckpointRun:
    """What assembling a sweep's results needs of one checkpoint run: no metrics, params or tags."""

    run_id: str
    status: str
    artifact_uri: str
    epoch: int


def fits_filter(sweep_run_id: str) -> str:
    """The runs-table filter that shows a sweep's checkpoint and fit runs."""
    return f"tags.`{SWEEP_TAG}` = '{sweep_run_id}'"


class SweepFits:
    """The fit runs of one sweep run (every fit run carries the tag ``clipprobe.sweep_run_id``)."""

    def __init__(self, sweep_run_id: str, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.sweep_run_id = sweep_run_id
        self.experiment_id = self.client.get_run(sweep_run_id).info.experiment_id

    def runs(self, epoch: int | None = None, *, checkpoint_run: str | None = None) -> list[Run]:
        """Every fit run of the sweep (of one checkpoint's ``epoch`` when given, or below its ``checkpoint_run``,
        which also finds a fit run killed before its params were logged), whatever its status, oldest first."""
        only = "" if epoch is None else f" and params.epoch = '{int(epoch)}'"
        if checkpoint_run is not None:
            only += f" and tags.`{PARENT_TAG}` = '{checkpoint_run}'"
        found = search_all_runs(self.client, [self.experiment_id],
                                f"{fits_filter(self.sweep_run_id)} and tags.`{LEVEL_TAG}` = 'fit'{only}")
        return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))

    def finished(self, *, delete_unfinished: bool = False, epoch: int | None = None,
                 checkpoint_run: str | None = None) -> set[FitKey]:
        """Identities of the fits logged FINISHED. With ``delete_unfinished`` (what a resume does before it
        fits the rest), a fit run a killed process left RUNNING is deleted (its fit is redone) and a second
        FINISHED run of the same fit (two writers raced) too, so every fit ends with exactly one run.
        ``epoch`` / ``checkpoint_run``: that checkpoint's fits only (a worker owning one checkpoint leaves the
        others' runs alone)."""
        done: set[FitKey] = set()
        for run in self.runs(epoch, checkpoint_run=checkpoint_run):
            if run.info.status == FINISHED:
                key = fit_key(run.data.params)
                if key not in done:
                    done.add(key)
                    continue
            if delete_unfinished:
                log.info("deleting %s fit run %s (%s)", "duplicate" if run.info.status == FINISHED else "unfinished",
                         run.info.run_id, run.info.run_name)
                self.client.delete_run(run.info.run_id)
        return done

    def table(self, epoch: int | None = None, *, checkpoint_run: str | None = None) -> pd.DataFrame:
        """One typed row per FINISHED fit run (of one ``epoch`` or below one ``checkpoint_run`` when given),
        read back from the store, in the columns of docs/architecture.md (``results_frame``). A second run
        of the same fit is left out (the first is kept), as ``finished`` would delete it."""
        rows, seen, skipped = [], set(), 0
        for run in self.runs(epoch, checkpoint_run=checkpoint_run):
            if run.info.status != FINISHED:
                skipped += 1
                continue
            key = fit_key(run.data.params)
            if key not in seen:
                seen.add(key)
                rows.append(fit_row(run))
        if skipped:
            log.warning("sweep %s: skipped %d fit runs that are not FINISHED", self.sweep_run_id, skipped)
        return results_frame(rows)

    def checkpoint_runs(self) -> list[CheckpointRun]:
        """The sweep's checkpoint runs (one per epoch), whatever their status. On a SQL store one query of
        four columns: MLflow's search would load each run's ~520 epoch metrics too (25 s for 115 checkpoint
        runs on a loaded machine, bench_tracking_scale_300.md)."""
        store = sql_store(self.client)
        if store is not None:
            with contextlib.suppress(SQLAlchemyError), store.engine.connect() as connection:
                rows = connection.execute(_CHECKPOINT_RUNS, {"sweep": self.sweep_run_id, "parent": PARENT_TAG,
                                                             "level": LEVEL_TAG, "epoch": EPOCH_TAG}).fetchall()
                return [CheckpointRun(r[0], r[1], r[2], int(r[3]) if str(r[3]).isdigit() else -1) for r in rows]
        found = search_all_runs(self.client, [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.sweep_run_id}' "
                                                                   f"and tags.`{LEVEL_TAG}` = 'checkpoint'")
        return [CheckpointRun(r.info.run_id, r.info.status, r.info.artifact_uri,
                              int(r.data.tags[EPOCH_TAG]) if r.data.tags.get(EPOCH_TAG, "").isdigit() else -1)
                for r in found]

    def results(self, *, workers: int = 8) -> pd.DataFrame:
        """The sweep's results table without reading its fits back: the results part of each FINISHED
        checkpoint run (``RESULTS_PART_ARTIFACT``, written from the records its writer logged), and the fit
        runs read back only below checkpoint runs still open (or finished before parts existed). Equals
        ``table()`` (tests/test_sweep_resume.py)."""
        checkpoints = self.checkpoint_runs()
        if not checkpoints:  # fits straight under the sweep run (sweeps logged before checkpoint runs existed)
            return self.table()
        with ThreadPoolExecutor(max_workers=workers) as pool:  # over HTTP each part is a download
            parts = list(pool.map(self._part, checkpoints))
        frames = [part if part is not None else self.table(checkpoint_run=run.run_id)
                  for run, part in zip(checkpoints, parts, strict=True)]
        read_back = sum(part is None for part in parts)
        if read_back:
            log.info("sweep %s: %d of %d checkpoints read back from their fit runs (open, or without a results part)",
                     self.sweep_run_id, read_back, len(checkpoints))
        frames = [f for f in frames if not f.empty]
        return results_frame(pd.concat(frames, ignore_index=True) if frames else [])

    def n_finished(self, checkpoint_run: CheckpointRun) -> int:
        """How many fits below ``checkpoint_run`` are logged FINISHED: its results part's rows when it has one,
        else read back."""
        part = self._part(checkpoint_run)
        return len(part) if part is not None else len(self.finished(checkpoint_run=checkpoint_run.run_id))

    def _part(self, run: CheckpointRun) -> pd.DataFrame | None:
        if run.status != FINISHED:
            return None
        try:
            repository = get_artifact_repository(run.artifact_uri)
            if isinstance(repository, LocalArtifactRepository):  # its own path: no copy
                return pd.read_parquet(repository.download_artifacts(RESULTS_PART_ARTIFACT))
            with tempfile.TemporaryDirectory() as tmp:
                local = str(Path(tmp) / Path(RESULTS_PART_ARTIFACT).name)
                # one file, without the progress bar MLflow's download_artifacts draws for each call (300 at scale)
                repository._download_file(remote_file_path=RESULTS_PART_ARTIFACT, local_path=local)
                return pd.read_parquet(local)
        except (MlflowException, OSError):
            return None  # finished before parts existed: read back
