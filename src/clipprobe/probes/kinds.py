"""The probe kinds and their hyper-parameters: one table of allowed values, defaults and search spaces.

Pure data: the estimator classes behind the kinds live in ``probes.estimators`` (``make_probe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DROP_RTOL = 1e-6  # float32 precision: a feature spreading less than this relative to its size is noise
# The same rule for features computed or stored in a coarser precision (bf16: 8 significant bits, eps 2^-8 = 3.9e-3;
# 1e-2 asks a feature's spread to be ~2.5 eps of its size, ~9 times the rounding noise of bf16 storage).
PRECISION_DROP_RTOL = {"fp32": DEFAULT_DROP_RTOL, "bf16": 1e-2}


def drop_rtol_for(precision: str, drop_rtol: float = DEFAULT_DROP_RTOL) -> float:
    """The drop rule's relative tolerance for values computed or stored in ``precision``.

    ``drop_rtol`` (the hyper-parameter) is the rule for float32 values, as given; a coarser precision
    raises it to that precision's resolution: ``max(drop_rtol, PRECISION_DROP_RTOL[precision])``.
    """
    if precision not in PRECISION_DROP_RTOL:
        raise ValueError(f"unknown feature precision {precision!r}: expected one of {', '.join(PRECISION_DROP_RTOL)}")
    return drop_rtol if precision == "fp32" else max(drop_rtol, PRECISION_DROP_RTOL[precision])


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its type, allowed values and the default of the estimator."""

    name: str
    type: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the low end itself is not allowed
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{self.type.__name__} in {lo}{self.low}, {self.high}{hi}"

    def check(self, owner: str, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise one clear ValueError."""
        bad = f"{owner}: {self.name}={value!r} is not allowed: expected {self.allowed()} ({self.help}); e.g. {self.name}={self.default!r}"
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(bad)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(bad)
        if self.type is int and float(value) != int(value):
            raise ValueError(bad)
        value = self.type(value)
        if value != value:  # NaN
            raise ValueError(bad)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError(bad)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError(bad)
        return value


def _table(*params: HParam) -> dict[str, HParam]:
    return {p.name: p for p in params}


_DROP = HParam("drop_rtol", float, DEFAULT_DROP_RTOL, 0.0, 1.0,
               help="drop features whose train std <= drop_rtol * |train mean| (float32 features; "
                    "bf16-computed or -stored ones use at least PRECISION_DROP_RTOL['bf16'])")

LINEAR_HPARAMS: dict[str, HParam] = _table(
    HParam("weight_decay", float, 5e-3, 0.0, 1e3, low_open=True,
           help="L2 strength on the mean loss; sklearn C = 1 / (weight_decay * n_train)"),
    HParam("max_iter", int, 100, 1, 10_000, help="Newton iterations at most"),
    HParam("tol", float, 1e-8, 0.0, 1.0, low_open=True, help="stop when the largest gradient entry is below"),
    _DROP,
)

MLP_HPARAMS: dict[str, HParam] = _table(
    HParam("hidden", int, 128, 1, 8192, help="width of the one hidden ReLU layer"),
    HParam("lr", float, 0.1, 0.0, 100.0, low_open=True, help="learning rate of full-batch training"),
    HParam("momentum", float, 0.9, 0.0, 1.0, high_open=True, help="heavy-ball momentum (sgd only)"),
    HParam("weight_decay", float, 1e-3, 0.0, 1e3, help="L2 on the weights (not the biases), as torch's weight_decay"),
    HParam("steps", int, 300, 1, 100_000, help="full-batch steps"),
    HParam("dropout", float, 0.0, 0.0, 1.0, high_open=True, help="dropout on the hidden units"),
    HParam("optimizer", str, "sgd", choices=("sgd", "adam"),
           help="sgd (exact Gram form possible) or adam (explicit form only)"),
    HParam("seed", int, 0, 0, 2**31 - 1, help="seed of the initial weights and dropout"),
    _DROP,
)


def validate(owner: str, table: Mapping[str, HParam], params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of ``table`` checked, defaults filled in; unknown names raise."""
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise ValueError(f"{owner}: unknown hyper-parameter(s) {unknown}: expected some of {sorted(table)}")
    return {name: hp.check(owner, params.get(name, hp.default)) for name, hp in table.items()}


@dataclass(frozen=True)
class SearchDim:
    """One dimension of an Optuna search space, described as data (``suggest`` turns it into a value)."""

    name: str
    type: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (duck-typed: no optuna import here) for a value."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        if self.type == "int":
            if self.log:
                return trial.suggest_int(self.name, int(self.low), int(self.high), log=True)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


_MLP_SPACE = (
    SearchDim("lr", "float", 1e-3, 1.0, log=True),
    SearchDim("weight_decay", "float", 1e-6, 1e-1, log=True),
    SearchDim("steps", "int", 50, 1000, step=50),
    SearchDim("hidden", "int", 16, 512, log=True),
)


@dataclass(frozen=True)
class ProbeKind:
    """A probe kind of the sweep: estimator, feature kind, defaults and search space."""

    name: str
    estimator: str  # "linear" or "mlp"
    features: str  # "gap" (pooled vector) or "map" (whole activation map)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: tuple[SearchDim, ...] = ()

    @property
    def hparams(self) -> dict[str, HParam]:
        """The table of allowed hyper-parameters of this kind's estimator."""
        return LINEAR_HPARAMS if self.estimator == "linear" else MLP_HPARAMS

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All hyper-parameters: estimator defaults, then this kind's defaults, then ``overrides``; validated."""
        merged = {**self.defaults, **(overrides or {})}
        return validate(self.name, self.hparams, merged)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One Optuna trial's hyper-parameters (the search-space dimensions only)."""
        return {dim.name: dim.suggest(trial) for dim in self.search_space}


# In display order: the seed's three, then the linear probe on the whole map.
PROBE_KINDS: dict[str, ProbeKind] = {
    k.name: k
    for k in (
        ProbeKind("linear_gap", "linear", "gap", {},
                  (SearchDim("weight_decay", "float", 1e-6, 1.0, log=True),)),
        ProbeKind("non_linear_gap", "mlp", "gap", {}, _MLP_SPACE + (SearchDim("dropout", "float", 0.0, 0.5),)),
        ProbeKind("non_linear_non_gap", "mlp", "map", {}, _MLP_SPACE + (SearchDim("dropout", "float", 0.0, 0.5),)),
        ProbeKind("linear_non_gap", "linear", "map", {},
                  (SearchDim("weight_decay", "float", 1e-6, 1.0, log=True),)),
    )
}
SEED_PROBE_KINDS = ("linear_gap", "non_linear_gap", "non_linear_non_gap")  # the seed's three: a sweep's default


def probe_kind(name: str | ProbeKind) -> ProbeKind:
    """The kind called ``name``; an unknown name raises listing the known ones."""
    if isinstance(name, ProbeKind):
        return name
    if name not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {name!r}: expected one of {', '.join(PROBE_KINDS)}")
    return PROBE_KINDS[name]
