"""The clip step: a ``WorldClipConfig`` resolved onto a concept world (every check before a run exists), then the
world CLIP trained, evaluated, saved and registered under one `clip` run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipprobe.concepts import world_clip
from clipprobe.concepts.config import WorldClipConfig
from clipprobe.core.devices import resolve_device
from clipprobe.tracking import clip_models, configs, discovery, runs

REGISTERED_NAME = "world_clip"  # the registered model a world CLIP becomes a version of, when none is named


@dataclass(frozen=True)
class ClipInputs:
    """A resolved clip: how to train (the config), on which world, into which folder, registered under which name."""

    config: WorldClipConfig
    world: Path
    out: Path
    model_name: str  # the registered model (``--model-name``); the architecture is ``config.clip_model``

    def params(self) -> dict[str, Any]:
        """The run's params, named as the options are."""
        return {**asdict(self.config), "world": str(self.world), "out": str(self.out), "model_name": self.model_name}


@dataclass(frozen=True)
class ClipOutcome:
    made: world_clip.WorldClipResult
    registered: clip_models.RegisteredClip
    run_id: str


def resolve(config: WorldClipConfig, *, world: str | Path | None = None, out: str | Path | None = None,
            model_name: str | None = None, experiment_name: str | None = None) -> ClipInputs:
    """The world (the latest world run's when none is given; ``NotFound`` naming --world) checked to hold a concept
    world with a batch of training images (``ValueError``), the output folder (default ``<world>/clip``)."""
    root = Path(world) if world else discovery.require_world_root("--world", experiment_name=experiment_name)[0]
    root = root.resolve()
    world_clip.check_world(root, config)
    return ClipInputs(config, root, Path(out or root / "clip").resolve(), model_name or REGISTERED_NAME)


def run(inputs: ClipInputs, *, device: str, experiment_name: str | None = None) -> ClipOutcome:
    """Open the clip run, log the config and the training loss per epoch, train and evaluate the CLIP, log and
    register it."""
    with runs.step_run("clip", experiment_name=experiment_name, params=inputs.params()) as active:
        configs.log_config(inputs.config)
        made = world_clip.make_world_clip(inputs.world, inputs.out, inputs.config, device=resolve_device(device),
                                          on_epoch=lambda epoch, loss: runs.log_metrics({"train_loss": loss}, step=epoch))
        registered = clip_models.log_world_clip(made, name=inputs.model_name)
    return ClipOutcome(made, registered, active.info.run_id)
