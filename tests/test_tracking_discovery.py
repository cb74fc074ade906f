"""Run discovery: the newest finished run of a step in the chosen experiment, or one line saying how to make one."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from clipprobe.tracking import discovery, runs


def test_latest_splits_run_is_the_newest_finished_concepts_run_of_that_experiment(tracking_store):
    with runs.step_run("concepts"):
        pass
    time.sleep(0.01)
    with runs.step_run("concepts") as newer:
        pass
    with pytest.raises(RuntimeError), runs.step_run("concepts"):  # a FAILED run is never an input
        raise RuntimeError("boom")
    other = MlflowClient().create_experiment("other")
    with runs.step_run("concepts", experiment_name="other"):  # newer, but in another experiment
        pass
    assert discovery.latest_splits_run_id("0", "Default") == newer.info.run_id
    assert discovery.latest_splits_run_id(other, "other") != newer.info.run_id


def test_latest_model_name_reads_the_newest_train_or_checkpoints_run(tracking_store):
    with runs.step_run("checkpoints", tags={runs.MODEL_NAME_TAG: "imported"}):
        pass
    with runs.step_run("train"):  # names no model: not a candidate
        pass
    assert discovery.latest_model_name("0", "Default") == "imported"
    time.sleep(0.01)
    with runs.step_run("train", tags={runs.MODEL_NAME_TAG: "trained"}):
        pass
    assert discovery.latest_model_name("0", "Default") == "trained"


@pytest.mark.parametrize(("find", "message"), [
    (discovery.latest_model_name,
     "no --model-name given and no finished train or checkpoints run in experiment 'other' names one: run "
     "`clipprobe train` or `clipprobe checkpoints FOLDER` there, pass --experiment-name, or pass --model-name"),
    (discovery.latest_splits_run_id,
     "no --splits-run given and no finished concepts run in experiment 'other': run `clipprobe concepts` there, "
     "pass --experiment-name, or pass --splits-run RUN_ID"),
])
def test_nothing_to_find_is_one_line_naming_the_experiment_and_the_fix(tracking_store, find, message):
    with runs.step_run("concepts"):  # in the default experiment: not the one asked about
        pass
    with runs.step_run("checkpoints", tags={runs.MODEL_NAME_TAG: "m"}):
        pass
    other = MlflowClient().create_experiment("other")
    for experiment_id in (other, None):  # None: the named experiment does not exist yet
        with pytest.raises(LookupError) as err:
            find(experiment_id, "other")
        assert str(err.value) == message
