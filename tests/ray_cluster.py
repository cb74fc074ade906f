"""A local Ray cluster for the tests (2 CPUs), its workers slowed per batch of fits (and per trial block) by
``ray_hooks``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import clipprobe

FIT_DELAY_S = 0.6
TRIAL_DELAY_S = 1.0


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'clipprobe[ray]'")
    if ray.is_initialized():  # the same fixture imported by another test module: one cluster per session
        yield ray
        return
    src = Path(clipprobe.__file__).resolve().parents[1]
    tests = Path(__file__).resolve().parent
    paths = [str(src), str(tests), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
                                       "CLIPPROBE_TEST_FIT_DELAY": str(FIT_DELAY_S),
                                       "CLIPPROBE_TEST_TRIAL_DELAY": str(TRIAL_DELAY_S),
                                       "MLFLOW_DISABLE_TELEMETRY": "true"},
                          "worker_process_setup_hook": "ray_hooks.slow_fits"})
    yield ray
    ray.shutdown()
