"""One settings object per tune run: TuneConfig defaults and checks, logged as tune/config.json and rebuilt
from the run; tune selects checkpoints, and takes their features, the way a sweep does."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sweep_fakes import blind, mobilenet, plant_red
from sweep_store import log_splits, register

from clipprobe.cli import main
from clipprobe.steps import probe as probe_step
from clipprobe.steps import tune as tune_step
from clipprobe.sweep.plan import LATEST
from clipprobe.tracking import configs, runs
from clipprobe.tuning.config import SAMPLE, TuneConfig


def test_config_defaults_choices_and_checks():
    config = TuneConfig()
    assert (config.modules, config.concepts, config.epochs) == (SAMPLE, SAMPLE, LATEST)
    assert config.probes == ("linear_gap", "non_linear_gap", "non_linear_non_gap") and config.trials == 20
    given = TuneConfig(probes="linear_gap", modules="all", concepts="red, blue", epochs="2,0-1", timeout=30)
    assert (given.probes, given.modules, given.concepts, given.epochs) == (
        ("linear_gap",), None, ("red", "blue"), (0, 1, 2))
    assert given.timeout == 30.0 and isinstance(given.timeout, float)
    assert TuneConfig(n_trials=0, timeout=5).trials is None  # as many trials as the timeout allows
    with pytest.raises(ValueError, match="unknown probe kind 'nope'"):
        TuneConfig(probes=("nope",))
    with pytest.raises(ValueError, match="--n-trials 0: expected 1 or more"):
        TuneConfig(n_trials=0)
    resolved = given.replace(epochs=(2,), model_name="toy", splits_run="abc", study_name="s")
    again = TuneConfig.from_json(resolved.to_json())
    assert again == resolved and again.epochs == (2,) and again.timeout == 30.0


def test_tune_logs_its_resolved_config_and_the_run_rebuilds_it(tracking_store, tmp_path):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet(seed=1))})
    log_splits(tmp_path)
    result = CliRunner().invoke(main, ["tune", "--probes", "linear_gap", "--modules", "module:0,module:1",
                                       "--n-trials", "2", "--cache-dir", "cache", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "model: toy (v2 = epoch 1)" in result.output  # latest: the newest epoch only
    assert "tuning on red)" in result.output and "2 fits per probe kind" in result.output
    run = runs.find_latest_run("tune")
    config = configs.load_config(TuneConfig, run.info.run_id)
    concepts_run = runs.find_latest_run("concepts").info.run_id
    assert config == TuneConfig(probes=("linear_gap",), concepts=("red",), modules=("module:0", "module:1"),
                                epochs=(1,), n_trials=2, splits_run=concepts_run, model_name="toy")
    params = run.data.params
    assert (params["epochs"], params["concepts"], params["modules"]) == ("1", "red", "module:0,module:1")
    assert (params["storage"], params["splits_run"], params["model_name"]) == ("default", concepts_run, "toy")
    assert run.data.metrics["linear_gap.n_tasks"] == 2  # 1 concept x 2 modules x 1 epoch


def test_tune_selects_checkpoints_and_features_as_the_sweep_does(tracking_store, tmp_path):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet(seed=1))})
    log_splits(tmp_path)
    assert [r.epoch for r in probe_step.checkpoints("toy", LATEST, device="cpu")] == [1]
    assert [r.epoch for r in probe_step.checkpoints("toy", None, device="cpu")] == [0, 1]
    for command in ("probe", "tune"):  # one selection, one error text
        result = CliRunner().invoke(main, [command, "--epochs", "0,7", "--cache-dir", "cache", "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert "epoch(s) 7 not registered: the model has epochs 0, 1" in result.output
    assert runs.find_latest_run("tune") is None

    inputs = tune_step.resolve(TuneConfig(probes="linear_gap", modules="module:0", epochs="all", concepts="all"),
                               cache_dir=tmp_path / "cache", device="cpu")
    assert inputs.config.epochs == (0, 1) and inputs.config.concepts == ("red", "blue")
    tasks = {t.name: t for t in inputs.tasks["linear_gap"]}
    assert sorted(tasks) == ["blue module:0 @0", "blue module:0 @1", "red module:0 @0", "red module:0 @1"]
    # epoch 0 is blind (features.0 all zero): its features are one constant row; epoch 1 sees colour
    assert np.ptp(tasks["red module:0 @0"].X, axis=0).max() == 0
    assert np.ptp(tasks["red module:0 @1"].X, axis=0).max() > 0
    # only the training part: the stored split's train rows of the concept, with their labels
    splits = probe_step.concept_splits(inputs.config.splits_run).select("red")
    train = splits[splits["part"] == "train"]
    assert len(tasks["red module:0 @1"].y) == len(train)
    assert tasks["red module:0 @1"].y.sum() == train["label"].sum()
