"""Resuming a sweep of many checkpoints reads back only the fits of the checkpoint it was killed in: a
FINISHED checkpoint run means every fit of it was written, and at the seed's scale (150,000 fit runs)
reading them all back took minutes before the first new fit."""

from __future__ import annotations

from collections import Counter

from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import mobilenet
from sweep_store import fit_runs, log_splits, probe, register

from clipprobe.cli import main
from clipprobe.executors import LocalExecutor
from clipprobe.tracking import fits
from clipprobe.tracking.fit_writer import FitWriter
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
    # the killed checkpoint's fits (to decide), its rows (for its epoch metrics), then the results table once
    assert reads == [(None, killed), (2, None), (None, None)]
    after = {fits.fit_key(r.data.params): r.info.run_id for r in fit_runs(client, sweep_id)}
    assert len(after) == 32 == len(fit_runs(client, sweep_id))
    assert all(after[key] == run for key, run in before.items())  # nothing refitted
