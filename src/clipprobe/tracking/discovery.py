"""Run discovery: which earlier step run a later step takes its input from when the user names none.

"Latest" is always the newest FINISHED run of a step (``runs.find_latest_run``); these functions read
what a step needs off that run (the world's folder, the world CLIP's weights) and return ``None`` when
there is none, so each command words its own error and fix.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run

from clipprobe.tracking import runs

CLIP_MODEL_TAG = "clipprobe.clip_model"  # the clip run's architecture name
CLIP_WEIGHTS_TAG = "clipprobe.clip_weights"  # the clip run's weights file (absolute path)
CLIP_WEIGHTS_SHA256_TAG = "clipprobe.clip_weights_sha256"


def latest_run(step: str, *, experiment_name: str | None = None) -> Run:
    """The newest finished run of ``step``; ``LookupError`` naming the step when there is none."""
    found = runs.find_latest_run(step, experiment_name=experiment_name)
    if found is None:
        where = f" in experiment {experiment_name!r}" if experiment_name else ""
        raise LookupError(f"no finished {step} run{where}: run `clipprobe {step}` first")
    return found


def latest_world_root(*, experiment_name: str | None = None) -> tuple[Path, str] | None:
    """``(world folder, run id)`` of the newest finished world run, or ``None`` (no run, or no folder tag)."""
    found = runs.find_latest_run("world", experiment_name=experiment_name)
    if found is None or runs.WORLD_ROOT_TAG not in found.data.tags:
        return None
    return Path(found.data.tags[runs.WORLD_ROOT_TAG]), found.info.run_id


def latest_world_clip(world_root: Path) -> tuple[str, Path] | None:
    """``(architecture, weights file)`` of the newest finished clip run, if it trained on ``world_root`` and its
    weights file still exists."""
    found = runs.find_latest_run("clip")
    if found is None or found.data.params.get("world") != str(world_root):
        return None
    weights = found.data.tags.get(CLIP_WEIGHTS_TAG, "")
    return (found.data.tags[CLIP_MODEL_TAG], Path(weights)) if weights and Path(weights).is_file() else None
