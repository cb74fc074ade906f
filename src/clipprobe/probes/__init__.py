"""Probes: LinearProbe / MLPProbe, batched fitting of many probes at once, evaluation with baselines."""

from clipprobe.probes.batched import BatchedFit, fit_many
from clipprobe.probes.estimators import ESTIMATORS, LinearProbe, MLPProbe, make_probe
from clipprobe.probes.evaluation import (
    ConceptTask,
    ProbeResult,
    evaluate_concept,
    evaluate_concepts,
)
from clipprobe.probes.kinds import PROBE_KINDS, ProbeKind, probe_kind

__all__ = [
    "ESTIMATORS", "PROBE_KINDS", "BatchedFit", "ConceptTask", "LinearProbe", "MLPProbe", "ProbeKind", "ProbeResult",
    "evaluate_concept", "evaluate_concepts", "fit_many", "make_probe", "probe_kind",
]
