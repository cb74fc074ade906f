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


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
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
    # train's on/off pairs, read from the command (its entry point names no flags of its own)
    run_entry("train", ["--resume", "false", "--zero-init-residual", "yes", "--lr", ""])
    assert seen["args"] == ["train", "--no-resume", "--zero-init-residual"]
    run_entry("train", ["--resume", "", "--zero-init-residual", "off"])
    assert seen["args"] == ["train", "--no-zero-init-residual"]
    with pytest.raises(SystemExit, match="entry point train: --resume takes true or false, got 'later'"):
        run_entry("train", ["--resume", "later"])


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
        "world/config.json", "world/preview.png", "world/truth.parquet"]
    assert len(list((tmp_path / "w" / "pool").glob("*.png"))) == 6  # beside masks/


def _pins(lines) -> dict[str, str]:
    from packaging.requirements import Requirement

    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[req.name.lower().replace("_", "-")] = spec.version
    return out


def test_package_declares_ranges_and_the_exact_versions_live_in_constraints():
    """pip install -e . works beside another stack (Python 3.11-3.13, any torch >= 2.1); the versions tested
    here are in constraints.txt, which the Makefile installs with and conda.yaml repeats."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python = SpecifierSet(project["requires-python"])
    assert all(v in python for v in ("3.11", "3.12", "3.13")) and "3.14" not in python and "3.10" not in python
    reqs = [Requirement(r) for r in project["dependencies"]
            + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]]
    exact = [str(r) for r in reqs if any(s.operator in ("==", "===") for s in r.specifier)]
    assert exact == [], f"pinned exactly in the package metadata: {exact}"
    ranges = {r.name.lower().replace("_", "-"): r.specifier for r in reqs}
    assert ranges["torch"] == SpecifierSet(">=2.1") and ranges["torchvision"] == SpecifierSet(">=0.16")
    assert ranges["mlflow"] == SpecifierSet(">=3.17,<4") and ranges["optuna"] == SpecifierSet(">=5,<6")

    pins = _pins((REPO / "constraints.txt").read_text().splitlines())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for name, version in pins.items():  # every pin satisfies the declared range
        if name in ranges:
            assert version in ranges[name], (name, version, ranges[name])
    assert "-c constraints.txt -e '.[test,ray,postgres]'" in (REPO / "Makefile").read_text()
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_lines = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    conda_pins = _pins(pip_lines)
    assert conda_pins and all(pins[name] == version for name, version in conda_pins.items())
    (conda_python,) = [d.split("=", 1)[1] for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert conda_python in python


def _mlflow_run(tmp_path, uri: str, step: str, **params: object) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", step, "--env-manager", "local"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"mlflow run -e {step}: {done.stderr[-3000:]}"


@pytest.mark.slow
def test_every_entry_point_runs_through_mlflow_run_with_its_defaults(tmp_path):
    """world -> concepts -> checkpoints -> probe -> tune -> compare under `mlflow run`, each with the MLproject's
    defaults except where a step needs small data; later steps find earlier runs in the experiment.
    (main and train: the demo's own test.)"""
    import torch
    from mlflow.tracking import MlflowClient

    from clipprobe.backbones.architectures import build_model
    from clipprobe.backbones.checkpoints import write_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _mlflow_run(tmp_path, uri, "world", out=tmp_path / "w", pool_size=150, train_per_class=1, val_per_class=0, size=24)
    _mlflow_run(tmp_path, uri, "concepts", source="annotations", top_k=4, negatives=8)
    for epoch in (0, 1):
        torch.manual_seed(epoch)
        model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
        write_checkpoint(tmp_path / "ck" / f"model_{epoch}.pth", model=model, epoch=epoch,
                         args={"model": "mobilenet_v2", "width_mult": 0.25, "val_resize_size": 24, "val_crop_size": 24})
    _mlflow_run(tmp_path, uri, "checkpoints", folder=tmp_path / "ck")
    small = {"modules": "module:0,module:1", "probes": "linear_gap"}
    _mlflow_run(tmp_path, uri, "probe", repeats=0, permutations=0, keep_cache="false", **small)
    _mlflow_run(tmp_path, uri, "neurons")  # its defaults: the latest sweep (its cache was deleted: one pass again)
    _mlflow_run(tmp_path, uri, "tune", n_trials=1, folds=2, **small)
    _mlflow_run(tmp_path, uri, "compare", out=tmp_path / "report")
    client = MlflowClient(tracking_uri=uri)
    made = {r.data.tags.get("clipprobe.step"): r for r in client.search_runs(["0"], "tags.`clipprobe.level` IS NULL")}
    assert set(made) == {"world", "concepts", "checkpoints", "probe", "neurons", "tune", "compare"}
    assert all(r.info.status == "FINISHED" for r in made.values())
    sweep = made["probe"].data.params
    assert sweep["model_name"] == "mobilenet_v2" and sweep["epochs"] == "0,1"  # resolved, not the "" typed
    assert sweep["allow_duplicate_weights"] == "False" and sweep["precision"] == "fp32"
    assert not {"", "''"} & set(sweep.values()) and not [k for k in sweep if k.endswith("_resolved")]
    assert (tmp_path / "report" / "report.html").is_file()
    assert made["neurons"].data.tags["clipprobe.sweep_run"] == made["probe"].info.run_id
    names = {a.path for a in client.list_artifacts(made["probe"].info.run_id, "neurons")}
    assert {"neurons/units.parquet", "neurons/sparse.parquet", "neurons/summary.parquet"} <= names
