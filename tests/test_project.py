"""The MLproject itself: `mlflow run . -e <step> --env-manager local` works without conda."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipprobe.cli.entry import run as run_entry

REPO = Path(__file__).resolve().parents[1]


def test_every_entry_point_has_a_script_and_typed_parameters():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert "main" in spec["entry_points"]
    for name, entry in spec["entry_points"].items():
        script = entry["command"].split()[1]
        assert (REPO / script).is_file(), f"{name}: {script} missing"
        for pname, p in entry.get("parameters", {}).items():
            assert p["type"] in {"string", "int", "float", "path", "uri"}, (name, pname)
            assert "default" in p or p["type"] == "path", (name, pname)
            assert "{" + pname + "}" in entry["command"], (name, pname)


def test_entry_point_turns_true_false_into_flags(monkeypatch):
    seen = {}

    def fake_main(args, prog_name):
        seen["args"] = args

    monkeypatch.setattr("clipprobe.cli.entry.main", fake_main)
    run_entry("world", ["--out", "w", "--overwrite", "true", "--colours", ""], flags=["overwrite"])
    assert seen["args"] == ["world", "--out", "w", "--overwrite"]
    run_entry("world", ["", "--overwrite", "false", "--seed", "3"], flags=["overwrite"])
    assert seen["args"] == ["world", "--seed", "3"]
    with pytest.raises(SystemExit, match="--overwrite takes true or false, got 'maybe'"):
        run_entry("world", ["--overwrite", "maybe"], flags=["overwrite"])


def _command(entry_point: str):
    import click

    from clipprobe.cli import main

    return main.get_command(click.Context(main), "demo" if entry_point == "main" else entry_point)


def _mlproject_name(param) -> str:
    """The MLproject parameter of a click parameter: its long option's name (``--arch`` -> arch), or the
    argument's name."""
    import click

    if isinstance(param, click.Argument):
        return param.name
    return next(o for o in param.opts if o.startswith("--"))[2:].replace("-", "_")


ENTRY_POINTS = list(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"])
IN_PROGRESS = {"main", "train"}  # the demo/train change being made beside this one; the lead aligns them after


@pytest.mark.parametrize("entry_point", [
    pytest.param(e, marks=pytest.mark.xfail(reason="main/train blocks are being changed with the demo", strict=False))
    if e in IN_PROGRESS else e for e in ENTRY_POINTS])
def test_mlproject_exposes_every_option_of_its_command_as_the_command_spells_it(entry_point):
    """Same names as the options (``--keep-cache/--no-keep-cache`` -> keep_cache = true|false), every one
    passed through, and "" as the default so the command's own default (one definition) applies."""
    import click

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry_point]
    command = " ".join(entry["command"].split())
    params = entry.get("parameters", {})
    cmd = _command(entry_point)
    assert cmd is not None, f"{entry_point}: no clipprobe command of that name"
    # --experiment-name is mlflow run's own (`mlflow run --experiment-name`), not a parameter
    wanted = {_mlproject_name(p): p for p in cmd.params if p.name != "experiment_name"}
    assert sorted(params) == sorted(wanted)
    for name, param in wanted.items():
        spec = params[name]
        if isinstance(param, click.Argument) and param.required:
            assert spec == {"type": "path"}, name
            assert f"{{{name}}}" in command.split(), name
            continue
        assert spec == {"type": "string", "default": ""}, (name, spec)
        if isinstance(param, click.Argument):
            assert f"{{{name}}}" in command.split(), name
        else:
            option = next(o for o in param.opts if o.startswith("--"))
            assert f"{option} {{{name}}}" in command, name


def test_entry_point_spells_on_off_flags_like_the_command(monkeypatch):
    seen = {}
    monkeypatch.setattr("clipprobe.cli.entry.main", lambda args, prog_name: seen.update(args=args))
    run_entry("probe", ["--keep-cache", "false", "--channels-last", "true", "--allow-duplicate-weights", "",
                        "--fold-batchnorm", ""])
    assert seen["args"] == ["probe", "--no-keep-cache", "--channels-last"]
    run_entry("probe", ["--keep-cache", "TRUE", "--allow-duplicate-weights", "true"])
    assert seen["args"] == ["probe", "--keep-cache", "--allow-duplicate-weights"]


@pytest.mark.slow
def test_mlflow_run_world_creates_a_run_with_the_truth_artifact(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "world",
           "--env-manager", "local", "-P", f"out={tmp_path / 'w'}", "-P", "pool_size=6",
           "-P", "train_per_class=1", "-P", "val_per_class=0", "-P", "size=24"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["clipprobe.step"] == "world"
    assert run.info.run_name == "world"  # named after its step, not MLflow's random name
    assert run.data.params["pool_size"] == "6"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "world")] == [
        "world/preview.png", "world/truth.parquet"]
    assert len(list((tmp_path / "w" / "pool").iterdir())) == 6
