"""Interrupted sweeps end in honest states: Ctrl-C and SIGTERM leave the sweep and its open checkpoint runs
KILLED, SIGKILL leaves them RUNNING; ``--resume`` finishes either with exactly one run per fit, each epoch
metric logged once, and the first start's timing kept beside the resume's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sweep_fakes import blind, mobilenet, plant_red
from sweep_store import OPTS, fit_runs, log_splits, register

from clipprobe.cli import main
from clipprobe.tracking import fits, runs

EPOCHS = {0: blind(mobilenet()), 1: plant_red(mobilenet(1)), 2: plant_red(mobilenet(2)), 3: plant_red(mobilenet(3))}
N_FITS = 4 * 2 * 2 * 2  # epochs x modules x concepts x probes


def _start_probe(tmp_path, uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-c", "from clipprobe.cli import main; main()", "probe", *OPTS],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _when_epoch_0_is_done(proc: subprocess.Popen, timeout: float = 400) -> str:
    """The sweep run id, once its checkpoint run of epoch 0 is FINISHED (an epoch boundary)."""
    client = MlflowClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        for sweep in client.search_runs(["0"], "tags.`clipprobe.step` = 'probe'"):
            done = client.search_runs(["0"], f"tags.`{fits.SWEEP_TAG}` = '{sweep.info.run_id}' and "
                                             "tags.`clipprobe.level` = 'checkpoint' and attributes.status = 'FINISHED'")
            if done:
                return sweep.info.run_id
        time.sleep(0.2)
    raise AssertionError("epoch 0 never finished")


def _resume_and_check(client: MlflowClient, sweep_id: str) -> None:
    result = CliRunner().invoke(main, ["probe", "--resume", sweep_id, "--cache-dir", "cache", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert client.get_run(sweep_id).info.status == "FINISHED"
    keys = [fits.fit_key(r.data.params) for r in fit_runs(client, sweep_id)]
    assert len(keys) == len(set(keys)) == N_FITS
    ckpts = client.search_runs(["0"], f"tags.`{fits.SWEEP_TAG}` = '{sweep_id}' and tags.`clipprobe.level` = 'checkpoint'")
    assert sorted(int(r.data.tags[fits.EPOCH_TAG]) for r in ckpts) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in ckpts)
    for key in ("test_acc_red/00_module:0/linear_gap", "mean_test_acc/all/non_linear_gap"):
        assert sorted(m.step for m in client.get_metric_history(sweep_id, key)) == [0, 1, 2, 3]  # once each
        for run in ckpts:
            assert len(client.get_metric_history(run.info.run_id, key)) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_leave_the_sweep_and_its_children_killed(tracking_store, tmp_path, sig, code):
    register(EPOCHS)
    log_splits(tmp_path)
    proc = _start_probe(tmp_path, tracking_store)
    sweep_id = _when_epoch_0_is_done(proc)
    proc.send_signal(sig)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, output
    assert "Traceback" not in output and f"run {sweep_id} (probe) ended KILLED; finish it with `clipprobe probe --resume {sweep_id}`" in output.splitlines()[-1]
    client = MlflowClient()
    assert client.get_run(sweep_id).info.status == "KILLED"
    ckpts = client.search_runs(["0"], f"tags.`{fits.SWEEP_TAG}` = '{sweep_id}' and tags.`clipprobe.level` = 'checkpoint'")
    assert {r.info.status for r in ckpts} <= {"FINISHED", "KILLED"} and "FINISHED" in {r.info.status for r in ckpts}
    assert all(r.info.status == "FINISHED" for r in fit_runs(client, sweep_id))  # fits are written whole
    first = client.get_run(sweep_id).data.metrics
    assert first["n_new_fits"] == len(fit_runs(client, sweep_id)) and "sweep_seconds" in first

    _resume_and_check(client, sweep_id)
    after = client.get_run(sweep_id).data
    assert after.metrics["sweep_seconds"] == first["sweep_seconds"]  # the first start's numbers are kept
    assert after.metrics["n_new_fits"] == first["n_new_fits"]
    assert after.metrics["resume_1/n_new_fits"] == N_FITS - first["n_new_fits"] and "resume_1/sweep_seconds" in after.metrics
    assert after.tags[fits.ATTEMPT_TAG] == "2" and after.metrics["n_fits"] == N_FITS


@pytest.mark.slow
def test_sigkill_leaves_the_sweep_resumable(tracking_store, tmp_path):
    register(EPOCHS)
    log_splits(tmp_path)
    proc = _start_probe(tmp_path, tracking_store)
    sweep_id = _when_epoch_0_is_done(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    client = MlflowClient()
    assert client.get_run(sweep_id).info.status == "RUNNING"  # nothing could run: left for --resume
    _resume_and_check(client, sweep_id)
    metrics = client.get_run(sweep_id).data.metrics
    assert "sweep_seconds" not in metrics and metrics["resume_1/n_new_fits"] > 0  # the killed start logged nothing


def test_epoch_metrics_are_logged_once_whatever_the_kill_point(tracking_store, monkeypatch):
    """``log_once`` killed between two chunks of one epoch's metrics, then called again (the resume)."""
    monkeypatch.setattr(fits, "_METRICS_PER_CHUNK", 2)
    client = MlflowClient()
    with runs.step_run("probe") as run:
        metrics = [Metric(f"m{i}", float(i), 0, 7) for i in range(5)]  # three chunks: 2 + 2 + 1
        real, calls = client.log_batch, []

        def dying(*args, **kwargs):
            if len(calls) == 1:
                raise KeyboardInterrupt  # the kill lands after the first chunk
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "log_batch", dying)
        with pytest.raises(KeyboardInterrupt):
            fits.log_once(client, run.info.run_id, "clipprobe.epoch_metrics/7", metrics)
        monkeypatch.setattr(client, "log_batch", real)
        assert client.get_run(run.info.run_id).data.tags["clipprobe.epoch_metrics/7"] == "1/3"
        fits.log_once(client, run.info.run_id, "clipprobe.epoch_metrics/7", metrics)
        fits.log_once(client, run.info.run_id, "clipprobe.epoch_metrics/7", metrics)  # a second resume: nothing
        for m in metrics:
            assert [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, m.key)] == [(7, m.value)]
        assert client.get_run(run.info.run_id).data.tags["clipprobe.epoch_metrics/7"] == "3/3"
