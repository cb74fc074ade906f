"""The checkpoints step: a ``CheckpointImport`` resolved into its files (before a run exists), then each file
imported as a version of the registered model under one `checkpoints` run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipprobe.backbones.config import CheckpointImport
from clipprobe.steps import StepFailed
from clipprobe.tracking import configs, registry, runs


@dataclass(frozen=True)
class CheckpointsInputs:
    """A resolved import: the config, the files its pattern matches, and what the pattern leaves out of the folder
    that looks like checkpoints of another kind (a warning naming the option, or None)."""

    config: CheckpointImport
    files: list[Path]
    left_out: str | None


@dataclass(frozen=True)
class CheckpointsOutput:
    """What a checkpoints run did (``registry.ImportSummary``) and the run's id."""

    config: CheckpointImport
    n_files: int
    summary: registry.ImportSummary
    run_id: str

    def lines(self) -> list[tuple[str, bool]]:
        """What the command prints, each line with whether it goes to stderr."""
        config, summary = self.config, self.summary
        epochs = sorted(c.epoch for c in summary.imported)
        span = f" (epochs {epochs[0]}..{epochs[-1]})" if epochs else ""
        out = [(f"{config.folder}: imported {len(summary.imported)}{span} as '{config.model_name}', "
                f"{len(summary.already)} already registered, {len(summary.skipped)} skipped as bad files "
                f"({config.weights} weights; run {self.run_id})", False)]
        out += [(f"skipped {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", True)
                for path, reason in summary.skipped]
        out += [(f"{copy.name}: the copy of {original.name} (same epoch and weights), not registered twice", False)
                for copy, original in summary.copies]
        if summary.duplicates:
            out.append((f"WARNING: {len(summary.duplicates)} group(s) of epochs share identical weights: "
                        "see the clipprobe.duplicate_of version tags", True))
        return out


def resolve(config: CheckpointImport) -> CheckpointsInputs:
    """The files to import; a ``ValueError`` naming the pattern when none match, before any run exists."""
    files = config.files()
    return CheckpointsInputs(config, files, config.left_out(files))


def run(inputs: CheckpointsInputs, *, experiment_name: str | None = None,
        say: Callable[..., None]) -> CheckpointsOutput:
    """Open the checkpoints run (params, tags, config), import the files, log the counts and ``say`` what was
    imported (``say(line, err=...)``). A ``ValueError`` (weights of the other kind, an epoch registered with
    other weights) or nothing imported at all (``StepFailed``) ends the run FAILED, never leaving a model that a
    later step would take as the latest."""
    config, files = inputs.config, inputs.files
    tags = {runs.MODEL_NAME_TAG: config.model_name, registry.ARCHITECTURE_TAG: config.arch,
            registry.WEIGHTS_TAG: config.weights}
    with runs.step_run("checkpoints", experiment_name=experiment_name, params=config.params(), tags=tags) as run:
        configs.log_config(config)
        summary = registry.import_checkpoints(files, name=config.model_name, architecture=config.arch,
                                              width_mult=config.width_mult, num_classes=config.num_classes,
                                              weights=config.weights)
        runs.log_metrics({"n_files": len(files), "n_imported": len(summary.imported),
                          "n_already_registered": len(summary.already), "n_copies": len(summary.copies),
                          "n_skipped": len(summary.skipped), "n_duplicate_groups": len(summary.duplicates)})
        made = CheckpointsOutput(config, len(files), summary, run.info.run_id)
        for line, err in made.lines():
            say(line, err=err)
        if not summary.imported and not summary.already:
            raise StepFailed(f"nothing imported from {config.folder}: all {len(files)} files were skipped "
                             f"as bad files (run {run.info.run_id} FAILED)")
    return made
