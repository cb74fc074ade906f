"""The MLproject itself: `mlflow run . -e <step> --env-manager local` works without conda."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pipelines import WORLD_PARAMS

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
def test_mlflow_run_world_creates_a_run_with_the_truth_artifact(mlflow_run_pipeline):
    from mlflow.tracking import MlflowClient

    done = mlflow_run_pipeline.done["world"]
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=mlflow_run_pipeline.uri)
    (run,) = client.search_runs(["0"], "tags.`clipprobe.step` = 'world'")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "world"  # named after its step, not MLflow's random name
    assert run.data.params["pool_size"] == str(WORLD_PARAMS["pool_size"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "world")] == [
        "world/config.json", "world/preview.png", "world/truth.parquet"]
    assert len(list((mlflow_run_pipeline.root / "w" / "pool").glob("*.png"))) == WORLD_PARAMS["pool_size"]  # beside masks/


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


@pytest.mark.slow
def test_every_entry_point_runs_through_mlflow_run_with_its_defaults(mlflow_run_pipeline):
    """world -> concepts -> checkpoints -> probe -> tune -> compare under `mlflow run` (tests/pipelines.py), each
    with the MLproject's defaults except where a step needs small data; later steps find earlier runs in the
    experiment, and each entry point makes exactly one step run. (main and train: the demo's own test.)"""
    from mlflow.tracking import MlflowClient

    for step in mlflow_run_pipeline.steps:
        done = mlflow_run_pipeline.done.get(step)
        assert done is not None and done.returncode == 0, f"mlflow run -e {step}: {done and done.stderr[-3000:]}"
    client = MlflowClient(tracking_uri=mlflow_run_pipeline.uri)
    top = client.search_runs(["0"], "tags.`clipprobe.level` IS NULL")
    assert sorted(str(r.data.tags.get("clipprobe.step")) for r in top) == sorted(mlflow_run_pipeline.steps)
    made = {r.data.tags["clipprobe.step"]: r for r in top}
    assert all(r.info.status == "FINISHED" for r in made.values())
    sweep = made["probe"].data.params
    assert sweep["model_name"] == "mobilenet_v2" and sweep["epochs"] == "0,1"  # resolved, not the "" typed
    assert sweep["allow_duplicate_weights"] == "False" and sweep["precision"] == "fp32"
    assert not {"", "''"} & set(sweep.values()) and not [k for k in sweep if k.endswith("_resolved")]
    assert (mlflow_run_pipeline.root / "report" / "report.html").is_file()
    assert made["neurons"].data.tags["clipprobe.sweep_run"] == made["probe"].info.run_id
    names = {a.path for a in client.list_artifacts(made["probe"].info.run_id, "neurons")}
    assert {"neurons/units.parquet", "neurons/sparse.parquet", "neurons/summary.parquet"} <= names
