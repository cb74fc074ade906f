"""`clipprobe probe --executor ray --ray-address` against a Ray cluster started apart, the way a remote one is
used: a head node from `ray start --head` (loopback, its own temp dir), joined by address (GCS) and through Ray
Client (`ray://`). The driver is a separate `clipprobe` process; every fit lands once, the results file is
complete."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import ray_head
from sweep_fakes import blind, mobilenet, plant_red
from sweep_store import PER_EPOCH, every_fit_once, log_splits, register
from sweep_store import RAY_OPTS as OPTS

import clipprobe
from clipprobe.executors.ray import WORKER_TAG

pytestmark = pytest.mark.slow


# Ray 2.60's token authentication, as a secured cluster runs it: the head and every driver get the token
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def head():
    src = str(Path(clipprobe.__file__).resolve().parents[1])
    paths = [src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    # the workers inherit the head's environment: clipprobe importable, no telemetry
    with ray_head({"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "MLFLOW_DISABLE_TELEMETRY": "true",
                   **AUTH}) as h:
        yield h


def clipprobe_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``clipprobe ARGS`` as its own process (a driver apart from the cluster)."""
    return subprocess.run([sys.executable, "-c", "import sys; from clipprobe.cli import main; sys.exit(main())",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **env})


@pytest.mark.parametrize("mode", ["address", "client"])
def test_probe_joins_a_cluster_started_apart(mode, head, tracking_store, tmp_path):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet())})
    log_splits(tmp_path)
    address = head.address if mode == "address" else head.client
    driver = clipprobe_cli("probe", *OPTS, "--executor", "ray", "--ray-address", address, "--epochs", "0-1",
                           cwd=tmp_path, env=AUTH)
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:] + head.client_server_logs()
    ckpts = every_fit_once(MlflowClient(), 2 * PER_EPOCH)
    assert sorted(r.data.tags["clipprobe.epoch"] for r in ckpts) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and r.data.tags[WORKER_TAG] for r in ckpts)


def test_a_driver_without_the_clusters_token_is_told_how_to_join(head, tracking_store, tmp_path):
    register({0: blind(mobilenet())})
    log_splits(tmp_path)
    driver = clipprobe_cli("probe", *OPTS, "--executor", "ray", "--ray-address", head.address, "--epochs", "0",
                           cwd=tmp_path, env={})
    assert driver.returncode == 1
    last = driver.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Failed to connect to Ray cluster at ") and (
        "set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token) here" in last), last
