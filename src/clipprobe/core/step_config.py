"""Typed step configs: every choice of one pipeline step, logged with its run and rebuilt from it.

A step's config is a frozen dataclass that also derives from :class:`StepConfig`. Its stored form is
``<step>/config.json`` on the step's run: JSON with a ``format`` number, tuples as lists, paths as
strings. :meth:`StepConfig.from_dict` turns it back into the same typed object (tuples, ints, floats,
bools and paths as the fields declare them), so no command parses stored values back from strings.
``tracking.configs`` logs and reads the file; this module knows nothing of MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="StepConfig")


class StepConfig:
    """Mixin for a frozen dataclass holding one step's settings (see the module docstring).

    Subclasses set ``STEP`` (the ``clipprobe.step`` tag of the run that logs it) and raise ``FORMAT``
    when a stored config of the old format can no longer be read as the new one; ``RENAMED`` keeps an older
    format readable when all that changed is a setting's name (``{old format: {old name: new name}}``).
    """

    STEP: ClassVar[str]
    FORMAT: ClassVar[int] = 1
    RENAMED: ClassVar[Mapping[int, Mapping[str, str]]] = {}

    @classmethod
    def artifact_path(cls) -> str:
        """Where the config lies among its run's artifacts."""
        return f"{cls.STEP}/config.json"

    # ---------------------------------------------------------------- stored form
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "config") -> C:
        """The config from its stored form; a ``ValueError`` naming ``source`` when it cannot be read."""
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt in cls.RENAMED:
            data = {cls.RENAMED[fmt].get(k, k): v for k, v in data.items()}
        elif fmt != cls.FORMAT:
            raise ValueError(f"{source}: config format {fmt!r}, this clipprobe reads format {cls.FORMAT}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown settings {', '.join(unknown)}: written by a newer clipprobe?")
        hints = typing.get_type_hints(cls)
        try:
            return cls(**{k: _typed(v, hints[k]) for k, v in data.items()})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls: type[C], text: str, *, source: str = "config") -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not JSON ({err})") from None
        return cls.from_dict(data, source=source)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: tuples and lists as lists, mappings as dicts, paths as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _typed(value: Any, hint: Any) -> Any:
    """A stored value converted back to the declared type (tuples, paths, numbers; ``None`` kept)."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(value, inner[0]) if len(inner) == 1 else value
    if origin is tuple or hint is tuple:
        item = args[0] if args else Any
        return tuple(_typed(v, item) for v in value)
    if hint is Path:
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
