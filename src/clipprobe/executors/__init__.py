"""Where a sweep's checkpoints run: in this process (``local``, the default) or as Ray tasks (``ray``).

Both run the same unit of work, ``local.probe_checkpoint``: one checkpoint's missing fits, each logged
as a nested run of the sweep by the same fit writer, then that checkpoint's epoch metrics. A fit's
identity (concept, module, probe, epoch) decides what is missing, so a retried or resumed task never
logs a fit twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any, Protocol, runtime_checkable

from clipprobe.executors.local import LocalExecutor, SweepJob, probe_checkpoint
from clipprobe.sweep.plan import FitKey

EXECUTORS = ("local", "ray")


@runtime_checkable
class Executor(Protocol):
    """What the probe and tune steps ask of where work runs (``LocalExecutor``, ``ray.RayExecutor``)."""

    name: str

    def parallelism(self) -> tuple[int, str]:
        """Checkpoints processed at once, and how that is known."""
        ...

    def run(self, job: SweepJob, done: Collection[FitKey]) -> Counter[str]:
        """Every fit of ``job`` not in ``done``; new fits per forward precision."""
        ...

    def tune_study(self, run_id: str, kind: Any, tasks: Sequence[Any], *, storage: Any, study_name: str | None,
                   n_trials: int | None, timeout: float | None, seed: int, folds: int, device: str,
                   **where: Any) -> Any:
        """One probe kind's study under the tune run ``run_id`` (``where``: the executor's own placement,
        e.g. Ray's ``workers``)."""
        ...


def make_executor(name: str, *, ray_address: str | None = None, gpus_per_task: float = 0.0) -> Executor:
    """``local`` or ``ray`` (``ray_address``: a running cluster, ``auto``, or None for a local one)."""
    if name == "local":
        if ray_address or gpus_per_task:
            raise ValueError("--ray-address and --gpus-per-task need --executor ray")
        return LocalExecutor()
    if name == "ray":
        from clipprobe.executors.ray import RayExecutor

        return RayExecutor(address=ray_address or None, gpus_per_task=gpus_per_task)
    raise ValueError(f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "SweepJob", "make_executor", "probe_checkpoint"]
