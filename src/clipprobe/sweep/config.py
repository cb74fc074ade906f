"""The settings of one probe sweep: every choice that changes its numbers, in one typed object.

A sweep logs its resolved config as ``probe/config.json``; ``probe --resume`` rebuilds it from there and
refuses a command line that would change it, so one sweep never mixes two settings (say bf16 and fp32
fits). The same object is the single source of the ``probe`` command's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipprobe.activations.options import FORWARD_PRECISIONS, ExtractOptions
from clipprobe.core.step_config import StepConfig
from clipprobe.sweep.plan import DEFAULT_PROBES, DEFAULT_REPEATS, SweepPlan, parse_names


def _names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None``/``"all"`` -> None (everything); ``"a,b"`` or a list -> a tuple of names (``parse_names``)."""
    names = parse_names(value if value is None or isinstance(value, str) else [str(v) for v in value])
    return None if names is None else tuple(names)


@dataclass(frozen=True)
class SweepConfig(StepConfig):
    """What a sweep computes. ``None`` means "all" (epochs, modules, concepts) or "the newest one in the
    chosen experiment" (model, concepts run) until resolved; a logged config is always resolved."""

    STEP = "probe"

    model_name: str | None = None
    epochs: tuple[int, ...] | None = None
    modules: tuple[str, ...] | None = None
    concepts: tuple[str, ...] | None = None
    probes: tuple[str, ...] = DEFAULT_PROBES
    repeats: int = DEFAULT_REPEATS
    permutations: int = SweepPlan.permutations
    seed: int = 0
    splits_run: str | None = None
    params_from: str | None = None
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparams_source: Mapping[str, str] = field(default_factory=dict)
    allow_duplicate_weights: bool = False
    precision: str = ExtractOptions.precision  # one of FORWARD_PRECISIONS
    channels_last: bool = ExtractOptions.channels_last
    fold_batchnorm: bool = ExtractOptions.fold_batchnorm
    calibration_images: int = ExtractOptions.calibration_images
    calibration_rtol: float = ExtractOptions.calibration_rtol
    neurons: bool = False  # after the fits, score every unit of each checkpoint (the `neurons` step, same cache)
    mdl: bool = SweepPlan.mdl
    cka: bool = True  # representation similarity between modules and epochs after the fits (similarity.checkpoints)

    def __post_init__(self) -> None:
        for name in ("modules", "concepts"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        object.__setattr__(self, "probes", _names(self.probes) or DEFAULT_PROBES)
        if self.epochs is not None:
            object.__setattr__(self, "epochs", tuple(int(e) for e in self.epochs))
        self.extract_options()  # precision and calibration are checked where they are defined
        self.plan()  # probe kinds, repeats and hyper-parameters are checked where they are defined

    def plan(self) -> SweepPlan:
        """The part the sweep fits by."""
        return SweepPlan(modules=self.modules, concepts=self.concepts, probes=self.probes, repeats=self.repeats,
                         permutations=self.permutations, seed=self.seed, hparams=self.hparams, hparams_source=self.hparams_source,
                         mdl=self.mdl)

    def extract_options(self, batch_size: int = ExtractOptions.batch_size) -> ExtractOptions:
        """How the forward pass computes (the batch size does not change the numbers, so it is not stored)."""
        return ExtractOptions(batch_size=batch_size, precision=self.precision, channels_last=self.channels_last,
                              fold_batchnorm=self.fold_batchnorm, calibration_images=self.calibration_images,
                              calibration_rtol=self.calibration_rtol)

    @staticmethod
    def precisions() -> tuple[str, ...]:
        """The forward pass precisions a sweep accepts (``activations.options.FORWARD_PRECISIONS``)."""
        return FORWARD_PRECISIONS

    def run_params(self) -> dict[str, Any]:
        """The sweep run's params: the config flattened (lists as a,b,c; "all"/"none" for unset), and each
        probe kind's hyper-parameters as ``<kind>.<param>``, so the UI can compare sweeps."""
        out = {}
        for key, value in self.to_dict().items():
            if key in ("hparams", "hparams_source", "format"):
                continue
            if value is None:
                value = "all" if key in ("epochs", "modules", "concepts") else "none"
            out[key] = ",".join(map(str, value)) if isinstance(value, list) else value
        for probe_name, params in self.hparams.items():
            out.update({f"{probe_name}.{k}": v for k, v in params.items()})
        return out

    def conflicts(self, given: Mapping[str, Any]) -> list[str]:
        """``name=value`` (as this config holds it) for each given setting that differs from this config.

        ``given`` holds only what the user set; ``epochs``, ``modules`` and ``concepts`` compare as sets.
        """
        other = SweepConfig.from_dict({**self.to_dict(), **given}) if given else self
        out = []
        for name in given:
            if name == "neurons":  # what runs after the fits, not how they are computed: a resume may add it
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("epochs", "modules", "concepts", "probes") and mine is not None and theirs is not None:
                mine, theirs = set(mine), set(theirs)
            if mine != theirs:
                out.append(f"{name}={_show(getattr(self, name))}")
        return out


def _show(value: Any) -> str:
    if value is None:
        return "all"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)
