"""Small worlds for the sweep tests: coloured-square images, their concept splits, planted MobileNetV2s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clipprobe.backbones.architectures import ImageTransform, build_model, default_probe_modules
from clipprobe.backbones.checkpoints import fingerprint
from clipprobe.backbones.loader import Backbone
from clipprobe.concepts.splits import ConceptSplits, stratified_parts
from clipprobe.sweep.plan import CheckpointRef

COLOURS = {"red": (215, 35, 35), "blue": (35, 70, 215), "green": (35, 165, 55), "grey": (128, 128, 128)}
SIZE = 32
TRANSFORM = ImageTransform(resize_size=SIZE, crop_size=SIZE)


def make_pool(root: Path, per_colour: int = 24, seed: int = 0) -> pd.DataFrame:
    """PNG images of one coloured square on a noisy grey background; returns path + colour."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, rgb in COLOURS.items():
        for i in range(per_colour):
            img = rng.normal(120, 20, (SIZE, SIZE, 3))
            x, y, s = rng.integers(2, 10), rng.integers(2, 10), rng.integers(12, 20)
            img[y:y + s, x:x + s] = np.array(rgb) + rng.normal(0, 8, 3)
            path = f"{colour}_{i:03d}.png"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / path)
            rows.append({"path": path, "colour": colour})
    return pd.DataFrame(rows)


def make_splits(root: Path, concepts: tuple[str, ...] = ("red", "blue"), per_colour: int = 24,
                negatives: int = 48, seed: int = 0, with_classes: bool = False) -> ConceptSplits:
    """Concept splits from known colours: all images of the colour positive, random others negative.
    ``with_classes``: an ``image_class`` column (the colour) for the control task."""
    truth = make_pool(root, per_colour, seed)
    frames = []
    for concept in concepts:
        rng = np.random.default_rng([seed, len(concept)])
        pos = truth[truth["colour"] == concept]
        neg = truth[truth["colour"] != concept].sample(negatives, random_state=int(rng.integers(1 << 30)))
        labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
        frames.append(pd.DataFrame({
            "concept": concept, "group": "colour", "path": list(pos["path"]) + list(neg["path"]),
            "rank": np.arange(1, len(labels) + 1), "probability": labels.astype(float), "label": labels,
            "part": stratified_parts(labels, 0.3, rng),
            **({"image_class": list(pos["colour"]) + list(neg["colour"])} if with_classes else {}),
        }))
    return ConceptSplits(pd.concat(frames, ignore_index=True), {"pool_root": str(root)})


def mobilenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mobilenet_v2", num_classes=4, width_mult=0.25).eval()


@torch.no_grad()
def plant_red(model: torch.nn.Module) -> torch.nn.Module:
    """features.0 computes only red-minus-others in channel 0; features.1 passes channel 0 through."""
    conv0 = model.features[0][0]
    conv0.weight.zero_()
    conv0.weight[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])
    dw, pw = model.features[1].conv[0][0], model.features[1].conv[1]
    dw.weight[0].zero_()
    dw.weight[0, 0, 1, 1] = 1.0
    pw.weight[0].zero_()
    pw.weight[0, 0, 0, 0] = 1.0
    return model


@torch.no_grad()
def blind(model: torch.nn.Module) -> torch.nn.Module:
    """features.0 outputs nothing: every later module sees a constant input."""
    model.features[0][0].weight.zero_()
    return model


def backbone(model: torch.nn.Module, epoch: int, name: str = "toy") -> Backbone:
    return Backbone(module=model, probe_modules=default_probe_modules(model), transform=TRANSFORM,
                    fingerprint=fingerprint(model.state_dict()), epoch=epoch, name=name, version=str(epoch + 1),
                    architecture="mobilenet_v2")


class Loads:
    """Counts checkpoint loads."""

    n = 0


def ref(model: torch.nn.Module, epoch: int, name: str = "toy") -> CheckpointRef:
    bb = backbone(model, epoch, name)

    def load() -> Backbone:
        Loads.n += 1
        return bb

    return CheckpointRef(epoch=epoch, fingerprint=bb.fingerprint, load=load, name=name, version=bb.version)
