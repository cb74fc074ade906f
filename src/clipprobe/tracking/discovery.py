"""Run discovery: which earlier step's run a step reads when the user names none.

Every function looks in one experiment (by id or name; all experiments when neither is given) and
raises ``LookupError`` with one line saying what is missing and how to fix it; a command turns that
into a usage error.
"""

from __future__ import annotations

from mlflow.entities import Run

from clipprobe.tracking.runs import MODEL_NAME_TAG, find_latest_run

MODEL_STEPS = ("train", "checkpoints")  # the steps whose runs name a registered model (tag clipprobe.model_name)


def _where(experiment_id: str | None, experiment_name: str | None) -> str:
    if experiment_name is not None:
        return f"experiment {experiment_name!r}"
    return f"experiment {experiment_id}" if experiment_id is not None else "any experiment"


def latest_step_run(step: str, experiment_name: str | None = None, *, experiment_id: str | None = None,
                    fix: str | None = None) -> Run:
    """The newest FINISHED run of ``step``; ``LookupError`` ("no finished <step> run in ...: <fix>") when none."""
    run = find_latest_run(step, experiment_name=experiment_name, experiment_id=experiment_id)
    if run is None:
        raise LookupError(f"no finished {step} run in {_where(experiment_id, experiment_name)}: "
                          + (fix or f"run `clipprobe {step}` first"))
    return run


def latest_model_name(experiment_id: str | None, experiment_name: str) -> str:
    """The model name (tag ``clipprobe.model_name``) of the newest finished train or checkpoints run of the
    experiment (``experiment_id`` None: an experiment that does not exist yet, so there is none)."""
    found = [] if experiment_id is None else [
        r for r in (find_latest_run(step, experiment_id=experiment_id) for step in MODEL_STEPS)
        if r is not None and MODEL_NAME_TAG in r.data.tags]
    if not found:
        raise LookupError(f"no --model-name given and no finished train or checkpoints run in experiment "
                          f"{experiment_name!r} names one: run `clipprobe train` or `clipprobe checkpoints FOLDER` "
                          "there, pass --experiment-name, or pass --model-name")
    return max(found, key=lambda r: r.info.start_time).data.tags[MODEL_NAME_TAG]


def latest_splits_run_id(experiment_id: str | None, experiment_name: str) -> str:
    """The id of the newest finished concepts run of the experiment (whose ``concepts/splits.parquet`` a
    sweep or study reads)."""
    run = None if experiment_id is None else find_latest_run("concepts", experiment_id=experiment_id)
    if run is None:
        raise LookupError(f"no --splits-run given and no finished concepts run in experiment {experiment_name!r}: "
                          "run `clipprobe concepts` there, pass --experiment-name, or pass --splits-run RUN_ID")
    return run.info.run_id
