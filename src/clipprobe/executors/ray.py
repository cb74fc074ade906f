"""The Ray executor: one Ray task per checkpoint, every task logging its fits under the one sweep run.

A task first asks the store which of its checkpoint's fits are already FINISHED (deleting fit runs a
killed worker left RUNNING) and fits only the rest, so Ray's retry of a task whose worker died, or
``--resume`` with any number of workers, logs every fit exactly once. Workers need clipprobe
installed, the tracking server and the image pool reachable (same paths), and, for ``models:/``
checkpoints, the registry; ``pip install 'clipprobe[ray]'`` brings Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from clipprobe.executors.local import SweepJob, probe_checkpoint
from clipprobe.sweep.plan import FitKey
from clipprobe.tuning.studies import worker_name

log = logging.getLogger(__name__)

WORKER_TAG = "clipprobe.worker"  # on a checkpoint run: host:pid of the worker that ran it (last attempt)
DEFAULT_MAX_RETRIES = 3  # Ray retries a task whose worker process died this often
TASK_CPUS = 1  # what a checkpoint task asks of Ray (its default num_cpus for a task)


def tasks_at_once(resources: dict[str, float], gpus_per_task: float) -> int:
    """How many checkpoint tasks a cluster with ``resources`` (Ray's ``{"CPU": .., "GPU": ..}``) runs at once:
    its CPUs over a task's one CPU, and with ``gpus_per_task`` at most its GPUs over that share; at least one."""
    n = int(resources.get("CPU", 1) // TASK_CPUS)
    if gpus_per_task:
        n = min(n, int(resources.get("GPU", 0) // gpus_per_task))
    return max(1, n)


def local_resources() -> dict[str, float]:
    """What ``ray.init()`` gives a new cluster on this machine: its CPUs (as Ray counts them, cgroup limits
    included) and visible CUDA devices."""
    import torch

    try:
        from ray._private.utils import get_num_cpus  # Ray's own count (private: may move)
    except ImportError:
        get_num_cpus = os.cpu_count
    return {"CPU": float(get_num_cpus() or 1), "GPU": float(torch.cuda.device_count())}


def run_checkpoint_task(job: SweepJob, epoch: int) -> list[dict[str, Any]]:
    """What one Ray task runs: the missing fits of checkpoint ``epoch``, logged; returns the new rows."""
    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.fits import CheckpointRuns
    from clipprobe.tracking.runs import use_stores
    from clipprobe.tracking.sweep_fits import SweepFits

    use_stores(job.tracking_uri, job.registry_uri)
    reader = SweepFits(job.sweep_run_id)
    # this checkpoint's only: a retry drops what its killed attempt left half-written; other workers' runs are theirs
    done = reader.finished(delete_unfinished=True, epoch=epoch)
    before = reader.table(epoch).to_dict("records") if done else []
    writer = FitWriter(job.sweep_run_id)
    try:
        rows = probe_checkpoint(job.sweep(progress=False), writer, CheckpointRuns(job.sweep_run_id), job.ref(epoch),
                                done=done, before=before, tags={WORKER_TAG: worker_name()})
    finally:
        writer.close()
    return rows


def tune_task(tracking_uri: str, run_id: str, kind: Any, tasks: Sequence[Any], storage: str, study_name: str,
              n_trials: int | None, timeout: float | None, seed: int, folds: int, device: str, share: str) -> int:
    """What one Ray task of a shared study runs: its ``share`` of trials, each a nested run of ``run_id``.

    Retried by Ray after its worker died, it fails the trial that worker left RUNNING (its run ends
    FAILED) and runs only what the share still lacks (``tuning.run_share``). Returns the trials it ran."""
    from clipprobe.core.devices import resolve_device
    from clipprobe.tracking.runs import use_stores
    from clipprobe.tracking.trials import TrialLogger
    from clipprobe.tuning import studies as tuning

    use_stores(tracking_uri)
    pk = tuning.check_kind(kind)
    logger = TrialLogger(run_id, pk.name)
    store = tuning.open_storage(storage, on_stale=logger)
    sname, _ = tuning.open_study(kind, tasks, storage=store, name=study_name, folds=folds)
    study = tuning.load_study(store, sname, seed=seed)
    objective = tuning.make_objective(pk, tasks, folds, device=str(resolve_device(device)))
    return tuning.run_share(study, objective, share=share, n_trials=n_trials, timeout=timeout,
                            on_start=logger.start, on_trial=logger)


def shares(total: int | None, workers: int) -> list[int | None]:
    """``total`` trials spread over ``workers`` (first ones get the remainder); None stays None (timeout only)."""
    if total is None:
        return [None] * workers
    return [n for n in (total // workers + (i < total % workers) for i in range(workers)) if n > 0]


class RayExecutor:
    """Shards a sweep by checkpoint across Ray tasks; the driver only waits and reports."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> None:
        if gpus_per_task < 0:
            raise ValueError(f"--gpus-per-task {gpus_per_task}: expected 0 (CPU tasks) or more")
        self.address, self.gpus_per_task, self.max_retries = address, gpus_per_task, max_retries
        self._joined = False  # parallelism() joined a cluster that run() is to leave

    def _connect(self) -> bool:
        """Join the cluster at ``address`` (None: RAY_ADDRESS, else a new local one). True when we started it."""
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'clipprobe[ray]'") from None
        if ray.is_initialized():
            return False
        if self.address is None and not os.environ.get("RAY_ADDRESS"):  # a new cluster on this machine
            ray.init(include_dashboard=False)
            return True
        try:
            ray.init(address=self.address)
        except ConnectionError as err:
            if os.environ.get("RAY_AUTH_MODE"):
                raise
            # Ray 2.5x: `ray start --head` turns token authentication on where a token exists, but a driver
            # joining it sends the token only when told; refused, it retries for half a minute, then says only this
            raise ConnectionError(f"{err}: if the cluster uses token authentication, set RAY_AUTH_MODE=token "
                                  "and its token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token) here") from None
        return True

    def parallelism(self) -> tuple[int, str]:
        """Checkpoint tasks running at once, and how that is known: a new local cluster's size is read from this
        machine; a running cluster (``address``, RAY_ADDRESS) is joined and asked (``run`` then uses, and
        leaves, that connection)."""
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'clipprobe[ray]'") from None
        if ray.is_initialized():
            have, where = ray.cluster_resources(), "the Ray cluster"
        elif self.address is None and not os.environ.get("RAY_ADDRESS"):
            have, where = local_resources(), "a new local Ray cluster"
        else:
            self._joined = self._connect()
            have, where = ray.cluster_resources(), f"the Ray cluster at {self.address or os.environ['RAY_ADDRESS']}"
        share = f"{self.gpus_per_task:g} GPU" if self.gpus_per_task else f"{TASK_CPUS} CPU"
        n = tasks_at_once(have, self.gpus_per_task)
        return n, (f"{where} has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs, "
                   f"a checkpoint task takes {share}")

    def run(self, job: SweepJob, done: Collection[FitKey]) -> Counter[str]:
        """Every fit of ``job`` not yet logged, one task per checkpoint that has work; how many new fits ran in
        each forward precision (the rows themselves are in the store)."""
        import ray

        started = self._connect() or self._joined
        self._joined = False
        pending: dict[Any, int] = {}
        try:
            task = ray.remote(run_checkpoint_task).options(
                num_gpus=self.gpus_per_task, max_retries=self.max_retries, retry_exceptions=False,
                name="clipprobe-checkpoint")
            shared = ray.put(job)
            pending = {task.remote(shared, ref.epoch): ref.epoch for ref in sorted(job.refs, key=lambda r: r.epoch)}
            log.info("ray: %d checkpoint tasks on %s", len(pending), ray.cluster_resources())
            out: Counter[str] = Counter()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    epoch = pending.pop(ref)
                    rows = ray.get(ref)
                    log.info("epoch %d: %d new fits", epoch, len(rows))
                    out.update(row["precision"] for row in rows)
            return out
        except BaseException:  # a task failed, or Ctrl-C / SIGTERM here: stop the others (a resume redoes them)
            for other in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(other, force=True)
            raise
        finally:
            if started:
                ray.shutdown()

    def tune_study(self, run_id: str, kind: Any, tasks: Sequence[Any], *, storage: Any, study_name: str | None,
                   n_trials: int | None, timeout: float | None, seed: int, folds: int, device: str,
                   workers: int | None = None, tracking_uri: str = "") -> Any:
        """One probe kind's study shared by ``workers`` Ray tasks (default: one per CPU of the cluster, or
        per ``gpus_per_task`` share of its GPUs), each with its own sampler seed, all on one storage:
        an RDB URL (PostgreSQL across machines) or a journal file path (one machine)."""
        import optuna
        import ray

        from clipprobe.tuning import studies as tuning
        if not isinstance(storage, str):
            raise ValueError("--executor ray needs --storage as a URL or a journal file path its workers can open")
        store = tuning.open_storage(storage)
        sname, _ = tuning.open_study(kind, tasks, storage=store, name=study_name, folds=folds)  # defaults queued once
        started = self._connect()
        try:
            if not workers:
                have = ray.cluster_resources()
                workers = int(have.get("GPU", 0) // self.gpus_per_task) if self.gpus_per_task else int(have.get("CPU", 1))
            task = ray.remote(tune_task).options(num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                                                 retry_exceptions=False, name="clipprobe-trials")
            shared = ray.put(list(tasks))
            refs = [task.remote(tracking_uri, run_id, kind, shared, storage, study_name, n, timeout, seed + i,
                                folds, device, f"{run_id}:{i}")
                    for i, n in enumerate(shares(n_trials, max(1, workers)))]
            ran = sum(ray.get(refs))
            log.info("study %s: %d trials run by %d workers", sname, ran, len(refs))
        finally:
            if started:
                ray.shutdown()
        return tuning.summarise(tuning.check_kind(kind).name, optuna.load_study(storage=store, study_name=sname))
