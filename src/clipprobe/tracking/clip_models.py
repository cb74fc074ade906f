"""A trained CLIP as an MLflow logged model and a registered version, like the backbones: the
weights file and its open_clip config travel as files of the logged model, so a download of
``models:/<name>/<version>`` is what ``concepts --clip-model/--clip-weights`` reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import open_clip
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.concepts.world_clip import WorldClipResult
from clipprobe.tracking.discovery import CLIP_MODEL_TAG, CLIP_WEIGHTS_SHA256_TAG, CLIP_WEIGHTS_TAG
from clipprobe.tracking.registry import PIP_REQUIREMENTS, mark_registered


@dataclass(frozen=True)
class RegisteredClip:
    name: str
    version: str
    model_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def log_clip_model(model, *, name: str, clip_model: str, weights: str | Path, config: str | Path, sha256: str,
                   metrics: Mapping[str, float] | None = None) -> RegisteredClip:
    """Log ``model`` (pickled, an eager open_clip module) with its weights file and config JSON as extra
    files, and register it as a version of ``name`` tagged with the architecture and the weights' sha256."""
    info = mlflow.pytorch.log_model(
        model.cpu(), name=name, serialization_format="pickle",
        pip_requirements=[*PIP_REQUIREMENTS, f"open_clip_torch=={open_clip.__version__}"],
        extra_files=[str(weights), str(config)],
        metadata={"clip_model": clip_model, "clip_weights_sha256": sha256,
                  "weights_file": Path(weights).name, "config_file": Path(config).name},
    )
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="CLIP models trained by clipprobe on the concept world.")
    active = mlflow.active_run()
    mv = client.create_model_version(name, source=info.model_uri, run_id=active.info.run_id if active else None,
                                     tags={CLIP_MODEL_TAG: clip_model, CLIP_WEIGHTS_SHA256_TAG: sha256},
                                     model_id=info.model_id)
    mark_registered(client, info.model_id, name, str(mv.version))
    client.update_model_version(name, mv.version, description=(
        f"A CLIP ({clip_model}) trained by `clipprobe clip` on the concept world. Its files "
        f"`{Path(weights).name}` and `{Path(config).name}` (open_clip config) are under `extra_files` of the "
        f"logged model: `clipprobe concepts --clip-model {clip_model} --clip-weights {Path(weights).name}`."))
    return RegisteredClip(name, str(mv.version), info.model_uri)


def log_world_clip(made: WorldClipResult, *, name: str) -> RegisteredClip:
    """On the active (clip step) run: the world CLIP's metrics, the tags that lead ``concepts`` to its weights
    file (``tracking.discovery``), and the model, logged and registered as a version of ``name``."""
    metrics = made.metrics()
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    clip_model = made.trained.config.clip_model
    mlflow.set_tags({CLIP_WEIGHTS_TAG: str(made.weights.resolve()), CLIP_MODEL_TAG: clip_model,
                     CLIP_WEIGHTS_SHA256_TAG: made.sha256})
    return log_clip_model(made.trained.model, name=name, clip_model=clip_model, weights=made.weights,
                          config=made.config_file, sha256=made.sha256, metrics=metrics)
