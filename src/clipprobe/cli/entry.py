"""Run a CLI command from an MLproject entry point, where every parameter arrives as `--name value`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from clipprobe.cli import main


def _boolean_options(step: str) -> dict[str, tuple[str, str | None]]:
    """``name -> (on, off)`` for the step's boolean flags: ``keep_cache -> ("--keep-cache", "--no-keep-cache")``,
    ``overwrite -> ("--overwrite", None)``; the name is the option's, as MLproject spells it."""
    from clipprobe.cli import main as group  # the real group (tests replace this module's ``main``)

    cmd = group.get_command(click.Context(group), step)
    out: dict[str, tuple[str, str | None]] = {}
    for param in getattr(cmd, "params", []):
        if isinstance(param, click.Option) and param.is_flag and param.is_bool_flag:
            on = next(o for o in param.opts if o.startswith("--"))
            off = next((o for o in param.secondary_opts if o.startswith("--")), None)
            out[on[2:]] = (on, off)
    return out


def run(step: str, argv: Sequence[str] | None = None, *, flags: Sequence[str] = ()) -> None:
    """Call ``clipprobe <step>``; each boolean flag given as ``--name true|false`` becomes ``--name`` or
    ``--no-name`` (nothing for a flag without an off switch). Values are read by click's ``BOOL`` (true/false,
    1/0, yes/no, on/off, ...).

    MLproject parameters always carry a value, click flags never do. Parameters whose value is the
    empty string are dropped, so an MLproject default of "" means "the command's own default".
    The flags are read from the command itself; ``flags`` names extra ones (bare flags).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    booleans = {**{f: (f"--{f}", None) for f in flags}, **_boolean_options(step)}
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        name = arg[2:] if arg.startswith("--") else None
        if name in booleans and value is not None:
            if value != "":
                out.extend(_flag(step, name, value, *booleans[name]))
            i += 2
            continue
        if name is not None and value == "":
            i += 2
            continue
        if arg == "":  # an empty positional parameter: nothing given
            i += 1
            continue
        out.append(arg)
        i += 1
    main([step, *out], prog_name="clipprobe")


def _flag(step: str, name: str, value: str, on: str, off: str | None) -> list[str]:
    """``--name value`` as the command line has it: the on switch, the off switch, or nothing."""
    try:
        chosen = click.BOOL.convert(value, None, None)
    except click.BadParameter:
        raise SystemExit(f"entry point {step}: --{name} takes true or false, got {value!r}") from None
    return [on] if chosen else ([off] if off is not None else [])
