"""The world step: a ``WorldSpec`` and its folder checked (before a run exists), then the world rendered and its
truth table and preview logged under one `world` run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from clipprobe.steps import StepFailed
from clipprobe.tracking import configs, runs
from clipprobe.world.config import WorldError, WorldSpec
from clipprobe.world.generate import World, check_out_dir, generate_world, preview


@dataclass(frozen=True)
class WorldInputs:
    """A checked world step: what to render and into which folder (``overwrite``: replace a world there)."""

    spec: WorldSpec
    out: Path
    overwrite: bool


@dataclass(frozen=True)
class WorldOutput:
    """What a world run made: the world (root, image counts) and the run's id."""

    world: World
    run_id: str

    def describe(self) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in self.world.n_images.items())
        return f"world written to {self.world.root}: {counts} (run {self.run_id})"


def resolve(spec: WorldSpec, out: str | Path, *, overwrite: bool = False) -> WorldInputs:
    """``WorldError`` (a ``ValueError``) when ``out`` is a file, or a folder holding something and not ``overwrite``."""
    out = Path(out)
    check_out_dir(out, overwrite)
    return WorldInputs(spec, out, overwrite)


def run(inputs: WorldInputs, *, experiment_name: str | None = None, progress: bool = True) -> WorldOutput:
    """Open the world run (params, config), render the world, tag its folder, log its counts, truth and preview.
    A folder that cannot be written (``OSError``) ends the run FAILED."""
    spec = inputs.spec
    with runs.step_run("world", experiment_name=experiment_name,
                       params=spec.params(str(inputs.out.resolve()))) as run:
        configs.log_config(spec)
        try:
            made = generate_world(inputs.out, spec, overwrite=inputs.overwrite, progress=progress)
        except WorldError as err:  # the folder filled up since resolve looked
            raise StepFailed(str(err)) from None
        runs.set_tags({runs.WORLD_ROOT_TAG: str(made.root)})
        runs.log_metrics({f"n_{split}": n for split, n in made.n_images.items()})
        runs.log_artifact(made.truth_path, "world")
        with tempfile.TemporaryDirectory() as tmp:
            sheet = Path(tmp) / "preview.png"
            preview(made.root, n=64, split="pool" if made.n_images["pool"] else "train").save(sheet)
            runs.log_artifact(sheet, "world")
    return WorldOutput(made, run.info.run_id)
