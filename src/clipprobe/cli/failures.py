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


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises ``Terminated`` in the main thread (nothing elsewhere)."""

    def _raise(signum: int, _frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def interrupted(err: KeyboardInterrupt) -> click.exceptions.Exit:
    """One line on stderr and the shell's exit code for the signal (128 + its number)."""
    term = isinstance(err, Terminated)
    click.echo(("terminated (SIGTERM)" if term else "interrupted (Ctrl-C)")
               + ": a run it opened ends KILLED; a probe sweep resumes with `clipprobe probe --resume RUN_ID`",
               err=True)
    return click.exceptions.Exit(128 + (signal.SIGTERM if term else signal.SIGINT))


def expected_error(err: BaseException) -> bool:
    """A user's, data's or environment's error rather than a bug: a file or folder (``OSError``) or the
    tracking store refusing something (``MlflowException``)."""
    mlflow_errors = sys.modules.get("mlflow.exceptions")  # never imported just to check
    return isinstance(err, OSError) or (mlflow_errors is not None and isinstance(err, mlflow_errors.MlflowException))


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
