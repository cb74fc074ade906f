"""`clipprobe tune` end to end on a small generated world: real features, resuming, bad input on the command line."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clipprobe.backbones.architectures import build_model
from clipprobe.backbones.checkpoints import write_checkpoint
from clipprobe.cli import main
from clipprobe.tracking import runs, trials

ARGS = {"model": "mobilenet_v2", "width_mult": 0.25, "num_classes": 3, "val_resize_size": 32, "val_crop_size": 32}


def _ok(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_tune_on_the_world_twice_resumes_and_feeds_probe(tracking_store, tmp_path):
    _ok("world", "--out", str(tmp_path / "world"), "--size", "32", "--train-per-class", "0",
        "--val-per-class", "0", "--pool-size", "160")
    _ok("concepts", "--source", "annotations", "--top-k", "12", "--negatives", "30")
    torch.manual_seed(0)
    write_checkpoint(tmp_path / "ck" / "model_1.pth", model=build_model("mobilenet_v2", num_classes=3, width_mult=0.25),
                     epoch=1, args=ARGS)
    _ok("checkpoints", str(tmp_path / "ck"), "--model-name", "tiny")
    tune = ("tune", "--probes", "linear_gap", "--modules", "module:1,module:17", "--n-trials", "3")
    out = _ok(*tune)
    assert "linear_gap: best val_acc" in out
    assert (tmp_path / "optuna.journal").is_file()  # default storage: next to mlflow.db
    first = runs.find_latest_run("tune")
    assert first.data.params["modules"] == "module:1,module:17" and first.data.params["epochs"] == "1"
    n_concepts = len(first.data.params["concepts"].split(","))
    assert first.data.metrics["linear_gap.n_tasks"] == 2 * n_concepts
    _ok(*tune)
    second = runs.find_latest_run("tune")
    assert second.info.run_id != first.info.run_id
    assert second.data.metrics["linear_gap.n_complete"] + second.data.metrics["linear_gap.n_pruned"] == 6
    assert second.data.tags["clipprobe.study.linear_gap"] == first.data.tags["clipprobe.study.linear_gap"]
    client = MlflowClient()
    nested = client.search_runs([second.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{second.info.run_id}'")
    assert sorted(int(r.data.tags[trials.TRIAL_TAG]) for r in nested) == [3, 4, 5]
    best = trials.load_best_params(second.info.run_id)
    assert set(best) == {"linear_gap"}

    _ok("probe", "--probes", "linear_gap", "--modules", "module:17", "--repeats", "0",
        "--params-from", second.info.run_id)
    sweep = runs.find_latest_run("probe")
    fits = client.search_runs([sweep.info.experiment_id], f"tags.`clipprobe.sweep_run_id` = '{sweep.info.run_id}' "
                              "and tags.`clipprobe.level` = 'fit'")
    assert fits and all(r.data.params["hparams_source"] == f"tune:{second.info.run_id}" for r in fits)
    assert all(float(r.data.params["weight_decay"]) == pytest.approx(best["linear_gap"]["weight_decay"]) for r in fits)


def test_bad_input_is_one_line(tracking_store):
    for args, code, message in (
        (["--probes", "nope"], 2, "unknown probe kind 'nope'"),  # a usage error
        # a storage that cannot be opened: the URL may be right and the database down (a user/data error)
        (["--storage", "postgresql://user:secret@127.0.0.1:1/db"], 1, "postgresql://user:***@127.0.0.1:1/db"),
        (["--storage", "sqlite:////no/such/dir/o.db"], 1, "cannot open Optuna storage sqlite:////no/such/dir/o.db"),
    ):
        result = CliRunner().invoke(main, ["tune", *args])
        assert result.exit_code == code, result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and message in error[0] and "secret" not in result.output, result.output
