"""Probes: LinearProbe / MLPProbe, batched fitting of many probes at once, evaluation with baselines.

Its names are imported on first use (PEP 562), so importing one light module of the package (e.g. ``kinds``) does
not bring in torch.
"""

from clipprobe.core.exports import lazy_exports

_HOMES = {
    "BatchedFit": "clipprobe.probes.batched",
    "ConceptTask": "clipprobe.probes.evaluation",
    "ESTIMATORS": "clipprobe.probes.estimators",
    "LinearProbe": "clipprobe.probes.estimators",
    "MLPProbe": "clipprobe.probes.estimators",
    "PROBE_KINDS": "clipprobe.probes.kinds",
    "ProbeKind": "clipprobe.probes.kinds",
    "ProbeResult": "clipprobe.probes.evaluation",
    "evaluate_concept": "clipprobe.probes.evaluation",
    "evaluate_concepts": "clipprobe.probes.evaluation",
    "fit_many": "clipprobe.probes.batched",
    "make_probe": "clipprobe.probes.estimators",
    "probe_kind": "clipprobe.probes.kinds",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
