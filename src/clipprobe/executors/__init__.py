"""Where a sweep's checkpoints run: in this process (``local``, the default) or as Ray tasks (``ray``).

Both run the same unit of work, ``local.probe_checkpoint``: one checkpoint's missing fits, each logged
as a nested run of the sweep by the same fit writer, then that checkpoint's epoch metrics. A fit's
identity (concept, module, probe, epoch) decides what is missing, so a retried or resumed task never
logs a fit twice.
"""

from __future__ import annotations

from typing import Any

from clipprobe.executors.local import LocalExecutor, SweepJob, probe_checkpoint

EXECUTORS = ("local", "ray")


def make_executor(name: str, *, ray_address: str | None = None, gpus_per_task: float = 0.0) -> Any:
    """``local`` or ``ray`` (``ray_address``: a running cluster, ``auto``, or None for a local one)."""
    if name == "local":
        if ray_address or gpus_per_task:
            raise ValueError("--ray-address and --gpus-per-task need --executor ray")
        return LocalExecutor()
    if name == "ray":
        from clipprobe.executors.ray import RayExecutor

        return RayExecutor(address=ray_address or None, gpus_per_task=gpus_per_task)
    raise ValueError(f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "LocalExecutor", "SweepJob", "make_executor", "probe_checkpoint"]
