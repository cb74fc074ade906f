"""The settings of one `tune` run: which fits the studies tune on and how, in one typed object.

A tune run logs its resolved config as ``tune/config.json`` (``TuneConfig.from_json`` rebuilds it); the
same object is the single source of the ``tune`` command's defaults. Where the trials run (storage,
executor, workers, device) is not part of it: it does not change what a study computes, and a storage
URL may hold a password.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from clipprobe.core.step_config import StepConfig
from clipprobe.probes.kinds import ProbeKind
from clipprobe.sweep.plan import DEFAULT_PROBES, LATEST, parse_epochs, parse_names
from clipprobe.tuning import studies as tuning

SAMPLE = "sample"  # modules / concepts choice: a small spread of them (tune's default)
DEFAULT_MODULE_SAMPLE = 3  # modules spread from first to last when --modules is not given


def sample_modules(available: Sequence[str], k: int = DEFAULT_MODULE_SAMPLE) -> list[str]:
    """``k`` display names evenly spread over ``available`` (first and last included)."""
    if len(available) <= k:
        return list(available)
    return [available[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(available) - 1, k)})]


def sample_concepts(groups: Mapping[str, str]) -> list[str]:
    """The first concept of every group (concept -> group, in splits order)."""
    first: dict[str, str] = {}
    for concept, group in groups.items():
        first.setdefault(group, concept)
    return list(first.values())


def _choice(value: Any, words: tuple[str, ...]) -> tuple[str, ...] | str | None:
    """One of ``words`` as it is; otherwise a list of names (``None``/``all`` -> None: everything)."""
    if isinstance(value, str) and value.strip() in words:
        return value.strip()
    names = parse_names(value if value is None or isinstance(value, str) else [str(v) for v in value])
    return None if names is None else tuple(names)


@dataclass(frozen=True)
class TuneConfig(StepConfig):
    """What a tune run's studies compute. Until resolved, ``modules``/``concepts`` may be ``SAMPLE`` (a spread
    of modules from first to last; the first concept of every group) or None (all), ``epochs`` ``LATEST``
    or None (all), and ``model_name``/``splits_run`` None (the newest in the chosen experiment); a logged
    config is always resolved (tuples, names, run ids)."""

    STEP = "tune"

    probes: tuple[str, ...] = DEFAULT_PROBES
    concepts: tuple[str, ...] | str | None = SAMPLE
    modules: tuple[str, ...] | str | None = SAMPLE
    epochs: tuple[int, ...] | str | None = LATEST
    n_trials: int = tuning.DEFAULT_N_TRIALS
    timeout: float | None = None
    study_name: str | None = None
    seed: int = tuning.DEFAULT_SEED
    folds: int = tuning.DEFAULT_FOLDS
    splits_run: str | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "probes", _choice(self.probes, ()) or DEFAULT_PROBES)
        for name in ("concepts", "modules"):
            object.__setattr__(self, name, _choice(getattr(self, name), (SAMPLE,)))
        epochs = self.epochs
        if isinstance(epochs, str):
            epochs = LATEST if epochs.strip() == LATEST else parse_epochs(epochs)  # "all" -> None
        object.__setattr__(self, "epochs", epochs if epochs is None or isinstance(epochs, str)
                           else tuple(sorted({int(e) for e in epochs})))
        if self.timeout is not None:
            object.__setattr__(self, "timeout", float(self.timeout))
        self.kinds()  # unknown kinds, or kinds with nothing to search, raise here
        if self.n_trials < 1 and self.timeout is None:
            raise ValueError(f"--n-trials {self.n_trials}: expected 1 or more")

    def kinds(self) -> list[ProbeKind]:
        """The probe kinds to tune, one study each (``tuning.check_kind``: one line for a bad name)."""
        return [tuning.check_kind(p) for p in self.probes]

    @property
    def trials(self) -> int | None:
        """Trials per study in this invocation; None: as many as ``timeout`` allows."""
        return self.n_trials if self.n_trials > 0 else None

    def run_params(self) -> dict[str, Any]:
        """The tune run's params: the config flattened (lists as a,b,c; unset as "")."""
        def flat(value: Any) -> Any:
            if value is None:
                return ""
            return ",".join(map(str, value)) if isinstance(value, tuple) else value

        return {f.name: flat(getattr(self, f.name)) for f in fields(self)}
