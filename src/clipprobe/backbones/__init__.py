"""Backbone checkpoints: torchvision architectures, checkpoint files and fingerprints, the training
recipe, and one loader (`load_backbone`) for the rest of the pipeline."""

from clipprobe.backbones.checkpoints import CheckpointError, fingerprint
from clipprobe.backbones.loader import Backbone, load_backbone

__all__ = ["Backbone", "CheckpointError", "fingerprint", "load_backbone"]
