"""A step's typed config (``clipprobe.core.step_config``) logged with its run and read back from it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TypeVar

from clipprobe.core.step_config import StepConfig
from clipprobe.tracking import runs

C = TypeVar("C", bound=StepConfig)


def log_config(config: StepConfig) -> None:
    """Log ``config`` as ``<step>/config.json`` on the active run."""
    target = Path(config.artifact_path())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / target.name
        path.write_text(config.to_json())
        runs.log_artifact(path, str(target.parent))


def load_config(cls: type[C], run_id: str) -> C:
    """The config run ``run_id`` logged. ``LookupError`` when it logged none (an older clipprobe, or
    another step's run); ``ValueError`` naming the file when the file cannot be read as ``cls``."""
    try:
        path = runs.download_artifact(run_id, cls.artifact_path())
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        raise LookupError(f"run {run_id} stores no {cls.artifact_path()}") from None
    return cls.from_json(path.read_text(), source=f"run {run_id}: {cls.artifact_path()}")
