"""The settings of one `compare` run in one typed object: which sweeps, what the tables and lines show, where
the files go. Logged as ``compare/config.json`` (resolved: the sweeps' run ids) and the command's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipprobe.core.step_config import StepConfig

DEFAULT_OUT = Path("outputs/compare")


@dataclass(frozen=True)
class CompareConfig(StepConfig):
    """``run_ids``: the probe sweeps (empty until resolved: the latest one); ``epoch``: the tables' epoch (None:
    the last); ``modules``: the accuracy-over-epoch lines' modules (None: all, or eight spread); ``reference``:
    a CSV in the seed's table shape (None: none); ``ui_url``: the MLflow UI for links (None: the tracking
    server's address, if any)."""

    STEP = "compare"

    run_ids: tuple[str, ...] = ()
    epoch: int | None = None
    modules: tuple[str, ...] | None = None
    reference: str | None = None
    out: Path = DEFAULT_OUT
    ui_url: str | None = None

    def __post_init__(self) -> None:
        # Run ids as a user types them: several arguments, or one comma- or space-separated list.
        ids = [r.strip() for raw in self.run_ids for r in str(raw).replace(",", " ").split() if r.strip()]
        object.__setattr__(self, "run_ids", tuple(ids))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("reference", "ui_url"):
            value = getattr(self, name)
            object.__setattr__(self, name, value.strip() or None if isinstance(value, str) else value)
        if self.epoch is not None and (isinstance(self.epoch, bool) or int(self.epoch) < 0):
            raise ValueError(f"epoch must be an integer >= 0 or None (the last), got {self.epoch!r}")

    def params(self) -> dict[str, str]:
        """The run's params, as compare has always logged them."""
        return {"sweep_run_ids": ",".join(self.run_ids), "epoch": "last" if self.epoch is None else str(self.epoch),
                "modules": ",".join(self.modules) if self.modules else "default",
                "reference": self.reference or "none", "out": str(self.out)}
