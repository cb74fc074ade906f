"""Run a CLI command from an MLproject entry point, where every parameter arrives as `--name value`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from clipprobe.cli import main

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def run(step: str, argv: Sequence[str] | None = None, *, flags: Sequence[str] = ()) -> None:
    """Call ``clipprobe <step>``; for each name in ``flags``, ``--name true|false`` becomes the bare flag or nothing.

    MLproject parameters always carry a value, click flags never do. Parameters whose value is the
    empty string are dropped, so an MLproject default of "" means "the command's own default".
    """
    args = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        name = arg[2:] if arg.startswith("--") else None
        if name in flags and value is not None:
            if value.lower() in _TRUE:
                out.append(arg)
            elif value.lower() not in _FALSE:
                raise SystemExit(f"entry point {step}: --{name} takes true or false, got {value!r}")
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
