"""Failure is fast and clear: every command's bad input ends in one line with a consistent exit code
(usage 2, user/data/environment 1), before any run exists where the input is a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import mobilenet, plant_red
from sweep_store import log_splits, register

from clipprobe.cli import main


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def _fails_in_one_line(result, code: int, *words: str) -> str:
    """The command exited ``code`` through click (no traceback), with one ``Error:`` line holding ``words``."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    [line] = _error_lines(result)
    assert all(w in line for w in words), line
    return line


@pytest.mark.parametrize(("args", "code", "words"), [
    (["world", "--size", "-3", "--out", "w"], 2, ["image size must be at least 16"]),
    (["train", "--epochs", "x"], 2, ["'--epochs'", "'x' is not a valid integer"]),
    (["checkpoints", "/no/such/folder"], 2, ["'/no/such/folder' does not exist"]),
    (["concepts", "--pool", "/no/such/pool"], 2, ["'/no/such/pool' does not exist"]),
    (["probe", "--model-name", "nosuch"], 2, ["no checkpoints to probe"]),
    (["tune", "--storage", "postgresql://u:p@127.0.0.1:9/x"], 1,
     ["cannot open Optuna storage postgresql://u:***@127.0.0.1:9/x"]),
    (["compare", "0" * 32], 2, [f"run {'0' * 32}: no such run"]),  # a run id that is no sweep: usage
    (["demo", "--out", "/proc/no/such/place"], 1, ["No such file or directory", "/proc/no", "-v shows the traceback"]),
])
def test_every_command_fails_in_one_line_with_its_exit_code(tracking_store, args, code, words):
    _fails_in_one_line(CliRunner().invoke(main, args), code, *words)


@pytest.mark.parametrize("command", ["probe", "tune"])
@pytest.mark.parametrize(("option", "value", "words"), [
    ("--modules", "module:99", ["unknown module 'module:99'", "the model has features.0 .. features.18"]),
    ("--concepts", "plaid", ["unknown concept(s) plaid", "the splits hold red, blue"]),
])
def test_bad_modules_and_concepts_are_usage_errors_before_any_run(tracking_store, tmp_path, command, option, value,
                                                                 words):
    register({0: plant_red(mobilenet())})
    log_splits(tmp_path)
    result = CliRunner().invoke(main, [command, option, value, "--cache-dir", "cache", "--device", "cpu"])
    _fails_in_one_line(result, 2, *words)
    client = MlflowClient()
    assert client.search_runs(["0"], f"tags.`clipprobe.step` = '{command}'") == []  # not even a FAILED one


def test_an_unreachable_tracking_server_fails_fast_naming_it(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_DISABLE_TELEMETRY": "true"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from clipprobe.cli import main; main()", "compare"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: tracking server http://127.0.0.1:9 is unreachable"), lines
    assert seconds < 15  # MLflow's own retries took 252 s here


def test_usage_errors_turn_bad_settings_into_one_unquoted_usage_line():
    import click

    from clipprobe.cli.failures import usage_errors

    for err, text in ((KeyError("unknown concept 'x'"), "unknown concept 'x'"), (LookupError("no run"), "no run"),
                      (ValueError("bad --epochs"), "bad --epochs"), (FileNotFoundError("gone"), "gone")):
        with pytest.raises(click.UsageError) as caught, usage_errors():
            raise err
        assert caught.value.message == text and caught.value.exit_code == 2
    with pytest.raises(RuntimeError, match="a bug"), usage_errors():  # anything else is not the user's
        raise RuntimeError("a bug")


def test_a_signal_landing_where_python_ignores_exceptions_is_not_raised_there() -> None:
    """A Ctrl-C raised inside a weakref callback or a __del__ is printed and dropped by Python: the handler sees
    such frames and delivers the signal again instead (tests/test_sweep_signals.py shows the whole path)."""
    import types

    from clipprobe.cli.failures import _swallowed_here

    def here():
        return __import__("sys")._getframe()

    in_weakref = types.FunctionType(here.__code__.replace(co_filename="/usr/lib/python3.11/weakref.py"), {})
    in_del = types.FunctionType(here.__code__.replace(co_name="__del__"), {})
    assert _swallowed_here(in_weakref()) and _swallowed_here(in_del())
    assert not _swallowed_here(here()) and not _swallowed_here(None)


def test_an_interrupt_python_drops_in_any_weakref_callback_is_delivered_again() -> None:
    """Python drops (prints and goes on past) an exception raised in a finalizer or weakref callback wherever its
    code lives: seen in a sweep whose SIGTERM landed in SQLAlchemy's class-registry callback and exited 0. The
    handler's unraisable hook delivers such an interrupt again, so it reaches the code after the callback."""
    import os
    import signal
    import time
    import weakref

    from clipprobe.cli.failures import restore_signals, terminate_as_interrupt

    class Thing:
        pass

    def callback(_ref: object) -> None:  # a library's weakref callback: not in weakref.py, not a __del__
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs in here, where Python drops what it raises
            pass

    terminate_as_interrupt()
    try:
        thing = Thing()
        ref = weakref.ref(thing, callback)
        with pytest.raises(KeyboardInterrupt):
            del thing  # the callback runs now
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
        assert ref() is None
    finally:
        restore_signals()
