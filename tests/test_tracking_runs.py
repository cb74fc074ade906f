"""Step runs are found or refused in one line; a run `mlflow run` opens for a resume says where the work went."""

from __future__ import annotations

import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from clipprobe.tracking import fits, runs


def test_a_step_run_is_found_or_refused_in_one_line(tracking_store, sweep):
    source, fix = "--resume X", "pass a sweep"
    assert runs.get_step_run(sweep.run_id, "probe", source=source, fix=fix).info.run_id == sweep.run_id
    ckpt = sweep.checkpoints.run_id(2)
    with pytest.raises(ValueError, match=rf"^--resume X: that is a nested checkpoint run, not a probe run; "
                                         rf"pass a sweep \(its parent run is {sweep.run_id}\)$"):
        runs.get_step_run(ckpt, "probe", source=source, fix=fix)
    with pytest.raises(LookupError, match=r"^--resume X: that is a 'probe' run, not a tune run; pass a sweep$"):
        runs.get_step_run(sweep.run_id, "tune", source=source, fix=fix, error=LookupError)
    with pytest.raises(ValueError, match=r"^--resume X: no such run in sqlite:///.*; pass a sweep$"):
        runs.get_step_run("0" * 32, "probe", source=source, fix=fix)


def test_a_run_mlflow_run_opened_for_a_resume_points_at_the_sweep(sweep, monkeypatch):
    import mlflow

    client = MlflowClient()
    sweep_id = sweep.run_id
    mlflow.end_run()  # the sweep run ends (as an interrupted one has) before it is resumed
    client.set_tag(sweep_id, runs.INTERRUPTED_TAG, "SIGINT")
    made = client.create_run(sweep.experiment_id).info.run_id  # what `mlflow run -P resume=...` opens
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    with fits.reopen_sweep(sweep_id) as run:
        assert run.info.run_id == sweep_id
        assert runs.INTERRUPTED_TAG not in client.get_run(sweep_id).data.tags  # running again, not interrupted
    tags = client.get_run(made).data.tags
    assert tags[fits.RESUMES_TAG] == sweep_id and tags["mlflow.runName"] == f"probe: resumes {sweep_id}"
    assert sweep_id in tags["mlflow.note.content"] and runs.STEP_TAG not in tags


def _as_mlflow_run_logs(step: str, given: dict[str, str]) -> list[Param]:
    """The params `mlflow run . -e <step> -P k=v ...` logs on the run it opens: every MLproject parameter,
    shell-quoted by MLflow's own code ('' for a default left to the command, "'/a b'" for a path with a space)."""
    from pathlib import Path

    from mlflow.projects import _project_spec

    entry = _project_spec.load_project(str(Path(__file__).parents[1])).get_entry_point(step)
    final, extra = entry.compute_parameters(given, storage_dir=None)
    return [Param(k, v) for k, v in {**final, **extra}.items()]


def test_params_end_up_resolved_under_mlflow_run_as_from_the_cli(tracking_store, monkeypatch, tmp_path):
    """`mlflow run` logs the entry point's parameters as typed and shell-quoted ('' = the command's default,
    'false', "'/a b'"); the step's resolved values replace them, so a sweep compares with a CLI sweep on real
    differences, the UI shows no shell quotes, and defaults the step does not log leave no '' behind."""
    client = MlflowClient()
    cache = str(tmp_path / "act cache")
    resolved = {"model_name": "toy", "epochs": "0,1,2", "allow_duplicate_weights": False, "seed": 0,
                "modules": "module:0,module:9", "cache_dir": cache}
    with runs.step_run("probe", params=resolved) as cli_run:
        pass
    made = client.create_run("0", tags={"mlflow.project.entryPoint": "probe"}).info.run_id
    logged = _as_mlflow_run_logs("probe", {"allow_duplicate_weights": "false", "seed": "0", "device": "auto",
                                           "modules": "module:0, module:9", "cache_dir": cache,
                                           "ray_address": "head:6379 x"})
    assert {p.key: p.value for p in logged}["cache_dir"] == f"'{cache}'"  # what MLflow itself logs
    client.log_batch(made, params=logged)
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    with runs.step_run("probe", params=resolved):
        pass
    by_cli, by_project = client.get_run(cli_run.info.run_id).data.params, client.get_run(made).data.params
    assert by_cli == {"model_name": "toy", "epochs": "0,1,2", "allow_duplicate_weights": "False", "seed": "0",
                      "modules": "module:0,module:9", "cache_dir": cache}
    # values the step does not log stay as given, without MLflow's shell quotes
    assert by_project == {**by_cli, "device": "auto", "ray_address": "head:6379 x"}
    assert not [k for k in by_project if k.endswith("_resolved")]
