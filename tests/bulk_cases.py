"""Fit-writer cases run on every SQL store: collected on sqlite by test_tracking_bulk.py and on PostgreSQL by
test_tracking_servers.py, each with its own ``sweep`` fixture."""

from __future__ import annotations

import math

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.tracking import fits

ROW = {
    "concept": "red", "group": "colours", "module": "module:3", "module_index": 3, "module_path": "features.3", "probe": "linear_gap",
    "epoch": 4, "model_name": "toy", "model_version": "2", "fingerprint": "ab" * 32, "precision": "fp32", "hparams_source": "defaults",
    "hparams": '{"weight_decay": 0.005}', "test_acc": 0.9, "test_acc_ci_low": 0.82, "test_acc_ci_high": 0.95,
    "test_balanced_acc": 0.88, "test_auroc": float("nan"), "train_acc": 1.0, "test_majority_acc": 0.667,
    "test_acc_resplit_mean": float("nan"), "test_acc_resplit_ci_low": float("nan"),
    "test_acc_resplit_ci_high": float("nan"), "test_permutation_acc": 0.64, "test_permutation_p": 0.05,
    "test_control_acc": 0.6, "test_selectivity": 0.3, "n_train": 210, "n_test": 90, "n_test_pos": 30,
    "repeats": 0, "permutations": 19, "n_dropped_features": 2, "class_alignment": 0.25,
    "mdl_codelength_bits": 61.5, "mdl_uniform_bits": 210.0, "compression": 210.0 / 61.5,
    "test_correct": "1" * 81 + "0" * 9, "test_images": "0123456789abcdef",
}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_bulk_fit_runs_read_back_like_runs_logged_through_mlflow(sweep):
    client = MlflowClient()
    ckpt = sweep.checkpoints.run_id(4)
    kw = {"hparams": {"weight_decay": 0.005}, "tags": {"note": "x"}}
    public = client.get_run(sweep.writer.log_fit(ckpt, ROW, **kw))
    bulk_ids = sweep.writer.log_fits([(ckpt, {**ROW, "concept": "blue"}, kw), (ckpt, {**ROW, "concept": "green"}, kw)])
    bulk = client.get_run(bulk_ids[0])

    for field in ("status", "lifecycle_stage", "experiment_id", "user_id"):
        assert getattr(bulk.info, field) == getattr(public.info, field), field
    assert bulk.info.status == "FINISHED" and bulk.info.end_time >= bulk.info.start_time
    assert bulk.info.run_name == "blue module:3 linear_gap @4"
    assert bulk.info.artifact_uri.replace(bulk.info.run_id, "ID") == public.info.artifact_uri.replace(
        public.info.run_id, "ID")
    assert {**bulk.data.params, "concept": "red"} == public.data.params
    assert bulk.data.params["weight_decay"] == "0.005" and bulk.data.params["n_test"] == "90"
    assert bulk.data.metrics.keys() == public.data.metrics.keys() == set(fits.METRIC_COLUMNS)
    assert all(_same(bulk.data.metrics[k], public.data.metrics[k]) for k in fits.METRIC_COLUMNS)
    assert math.isnan(bulk.data.metrics["test_auroc"])
    # per-image predictions are params (strings), never metrics
    assert bulk.data.params["test_correct"] == ROW["test_correct"]
    assert bulk.data.params["test_images"] == ROW["test_images"]
    strip = {"mlflow.runName"}
    assert {k: v for k, v in bulk.data.tags.items() if k not in strip} == {
        k: v for k, v in public.data.tags.items() if k not in strip}
    assert bulk.data.tags["mlflow.parentRunId"] == ckpt and bulk.data.tags["note"] == "x"
    history = client.get_metric_history(bulk.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(4, 0.9)]

    # MLflow's search, our resume bookkeeping and the results table all see the three runs alike
    found = client.search_runs([sweep.experiment_id], "params.concept = 'blue' and metrics.test_acc > 0.85")
    assert [r.info.run_id for r in found] == [bulk_ids[0]]
    assert sweep.reader.finished() == {(c, "module:3", "linear_gap", 4) for c in ("red", "blue", "green")}
    table = sweep.reader.table().sort_values("concept")
    assert list(table["concept"]) == ["blue", "green", "red"]
    assert table["test_acc"].tolist() == [0.9] * 3 and table["n_dropped_features"].tolist() == [2] * 3
    assert table["test_correct"].tolist() == [ROW["test_correct"]] * 3 and table["permutations"].dtype == "int64"
    known = [*fits.IDENTITY_COLUMNS, *fits.METRIC_COLUMNS, *fits.PREDICTION_COLUMNS]
    assert list(table.columns[:len(known)]) == known


def test_per_image_strings_too_long_for_a_param_stay_out_of_the_run(sweep):
    ckpt = sweep.checkpoints.run_id(5)
    long = {**ROW, "epoch": 5, "test_correct": "1" * (fits.MAX_PARAM_CHARS + 1)}
    run = MlflowClient().get_run(sweep.writer.log_fit(ckpt, long))
    assert "test_correct" not in run.data.params and run.data.params["test_images"] == ROW["test_images"]
    assert sweep.reader.table()["test_correct"].tolist() == [""]  # unknown when read back from the runs


def test_a_batch_with_a_bad_fit_lands_not_at_all(sweep):
    ckpt = sweep.checkpoints.run_id(0)
    with pytest.raises(MlflowException, match="bad"):  # a param name MLflow refuses
        sweep.writer.log_fits([(ckpt, {**ROW, "epoch": 0}, {}), (ckpt, {**ROW, "epoch": 0}, {"hparams": {"bad!?": 1}})])
    assert sweep.reader.runs() == []
    sweep.writer.log_fits([(ckpt, {**ROW, "epoch": 0}, {})])
    assert len(sweep.reader.runs()) == 1
