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
