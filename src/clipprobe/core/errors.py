"""Errors that are the user's inputs or environment, not bugs: every command shows them in one line (exit 1)."""

from __future__ import annotations


class InputError(Exception):
    """Something the user gave or has cannot be used (weights that cannot be fetched or loaded, ...); the message
    is one line naming what and the fix. ``cli.failures`` shows it without a traceback."""
