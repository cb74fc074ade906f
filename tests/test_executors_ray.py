"""`clipprobe probe --executor ray` on a local 2-CPU Ray cluster: one sweep run, exactly-once fits after a
worker is killed mid-checkpoint, and --resume finished by Ray workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from ray_cluster import ray_cluster  # noqa: F401 - the fixture, used by name
from sweep_fakes import blind, mobilenet, plant_red
from sweep_store import (
    PER_EPOCH,
    every_fit_once,
    finished_keys,
    fit_runs,
    log_splits,
    register,
    sweep_run,
)
from sweep_store import RAY_OPTS as OPTS

from clipprobe.cli import main
from clipprobe.executors.ray import WORKER_TAG
from clipprobe.tracking import fits, runs

slow, on_ray = pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")
@slow
@on_ray
def test_a_worker_killed_mid_checkpoint_is_retried_and_every_fit_lands_once(tracking_store, tmp_path):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet())})
    log_splits(tmp_path)
    client = MlflowClient()
    result = {}
    driver = threading.Thread(target=lambda: result.update(
        out=CliRunner().invoke(main, ["probe", *OPTS, "--executor", "ray", "--epochs", "0-1"])))
    driver.start()
    killed = None  # (epoch, pid, fits logged when killed)
    deadline = time.time() + 300
    while driver.is_alive() and killed is None and time.time() < deadline:
        time.sleep(0.05)
        sweep_id = sweep_run(client)
        if sweep_id is None:
            continue
        exp = client.get_run(sweep_id).info.experiment_id
        for ckpt in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{sweep_id}'"):
            worker = ckpt.data.tags.get(WORKER_TAG)
            n = len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{ckpt.info.run_id}'"))
            if worker and 0 < n < PER_EPOCH:
                pid = int(worker.rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed = (int(ckpt.data.tags["clipprobe.epoch"]), worker, n)
                break
    driver.join(300)
    out = result["out"]
    assert out.exit_code == 0, out.output
    assert killed is not None, "no worker was caught mid-checkpoint"
    ckpts = {r.data.tags["clipprobe.epoch"]: r for r in every_fit_once(client, 2 * PER_EPOCH)}
    sweep_id, (epoch, worker, _) = sweep_run(client), killed
    assert sorted(ckpts) == ["0", "1"] and all(r.info.status == "FINISHED" for r in ckpts.values())
    assert ckpts[str(epoch)].data.tags[WORKER_TAG] != worker  # Ray re-ran the task in another process
    sweep = client.get_run(sweep_id)
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["n_fits"] == 2 * PER_EPOCH
    for key in ("test_acc_red/00_module:0/linear_gap", "test_acc_blue/01_module:1/non_linear_gap"):
        assert sorted(m.step for m in client.get_metric_history(sweep_id, key)) == [0, 1]


@slow
@on_ray
def test_resume_with_ray_workers_fits_only_the_missing(tracking_store, tmp_path, monkeypatch):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet()), 2: plant_red(mobilenet(1))})
    log_splits(tmp_path)
    from clipprobe.tracking.fit_writer import FitWriter

    real = FitWriter.log_fits
    calls = {"n": 0}

    def dying(self, items):
        ids = []
        for item in items:
            if calls["n"] == 11:  # the in-process sweep dies in the middle of epoch 1
                raise RuntimeError("killed")
            calls["n"] += 1
            ids += real(self, [item])
        return ids

    monkeypatch.setattr(FitWriter, "log_fits", dying)
    first = CliRunner().invoke(main, ["probe", *OPTS, "--epochs", "0-2"])
    assert isinstance(first.exception, RuntimeError)
    monkeypatch.setattr(FitWriter, "log_fits", real)
    client = MlflowClient()
    sweep_id = sweep_run(client)
    assert len(fit_runs(client, sweep_id)) == 11

    out = CliRunner().invoke(main, ["probe", "--resume", sweep_id, "--executor", "ray", "--cache-dir", "cache",
                                    "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "1 of 3 checkpoints already probed and 3 fits of the others logged" in out.output
    assert f"{3 * PER_EPOCH - 11} new fits" in out.output
    keys = finished_keys(client, sweep_id)
    assert len(keys) == 3 * PER_EPOCH and len(set(keys)) == len(keys)
    table = pd.read_parquet(runs.download_artifact(sweep_id, fits.RESULTS_ARTIFACT))
    assert len(table) == 3 * PER_EPOCH


def test_usage_errors_name_the_executor_options(tracking_store):
    out = CliRunner().invoke(main, ["probe", "--gpus-per-task", "1"])
    assert out.exit_code == 2 and "--ray-address and --gpus-per-task need --executor ray" in out.output


@slow
@on_ray
def test_two_ray_workers_share_one_study_through_an_rdb_storage(tracking_store, tmp_path):
    from tune_synthetic import BAD_LR, concept_data
    from tune_synthetic import trial_runs as _trial_runs

    from clipprobe.executors.ray import RayExecutor
    from clipprobe.steps.tune import run_studies
    from clipprobe.tuning import studies as tuning

    tasks = [tuning.training_part(X, task) for X, task in (concept_data(seed) for seed in range(2))]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with runs.step_run("tune") as run:
        results = run_studies(run.info.run_id, [(BAD_LR, tasks)], storage=storage, n_trials=6, seed=0, device="cpu",
                              runner=RayExecutor(), workers=2)
    res = results["non_linear_gap"]
    study = tuning.optuna.load_study(storage=storage, study_name=res.study_name)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(6))  # 3 + 3 trials of the two workers, one study, the defaults queued once
    nested = _trial_runs(run.info.run_id)
    assert sorted(int(r.data.tags["clipprobe.trial"]) for r in nested) == numbers
    assert res.best_params["lr"] >= 1e-3 and res.counts["complete"] + res.counts["pruned"] == 6


def test_trials_are_spread_over_workers_and_bad_executor_options_refused():
    from clipprobe.executors import make_executor
    from clipprobe.executors.ray import RayExecutor, shares

    assert shares(6, 4) == [2, 2, 1, 1] and shares(1, 3) == [1] and shares(None, 2) == [None, None]
    with pytest.raises(ValueError, match="unknown executor 'dask': expected one of local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--gpus-per-task -1"):
        RayExecutor(gpus_per_task=-1)


@slow
@on_ray
def test_tune_cli_with_two_ray_workers_on_the_default_journal(tracking_store, tmp_path):
    register({0: plant_red(mobilenet())})
    log_splits(tmp_path)
    out = CliRunner().invoke(main, ["tune", "--probes", "linear_gap", "--modules", "module:0,module:1",
                                    "--n-trials", "4", "--executor", "ray", "--workers", "2", "--cache-dir", "cache",
                                    "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "linear_gap: best val_acc" in out.output and (tmp_path / "optuna.journal").is_file()
    run = runs.find_latest_run("tune")
    assert run.data.metrics["linear_gap.n_complete"] + run.data.metrics["linear_gap.n_pruned"] == 4
    client = MlflowClient()
    nested = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(int(r.data.tags["clipprobe.trial"]) for r in nested) == [0, 1, 2, 3]
    bad = CliRunner().invoke(main, ["tune", "--workers", "2"])
    assert bad.exit_code == 2 and "--workers 2: expected 1 or more, with --executor ray" in bad.output


def _kill_a_running_trial(storage: str, stop: threading.Event, killed: dict) -> None:
    """Poll ``storage`` until a trial is mid-objective (its nested run open), then SIGKILL its worker."""
    import optuna

    from clipprobe.tracking import trials
    from clipprobe.tuning import studies as tuning

    store = tuning.open_storage(storage)
    deadline = time.time() + 300
    while not stop.is_set() and time.time() < deadline:
        time.sleep(0.05)
        for name in optuna.get_all_study_names(storage=store):
            for t in optuna.load_study(storage=store, study_name=name).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trials.RUN_ATTR in t.user_attrs:
                    worker = t.user_attrs[tuning.WORKER_ATTR]
                    os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
                    killed.update(number=t.number, worker=worker, share=t.user_attrs[tuning.SHARE_ATTR])
                    return


@slow
@on_ray
def test_a_tune_worker_killed_mid_trial_fails_that_trial_and_its_share_ends_without_extras(tracking_store, tmp_path):
    from tune_synthetic import BAD_LR, concept_data
    from tune_synthetic import trial_runs as _trial_runs

    from clipprobe.executors.ray import RayExecutor
    from clipprobe.steps.tune import run_studies
    from clipprobe.tracking import trials
    from clipprobe.tuning import studies as tuning

    tasks = [tuning.training_part(X, task) for X, task in (concept_data(seed) for seed in range(2))]
    storage = str(tmp_path / "optuna.journal")  # a journal file: no Optuna heartbeat, the share finds the lost trial
    stop, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_a_running_trial, args=(storage, stop, killed))
    killer.start()
    try:
        with runs.step_run("tune") as run:  # 5 trials: fewer than the pruner's 5 startup trials complete first
            results = run_studies(run.info.run_id, [(BAD_LR, tasks)], storage=storage, n_trials=5, seed=0, device="cpu",
                                  runner=RayExecutor(), workers=2)
    finally:
        stop.set()
        killer.join(10)
    assert killed, "no trial was caught mid-objective"
    res = results["non_linear_gap"]
    assert res.counts == {"complete": 5, "pruned": 0, "fail": 1}
    study = tuning.optuna.load_study(storage=tuning.open_storage(storage), study_name=res.study_name)
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed["number"]] == "FAIL" and list(states.values()).count("COMPLETE") == 5
    assert sorted(states) == list(range(6))  # no WAITING or RUNNING trial left, none beyond 5 + the lost one
    share = [t for t in study.trials if t.user_attrs[tuning.SHARE_ATTR] == killed["share"]]
    redone = [t for t in share if t.number > killed["number"]]
    assert redone and all(t.user_attrs[tuning.WORKER_ATTR] != killed["worker"] for t in redone)
    assert sum(t.state.name == "COMPLETE" for t in share) == len(share) - 1  # its share: 2 or 3, as asked
    nested = _trial_runs(run.info.run_id)
    by_trial: dict[int, list] = {}
    for r in nested:
        by_trial.setdefault(int(r.data.tags[trials.TRIAL_TAG]), []).append(r)
    assert sorted(by_trial) == list(range(6)) and all(len(v) == 1 for v in by_trial.values())
    for number, [r] in by_trial.items():
        assert r.info.status == ("FAILED" if number == killed["number"] else "FINISHED"), (number, r.info.status)
        assert r.data.tags[trials.STATE_TAG] == ("failed" if number == killed["number"] else "complete")
    assert by_trial[killed["number"]][0].data.tags[tuning.WORKER_ATTR] == killed["worker"]
