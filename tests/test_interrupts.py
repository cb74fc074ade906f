"""An interrupted step ends its run KILLED and says which run and how to go on, even when a second signal
arrives while the run is being ended (``mlflow run`` answers Ctrl-C by sending SIGTERM to its entry point)."""

from __future__ import annotations

import os
import signal
import time

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import clipprobe.steps.world as world_step
from clipprobe.cli import main


def _interrupted_world(monkeypatch, tmp_path, first_signal: int, second_signal: int | None):
    """`clipprobe world` interrupted by ``first_signal`` while it renders; ``second_signal`` reaches the process
    while its run is being ended KILLED. Returns the CliRunner result and the run."""
    def rendering(*_args, **_kwargs):
        os.kill(os.getpid(), first_signal)
        time.sleep(30)  # the signal's handler raises long before
        raise AssertionError("the signal was not raised")

    real_end_run = mlflow.end_run

    def end_run_hit_again(*args, **kwargs):
        if second_signal is not None:
            os.kill(os.getpid(), second_signal)  # as `mlflow run` cancels its entry point after a Ctrl-C
        return real_end_run(*args, **kwargs)

    monkeypatch.setattr(world_step, "generate_world", rendering)
    monkeypatch.setattr(mlflow, "end_run", end_run_hit_again)
    result = CliRunner().invoke(main, ["world", "--out", str(tmp_path / "w"), "--pool-size", "10"])
    monkeypatch.setattr(mlflow, "end_run", real_end_run)
    [run] = MlflowClient().search_runs(["0"], "tags.`clipprobe.step` = 'world'")
    return result, run


@pytest.mark.parametrize(("first", "second", "code", "what"), [
    (signal.SIGINT, None, 130, "interrupted (Ctrl-C)"),
    (signal.SIGTERM, None, 143, "terminated (SIGTERM)"),
    (signal.SIGINT, signal.SIGTERM, 130, "interrupted (Ctrl-C)"),  # Ctrl-C under `mlflow run`
    (signal.SIGTERM, signal.SIGINT, 143, "terminated (SIGTERM)"),
])
def test_an_interrupted_step_ends_killed_and_says_how_to_go_on(tracking_store, tmp_path, monkeypatch, first,
                                                               second, code, what):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result, run = _interrupted_world(monkeypatch, tmp_path, first, second)
    assert result.exit_code == code, result.output
    assert run.info.status == "KILLED"  # not FAILED (MLflow's own answer to an exception), not RUNNING
    assert run.data.tags["clipprobe.interrupted"] == signal.Signals(first).name  # what `mlflow run` cannot overwrite
    assert result.output.splitlines()[-1] == (
        f"{what}: run {run.info.run_id} (world) ended KILLED; its folder is incomplete: "
        "run the command again with --overwrite")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back


def test_the_probe_hint_names_the_sweep_to_resume(capsys):
    from clipprobe.cli.failures import Terminated, interrupted

    err = Terminated("signal 15")
    err.clipprobe_run_id, err.clipprobe_step = "abc123", "probe"
    assert interrupted(err).exit_code == 143
    assert capsys.readouterr().err == ("terminated (SIGTERM): run abc123 (probe) ended KILLED; finish it with "
                                       "`clipprobe probe --resume abc123` (fits already logged are kept)\n")


def test_mlflow_run_overwrites_the_killed_status_so_the_tag_says_it(tracking_store):
    """MLflow 3.17's `mlflow run` ends its run FAILED after a non-zero exit even when the entry point already ended
    it KILLED (``RunStatus.is_terminated`` gets the status string, not its code). Should MLflow fix this, the
    ``clipprobe.interrupted`` tag becomes a second witness rather than the only one."""
    from mlflow.projects import _maybe_set_run_terminated

    client = MlflowClient()
    run = client.create_run("0")
    client.set_terminated(run.info.run_id, "KILLED")
    _maybe_set_run_terminated(client.get_run(run.info.run_id), "FAILED")  # what `mlflow run` does after exit 130
    assert client.get_run(run.info.run_id).info.status == "FAILED"
