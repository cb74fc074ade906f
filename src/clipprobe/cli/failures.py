"""How every command fails: fast, in one line, with the exit code click uses (usage 2, user or data 1,
interrupt 130 or 143). Checked once for all commands in the group's callback, not per command."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import click

REACH_TIMEOUT_S = 5.0  # one probe of the tracking server; MLflow's own client retries for minutes


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so a run ends KILLED either way."""

    signal_name = "SIGTERM"  # the run's clipprobe.interrupted tag (a plain KeyboardInterrupt: SIGINT)


# What to do after an interrupt, per step (the run id filled in where the step resumes by it).
RESUME_HINTS: dict[str, str] = {
    "world": "its folder is incomplete: run the command again with --overwrite",
    "train": "run the same command again: it continues after the last model_<N>.pth written",
    "checkpoints": "run the same command again: checkpoints already registered are not imported twice",
    "clip": "run the same command again (the world CLIP trains from the start)",
    "concepts": "run the same command again: CLIP scoring continues from the chunks already written",
    "probe": "finish it with `clipprobe probe --resume {run_id}` (fits already logged are kept)",
    "tune": "run the same command again: its trials add to the same Optuna studies",
    "compare": "run the same command again",
    "main": "run the same command again",
}

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, Any] = {"count": 0, "previous": {}}


def terminate_as_interrupt() -> None:
    """From now on, in the main thread, Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM ``Terminated``, once.

    While the interrupted run is being ended KILLED a second signal is ignored: ``mlflow run`` answers a
    Ctrl-C by sending SIGTERM to its entry point, which would cut that cleanup short and leave the run
    RUNNING (MLflow then marks it FAILED). A third signal exits at once (exit 128 + its number).
    ``restore_signals`` puts the handlers that were there back."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state["count"] = 0

    def _raise(signum: int, frame: Any) -> None:
        if _swallowed_here(frame):  # Python would print the exception and go on: deliver the signal again soon
            threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum)).start()
            return
        _state["count"] += 1
        if _state["count"] == 2:
            click.echo("still ending the interrupted run KILLED (a third signal exits at once)", err=True)
            return
        if _state["count"] > 2:
            os._exit(128 + signum)
        if signum == signal.SIGTERM:
            raise Terminated(f"signal {signum}")
        raise KeyboardInterrupt

    for sig in _SIGNALS:
        _state["previous"].setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _raise)
    if sys.unraisablehook is not _redeliver_if_ours:
        _state["unraisable"] = sys.unraisablehook
        sys.unraisablehook = _redeliver_if_ours


REDELIVER_S = 0.05


def _swallowed_here(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` is ignored by Python: a weakref callback or a ``__del__``, run by
    the garbage collector wherever the main thread happens to be (seen: a Ctrl-C landing in
    ``WeakKeyDictionary``'s ``remove`` was printed as 'Exception ignored' and the sweep went on)."""
    code = getattr(frame, "f_code", None)
    return code is not None and (code.co_name == "__del__" or code.co_filename.endswith("weakref.py"))


def _redeliver_if_ours(unraisable: Any) -> None:
    """``sys.unraisablehook``: Python drops an exception raised in any finalizer or weakref callback, wherever
    its code lives (seen: SQLAlchemy's class registry's weakref callback), after printing it. An interrupt of ours
    dropped so is not counted and is delivered again ``REDELIVER_S`` later; anything else goes to the hook before."""
    err = unraisable.exc_value
    if isinstance(err, KeyboardInterrupt) and _state["count"] > 0:
        _state["count"] -= 1
        signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum)).start()
        return
    _state.get("unraisable", sys.__unraisablehook__)(unraisable)


def restore_signals() -> None:
    """The signal handlers from before ``terminate_as_interrupt`` (a command run inside a longer process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if sys.unraisablehook is _redeliver_if_ours:
        sys.unraisablehook = _state.pop("unraisable", sys.__unraisablehook__)
    previous = _state["previous"]
    for sig in list(previous):
        handler = previous.pop(sig)
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def interrupted(err: KeyboardInterrupt) -> click.exceptions.Exit:
    """One line on stderr, naming the run that ended KILLED and how to go on, and the shell's exit code
    for the signal (128 + its number)."""
    term = isinstance(err, Terminated)
    run_id, step = getattr(err, "clipprobe_run_id", None), getattr(err, "clipprobe_step", None)
    what = "terminated (SIGTERM)" if term else "interrupted (Ctrl-C)"
    if run_id is None:
        line = f"{what}: no run was open"
    else:
        hint = RESUME_HINTS.get(step or "", "")
        line = f"{what}: run {run_id}{f' ({step})' if step else ''} ended KILLED" + (
            f"; {hint.format(run_id=run_id)}" if hint else "")
    click.echo(line, err=True)
    return click.exceptions.Exit(128 + (signal.SIGTERM if term else signal.SIGINT))


def expected_error(err: BaseException) -> bool:
    """A user's, data's or environment's error rather than a bug: a file or folder (``OSError``), an input the
    library refuses (``core.errors.InputError``) or the tracking store refusing something (``MlflowException``)."""
    from clipprobe.core.errors import InputError

    mlflow_errors = sys.modules.get("mlflow.exceptions")  # never imported just to check
    return isinstance(err, OSError | InputError) or (mlflow_errors is not None and isinstance(err, mlflow_errors.MlflowException))


def check_tracking_server(uri: str | None = None, timeout: float = REACH_TIMEOUT_S) -> None:
    """Refuse, in one line and within ``timeout``, an http(s) tracking URI nothing answers at (any HTTP
    answer, even an error status, counts as reachable). Other URIs (sqlite, files) are not checked."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "") if uri is None else uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):  # it answered; TLS settings are MLflow's (MLFLOW_TRACKING_INSECURE_TLS)
            return
        raise click.ClickException(
            f"tracking server {uri} is unreachable ({reason}): start it (`mlflow server ...`) or point "
            "MLFLOW_TRACKING_URI at a running one (unset, runs go to sqlite:///mlflow.db)") from None


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A bad setting (``ValueError``), nothing to take a default from (``LookupError``) or a missing file,
    raised while a command turns its options into a step's config and inputs: one usage line, exit 2."""
    try:
        yield
    except (LookupError, ValueError, FileNotFoundError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str() quotes
        raise click.UsageError(str(text)) from None
