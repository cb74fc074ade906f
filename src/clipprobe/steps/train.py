"""The train step: a ``TrainConfig`` and its folders resolved (the latest world's train/ when none is named;
every check before a run exists), then the recipe run under one `train` run, each checkpoint registered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipprobe.backbones import training
from clipprobe.backbones.config import DEFAULT_CHECKPOINTS_DIR, TrainConfig
from clipprobe.core.devices import resolve_device
from clipprobe.steps import StepFailed
from clipprobe.tracking import configs, discovery, registry, runs


@dataclass(frozen=True)
class TrainInputs:
    """A resolved train step: the recipe, the data and output folders, the registered model's name, whether to
    continue after the last checkpoint in ``out_dir``, and the device."""

    config: TrainConfig
    train_dir: Path
    val_dir: Path | None
    out_dir: Path
    model_name: str
    resume: bool
    device: torch.device

    def params(self) -> dict[str, Any]:
        """The train run's params: the recipe's (``config.to_params``), the folders, the model name, resume."""
        return {**self.config.to_params(), "train_dir": str(self.train_dir.resolve()),
                "val_dir": str(self.val_dir.resolve()) if self.val_dir else "none",
                "out_dir": str(self.out_dir.resolve()), "model_name": self.model_name, "resume": self.resume}


@dataclass(frozen=True)
class TrainOutput:
    """What a train run made: the new checkpoints' reports, groups of epochs with identical weights, the run."""

    inputs: TrainInputs
    reports: list[training.EpochReport]
    duplicates: list
    run_id: str

    def describe(self) -> str:
        last = self.reports[-1].metrics if self.reports else {}
        summary = ", ".join(f"{k}={v:.3f}" for k, v in last.items())
        config = self.inputs.config
        return (f"trained {config.arch} to epoch {config.epochs} in {self.inputs.out_dir} ({len(self.reports)} new "
                f"checkpoints{', ' + summary if summary else ''}); registered as '{self.inputs.model_name}' "
                f"(run {self.run_id})")


def resolve(config: TrainConfig, *, train_dir: str | Path | None, val_dir: str | Path | None,
            out_dir: str | Path | None, model_name: str | None, resume: bool, device: str) -> TrainInputs:
    """The folders (train/ of the latest world when ``train_dir`` is None; val/ beside it; checkpoints/<model
    name>), the model name (default: the architecture's) and the device. ``NotFound`` (no world run),
    ``FileNotFoundError`` (no such train folder) or ``ValueError`` (the device) before any run exists."""
    torch_device = resolve_device(device)
    if train_dir is None:
        train_dir = discovery.require_world_root("--train-dir")[0] / "train"
    train_path = Path(train_dir)
    if not train_path.is_dir():
        raise FileNotFoundError(f"train folder {train_path} does not exist: pass --train-dir")
    model_name = model_name or config.arch
    out_path = Path(out_dir) if out_dir else DEFAULT_CHECKPOINTS_DIR / model_name
    val_path = Path(val_dir) if val_dir else training.default_val_dir(train_path)
    return TrainInputs(config, train_path, val_path, out_path, model_name, resume, torch_device)


def run(inputs: TrainInputs, *, experiment_name: str | None = None) -> TrainOutput:
    """Open the train run (params, tags, config), register the checkpoints an interrupted run left in ``out_dir``
    (when resuming), train, registering each new checkpoint as it is saved, and mark identical epochs. A recipe
    that cannot resume, or a checkpoint clashing with the registry, ends the run FAILED (``StepFailed``)."""
    config, name = inputs.config, inputs.model_name
    tags = {runs.MODEL_NAME_TAG: name, registry.ARCHITECTURE_TAG: config.arch}
    with runs.step_run("train", experiment_name=experiment_name, params=inputs.params(), tags=tags) as run:
        configs.log_config(config)

        def on_checkpoint(report: training.EpochReport) -> None:
            registry.log_checkpoint(report.model, name=name, epoch=report.epoch,
                                    source=report.path.resolve(), metadata=report.args, metrics=report.metrics)

        try:
            if inputs.resume and inputs.out_dir.is_dir() and training.latest_checkpoint(inputs.out_dir) is not None:
                # Earlier epochs of an interrupted run: registered already, or now (no duplicates either way).
                registry.import_checkpoints(sorted(inputs.out_dir.glob("model_*.pth")), name=name,
                                            architecture=config.arch, progress=False)
            reports = training.train(config, inputs.train_dir, inputs.out_dir, val_dir=inputs.val_dir,
                                     device=inputs.device, resume=inputs.resume, on_checkpoint=on_checkpoint)
        except ValueError as err:  # a recipe that cannot resume, classes that differ, a registry clash
            raise StepFailed(str(err)) from None
        duplicates = registry.mark_duplicates(name)
    return TrainOutput(inputs, reports, duplicates, run.info.run_id)
