"""Tune runs in MLflow: a bad default learning rate tuned away, every trial a nested run, best params read back."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from tune_synthetic import BAD_LR, concept_data
from tune_synthetic import trial_runs as _trial_runs

from clipprobe.probes.evaluation import evaluate_concepts
from clipprobe.steps.tune import run_studies
from clipprobe.tracking import runs, trials
from clipprobe.tuning import studies as tuning
from clipprobe.tuning.config import sample_concepts, sample_modules

optuna.logging.set_verbosity(optuna.logging.WARNING)

def test_tuning_beats_a_bad_default_lr_and_logs_every_trial(tracking_store, tmp_path):
    data = [concept_data(seed) for seed in range(2)]
    tasks = [tuning.training_part(X, task) for X, task in data]
    with runs.step_run("tune") as run:
        results = run_studies(run.info.run_id, [(BAD_LR, tasks)], storage=str(tmp_path / "optuna.journal"),
                              n_trials=6, seed=0, device="cpu")
    run_id = run.info.run_id
    res = results["non_linear_gap"]
    assert set(res.best_params) == {"lr"} and res.best_params["lr"] >= 1e-3

    # held-out test accuracy (never seen while tuning): tuned at least the default, here clearly better
    for X, task in data:
        default = evaluate_concepts(X, [task], BAD_LR)[0].test_acc
        tuned = evaluate_concepts(X, [task], BAD_LR, res.best_params)[0].test_acc
        assert tuned >= default and tuned > 0.75, (default, tuned)

    study_trials = res.study.get_trials()
    nested = _trial_runs(run_id)
    assert len(nested) == len(study_trials) == 6
    by_number = {int(r.data.tags[trials.TRIAL_TAG]): r for r in nested}
    assert sorted(by_number) == [t.number for t in study_trials]
    for t in study_trials:
        r = by_number[t.number]
        assert r.data.tags[trials.STATE_TAG] == {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name]
        assert r.data.tags[trials.STUDY_TAG] == res.study_name
        assert float(r.data.params["lr"]) == pytest.approx(t.params["lr"])
        assert r.info.status == "FINISHED"
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["val_acc"] == pytest.approx(t.value)

    parent = MlflowClient().get_run(run_id)
    assert parent.data.tags[runs.STEP_TAG] == "tune"
    assert float(parent.data.params["non_linear_gap.lr"]) == pytest.approx(res.best_params["lr"])
    assert parent.data.metrics["non_linear_gap.best_val_acc"] == pytest.approx(res.best_value)
    assert trials.load_best_params(run_id) == {"non_linear_gap": res.best_params}
    best = json.loads(runs.download_artifact(run_id, trials.BEST_PARAMS_ARTIFACT).read_text())
    assert best == {"non_linear_gap": res.best_params}
    plots = {a.path for a in MlflowClient().list_artifacts(run_id, "tune/plots")}
    assert f"tune/plots/{res.study_name}-history.png" in plots


def test_pruned_and_failed_trials_keep_their_state(tracking_store):
    now = datetime.now()
    dist = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
    with runs.step_run("tune") as run:
        logger = trials.TrialLogger(run.info.run_id, "non_linear_gap")
        for number, state in enumerate((TrialState.PRUNED, TrialState.FAIL)):
            trial = create_trial(state=state, params={"lr": 0.1}, distributions=dist,
                                 intermediate_values={0: 0.7} if state == TrialState.PRUNED else None)
            trial.number, trial.datetime_start, trial.datetime_complete = number, now, now + timedelta(seconds=1)
            logger.log_trial("study", trial)
    got = {r.data.tags[trials.STATE_TAG]: r for r in _trial_runs(run.info.run_id)}
    assert sorted(got) == ["failed", "pruned"]
    assert got["failed"].info.status == "FAILED" and got["pruned"].info.status == "FINISHED"
    assert got["pruned"].data.metrics["val_acc_running"] == 0.7 and "val_acc" not in got["pruned"].data.metrics


def test_load_best_params_refuses_other_runs(tracking_store):
    with runs.step_run("probe") as run:
        pass
    with pytest.raises(ValueError, match=r"--params-from \w+: that is a 'probe' run, not a tune run; pass the parent run id of `clipprobe tune`$"):
        trials.load_best_params(run.info.run_id)
    with pytest.raises(ValueError, match=r"--params-from 0123abc: no such run"):
        trials.load_best_params("0123abc")
    with runs.step_run("tune") as run:
        pass
    with pytest.raises(ValueError, match=r"no tune/best_params.json in that run \(did the tune run finish\?\)"):
        trials.load_best_params(run.info.run_id)


def test_default_subset_is_small_and_representative():
    names = [f"module:{i}" for i in range(19)]
    assert sample_modules(names) == ["module:0", "module:9", "module:18"]
    assert sample_modules(names[:2]) == names[:2]
    groups = {"red": "colour", "blue": "colour", "dotted": "pattern", "striped": "pattern", "female": "gender"}
    assert sample_concepts(groups) == ["red", "dotted", "female"]
    assert trials.default_journal_dir("sqlite:////data/store/mlflow.db").as_posix() == "/data/store"
