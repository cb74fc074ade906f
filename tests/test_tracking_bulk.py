"""Fit runs written in one transaction read back exactly like runs logged through MLflow's own calls."""

from __future__ import annotations

import threading
import time

import pytest
from bulk_cases import (  # noqa: F401 - shared cases, collected here on sqlite
    ROW,
    _same,
    test_a_batch_with_a_bad_fit_lands_not_at_all,
    test_bulk_fit_runs_read_back_like_runs_logged_through_mlflow,
    test_per_image_strings_too_long_for_a_param_stay_out_of_the_run,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipprobe.tracking import bulk, fits
from clipprobe.tracking.fit_writer import FitWriter


def test_the_background_writer_batches_and_stores_without_sql_use_the_public_calls(sweep, monkeypatch):
    ckpt = sweep.checkpoints.run_id(1)
    batches = []
    real = FitWriter.log_fits
    monkeypatch.setattr(FitWriter, "log_fits", lambda self, items: batches.append(len(items)) or real(self, items))
    for concept in ("a", "b", "c", "d", "e"):
        sweep.writer.submit(ckpt, {**ROW, "epoch": 1, "concept": concept})
    sweep.writer.flush()
    assert sum(batches) == 5 and len(sweep.reader.runs()) == 5
    sweep.writer.fast = None  # as with a tracking server over REST
    public = []
    monkeypatch.setattr(FitWriter, "_public_calls", lambda self, record: public.append(record) or "id")
    assert real(sweep.writer, [(ckpt, {**ROW, "concept": "f"}, {})]) == ["id"] and len(public) == 1


def test_submit_blocks_while_the_store_is_slower_than_the_probes(sweep, monkeypatch):
    """Backpressure: at most ``WAITING`` fits wait in memory (plus the batch being written); the rest of the
    sweep waits in ``submit`` until the store catches up, and then every fit lands once."""
    monkeypatch.setattr("clipprobe.tracking.fit_writer.WAITING", 3)
    writer, ckpt = sweep.writer, sweep.checkpoints.run_id(1)
    store_slow, real = threading.Event(), FitWriter.log_fits
    taken: list[int] = []

    def slow(self, items):
        taken.append(len(items))
        store_slow.wait(60)
        return real(self, items)

    monkeypatch.setattr(FitWriter, "log_fits", slow)
    submitted: list[int] = []

    def probes():
        for i in range(10):
            writer.submit(ckpt, {**ROW, "epoch": 1, "concept": f"c{i}"})
            submitted.append(i)

    producer = threading.Thread(target=probes)
    producer.start()
    deadline = time.monotonic() + 30
    while not taken and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time enough to submit all ten, were nothing holding the producer back
    assert producer.is_alive() and len(submitted) == taken[0] + 3  # the batch being written + 3 waiting
    store_slow.set()
    producer.join(30)
    writer.flush()
    assert len(submitted) == 10 and len(sweep.reader.runs()) == 10


def test_a_long_wait_for_the_store_shows_a_bar_and_a_short_one_does_not(tracking_store, capsys, monkeypatch):
    from clipprobe.tracking import runs

    monkeypatch.setattr("clipprobe.tracking.fit_writer.BATCH", 4)
    monkeypatch.setattr("clipprobe.tracking.fit_writer.WAIT_POLL_S", 0.01)
    real = FitWriter.log_fits
    monkeypatch.setattr(FitWriter, "log_fits", lambda self, items: time.sleep(0.05) or real(self, items))
    with runs.step_run("probe", run_name="sweep") as parent:
        for progress, fits_ in ((True, 3), (False, 30), (True, 30)):
            writer = FitWriter(parent.info.run_id, progress=progress)
            ckpt = fits.CheckpointRuns(parent.info.run_id).run_id(fits_ + progress)
            for i in range(fits_):
                writer.submit(ckpt, {**ROW, "epoch": 1, "concept": f"c{i}"})
            writer.close()
            err = capsys.readouterr().err
            assert ("writing fits to the tracking store" in err) == (progress and fits_ == 30), (progress, fits_, err)
            assert len(writer.take_written(ckpt)) == fits_


def test_over_rest_fits_are_in_flight_at_once_and_a_failed_fit_leaves_no_run_behind(sweep, monkeypatch):
    writer = sweep.writer
    writer.fast, writer.requests_in_flight = None, 4  # MLflow's public calls, as through a tracking server
    ckpt = sweep.checkpoints.run_id(1)
    together = threading.Barrier(4, timeout=60)  # broken unless four fits are in flight at the same time
    tried: list[str] = []
    real = writer.client.log_batch

    def log_batch(run_id, **kwargs):
        concept = next(p.value for p in kwargs["params"] if p.key == "concept")
        if concept.startswith("first"):
            together.wait()
        if concept == "bad":
            raise MlflowException("the server went away")
        if concept == "flaky" and not tried.append(run_id) and len(tried) == 1:
            raise MlflowException("QueuePool limit of size 5 overflow 10 reached")  # passes on the next try
        return real(run_id, **kwargs)

    monkeypatch.setattr(writer.client, "log_batch", log_batch)
    monkeypatch.setattr("clipprobe.tracking.fit_writer.time.sleep", lambda s: None)  # retries without waiting
    ids = writer.log_fits([(ckpt, {**ROW, "epoch": 1, "concept": f"first{i}"}, {}) for i in range(4)])
    assert len(set(ids)) == 4
    with pytest.raises(MlflowException, match="went away"):
        writer.log_fits([(ckpt, {**ROW, "epoch": 1, "concept": c}, {}) for c in ("a", "bad", "flaky")])
    runs = sweep.reader.runs()
    # the failed fit's runs (one per try) were deleted: no half-written run; the flaky fit's second try landed;
    # every fit that landed is one FINISHED run
    assert sorted(r.data.params["concept"] for r in runs) == ["a", "first0", "first1", "first2", "first3", "flaky"]
    assert len(tried) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert [row["fit_run_id"] for row in writer.take_written(ckpt)] == ids  # rows of the batch that landed


def test_the_fast_writer_runs_only_on_a_tested_schema_and_else_writes_the_same_rows_publicly(sweep, caplog):
    from mlflow.store.db.utils import _get_latest_schema_revision
    from sqlalchemy import text

    store = sweep.writer.fast
    assert bulk.schema_revision(store) == _get_latest_schema_revision() in bulk.TESTED_SCHEMA_REVISIONS
    ckpt = sweep.checkpoints.run_id(4)
    kw = {"hparams": {"weight_decay": 0.005}, "tags": {"note": "x"}}
    [fast_id] = sweep.writer.log_fits([(ckpt, {**ROW, "concept": "blue"}, kw)])

    with store.engine.begin() as con:  # a store migrated to a revision the writer has never seen
        con.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="clipprobe.tracking.bulk"):
        guarded = FitWriter(sweep.run_id)
    assert guarded.fast is None
    [line] = [r.getMessage() for r in caplog.records if r.name == "clipprobe.tracking.bulk"]
    assert "schema revision ffffffffffff" in line and "public calls" in line
    calls = []
    real_create = guarded.client.create_run
    guarded.client.create_run = lambda *a, **k: calls.append(a) or real_create(*a, **k)
    [public_id] = guarded.log_fits([(ckpt, {**ROW, "concept": "green"}, kw)])
    assert len(calls) == 1  # MLflow's public create_run, not the bulk insert

    client = MlflowClient()
    fast, public = client.get_run(fast_id), client.get_run(public_id)
    assert {**fast.data.params, "concept": "green"} == public.data.params
    assert fast.data.metrics.keys() == public.data.metrics.keys() == set(fits.METRIC_COLUMNS)
    assert all(_same(fast.data.metrics[k], public.data.metrics[k]) for k in fits.METRIC_COLUMNS)
    strip = {"mlflow.runName"}
    assert {k: v for k, v in fast.data.tags.items() if k not in strip} == {
        k: v for k, v in public.data.tags.items() if k not in strip}
    for field in ("status", "lifecycle_stage", "experiment_id", "user_id"):
        assert getattr(fast.info, field) == getattr(public.info, field), field
    assert sweep.reader.finished() == {("blue", "module:3", "linear_gap", 4), ("green", "module:3", "linear_gap", 4)}


def _locked() -> MlflowException:
    """The error MLflow's session raises when sqlite's lock wait runs out."""
    import sqlite3

    import sqlalchemy

    try:
        raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    except sqlalchemy.exc.OperationalError as err:
        try:
            raise MlflowException(message=err) from err
        except MlflowException as wrapped:
            return wrapped


def test_a_locked_sqlite_store_is_written_again_after_a_growing_wait_and_other_errors_are_not():
    tries, waits = [], []

    def write():
        tries.append(1)
        if len(tries) < 3:
            raise _locked()
        return ["id"]

    assert bulk.retry_when_locked(write, first_wait_s=1.0, sleep=waits.append) == ["id"]
    assert len(tries) == 3 and len(waits) == 2 and 0.5 <= waits[0] <= 1.5 and 1.0 <= waits[1] <= 3.0

    def refused():
        tries.append(1)
        raise MlflowException("bad param")

    tries.clear()
    with pytest.raises(MlflowException, match="bad param"):
        bulk.retry_when_locked(refused, sleep=waits.append)
    assert len(tries) == 1  # not a lock: raised at once

    waits.clear()
    with pytest.raises(MlflowException, match="database is locked"):
        bulk.retry_when_locked(lambda: (_ for _ in ()).throw(_locked()), budget_s=5.0, sleep=waits.append)
    assert sum(waits) == pytest.approx(5.0)  # the budget is spent, then the lock is raised


@pytest.mark.slow
def test_a_batch_lands_whole_once_another_process_lets_go_of_the_sqlite_lock(sweep, tmp_path):
    """A real lock held past MLflow's 20 s wait: the batch is written after it is released, once."""
    import sqlite3
    import threading

    ckpt = sweep.checkpoints.run_id(0)
    db = sweep.writer.client.tracking_uri.removeprefix("sqlite:///")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another writer process holds it mid-transaction
    threading.Timer(24.0, lambda: holder.execute("COMMIT")).start()
    sweep.writer.log_fits([(ckpt, {**ROW, "epoch": 0, "concept": c}, {}) for c in ("red", "blue", "green")])
    holder.close()
    assert sorted(r.data.params["concept"] for r in sweep.reader.runs()) == ["blue", "green", "red"]
