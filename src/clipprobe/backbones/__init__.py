"""Backbone checkpoints: torchvision architectures, checkpoint files and fingerprints, the training
recipe, and one loader (`load_backbone`) for the rest of the pipeline.

Its names are imported on first use (PEP 562), so importing one light module of the package (e.g. ``names``) does
not bring in torch.
"""

from clipprobe.core.exports import lazy_exports

_HOMES = {
    "Backbone": "clipprobe.backbones.loader",
    "CheckpointError": "clipprobe.backbones.checkpoints",
    "fingerprint": "clipprobe.backbones.checkpoints",
    "load_backbone": "clipprobe.backbones.loader",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
