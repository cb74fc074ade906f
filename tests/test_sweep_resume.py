"""Resuming a sweep of many checkpoints reads back only the fits of the checkpoint it was killed in: a
FINISHED checkpoint run means every fit of it was written, and at the seed's scale (150,000 fit runs)
reading them all back took minutes before the first new fit. Its results table is assembled from the
checkpoints' results parts and equals what the fit runs hold, field by field."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import pandas as pd
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import mobilenet
from sweep_store import fit_runs, log_splits, probe, register

from clipprobe.cli import main
from clipprobe.executors import LocalExecutor
from clipprobe.tracking import fits
from clipprobe.tracking.fit_writer import FitWriter
from clipprobe.tracking.results import load_sweep_results
from clipprobe.tracking.runs import RESULTS_PART_ARTIFACT
from clipprobe.tracking.sweep_fits import SweepFits


def test_resume_reads_only_the_killed_checkpoints_fits_and_refits_nothing(tracking_store, tmp_path, monkeypatch):
    register({e: mobilenet(e) for e in range(4)})
    log_splits(tmp_path)
    real = FitWriter.log_fits
    calls = {"n": 0}

    def dying(self, items):  # 8 fits per checkpoint: dies after 3 fits of the third (epoch 2)
        ids = []
        for item in items:
            if calls["n"] == 19:
                raise RuntimeError("killed")
            calls["n"] += 1
            ids += real(self, [item])
        return ids

    monkeypatch.setattr(FitWriter, "log_fits", dying)
    assert isinstance(probe().exception, RuntimeError)
    monkeypatch.setattr(FitWriter, "log_fits", real)
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    sweep_id = client.search_runs([exp], "tags.`clipprobe.step` = 'probe'")[0].info.run_id
    before = {fits.fit_key(r.data.params): r.info.run_id for r in fit_runs(client, sweep_id)}
    assert len(before) == 19
    killed = fits.CheckpointRuns(sweep_id).statuses()[2][0]

    reads = []
    real_runs = SweepFits.runs

    def spy(self, epoch=None, *, checkpoint_run=None):
        reads.append((epoch, checkpoint_run))
        return real_runs(self, epoch, checkpoint_run=checkpoint_run)

    monkeypatch.setattr(SweepFits, "runs", spy)
    returned = []
    real_run = LocalExecutor.run
    monkeypatch.setattr(LocalExecutor, "run", lambda self, job, done: returned.append(real_run(self, job, done)) or returned[-1])
    result = CliRunner().invoke(main, ["probe", "--resume", sweep_id, "--cache-dir", "cache", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "2 of 4 checkpoints already probed and 3 fits of the others logged" in result.output
    assert "13 new fits" in result.output
    # the executor hands back counts per forward precision, not the rows (which grew ~1 MB a checkpoint at scale)
    assert returned == [Counter({"fp32": 13})]
    # the killed checkpoint's fits (to decide), its rows (for its epoch metrics and results part); the results
    # table is assembled from the checkpoints' results parts: no fit is read back for it
    assert reads == [(None, killed), (2, None)]
    after = {fits.fit_key(r.data.params): r.info.run_id for r in fit_runs(client, sweep_id)}
    assert len(after) == 32 == len(fit_runs(client, sweep_id))
    assert all(after[key] == run for key, run in before.items())  # nothing refitted

    # probe/results.parquet, assembled from the parts, equals what the fit runs hold, field by field
    monkeypatch.setattr(SweepFits, "runs", real_runs)
    assembled, read_back = load_sweep_results(sweep_id), SweepFits(sweep_id).table()
    assert len(assembled) == 32 and set(assembled["fit_run_id"]) == set(after.values())
    pd.testing.assert_frame_equal(assembled, read_back)
    # each checkpoint run holds its own part; the killed one's holds its 3 resumed fits and its 5 new ones
    statuses = fits.CheckpointRuns(sweep_id).statuses()
    parts = {e: pd.read_parquet(client.download_artifacts(run, RESULTS_PART_ARTIFACT, str(tmp_path / f"part{e}")))
             for e, (run, _status) in statuses.items()}
    assert {e: len(part) for e, part in parts.items()} == {0: 8, 1: 8, 2: 8, 3: 8}
    assert set(parts[2]["fit_run_id"]) >= {run for key, run in before.items() if key[3] == 2}

def test_resume_keeps_every_numeric_setting_of_a_sweep_that_changed_them_all(tracking_store, tmp_path, monkeypatch):
    """A sweep whose numeric settings all differ from the defaults, killed and resumed: the resumed fits run with
    the sweep's settings, never a default, so its results equal those of the same sweep run without a break."""
    from clipprobe.sweep.config import SweepConfig
    from clipprobe.tracking.runs import RESULTS_ARTIFACT, download_artifact

    given = {"repeats": 2, "permutations": 3, "seed": 7, "calibration_images": 5, "calibration_rtol": 0.02}
    numeric = {f.name for f in fields(SweepConfig) if f.type in ("int", "float")}
    assert set(given) == numeric, f"a numeric setting this test does not vary: {numeric - set(given)}"
    assert all(getattr(SweepConfig(), k) != v for k, v in given.items())
    args = ["probe", "--modules", "module:0,module:1", "--probes", "linear_gap", "--cache-dir", "cache",
            "--device", "cpu", *[a for k, v in given.items() for a in (f"--{k.replace('_', '-')}", str(v))]]
    register({0: mobilenet(0), 1: mobilenet(1)})
    log_splits(tmp_path)
    real = FitWriter.log_fits
    calls = {"n": 0}

    def dying(self, items):  # 4 fits per checkpoint: dies after the first fit of epoch 1
        ids = []
        for item in items:
            if calls["n"] == 5:
                raise RuntimeError("killed")
            calls["n"] += 1
            ids += real(self, [item])
        return ids

    monkeypatch.setattr(FitWriter, "log_fits", dying)
    assert isinstance(CliRunner().invoke(main, args).exception, RuntimeError)
    monkeypatch.setattr(FitWriter, "log_fits", real)
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    sweep_id = client.search_runs([exp], "tags.`clipprobe.step` = 'probe'")[0].info.run_id

    jobs = []
    real_run = LocalExecutor.run
    monkeypatch.setattr(LocalExecutor, "run", lambda self, job, done: jobs.append(job) or real_run(self, job, done))
    result = CliRunner().invoke(main, ["probe", "--resume", sweep_id, "--cache-dir", "cache", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "3 new fits" in result.output
    (job,) = jobs
    assert {k: getattr(job.plan, k, None) for k in ("repeats", "permutations", "seed")} == {
        "repeats": 2, "permutations": 3, "seed": 7}
    assert (job.extract.calibration_images, job.extract.calibration_rtol) == (5, 0.02)

    assert CliRunner().invoke(main, args).exit_code == 0  # the same sweep, unbroken
    whole = client.search_runs([exp], "tags.`clipprobe.step` = 'probe'", order_by=["attributes.start_time DESC"])[0]
    assert whole.info.run_id != sweep_id
    keys = list(fits.IDENTITY_COLUMNS)
    resumed, unbroken = (pd.read_parquet(download_artifact(run_id, RESULTS_ARTIFACT)).sort_values(keys)
                         .reset_index(drop=True) for run_id in (sweep_id, whole.info.run_id))
    assert len(resumed) == 8 and (resumed["repeats"] == 2).all() and (resumed["permutations"] == 3).all()
    compared = [c for c in [*fits.IDENTITY_COLUMNS, *fits.METRIC_COLUMNS] if c != "model_version"]
    pd.testing.assert_frame_equal(resumed[compared], unbroken[compared])
