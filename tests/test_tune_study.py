"""Optuna studies of probe hyper-parameters: the test part is never seen, resuming, workers, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial, TrialState
from tune_synthetic import concept_data, tune_tasks

from clipprobe.probes.batched import fit_many
from clipprobe.probes.evaluation import ConceptTask
from clipprobe.probes.kinds import ProbeKind
from clipprobe.tuning import studies as tuning

optuna.logging.set_verbosity(optuna.logging.WARNING)
MLP_POINT = {"lr": 0.1, "weight_decay": 1e-3, "steps": 50, "hidden": 16, "dropout": 0.1}


def _poisoned(X: np.ndarray, task: ConceptTask) -> tuple[np.ndarray, ConceptTask]:
    """Test rows' features NaN, test labels permuted: anything that reads them changes."""
    test_rows = task.rows[~task.train]
    X = X.copy()
    X[test_rows] = np.nan
    labels = task.labels.copy()
    test = np.flatnonzero(~task.train)
    labels[test] = labels[np.random.default_rng(1).permutation(test)]
    assert (labels != task.labels).any()
    return X, ConceptTask(task.concept, task.rows, labels, task.train)


@pytest.mark.parametrize("kind, point", [("linear_gap", {"weight_decay": 0.01}), ("non_linear_gap", MLP_POINT)])
def test_objective_never_sees_the_test_part(kind, point):
    X, task = concept_data()
    Xp, taskp = _poisoned(X, task)
    clean, poisoned = tuning.training_part(X, task), tuning.training_part(Xp, taskp)
    assert len(clean.y) == int(task.train.sum()) and np.isfinite(poisoned.X).all()
    pk = tuning.check_kind(kind)
    value = tuning.make_objective(pk, [clean], 3, device="cpu")(FixedTrial(point))
    assert 0.6 < value <= 1.0
    assert tuning.make_objective(pk, [poisoned], 3, device="cpu")(FixedTrial(point)) == value
    assert tuning.subset_fingerprint([clean], 3) == tuning.subset_fingerprint([poisoned], 3)


def test_a_whole_study_is_unchanged_by_the_test_part(tmp_path):
    X, task = concept_data()
    Xp, taskp = _poisoned(X, task)
    a = tuning.tune("linear_gap", [tuning.training_part(X, task)], storage=str(tmp_path / "a.journal"), n_trials=4)
    b = tuning.tune("linear_gap", [tuning.training_part(Xp, taskp)], storage=str(tmp_path / "b.journal"), n_trials=4)
    assert (a.best_params, a.best_value, a.study_name) == (b.best_params, b.best_value, b.study_name)


def test_same_command_twice_resumes_the_study(tmp_path):
    tasks = tune_tasks()
    storage = str(tmp_path / "optuna.journal")
    first = tuning.tune("linear_gap", tasks, storage=storage, n_trials=3, seed=0)
    assert first.study.trials[0].params == {"weight_decay": 5e-3}  # the kind's default is tried first
    second = tuning.tune("linear_gap", tasks, storage=storage, n_trials=3, seed=0)
    assert second.study_name == first.study_name and second.study_name.startswith("linear_gap-")
    trials = second.study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert len({t.params["weight_decay"] for t in trials}) == 6  # resumed sampling does not replay
    assert second.counts["complete"] + second.counts["pruned"] == 6
    assert second.best_value >= first.best_value
    named = tuning.tune("linear_gap", tasks, storage=storage, name="mine", n_trials=1)
    assert named.study_name == "mine-linear_gap"
    with pytest.raises(ValueError, match="'mine-linear_gap' was made on another subset of fits"):
        tuning.tune("linear_gap", tasks[:1], storage=storage, name="mine", n_trials=1)


def test_pruner_gets_one_value_per_feature_block(tmp_path):
    wide = tune_tasks(2)
    X, task = concept_data(seed=5, d=8)
    tasks = [*wide, tuning.training_part(X, task)]  # two feature widths: two blocks, two reports
    res = tuning.tune("linear_gap", tasks, storage=str(tmp_path / "j"), n_trials=2, folds=4)
    pk = tuning.check_kind("linear_gap")
    for t in res.study.trials:
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.intermediate_values[1] == pytest.approx(t.value)
        # the batched objective equals the plain one: each task alone, each fold alone
        plain = []
        for task_ in tasks:
            accs = []
            for val in tuning.fold_masks(task_.y, 4):
                fit = fit_many(pk, task_.X, task_.y[None], ~val[None], val[None], pk.params(t.params))
                accs.append(float(np.mean((fit.scores[0].numpy()[val] > 0) == task_.y[val])))
            plain.append(np.mean(accs))
        assert t.intermediate_values[0] == pytest.approx(np.mean(plain[:2]))
        assert t.value == pytest.approx(np.mean(plain))


def test_unknown_kind_and_empty_search_space_are_one_line(tmp_path):
    tasks = tune_tasks(1)
    with pytest.raises(ValueError, match=r"^unknown probe kind 'nope': expected one of linear_gap") as err:
        tuning.tune("nope", tasks, storage=str(tmp_path / "j"))
    assert "\n" not in str(err.value)
    bare = ProbeKind("bare", "linear", "gap", {}, ())
    with pytest.raises(ValueError, match=r"^probe kind 'bare' has an empty search space: nothing to tune"):
        tuning.tune(bare, tasks, storage=str(tmp_path / "j"))
    with pytest.raises(ValueError, match="fewer than folds=50: lower --folds"):
        tuning.tune("linear_gap", tasks, storage=str(tmp_path / "j"), folds=50)
    assert not (tmp_path / "j").exists()  # refused before any study was made


def test_unreachable_storage_fails_fast_with_only_the_password_masked_and_the_driver_named(tmp_path):
    start = time.perf_counter()
    with pytest.raises(tuning.StorageError) as err:
        tuning.open_storage("postgresql://u:p@127.0.0.1:9/x", timeout=3)
    message = str(err.value)
    assert time.perf_counter() - start < 5 and "\n" not in message
    # only the password is masked (a hand-written mask once hid every "p": "***ostgresql")
    assert message.startswith("cannot open Optuna storage postgresql://u:***@127.0.0.1:9/x: ")
    assert "***ostgresql" not in message and message.count("***") == 1
    driver, package = tuning.storage_driver("postgresql://u:p@127.0.0.1:9/x")
    assert (driver, package) == ("psycopg", "psycopg[binary]")  # SQLAlchemy 2's default PostgreSQL driver
    try:
        import psycopg  # noqa: F401
    except ImportError:
        assert "driver for postgresql:// is psycopg, which is not installed" in message
        assert "pip install 'psycopg[binary]'" in message and "postgresql+<driver>://" in message
    assert tuning.storage_driver("mysql://u:p@h/x") == ("mysqldb", "mysqlclient")
    assert tuning.storage_driver("postgresql+psycopg2://u:p@h/x") == ("psycopg2", "psycopg2-binary")
    with pytest.raises(tuning.StorageError, match=r"sqlite:////no/such/dir/optuna.db: .*unable to open"):
        tuning.open_storage("sqlite:////no/such/dir/optuna.db")
    with pytest.raises(tuning.StorageError, match=r"folder .*missing does not exist"):
        tuning.open_storage(tmp_path / "missing" / "optuna.journal")
    with pytest.raises(tuning.StorageError, match=r"^cannot open Optuna storage nosuchdb://u:\*\*\*@h/x: "
                                                 r"SQLAlchemy knows no database 'nosuchdb'"):
        tuning.open_storage("nosuchdb://u:pw@h/x")


def test_a_database_that_never_answers_fails_within_the_drivers_connect_timeout():
    """A server that accepts the TCP connection and then says nothing: the driver's own connect_timeout
    ends the wait (no thread left holding a hung connection)."""
    import socket

    pytest.importorskip("psycopg2")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: the connection waits in the backlog for a greeting
        port = server.getsockname()[1]
        start = time.perf_counter()
        with pytest.raises(tuning.StorageError, match=rf"^cannot open Optuna storage postgresql\+psycopg2://u:\*\*\*"
                                                     rf"@127.0.0.1:{port}/x: .*timeout"):
            tuning.open_storage(f"postgresql+psycopg2://u:pw@127.0.0.1:{port}/x", timeout=2)
        assert time.perf_counter() - start < 10


def test_default_storage_is_a_journal_file_in_the_given_folder(tmp_path):
    storage = tuning.open_storage(None, default_dir=tmp_path)
    optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / tuning.JOURNAL_FILE).is_file()


WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from tune_synthetic import tune_tasks
    from clipprobe.tuning import studies as tuning
    tasks = tune_tasks()
    ready = pathlib.Path(sys.argv[3])
    (ready / sys.argv[2]).touch()
    while len(list(ready.iterdir())) < 2:  # both workers imported: start their trials together
        time.sleep(0.01)
    tuning.tune("linear_gap", tasks, storage=sys.argv[1], n_trials=6, seed=int(sys.argv[2]))
""")


def test_two_workers_share_one_study_on_a_journal_file(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    go = tmp_path / "ready"
    go.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, journal, str(seed), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (summary,) = optuna.get_all_study_summaries(storage=tuning.open_storage(journal))
    trials = optuna.load_study(storage=tuning.open_storage(journal), study_name=summary.study_name).get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 12
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))


def test_a_trial_stopped_by_ctrl_c_is_logged_without_a_traceback(tmp_path):
    """Optuna logs the trial Ctrl-C (or SIGTERM) stops as failed with the whole traceback; the interrupt is the
    user's, so the line stays and the traceback goes (an error's traceback is kept)."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logging.getLogger("optuna").addHandler(handler)
    try:
        for raised in (KeyboardInterrupt(), ValueError("a bug")):
            def objective(trial, raised=raised):
                raise raised

            with pytest.raises(type(raised)):
                optuna.create_study().optimize(objective, n_trials=1)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    failed = [r for r in records if "because of the following error" in r.getMessage()]
    assert [r.getMessage().split("error: ")[1] for r in failed] == ["KeyboardInterrupt().", "ValueError('a bug')."]
    assert failed[0].exc_info is None and failed[1].exc_info is not None
