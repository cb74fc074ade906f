"""Shared fixtures: every test gets its own tracking store, never the repo's mlflow.db; the end-to-end tests share
the pipeline runs of tests/pipelines.py."""

from __future__ import annotations

import os

import pytest
import torch
from pipelines import demo_run, mlflow_run_pipeline, on_demo_store  # noqa: F401 - fixtures, used by name

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# No test reaches the Hugging Face hub: cached files only. A test of the online path patches this back.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (`make test` runs `-n auto`) each worker has one core: one torch thread each, and the same for
# the subprocesses tests start (README examples, `mlflow run`), so the workers do not fight over the cores.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1 if XDIST else max(1, min(2, os.cpu_count() or 1)))

# The longest tests first, each group on one worker (`--dist loadgroup`) so a group's session fixture runs once;
# the rest run beside them. The Ray and server tests share one worker: one Ray cluster and one PostgreSQL at a time.
FIRST = ("tests/test_demo.py", "tests/test_readme.py", "tests/test_project.py")
SLOW_GROUPS = {"tests/test_demo.py": "demo", "tests/test_project.py": "mlflow_run", "tests/test_readme.py": "readme"}
SERVER_FILES = ("tests/test_executors_ray.py", "tests/test_executors_ray_remote.py", "tests/test_tracking_servers.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    def where(item) -> str:
        return item.nodeid.split("::", 1)[0]

    for item in items:
        if where(item) in SLOW_GROUPS and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(SLOW_GROUPS[where(item)]))
        elif where(item) in SERVER_FILES:
            item.add_marker(pytest.mark.xdist_group("servers"))

    def rank(item) -> int:
        slow = item.get_closest_marker("slow") is not None
        return FIRST.index(where(item)) if slow and where(item) in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within each rank stays


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A real sqlite tracking store with a local artifact root, both inside tmp_path."""
    from stores import tracking_at

    with tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture
def sweep(tracking_store):
    """A fresh probe sweep run of the temporary store with its writer, reader and checkpoint runs
    (the writer closed after the test)."""
    from types import SimpleNamespace

    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.sweep_fits import SweepFits

    with runs.step_run("probe", run_name="sweep") as parent:
        run_id = parent.info.run_id
        writer = FitWriter(run_id)
        assert writer.fast is not None  # the test store is sqlite: the bulk path is the one in use
        yield SimpleNamespace(run_id=run_id, experiment_id=parent.info.experiment_id, writer=writer,
                              reader=SweepFits(run_id), checkpoints=fits.CheckpointRuns(run_id))
        writer.close()
