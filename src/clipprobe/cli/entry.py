"""Run a CLI command from an MLproject entry point, where every parameter arrives as `--name value`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from clipprobe.cli import main

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _boolean_options(step: str) -> dict[str, tuple[str, str | None]]:
    """``name -> (on, off)`` for the step's boolean flags: ``keep_cache -> ("--keep-cache", "--no-keep-cache")``,
    ``overwrite -> ("--overwrite", None)``; the name is the option's, as MLproject spells it."""
    import click

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
    ``--no-name`` (nothing for a flag without an off switch).

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
            on, off = booleans[name]
            if value.lower() in _TRUE:
                out.append(on)
            elif value.lower() not in _FALSE:
                raise SystemExit(f"entry point {step}: --{name} takes true or false, got {value!r}")
            elif value != "" and off is not None:
                out.append(off)
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
