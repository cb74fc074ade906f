"""The one writer of fit runs: finished nested runs below a checkpoint run, in a background thread.

Public interface (what a sweep driver or a remote worker calls)::

    writer = FitWriter(sweep_run_id)           # MlflowClient() unless one is given; progress=True: a bar while
                                               # flush/close wait for more than BATCH fits
    writer.submit(checkpoint_run_id, row, hparams={...})   # returns at once
    writer.flush()                             # wait for everything submitted; re-raise a write error
    writer.close()                             # flush and stop the thread
    writer.log_fits([(checkpoint_run_id, row, {"hparams": ...}), ...])   # synchronous, whole batch
    writer.take_written(checkpoint_run_id)     # the written fits' results rows (a checkpoint's results part)

A row is a results row (``fit_records.IDENTITY_COLUMNS`` + ``METRIC_COLUMNS`` + the per-image strings).
On a SQL store of a tested schema revision (``bulk.fast_store``) a batch is one transaction
(``bulk.insert_finished_runs``); elsewhere (a tracking server) each fit takes MLflow's three public calls,
and up to ``MLFLOW_HTTP_POOL_MAXSIZE`` fits (MLflow's connection pool size, 10 unless set) are in flight at
once, so the network's latency is paid once per batch, not per fit. ``submit`` blocks while ``WAITING`` fits wait
(backpressure: memory stays flat when the server is slower than the probes).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from mlflow.entities import Param
from mlflow.environment_variables import MLFLOW_HTTP_POOL_MAXSIZE
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.tracking.bulk import FinishedRun, fast_store, insert_finished_runs
from clipprobe.tracking.fit_records import RUN_NAME_TAG, fit_record, now_ms, record_row
from clipprobe.tracking.runs import enable_sqlite_wal, end_run_quietly, relax_sqlite_sync

BATCH = 256  # fit runs per transaction at most
WAITING = 10_000  # fits submitted and not yet taken by the writer thread at most: ``submit`` blocks beyond
WAIT_POLL_S = 0.25  # how often the bar of a long wait for the store is updated
FIT_TRIES = 4  # over REST: tries of one fit's calls (waits of about 2, 4, 8 s between them)
log = logging.getLogger(__name__)
FitItem = tuple[str, Mapping[str, Any], Mapping[str, Any]]  # (checkpoint run id, row, fit_record keywords)


class FitWriter:
    """Writes the fit runs of one sweep run; ``submit`` overlaps logging with the probes' computation."""

    def __init__(self, sweep_run_id: str, client: MlflowClient | None = None, *, progress: bool = False) -> None:
        self.client = client or MlflowClient()
        self.progress = progress  # a bar when flush or close waits for more than a batch of fits
        self.sweep_run_id = sweep_run_id
        self.experiment_id = self.client.get_run(sweep_run_id).info.experiment_id
        if enable_sqlite_wal(self.client.tracking_uri):
            relax_sqlite_sync(self.client)
        self.fast = fast_store(self.client)  # None: MLflow's public calls
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        # over REST: fits in flight at once, as many as MLflow's HTTP connection pool keeps connections
        self.requests_in_flight = max(1, MLFLOW_HTTP_POOL_MAXSIZE.get())
        self._pool: ThreadPoolExecutor | None = None
        self._written: dict[str, list[dict[str, Any]]] = {}  # checkpoint run id -> rows of its written fits

    # ---------------------------------------------------------------- synchronous
    def log_fit(self, checkpoint_run_id: str, row: Mapping[str, Any], *,
                hparams: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> str:
        """One fit run through MLflow's public calls (create_run, log_batch, the run's end); its run id."""
        return self.log_fits([(checkpoint_run_id, row, {"hparams": hparams, "tags": tags})])[0]

    def log_fits(self, items: Sequence[FitItem]) -> list[str]:
        """Many fit runs: in one transaction on the fast store (whole or not at all), else one by one.
        Each written fit's results row (``fit_records.record_row``) is kept for ``take_written``."""
        records = [fit_record(self.sweep_run_id, ckpt, row, **kw) for ckpt, row, kw in items]
        if self.fast is None:  # many fits in flight, each its three calls in order in one thread
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.requests_in_flight, thread_name_prefix="clipprobe-fit")
            futures = [self._pool.submit(self._public_calls, rec) for rec in records]
            wait(futures)  # every fit of the batch ended (written, or failed and deleted) before an error is raised
            ids = [f.result() for f in futures]
        else:
            ids = insert_finished_runs(self.fast, self.experiment_id, records)
        with self._lock:
            for (ckpt, _row, _kw), rec, run_id in zip(items, records, ids, strict=True):
                self._written.setdefault(ckpt, []).append(record_row(rec, run_id))
        return ids

    def take_written(self, checkpoint_run_id: str) -> list[dict[str, Any]]:
        """The results rows of the fits written below ``checkpoint_run_id`` since the last call (call
        ``flush`` first): what its runs hold, as ``SweepFits.table`` would read them back."""
        with self._lock:
            return self._written.pop(checkpoint_run_id, [])

    def _public_calls(self, rec: FinishedRun) -> str:
        """One fit through the three calls, tried ``FIT_TRIES`` times: a server short of database connections
        under many writers answers an error (``QueuePool limit ... reached``, bench_tracking_latency.md) that
        passes once the load does. Each failed try's run is deleted first, so the fit still ends as one run."""
        for attempt in range(1, FIT_TRIES + 1):
            try:
                return self._one_try(rec)
            except (MlflowException, OSError) as err:
                if attempt == FIT_TRIES:
                    raise
                wait = 2.0 ** attempt * (0.5 + random.random())
                log.info("fit %s: try %d failed (%s); again in %.1f s", rec.tags.get(RUN_NAME_TAG, "?"), attempt,
                         str(err).splitlines()[0][:120], wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _one_try(self, rec: FinishedRun) -> str:
        run_id = self.client.create_run(self.experiment_id, start_time=rec.start_time, tags=dict(rec.tags)).info.run_id
        try:
            self.client.log_batch(run_id, metrics=list(rec.metrics),
                                  params=[Param(k, v) for k, v in rec.params.items()])
            end_run_quietly(self.client, run_id, "FINISHED", now_ms())
        except BaseException:
            # no half-written fit run stays behind; should this fail too (the server is gone), the run stays
            # RUNNING and a resume deletes it (SweepFits.finished) and redoes the fit
            with contextlib.suppress(Exception):
                self.client.delete_run(run_id)
            raise
        return run_id

    # ---------------------------------------------------------------- background
    def submit(self, checkpoint_run_id: str, row: Mapping[str, Any], **kwargs: Any) -> None:
        """``log_fits`` of this fit in the background thread (started on first use)."""
        self._raise_error()
        if self._thread is None:
            self._queue = queue.Queue(maxsize=WAITING)
            self._thread = threading.Thread(target=self._drain, name="clipprobe-fit-writer", daemon=True)
            self._thread.start()
        self._queue.put((checkpoint_run_id, dict(row), kwargs))

    def flush(self) -> None:
        """Wait until every submitted fit is logged; re-raise the writer's error."""
        if self._queue is not None:
            self._wait_written()
        self._raise_error()

    def _wait_written(self) -> None:
        """Wait until the queue is empty and written; over a slow store (a busy server, a long backlog) with a bar
        counting the fits down, so the sweep's end does not look hung."""
        assert self._queue is not None
        left = self._queue.unfinished_tasks
        if not self.progress or left <= BATCH:
            self._queue.join()
            return
        from tqdm import tqdm

        with tqdm(total=left, desc="writing fits to the tracking store", unit="fit", leave=False) as bar:
            while left := self._queue.unfinished_tasks:
                bar.total = max(bar.total, left)
                bar.update(bar.total - left - bar.n)
                time.sleep(WAIT_POLL_S)
            bar.update(bar.total - bar.n)

    def close(self) -> None:
        """Flush and stop the background thread (and the request threads)."""
        if self._thread is not None and self._queue is not None:
            self._wait_written()
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._raise_error()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < BATCH:  # whatever else is waiting, in one go
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            fits = [item for item in batch if item is not None]
            try:
                if fits and self._error is None:  # after a failure, drop the rest: a resume redoes them
                    self.log_fits(fits)
            except BaseException as err:  # handed to the caller's thread by _raise_error
                self._error = err
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
