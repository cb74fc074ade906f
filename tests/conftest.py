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

# The longest tests first: with `--dist loadfile` (each file on one worker, so a file's session fixtures run
# once) their files are handed out first and the rest runs beside them. (xdist_group / `--dist loadgroup` does
# not group with pytest 9 and pytest-xdist 3.8: each worker ran the demo.)
FIRST = ("tests/test_demo.py", "tests/test_readme.py", "tests/test_project.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        where = item.nodeid.split("::", 1)[0]
        return FIRST.index(where) if item.get_closest_marker("slow") and where in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within each rank stays


# Files that start Ray clusters (and the servers beside them): under xdist, one such file at a time across the
# workers. Two Ray clusters at once on this machine clashed once (a Ray client's server process died at start,
# psutil.ZombieProcess), which a serial run never showed.
RAY_FILES = ("test_executors_ray", "test_executors_ray_remote", "test_tracking_servers")


@pytest.fixture(scope="module", autouse=True)
def _one_ray_file_at_a_time(request, tmp_path_factory):
    if request.module.__name__.rsplit(".", 1)[-1] not in RAY_FILES or not XDIST:
        yield
        return
    import fcntl

    lock = tmp_path_factory.getbasetemp().parent / "ray-files.lock"  # the run's folder, shared by its workers
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_root(tmp_path_factory):
    """No test writes into the real ~/.cache: the cache root (core.caches) is a temporary folder, also for the
    session's shared pipeline runs and the processes they start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPPROBE_CACHE_DIR", str(tmp_path_factory.mktemp("clipprobe-cache-session")))
        yield


@pytest.fixture(autouse=True)
def _cache_root(tmp_path_factory, monkeypatch):
    """Each test its own cache root, as each had its own working folder's cache before: no test reads activations
    another test computed."""
    monkeypatch.setenv("CLIPPROBE_CACHE_DIR", str(tmp_path_factory.mktemp("clipprobe-cache")))


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
