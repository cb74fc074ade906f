"""Run discovery: which earlier step run a later step takes its input from when the user names none.

"Latest" is always the newest FINISHED run of a step (``runs.find_latest_run``) in the chosen experiment
(``runs.chosen_experiment``: id and name). Where nothing is found, a ``LookupError`` says in one line what
is missing and how to fix it (a ``NotFound``, a ``LookupError``); ``cli.failures.usage_errors`` turns it into a
one-line usage error in one place. ``latest_world_root`` returns ``None`` for callers that fall back quietly;
``require_world_root`` raises, naming the option the user could have given.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run

from clipprobe.tracking import runs


class NotFound(LookupError):
    """Nothing to take a default from: no finished run of the step a setting defaults to. Its one-line message
    names the option that was not given, what is missing and the fix."""


MODEL_STEPS = ("train", "checkpoints")  # the steps whose runs name a registered model (tag clipprobe.model_name)
CLIP_MODEL_TAG = "clipprobe.clip_model"  # the clip run's architecture name
CLIP_WEIGHTS_TAG = "clipprobe.clip_weights"  # the clip run's weights file (absolute path)
CLIP_WEIGHTS_SHA256_TAG = "clipprobe.clip_weights_sha256"


def latest_model_name(experiment_id: str | None, experiment_name: str) -> str:
    """The model name (tag ``clipprobe.model_name``) of the newest finished train or checkpoints run of the
    experiment (``experiment_id`` None: an experiment that does not exist yet, so there is none)."""
    found = [] if experiment_id is None else [
        r for r in (runs.find_latest_run(step, experiment_id=experiment_id) for step in MODEL_STEPS)
        if r is not None and runs.MODEL_NAME_TAG in r.data.tags]
    if not found:
        raise NotFound(f"no --model-name given and no finished train or checkpoints run in experiment "
                          f"{experiment_name!r} names one: run `clipprobe train` or `clipprobe checkpoints FOLDER` "
                          "there, pass --experiment-name, or pass --model-name")
    return max(found, key=lambda r: r.info.start_time).data.tags[runs.MODEL_NAME_TAG]


def latest_splits_run_id(experiment_id: str | None, experiment_name: str) -> str:
    """The id of the newest finished concepts run of the experiment (whose ``concepts/splits.parquet`` a
    sweep or study reads)."""
    run = None if experiment_id is None else runs.find_latest_run("concepts", experiment_id=experiment_id)
    if run is None:
        raise NotFound(f"no --splits-run given and no finished concepts run in experiment {experiment_name!r}: "
                          "run `clipprobe concepts` there, pass --experiment-name, or pass --splits-run RUN_ID")
    return run.info.run_id


def latest_run(step: str, *, experiment_name: str | None = None) -> Run:
    """The newest finished run of ``step`` (in ``experiment_name``, else in any experiment); ``LookupError``
    naming the step when there is none."""
    found = runs.find_latest_run(step, experiment_name=experiment_name)
    if found is None:
        where = f"experiment {experiment_name!r}" if experiment_name else "any experiment"
        raise NotFound(f"no finished {step} run in {where}: run `clipprobe {step}` first")
    return found


def latest_world_root(*, experiment_name: str | None = None) -> tuple[Path, str] | None:
    """``(world folder, run id)`` of the newest finished world run, or ``None`` (no run, or no folder tag)."""
    found = runs.find_latest_run("world", experiment_name=experiment_name)
    if found is None or runs.WORLD_ROOT_TAG not in found.data.tags:
        return None
    return Path(found.data.tags[runs.WORLD_ROOT_TAG]), found.info.run_id


def require_world_root(option: str, *, experiment_name: str | None = None) -> tuple[Path, str]:
    """``latest_world_root``, or ``NotFound`` naming ``option`` (e.g. ``--pool``), the flag that would have made
    the world unnecessary."""
    found = latest_world_root(experiment_name=experiment_name)
    if found is None:
        where = f" in experiment {experiment_name!r}" if experiment_name else ""
        raise NotFound(f"no {option} given and no finished world run found{where}: pass {option} or run "
                       "`clipprobe world` first")
    return found


def latest_world_clip(world_root: Path) -> tuple[str, Path] | None:
    """``(architecture, weights file)`` of the newest finished clip run, if it trained on ``world_root`` and its
    weights file still exists."""
    found = runs.find_latest_run("clip")
    if found is None or found.data.params.get("world") != str(world_root):
        return None
    weights = found.data.tags.get(CLIP_WEIGHTS_TAG, "")
    return (found.data.tags[CLIP_MODEL_TAG], Path(weights)) if weights and Path(weights).is_file() else None
