"""The pipeline runs the end-to-end tests share, each made once a session in its own tracking store: the demo
at its own size, and every entry point through `mlflow run` (fixtures, used by name)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from stores import tracking_at

REPO = Path(__file__).resolve().parents[1]
# The demo test's modules: first, middle and last (the demo's default probes every third).
DEMO_MODULES = "module:0,module:9,module:18"
# What the shared `mlflow run` pipeline passes besides the MLproject's defaults.
WORLD_PARAMS = {"pool_size": 150, "train_per_class": 1, "val_per_class": 0, "size": 24}
SMALL_SWEEP = {"modules": "module:0,module:1", "probes": "linear_gap"}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`clipprobe demo` with its own defaults (but ``DEMO_MODULES``), run once: its store, folder and output."""
    from click.testing import CliRunner

    from clipprobe.cli import main

    root = tmp_path_factory.mktemp("demo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch, tracking_at(uri, root, patch):
        result = CliRunner().invoke(main, ["demo", "--out", str(root / "world"), "--modules", DEMO_MODULES,
                                           "--experiment-name", "demo"])
    return SimpleNamespace(uri=uri, root=root, output=result.output, exit_code=result.exit_code)


@pytest.fixture
def on_demo_store(demo_run, monkeypatch):
    """The shared demo run, finished without error, with MLflow pointed at its store for this test."""
    assert demo_run.exit_code == 0, demo_run.output[-3000:]
    with tracking_at(demo_run.uri, demo_run.root, monkeypatch):
        yield demo_run


def mlflow_run(cwd: Path, uri: str, step: str, **params: object) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e <step> --env-manager local -P key=value ...` against the store ``uri``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", step, "--env-manager", "local"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="session")
def mlflow_run_pipeline(tmp_path_factory):
    """world -> concepts -> checkpoints -> probe -> neurons -> tune -> compare under `mlflow run`, once, each with the
    MLproject's defaults except where a step needs small data; later steps find earlier runs in the experiment.
    Its store, folder and each step's finished process."""
    import torch

    from clipprobe.backbones.architectures import build_model
    from clipprobe.backbones.checkpoints import write_checkpoint

    root = tmp_path_factory.mktemp("mlflow_run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for epoch in (0, 1):  # the reader's own torchvision-format checkpoints
        torch.manual_seed(epoch)
        model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
        write_checkpoint(root / "ck" / f"model_{epoch}.pth", model=model, epoch=epoch,
                         args={"model": "mobilenet_v2", "width_mult": 0.25, "val_resize_size": 24, "val_crop_size": 24})
    steps = [("world", {"out": root / "w", **WORLD_PARAMS}),
             ("concepts", {"source": "annotations", "top_k": 4, "negatives": 8}),
             ("checkpoints", {"folder": root / "ck"}),
             ("probe", {"repeats": 0, "permutations": 0, "keep_cache": "false", **SMALL_SWEEP}),
             ("neurons", {}),  # its defaults: the latest sweep (its cache was deleted: one pass again)
             ("tune", {"n_trials": 1, "folds": 2, **SMALL_SWEEP}),
             ("compare", {"out": root / "report"})]
    done = {}
    for step, params in steps:
        done[step] = mlflow_run(root, uri, step, **params)
        if done[step].returncode != 0:  # the later steps need this one's run
            break
    return SimpleNamespace(uri=uri, root=root, done=done, steps=[step for step, _ in steps])
