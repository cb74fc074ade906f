"""Backbone checkpoints: torchvision architectures, checkpoint files and fingerprints, the training
recipe, and one loader (`load_backbone`) for the rest of the pipeline.

Its names are imported on first use (PEP 562), so importing one light module of the package (e.g. ``kinds``) does
not bring in torch.
"""

import importlib
from typing import Any

_HOMES = {
    "Backbone": "clipprobe.backbones.loader",
    "CheckpointError": "clipprobe.backbones.checkpoints",
    "fingerprint": "clipprobe.backbones.checkpoints",
    "load_backbone": "clipprobe.backbones.loader",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
