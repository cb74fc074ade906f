"""The Ray executor: one Ray task per checkpoint, every task logging its fits under the one sweep run.

A task first asks the store which of its checkpoint's fits are already FINISHED (deleting fit runs a
killed worker left RUNNING) and fits only the rest, so Ray's retry of a task whose worker died, or
``--resume`` with any number of workers, logs every fit exactly once. Workers need clipprobe
installed, the tracking server and the image pool reachable (same paths), and, for ``models:/``
checkpoints, the registry; ``pip install 'clipprobe[ray]'`` brings Ray.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection
from typing import Any

from clipprobe.executors.local import SweepJob, probe_checkpoint
from clipprobe.sweep import FitKey, check_distinct_weights

log = logging.getLogger(__name__)

WORKER_TAG = "clipprobe.worker"  # on a checkpoint run: host:pid of the worker that ran it (last attempt)
DEFAULT_MAX_RETRIES = 3  # Ray retries a task whose worker process died this often


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_checkpoint_task(job: SweepJob, epoch: int) -> list[dict[str, Any]]:
    """What one Ray task runs: the missing fits of checkpoint ``epoch``, logged; returns the new rows."""
    import mlflow

    from clipprobe.tracking.fits import FitLogger

    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_registry_uri(job.registry_uri)
    logger = FitLogger(job.sweep_run_id)
    done = logger.finished_fits(epoch=epoch)  # this checkpoint's only: other workers' runs are theirs
    before = logger.results(epoch).to_dict("records") if done else []
    try:
        rows = probe_checkpoint(job.sweep(progress=False), logger, job.ref(epoch), done=done, before=before,
                                tags={WORKER_TAG: worker_name()})
    finally:
        logger.close()
    return rows


class RayExecutor:
    """Shards a sweep by checkpoint across Ray tasks; the driver only waits and reports."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> None:
        if gpus_per_task < 0:
            raise ValueError(f"--gpus-per-task {gpus_per_task}: expected 0 (CPU tasks) or more")
        self.address, self.gpus_per_task, self.max_retries = address, gpus_per_task, max_retries

    def _connect(self) -> bool:
        """Join the cluster at ``address`` (None: RAY_ADDRESS, else a new local one). True when we started it."""
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'clipprobe[ray]'") from None
        if ray.is_initialized():
            return False
        ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
        return True

    def run(self, job: SweepJob, done: Collection[FitKey]) -> list[dict[str, Any]]:
        """Every fit of ``job`` not yet logged, one task per checkpoint that has work; the new rows."""
        import ray

        check_distinct_weights(job.refs, allow_duplicate_weights=job.allow_duplicate_weights)
        started = self._connect()
        try:
            task = ray.remote(run_checkpoint_task).options(
                num_gpus=self.gpus_per_task, max_retries=self.max_retries, retry_exceptions=False,
                name="clipprobe-checkpoint")
            shared = ray.put(job)
            pending = {task.remote(shared, ref.epoch): ref.epoch for ref in sorted(job.refs, key=lambda r: r.epoch)}
            log.info("ray: %d checkpoint tasks on %s", len(pending), ray.cluster_resources())
            out: list[dict[str, Any]] = []
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    epoch = pending.pop(ref)
                    try:
                        rows = ray.get(ref)
                    except Exception:
                        for other in pending:
                            ray.cancel(other)
                        raise
                    log.info("epoch %d: %d new fits", epoch, len(rows))
                    out.extend(rows)
            return out
        finally:
            if started:
                ray.shutdown()
