"""Trials lost with their worker: a SIGKILLed `tune` process's trial is failed through Optuna's heartbeat by
the next worker on the study (its nested run ends FAILED), and a share run again replaces what it lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tune_synthetic import trial_runs as _trial_runs
from tune_synthetic import tune_tasks

from clipprobe.executors import LocalExecutor
from clipprobe.tracking import runs, trials
from clipprobe.tuning import studies as tuning

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A worker whose objective never returns: it opens its trial's run, then waits to be killed.
HANGING_WORKER = """
import sys, time
from tune_synthetic import tune_tasks
from clipprobe.tuning import studies as tuning
from clipprobe.tracking.trials import TrialLogger

url, parent = sys.argv[1], sys.argv[2]
store = tuning.open_storage(url, heartbeat=(1, 2))
name, _ = tuning.open_study("linear_gap", tune_tasks(2), storage=store)
logger = TrialLogger(parent, "linear_gap")
tuning.run_share(tuning.load_study(store, name, seed=0), lambda trial: time.sleep(600), share="gone:0",
                 n_trials=1, on_start=logger.start, on_trial=logger)
"""


def _running(url: str) -> list:
    store = tuning.open_storage(url)
    return [t for name in optuna.get_all_study_names(storage=store)
            for t in optuna.load_study(storage=store, study_name=name).get_trials(states=(TrialState.RUNNING,))]


@pytest.mark.slow
def test_a_killed_tune_process_trial_is_failed_by_the_next_worker_through_the_heartbeat(tracking_store, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, *filter(None, [os.environ.get("PYTHONPATH")])])}
    with runs.step_run("tune") as run:
        proc = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, url, run.info.run_id], env=env)
        try:
            deadline = time.time() + 240
            while not [t for t in _running(url) if trials.RUN_ATTR in t.user_attrs]:
                assert proc.poll() is None and time.time() < deadline, "the worker never started its trial"
                time.sleep(0.2)
        finally:
            proc.kill()  # SIGKILL: no handler runs, the trial and its run are left RUNNING
            proc.wait(30)
        [lost] = _running(url)
        assert MlflowClient().get_run(lost.user_attrs[trials.RUN_ATTR]).info.status == "RUNNING"
        time.sleep(3.5)  # past the 2 s grace period since its last heartbeat
        store = tuning.open_storage(url, heartbeat=(1, 2))
        res = LocalExecutor().tune_study(run.info.run_id, "linear_gap", tune_tasks(2), storage=store, study_name=None,
                                         n_trials=2, timeout=None, seed=0, folds=3, device="cpu")
    states = {t.number: t.state for t in res.study.trials}
    assert states == {lost.number: TrialState.FAIL, lost.number + 1: TrialState.COMPLETE,
                      lost.number + 2: TrialState.COMPLETE}
    assert res.counts == {"complete": 2, "pruned": 0, "fail": 1}
    status = {int(r.data.tags[trials.TRIAL_TAG]): r.info.status for r in _trial_runs(run.info.run_id)}
    assert status == {lost.number: "FAILED", lost.number + 1: "FINISHED", lost.number + 2: "FINISHED"}


def test_a_share_run_again_fails_its_running_trial_and_runs_only_what_it_lacks(tmp_path):
    store = tuning.open_storage(str(tmp_path / "optuna.journal"))
    tasks = tune_tasks(2)
    name, _ = tuning.open_study("linear_gap", tasks, storage=store)
    study = tuning.load_study(store, name, seed=0)
    objective = tuning.make_objective(tuning.check_kind("linear_gap"), tasks, 3, device="cpu")

    def second_fails(trial):
        if trial.number == 1:
            raise ValueError("diverged")
        return objective(trial)

    # the first attempt of share run:0: a complete trial, one failed by its own error, then killed mid-trial
    assert tuning.run_share(study, second_fails, share="run:0", n_trials=2) == 2
    for share in ("run:0", "run:1"):  # trial 2: run:0's killed attempt; trial 3: another worker, alive
        study.ask().set_user_attr(tuning.SHARE_ATTR, share)
    seen = []
    ran = tuning.run_share(study, objective, share="run:0", n_trials=4,
                           on_trial=lambda _, t: seen.append((t.number, t.state.name)))
    assert ran == 2  # 4 asked, the complete and the failed one counted, the lost one replaced
    assert seen == [(0, "COMPLETE"), (1, "FAIL"), (2, "FAIL"), (4, "COMPLETE"), (5, "COMPLETE")]
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[1].user_attrs[tuning.ERROR_ATTR] == "ValueError: diverged"
    assert tuning.ERROR_ATTR not in by_number[2].user_attrs  # lost, not failed by itself
    assert by_number[3].state == TrialState.RUNNING  # another share's trial is not this share's to fail
    assert tuning.run_share(study, objective, share="run:0", n_trials=4) == 0
    assert len(study.get_trials()) == 6


def test_a_share_run_again_ends_the_runs_its_killed_attempt_left_open(tracking_store, tmp_path):
    store = tuning.open_storage(str(tmp_path / "optuna.journal"))
    tasks = tune_tasks(2)
    name, _ = tuning.open_study("linear_gap", tasks, storage=store)
    study = tuning.load_study(store, name, seed=0)
    objective = tuning.make_objective(tuning.check_kind("linear_gap"), tasks, 3, device="cpu")
    with runs.step_run("tune") as run:
        logger = trials.TrialLogger(run.info.run_id, "linear_gap")
        # the killed attempt: trial 0 told COMPLETE but killed before its run was ended, trial 1 killed mid-objective
        done = study.ask()
        done.set_user_attr(tuning.SHARE_ATTR, "run:0")
        logger.start(done)
        study.tell(done, objective(done))
        mid = study.ask()
        mid.set_user_attr(tuning.SHARE_ATTR, "run:0")
        logger.start(mid)
        assert {r.info.status for r in _trial_runs(run.info.run_id)} == {"RUNNING"}
        again = trials.TrialLogger(run.info.run_id, "linear_gap")  # the retried task's own logger
        ran = tuning.run_share(study, objective, share="run:0", n_trials=2, on_start=again.start, on_trial=again)
    assert ran == 1
    got = {int(r.data.tags[trials.TRIAL_TAG]): r for r in _trial_runs(run.info.run_id)}
    assert sorted(got) == [0, 1, 2]  # one run per trial: the open ones were ended, not made again
    assert [got[n].info.status for n in (0, 1, 2)] == ["FINISHED", "FAILED", "FINISHED"]
    assert got[0].data.metrics["val_acc"] == pytest.approx(study.trials[0].value)
    assert got[1].data.tags[trials.STATE_TAG] == "failed" and "val_acc" not in got[1].data.metrics


def test_ctrl_c_mid_trial_ends_its_run_failed(tracking_store, tmp_path):
    store = tuning.open_storage(str(tmp_path / "optuna.journal"))
    tasks = tune_tasks(2)
    name, _ = tuning.open_study("linear_gap", tasks, storage=store)
    study = tuning.load_study(store, name, seed=0)
    objective = tuning.make_objective(tuning.check_kind("linear_gap"), tasks, 3, device="cpu")

    def interrupted(trial):
        if trial.number == 1:
            raise KeyboardInterrupt
        return objective(trial)

    with runs.step_run("tune") as run:
        logger = trials.TrialLogger(run.info.run_id, "linear_gap")
        with pytest.raises(KeyboardInterrupt):
            tuning.run_share(study, interrupted, share="run:0", n_trials=3, on_start=logger.start, on_trial=logger)
    status = {int(r.data.tags[trials.TRIAL_TAG]): r.info.status for r in _trial_runs(run.info.run_id)}
    assert status == {0: "FINISHED", 1: "FAILED"}
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
