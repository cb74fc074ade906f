"""One settings object per sweep: logged as probe/config.json, rebuilt by --resume, conflicts refused;
the sweep takes its inputs from the chosen experiment and says what it took."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import mobilenet, plant_red
from sweep_store import OPTS, log_splits, register

from clipprobe.cli import main
from clipprobe.sweep.config import SweepConfig
from clipprobe.tracking import runs

CONFIG_ARTIFACT = SweepConfig.artifact_path()


def test_config_round_trips_and_reports_conflicts():
    config = SweepConfig(model_name="toy", epochs=[0, 2], modules="module:0,module:1", probes="linear_gap",
                         repeats=1, splits_run="abc", precision="fp32")
    assert config.modules == ("module:0", "module:1") and config.probes == ("linear_gap",)
    again = SweepConfig.from_json(config.to_json())
    assert again == config
    assert config.conflicts({"precision": "fp32", "epochs": [2, 0], "modules": ["module:1", "module:0"]}) == []
    assert config.conflicts({"precision": "bf16", "repeats": 3}) == ["precision=fp32", "repeats=1"]
    assert config.conflicts({"modules": "module:0"}) == ["modules=module:0,module:1"]
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        SweepConfig(precision="fp16")
    with pytest.raises(ValueError, match="unknown settings colour"):
        SweepConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="config format 0"):
        SweepConfig.from_dict({**config.to_dict(), "format": 0})


def test_default_forward_pass_is_exact():
    assert SweepConfig().precision == "fp32"
    assert SweepConfig().extract_options().precision == "fp32"


def test_resume_rebuilds_the_stored_config_and_refuses_a_conflicting_setting(tracking_store, tmp_path):
    register({0: plant_red(mobilenet())})
    log_splits(tmp_path)
    result = CliRunner().invoke(main, ["probe", *OPTS])
    assert result.exit_code == 0, result.output
    sweep = runs.find_latest_run("probe")
    stored = json.loads(runs.download_artifact(sweep.info.run_id, CONFIG_ARTIFACT).read_text())
    assert stored["precision"] == "fp32" and stored["epochs"] == [0] and stored["repeats"] == 1
    assert stored["modules"] == ["module:0", "module:1"] and stored["model_name"] == "toy"
    assert stored["splits_run"] == runs.find_latest_run("concepts").info.run_id
    assert stored["hparams"]["linear_gap"]["weight_decay"] == pytest.approx(5e-3)
    assert sweep.data.params["precision"] == "fp32" and sweep.data.params["linear_gap.weight_decay"] == "0.005"
    # every fit records the precision its module's forward pass actually ran in
    import pandas as pd


    table = pd.read_parquet(runs.download_artifact(sweep.info.run_id, runs.RESULTS_ARTIFACT))
    assert set(table["precision"]) == {"fp32"} and (table["permutations"] == stored["permutations"]).all()
    assert "forward pass as run: fp32 for 8 fits" in result.output

    resume = ["probe", "--resume", sweep.info.run_id, "--cache-dir", "cache", "--device", "cpu"]
    result = CliRunner().invoke(main, [*resume, "--precision", "bf16"])
    assert result.exit_code == 2
    assert (f"--resume {sweep.info.run_id}: the sweep ran with precision=fp32; the options given would mix two "
            "settings in one sweep") in result.output
    result = CliRunner().invoke(main, [*resume, "--repeats", "3", "--modules", "module:0"])
    assert result.exit_code == 2 and "modules=module:0,module:1; repeats=1" in result.output
    # the same values, given again, are no conflict; nothing is left to fit
    result = CliRunner().invoke(main, [*resume, "--precision", "fp32", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "0 new fits" in result.output


def test_resume_refuses_a_sweep_without_a_stored_config(tracking_store):
    with runs.step_run("probe", params={"probes": "linear_gap"}) as run:
        pass
    result = CliRunner().invoke(main, ["probe", "--resume", run.info.run_id])
    assert result.exit_code == 2
    assert f"that sweep stores no {CONFIG_ARTIFACT}" in result.output and "start a new sweep" in result.output


def test_probe_takes_the_chosen_experiments_concepts_run_and_says_what_it_uses(tracking_store, tmp_path):
    register({0: plant_red(mobilenet())})
    log_splits(tmp_path)  # in the default experiment
    client = MlflowClient()
    # a newer concepts run in another experiment must not be picked for the default experiment
    other = client.create_experiment("other")
    with runs.step_run("concepts", experiment_name="other"):
        pass
    ours = runs.find_latest_run("concepts", experiment_id="0").info.run_id
    result = CliRunner().invoke(main, ["probe", *OPTS])
    assert result.exit_code == 0, result.output
    assert "experiment: Default (0)" in result.output
    assert "model: toy (v1 = epoch 0)" in result.output
    assert f"concepts run: {ours} (2 concepts: red, blue;" in result.output
    assert "precision fp32" in result.output
    # an experiment without a concepts run: one line naming the experiment and the fix
    client.create_experiment("empty")
    result = CliRunner().invoke(main, ["probe", *OPTS, "--experiment-name", "empty", "--model-name", "toy"])
    assert result.exit_code == 2
    assert "no finished concepts run in experiment 'empty'" in result.output and "--splits-run" in result.output
    assert other


def test_neurons_flag_never_conflicts_on_resume():
    """`probe --resume ID --neurons` may add unit scores to a sweep: the flag does not change its fits."""
    from clipprobe.sweep.config import SweepConfig

    stored = SweepConfig(repeats=0)
    assert stored.conflicts({"neurons": True}) == []
    assert stored.conflicts({"neurons": True, "repeats": 2}) == ["repeats=0"]
