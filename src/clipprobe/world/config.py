"""WorldSpec: the `world` step's config (what the concept world holds), and the names it draws from.

Logged as ``world/config.json`` and stored in the truth table's provenance; it checks itself when made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clipprobe.core.step_config import StepConfig

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "star",
    "cross", "hexagon", "pentagon", "ellipse", "trapezoid",
)
# Concept colours of the seed first, then distractors that no default concept names.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 70, 215),
    "green": (35, 165, 55),
    "yellow": (235, 215, 35),
    "purple": (135, 55, 165),
    "orange": (240, 135, 25),
    "cyan": (30, 195, 205),
}
PATTERNS: tuple[str, ...] = ("plain", "dotted", "striped", "zigzagged")
DEFAULT_OUT = "worlds/default"  # where `clipprobe world` writes when no --out is given


class WorldError(ValueError):
    """Bad parameters for the concept world; the message is one line naming the fix."""


@dataclass(frozen=True)
class WorldSpec(StepConfig):
    """Parameters of a concept world: the ``world`` step's config (logged as ``world/config.json``), also
    stored in the truth table's metadata. ``shapes``, ``colours``, ``patterns``: None (or nothing) means all.
    A bad value raises ``WorldError`` when the spec is made."""

    STEP = "world"

    seed: int = 0
    size: int = 64
    train_per_class: int = 40
    val_per_class: int = 10
    pool_size: int = 1000
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    patterns: tuple[str, ...] = PATTERNS

    def __post_init__(self) -> None:
        for name, known in (("shapes", SHAPES), ("colours", tuple(COLOURS)), ("patterns", PATTERNS)):
            value = getattr(self, name)
            object.__setattr__(self, name, known if value is None else tuple(value))
        if self.size < 16:
            raise WorldError(f"image size must be at least 16 pixels, got {self.size}")
        for name in ("train_per_class", "val_per_class", "pool_size"):
            if getattr(self, name) < 0:
                raise WorldError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_per_class + self.val_per_class + self.pool_size == 0:
            raise WorldError("the world would be empty: give a positive train, val or pool size")
        _check_names("shape", self.shapes, SHAPES)
        _check_names("colour", self.colours, tuple(COLOURS))
        _check_names("pattern", self.patterns, PATTERNS)

    def params(self, out: str) -> dict[str, object]:
        """The world run's params: the world's folder and every setting (lists comma-joined)."""
        return {"out": out, "seed": self.seed, "size": self.size, "train_per_class": self.train_per_class,
                "val_per_class": self.val_per_class, "pool_size": self.pool_size, "shapes": ",".join(self.shapes),
                "colours": ",".join(self.colours), "patterns": ",".join(self.patterns)}


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    if not names:
        raise WorldError(f"no {kind}s given: choose from {', '.join(known)}")
    for name in names:
        if name not in known:
            raise WorldError(f"unknown {kind} {name!r}: known {kind}s are {', '.join(known)}")
    if len(set(names)) != len(names):
        raise WorldError(f"a {kind} is listed twice in {', '.join(names)}")
