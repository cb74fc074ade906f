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


def test_latest_run_of_a_step_or_one_line_naming_it(tracking_store):
    with pytest.raises(LookupError, match=r"^no finished clip run in any experiment: run `clipprobe clip` first$"):
        discovery.latest_run("clip")
    with runs.step_run("clip") as made:
        pass
    assert discovery.latest_run("clip").info.run_id == made.info.run_id
    MlflowClient().create_experiment("other")
    with pytest.raises(LookupError, match=r"^no finished clip run in experiment 'other': run `clipprobe clip`"):
        discovery.latest_run("clip", experiment_name="other")


def test_the_latest_world_and_the_clip_trained_on_it(tracking_store, tmp_path):
    assert discovery.latest_world_root() is None
    with runs.step_run("world") as world:
        runs.set_tags({runs.WORLD_ROOT_TAG: str(tmp_path / "w")})
    assert discovery.latest_world_root() == (tmp_path / "w", world.info.run_id)
    weights = tmp_path / "w" / "clip" / "C.pt"
    with runs.step_run("clip", params={"world": str(tmp_path / "w")}):
        runs.set_tags({discovery.CLIP_MODEL_TAG: "C", discovery.CLIP_WEIGHTS_TAG: str(weights)})
    assert discovery.latest_world_clip(tmp_path / "w") is None  # its weights file is gone
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    assert discovery.latest_world_clip(tmp_path / "w") == ("C", weights)
    assert discovery.latest_world_clip(tmp_path / "other") is None  # trained on another world
