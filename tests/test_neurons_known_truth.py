"""Known truths of unit scoring: a constructed colour detector in a colour-blind MobileNetV2 ranks first for its
colour and gets its label; the colour-blind net has no unit that detects the colour; the tables' shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipprobe.activations.hooks import forward_activations
from clipprobe.backbones.architectures import build_model, default_probe_modules
from clipprobe.neurons.schema import SPARSE_COLUMNS, SUMMARY_COLUMNS, UNIT_COLUMNS
from clipprobe.neurons.score import UnitInputs, score_checkpoint
from clipprobe.neurons.wpmi import truth_probabilities
from clipprobe.probes.evaluation import ConceptTask

COLOURS = ("red", "green", "blue")
SIZE = 32


def _images(per_colour: int = 30, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised pixels: one square per image on a noisy background; the colours are permutations of one
    (high, low, low) triple, so a net that sums its input channels cannot tell them apart."""
    g = torch.Generator().manual_seed(seed)
    n = per_colour * len(COLOURS)
    x = 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    colour = np.repeat(np.arange(len(COLOURS)), per_colour)
    for i, c in enumerate(colour):
        s = int(torch.randint(10, 18, (1,), generator=g))
        r0, c0 = (int(v) for v in torch.randint(0, SIZE - s, (2,), generator=g))
        triple = torch.full((3,), -1.0)
        triple[c] = 1.5
        x[i, :, r0:r0 + s, c0:c0 + s] = triple[:, None, None] + 0.05 * torch.randn(3, s, s, generator=g)
    return x, colour


@torch.no_grad()
def _colour_blind(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25).eval()
    w = model.features[0][0].weight
    w.copy_(w.mean(1, keepdim=True).expand_as(w))  # every filter weighs R, G and B alike
    return model


@torch.no_grad()
def _red_detector(seed: int = 0) -> torch.nn.Module:
    model = _colour_blind(seed)
    w = model.features[0][0].weight
    w[0].zero_()
    w[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])  # channel 0 of features.0: red minus the others
    return model


def _score(model: torch.nn.Module, x: torch.Tensor, colour: np.ndarray):
    modules = default_probe_modules(model)
    pooled: dict[str, list[torch.Tensor]] = {p: [] for p in modules.values()}
    forward_activations(model, modules, x, lambda path, _, out: pooled[path].append(out.float().mean((2, 3))),
                        progress=False)
    feats = {p: torch.cat(v).numpy() for p, v in pooled.items()}
    n = len(colour)
    rng = np.random.default_rng(0)
    train = rng.permutation(n) < int(0.7 * n)
    tasks = [ConceptTask(name, np.arange(n), (colour == c).astype(np.int64), train) for c, name in enumerate(COLOURS)]
    truth = np.eye(len(COLOURS), dtype=int)[colour]
    inputs = UnitInputs(tasks, dict.fromkeys(COLOURS, "colour"), truth_probabilities(truth), COLOURS, "truth",
                        ks=(1, 2, 4))
    return score_checkpoint(0, modules, feats.__getitem__, inputs)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, np.ndarray]:
    return _images()


def test_constructed_red_unit_ranks_first_and_gets_its_label(images) -> None:
    tables = _score(_red_detector(), *images)
    first = tables.units[(tables.units["module"] == "module:0") & (tables.units["concept"] == "red")]
    best = first.sort_values("auroc", ascending=False).iloc[0]
    assert best["unit"] == 0 and best["auroc"] >= 0.99 and best["q_value"] < 1e-6
    assert best["wpmi_label"] == "red" and best["auroc_label"] == "red"
    row = tables.summary[(tables.summary["module"] == "module:0") & (tables.summary["concept"] == "red")].iloc[0]
    assert row["best_unit"] == 0 and row["n_detectors_auroc"] >= 1 and row["smallest_k"] == 1


def test_colour_blind_net_has_no_red_detector(images) -> None:
    tables = _score(_colour_blind(), *images)
    red = tables.units[tables.units["concept"] == "red"]
    assert len(red) == tables.units["unit"].groupby(tables.units["module"], observed=True).nunique().sum()
    assert red["q_value"].min() >= 0.05
    assert (tables.summary.loc[tables.summary["concept"] == "red", "n_detectors_auroc"] == 0).all()


def test_tables_follow_the_schema(images) -> None:
    x, colour = images
    tables = _score(_red_detector(), x[::3].contiguous(), colour[::3])
    assert tuple(tables.units.columns) == UNIT_COLUMNS
    assert tuple(tables.sparse.columns) == SPARSE_COLUMNS
    assert tuple(tables.summary.columns) == SUMMARY_COLUMNS
    modules = tables.summary["module"].nunique()
    assert len(tables.summary) == modules * len(COLOURS)
    assert len(tables.sparse) == modules * len(COLOURS) * 4  # k = 1, 2, 4, all
    assert tables.units["iou"].isna().all() and tables.units["iou_label"].isna().all()
    assert set(tables.units["label_source"]) == {"truth"} and set(tables.units["pooling"]) == {"mean"}
