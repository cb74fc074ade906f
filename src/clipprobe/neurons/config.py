"""NeuronsConfig: the settings of the `neurons` step (unit scores over an existing probe sweep), one typed object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clipprobe.core.step_config import StepConfig
from clipprobe.neurons.auroc import POOLINGS
from clipprobe.neurons.schema import SPARSE_KS


def _names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [s.strip() for s in items if s.strip()]
    return None if not items or items == ["all"] else tuple(items)


@dataclass(frozen=True)
class NeuronsConfig(StepConfig):
    """What the unit scores of a sweep are computed over and how. ``None``: the sweep's own (epochs, modules,
    concepts) or the newest finished probe sweep of the chosen experiment (``sweep_run``) until resolved."""

    STEP = "neurons"

    sweep_run: str | None = None
    epochs: tuple[int, ...] | None = None
    modules: tuple[str, ...] | None = None
    concepts: tuple[str, ...] | None = None
    pooling: str = "mean"
    ks: tuple[int, ...] = SPARSE_KS

    def __post_init__(self) -> None:
        for name in ("modules", "concepts"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        if self.epochs is not None:
            object.__setattr__(self, "epochs", tuple(int(e) for e in self.epochs))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks}: expected positive unit counts such as {','.join(map(str, SPARSE_KS))} "
                             "(all units are always probed too)")
