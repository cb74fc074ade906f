"""Options shared by several commands, defined once so their names and help never drift."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

from clipprobe.core.devices import DEFAULT_DEVICE, DEVICES

experiment_name = click.option(
    "--experiment-name",
    default=None,
    help="MLflow experiment for this run (default: MLflow's default experiment). "
    "Under `mlflow run`, use its own --experiment-name instead.",
)

device = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=DEFAULT_DEVICE,
    show_default=True,
    help="Where tensors run; auto picks cuda when available.",
)


def cache_dir(kind: str, what: str) -> Callable[[Callable], Callable]:
    """``--cache-dir``: the folder of one kind of cache (``core.caches``), its default said in the help."""
    from clipprobe.core.caches import describe_default

    return click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                        help=f"{what} Default: {describe_default(kind)}.")


def given(ctx: click.Context, names: Iterable[str]) -> dict[str, Any]:
    """The values of the options ``names`` the user set (command line or environment), converted by their
    types: what a step's config is built from, so the config's own defaults fill in the rest."""
    unset = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return {name: ctx.params[name] for name in names if ctx.get_parameter_source(name) not in unset}


class Names(click.ParamType):
    """A list of names: ``a,b`` (commas and/or spaces) -> ``("a", "b")``; ``all`` or nothing -> None.

    ``choices``: the known names; an unknown one fails naming them.
    """

    name = "names"

    def __init__(self, choices: tuple[str, ...] | None = None) -> None:
        self.choices = choices

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        items = tuple(v for v in str(value).replace(",", " ").split())
        if not items or items == ("all",):
            return None
        unknown = [v for v in items if self.choices is not None and v not in self.choices]
        if unknown:
            self.fail(f"unknown {', '.join(map(repr, unknown))}: expected all or a comma list from "
                      f"{', '.join(self.choices)}", param, ctx)
        return items


class Epochs(click.ParamType):
    """Epochs: ``0,2,5``, ``0-3`` or mixtures -> a sorted tuple; ``all`` or nothing -> None.

    ``words``: other accepted words, passed through as they are (``last``, ``latest``, ``auto``).
    """

    name = "epochs"

    def __init__(self, words: tuple[str, ...] = ()) -> None:
        self.words = words

    def convert(self, value, param, ctx):
        from clipprobe.sweep.plan import parse_epochs

        if value is None or isinstance(value, tuple | int):
            return value
        text = str(value).strip()
        if text in self.words:
            return text
        try:
            epochs = parse_epochs(text)
        except ValueError as err:
            extra = "".join(f", {w}" for w in self.words)
            self.fail(f"{err}{' (or ' + extra[2:] + ')' if extra else ''}", param, ctx)
        return None if epochs is None else tuple(epochs)


class Epoch(click.ParamType):
    """One epoch: an integer >= 0, or ``last`` (or nothing) -> None (the last epoch of the data)."""

    name = "epoch"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text in ("", "last"):
            return None
        if not text.isdigit():
            self.fail(f"expected an integer >= 0 or 'last', got {value!r}", param, ctx)
        return int(text)
