"""Where clipprobe keeps what it can compute again: one root, one folder per kind of cache.

The root is ``$CLIPPROBE_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/clipprobe``, else ``~/.cache/clipprobe``,
read when a cache is opened (not at import), so a test or a job can point it elsewhere. A command's
``--cache-dir`` replaces its kind's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CLIPPROBE_CACHE_DIR"
ACTIVATIONS = "activations"  # decoded images and each checkpoint's activations (probe, tune, neurons)
SCORES = "scores"  # CLIP's score chunks of a concepts run, kept for resuming
KINDS = (ACTIVATIONS, SCORES)


def cache_root() -> Path:
    """``$CLIPPROBE_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipprobe``, else ``~/.cache/clipprobe`` (empty
    variables count as unset, as the XDG spec says)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "clipprobe"


def cache_dir(kind: str, override: str | Path | None = None) -> Path:
    """The folder of one kind of cache: ``override`` when given (a ``--cache-dir``), else ``<root>/<kind>``."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}: expected one of {', '.join(KINDS)}")
    return Path(override).expanduser() if override else cache_root() / kind


def describe_default(kind: str) -> str:
    """The default folder of ``kind`` in words, for a ``--cache-dir`` help text."""
    return f"${CACHE_ENV}/{kind}, else $XDG_CACHE_HOME/clipprobe/{kind}, else ~/.cache/clipprobe/{kind}"
