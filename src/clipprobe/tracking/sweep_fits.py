"""The one reader of a sweep's fit runs: which fits are done (resume), and their typed results table
(``probe/results.parquet``, compare and the report read the same rows)."""

from __future__ import annotations

import logging

import pandas as pd
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from clipprobe.tracking.fit_records import SWEEP_TAG, FitKey, fit_key, fit_row, results_frame
from clipprobe.tracking.runs import LEVEL_TAG, PARENT_TAG, search_all_runs

log = logging.getLogger(__name__)

FINISHED = RunStatus.to_string(RunStatus.FINISHED)


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

    def table(self, epoch: int | None = None) -> pd.DataFrame:
        """One typed row per FINISHED fit run (of one ``epoch`` when given), in the columns of
        docs/architecture.md (``results_frame``). A second run of the same fit is left out (the first is
        kept), as ``finished`` would delete it."""
        rows, seen, skipped = [], set(), 0
        for run in self.runs(epoch):
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
