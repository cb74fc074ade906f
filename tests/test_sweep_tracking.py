"""`clipprobe probe` end to end on a tiny registry: nested-run layout, results == logged metrics, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import blind, mobilenet, plant_red
from sweep_store import fit_runs, log_splits, probe, register

from clipprobe.cli import main
from clipprobe.core.parquet import read_metadata
from clipprobe.tracking import fits, runs
from clipprobe.tracking.fit_writer import FitWriter
from clipprobe.tracking.similarity import load_cka


def test_nested_layout_results_parquet_equals_logged_metrics(tracking_store, tmp_path):
    register({0: blind(mobilenet()), 2: plant_red(mobilenet())})
    log_splits(tmp_path)
    result = probe()
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    sweep = runs.find_latest_run("probe")
    assert sweep.data.params["model_name"] == "toy" and sweep.data.params["epochs"] == "0,2"
    exp = [sweep.info.experiment_id]
    ckpts = client.search_runs(exp, f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    assert sorted(r.data.tags["clipprobe.epoch"] for r in ckpts) == ["0", "2"]
    assert {r.data.tags["clipprobe.level"] for r in ckpts} == {"checkpoint"}
    assert all(r.info.status == "FINISHED" for r in ckpts)
    fit_list = fit_runs(client, sweep.info.run_id)
    assert len(fit_list) == 2 * 2 * 2 * 2  # epochs x modules x concepts x probes
    assert {r.data.tags["mlflow.parentRunId"] for r in fit_list} == {r.info.run_id for r in ckpts}
    one = fit_list[0]
    assert set(fits.IDENTITY_COLUMNS) <= set(one.data.params) and "weight_decay" in one.data.params
    assert set(fits.METRIC_COLUMNS) <= set(one.data.metrics)
    assert "clipprobe.step" not in one.data.tags  # fits never pass for a "latest probe run"

    results_file = runs.download_artifact(sweep.info.run_id, runs.RESULTS_ARTIFACT)
    table = pd.read_parquet(results_file)
    # the concept files' provenance scheme: what made the table
    made_by = read_metadata(results_file)
    assert (made_by["kind"], made_by["sweep_run_id"]) == ("probe_results", sweep.info.run_id)
    assert made_by["params"]["model_name"] == "toy" and made_by["params"]["epochs"] == "0,2"
    n_cols = len(fits.IDENTITY_COLUMNS) + len(fits.METRIC_COLUMNS)
    assert list(table.columns[:n_cols]) == [*fits.IDENTITY_COLUMNS, *fits.METRIC_COLUMNS]
    assert len(table) == 16
    logged = {r.info.run_id: r for r in fit_list}
    for row in table.to_dict("records"):
        run = logged[row["fit_run_id"]]
        for c in fits.METRIC_COLUMNS:
            assert row[c] == pytest.approx(run.data.metrics[c], abs=0, rel=1e-12, nan_ok=True), c
        for c in fits.IDENTITY_COLUMNS:
            assert str(row[c]) == run.data.params[c], c
    # the "when" chart: one point per epoch on the sweep run
    history = client.get_metric_history(sweep.info.run_id, "test_acc_red/00_module:0/linear_gap")
    assert sorted(m.step for m in history) == [0, 2]
    acc = {m.step: m.value for m in history}
    red = table[(table.concept == "red") & (table.module == "module:0") & (table.probe == "linear_gap")]
    assert acc == dict(zip(red.epoch, red.test_acc, strict=True))
    assert acc[2] > acc[0] + 0.2
    assert table["compression"].notna().all() and (table["mdl_uniform_bits"] == table["n_train"]).all()  # MDL: on
    # representation similarity (on by default): every pair of modules per epoch and of epochs per module
    cka = load_cka(sweep.info.run_id)
    assert len(cka) == 2 * 2 * 2 + 2 * 2 * 2 and set(cka["epoch_a"]) == {0, 2}
    assert set(cka["module_a"]) == {"module:0", "module:1"} and "cka_seconds" in sweep.data.metrics
    same = cka[(cka["module_a"] == cka["module_b"]) & (cka["epoch_a"] == cka["epoch_b"]) & (cka["epoch_a"] == 2)]
    np.testing.assert_allclose(same["cka_debiased"], 1.0, atol=1e-9)


def test_a_killed_sweep_resumes_with_exactly_one_run_per_fit(tracking_store, tmp_path, monkeypatch):
    register({0: blind(mobilenet()), 1: plant_red(mobilenet())})
    log_splits(tmp_path)
    real = FitWriter.log_fits
    calls = {"n": 0}

    def dying(self, items):  # fit by fit, so the kill lands at the same fit however the writer batches
        ids = []
        for item in items:
            if calls["n"] == 11:  # halfway through the second checkpoint
                raise RuntimeError("killed")
            calls["n"] += 1
            ids += real(self, [item])
        return ids

    monkeypatch.setattr(FitWriter, "log_fits", dying)
    result = probe("--epochs", "0-1")
    assert isinstance(result.exception, RuntimeError)
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    sweep_id = client.search_runs([exp], "tags.`clipprobe.step` = 'probe'")[0].info.run_id
    assert client.get_run(sweep_id).info.status == "FAILED"
    assert len(fit_runs(client, sweep_id)) == 11
    # a fit whose process died between create_run and set_terminated
    ckpt = fits.CheckpointRuns(sweep_id).run_id(1)
    client.create_run(exp, tags={"mlflow.parentRunId": ckpt, "clipprobe.level": "fit", fits.SWEEP_TAG: sweep_id})
    monkeypatch.setattr(FitWriter, "log_fits", real)

    result = CliRunner().invoke(main, ["probe", "--resume", sweep_id, "--cache-dir", "cache", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 checkpoints already probed and 3 fits of the others logged" in result.output
    runs_after = fit_runs(client, sweep_id)
    keys = [fits.fit_key(r.data.params) for r in runs_after]
    assert len(keys) == 16 and len(set(keys)) == 16
    assert all(r.info.status == "FINISHED" for r in runs_after)
    assert client.get_run(sweep_id).info.status == "FINISHED"
    table = pd.read_parquet(runs.download_artifact(sweep_id, runs.RESULTS_ARTIFACT))
    assert len(table) == 16
    for key in ("test_acc_red/00_module:0/linear_gap", "test_acc_blue/01_module:1/non_linear_gap"):
        assert sorted(m.step for m in client.get_metric_history(sweep_id, key)) == [0, 1]


def test_probe_refuses_equal_weights_and_bad_resume_ids(tracking_store, tmp_path):
    model = mobilenet()
    register({0: model, 1: model})
    log_splits(tmp_path)
    result = probe()
    assert result.exit_code == 2
    assert "epochs 0, 1 have the same weights" in result.output and "--allow-duplicate-weights" in result.output
    assert runs.find_latest_run("probe") is None
    concepts_run = runs.find_latest_run("concepts").info.run_id
    result = CliRunner().invoke(main, ["probe", "--resume", concepts_run])
    assert result.exit_code == 2 and "that is a 'concepts' run, not a probe run" in result.output
    result = probe("--epochs", "0,7")
    assert result.exit_code == 2 and "epoch(s) 7 not registered: the model has epochs 0, 1" in result.output


def test_fit_writer_relaxes_sqlite_sync_in_wal_mode(tracking_store):
    from sqlalchemy import text

    with runs.step_run("probe") as run:
        writer = FitWriter(run.info.run_id)
        engine = writer.client._tracking_client.store.engine
        with engine.connect() as con:
            assert con.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
            assert con.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_params_from_a_tune_run_are_used_and_recorded(tracking_store, tmp_path):
    import json

    register({0: plant_red(mobilenet())})
    log_splits(tmp_path)
    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"linear_gap": {"weight_decay": 0.5}}))
    with runs.step_run("tune") as tune:
        runs.log_artifact(best, "tune")
    result = CliRunner().invoke(main, ["probe", "--modules", "module:0", "--probes", "linear_gap,non_linear_gap",
                                       "--repeats", "0", "--cache-dir", "cache", "--params-from", tune.info.run_id])
    assert result.exit_code == 0, result.output
    sweep = runs.find_latest_run("probe")
    table = pd.read_parquet(runs.download_artifact(sweep.info.run_id, runs.RESULTS_ARTIFACT))
    lin, mlp = table[table.probe == "linear_gap"], table[table.probe == "non_linear_gap"]
    assert set(lin.hparams_source) == {f"tune:{tune.info.run_id}"} and set(mlp.hparams_source) == {"defaults"}
    assert {json.loads(h)["weight_decay"] for h in lin.hparams} == {0.5}
    result = CliRunner().invoke(main, ["probe", "--params-from", sweep.info.run_id, "--cache-dir", "cache"])
    assert result.exit_code == 2 and "not a tune run" in result.output
