"""A tiny open_clip architecture with random weights saved to a file, for the concepts tests and benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_NAME = "clipprobe-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny(folder: Path, name: str = TINY_NAME, config: dict | None = None) -> str:
    """Register the config with open_clip (as a user's own JSON config would be) and return its name."""
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(config or TINY_CONFIG))
    if name not in open_clip.list_models():
        open_clip.add_model_config(path)
    return name


def tiny_weights(folder: Path, name: str = TINY_NAME, seed: int = 0) -> Path:
    """Random weights of the registered architecture, saved as a plain state dict file."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    path = Path(folder) / f"{name}-seed{seed}.pt"
    torch.save(model.state_dict(), path)
    return path
