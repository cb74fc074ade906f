"""CKA over a sweep: the long table, read from the sweep's activations, drawn in the report, and what it finds
on a small convolutional network trained like the demo's."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from report_fakes import synthetic_results
from sweep_fakes import make_splits, mobilenet, ref
from torch import nn

from clipprobe.report import similarity as report_similarity
from clipprobe.report.build import write_report
from clipprobe.similarity.checkpoints import CKA_COLUMNS, cka_table, image_sample, sweep_cka
from clipprobe.sweep.plan import Sweep, SweepPlan
from clipprobe.world.config import SHAPES, WorldSpec
from clipprobe.world.generate import _plan, render_item


def _features(epochs: int = 3, modules: int = 3, n: int = 40) -> dict[int, dict[str, np.ndarray]]:
    """Module k drifts by k/4 of fresh noise per epoch: the first module never changes."""
    rng = np.random.default_rng(0)
    base = {f"m{k}": rng.normal(size=(n, 8 + k)) for k in range(modules)}
    out = {}
    for e in range(epochs):
        out[e] = {m: x + (int(m[1:]) / 4) * e * rng.normal(size=x.shape) for m, x in base.items()}
    return out


def test_the_table_holds_every_pair_of_modules_per_epoch_and_of_epochs_per_module() -> None:
    table = cka_table(_features(), {"m0": 0, "m1": 1, "m2": 2})
    assert list(table.columns) == list(CKA_COLUMNS)
    assert (table["comparison"] == "modules").sum() == 3 * 3 * 3 and (table["comparison"] == "epochs").sum() == 3 * 3 * 3
    same = table[(table["module_a"] == table["module_b"]) & (table["epoch_a"] == table["epoch_b"])]
    np.testing.assert_allclose(same[["cka_debiased", "cka_biased"]], 1.0, atol=1e-12)
    wide = table[(table["comparison"] == "epochs") & (table["module_a"] == "m2")].pivot(
        index="epoch_a", columns="epoch_b", values="cka_debiased")
    np.testing.assert_allclose(wide.to_numpy(), wide.to_numpy().T, atol=1e-12)
    final = report_similarity.to_final(table).pivot(index="module", columns="epoch", values="cka")
    np.testing.assert_allclose(final.loc["m0"], 1.0, atol=1e-12)  # the module that never changes
    assert final.loc["m2", 0] < final.loc["m1", 0] < 1.0
    assert list(report_similarity.settled_epochs(table)["settled_epoch"]) == [0, 2, 2]
    assert set(table["n_images"]) == {40}


def test_image_sample_is_all_images_or_a_seeded_sorted_sample() -> None:
    np.testing.assert_array_equal(image_sample(10, 20), np.arange(10))
    s = image_sample(100, 30, seed=1)
    assert len(s) == 30 and np.all(np.diff(s) > 0)
    np.testing.assert_array_equal(s, image_sample(100, 30, seed=1))
    with pytest.raises(ValueError, match="max_images=3: debiased CKA needs at least 4 images"):
        image_sample(10, 3)


def test_sweep_cka_reads_each_checkpoints_pooled_activations(tmp_path) -> None:
    splits = make_splits(tmp_path / "pool", per_colour=8, negatives=16)
    early = mobilenet(0)
    late = copy.deepcopy(early)
    torch.manual_seed(1)
    with torch.no_grad():  # training that only moved the last blocks
        for p in late.features[12:].parameters():
            p.add_(0.5 * torch.randn_like(p))
    sweep = Sweep(splits, SweepPlan(modules=("module:1", "module:6", "module:18")), cache_dir=tmp_path / "cache",
                  progress=False)
    table = sweep_cka(sweep, [ref(late, 1), ref(early, 0)])
    assert set(table["n_images"]) == {len(sweep.paths)}
    epochs = table[(table["comparison"] == "epochs") & (table["epoch_a"] == 0) & (table["epoch_b"] == 1)]
    by_module = dict(zip(epochs["module_a"], epochs["cka_debiased"], strict=True))
    assert by_module["module:1"] == pytest.approx(1.0, abs=1e-6) and by_module["module:6"] == pytest.approx(1.0, abs=1e-6)
    assert by_module["module:18"] < 0.99
    assert list(dict.fromkeys(table["module_a"])) == ["module:1", "module:6", "module:18"]  # the backbone's order


def test_the_report_draws_cka_heatmaps_and_the_settling_lines(tmp_path) -> None:
    table = cka_table(_features(), {"m0": 0, "m1": 1, "m2": 2})
    fig = report_similarity.module_similarity_figure(table)
    assert len([ax for ax in fig.axes if ax.images]) == 3  # one panel per epoch
    assert len([ax for ax in report_similarity.epoch_similarity_figure(table).axes if ax.images]) == 3  # per module
    lines = report_similarity.to_final_figure(table).axes[0].lines
    assert [ln.get_label() for ln in lines] == ["m0", "m1", "m2", "settled (0.9)"]
    report = write_report([("abc", synthetic_results())], tmp_path / "report", cka={"abc": table})
    names = {f.name for f in report.files}
    assert {"cka.csv", "cka_to_final_epoch.png", "cka_modules.png", "cka_epochs.png"} <= names
    assert "representation settles" in report.text and "m2: epoch 2" in report.text
    assert "representation similarity over training (CKA)" in report.html.read_text()
    back = pd.read_csv(tmp_path / "report" / "cka.csv")
    assert len(back) == len(table)
    with pytest.raises(ValueError, match="CKA table lacks column"):
        report_similarity.to_final(table.drop(columns="cka_debiased"))


def _train_small_convnet(epochs: int = 6) -> dict[int, dict[str, np.ndarray]]:
    """A four-block conv net (conv, batch norm, ReLU; strided like the demo's MobileNetV2) learns the world's
    ten shapes at 16 px; the pooled output of each block on fixed images after every epoch (0 = init)."""
    spec = WorldSpec(size=16, train_per_class=16, val_per_class=0, pool_size=0)
    items = [render_item(np.random.default_rng([0, i]), spec, rel, split, shape)
             for i, (split, rel, shape) in enumerate(_plan(spec))]
    X = torch.tensor(np.stack([p for p, _ in items])).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([SHAPES.index(item.shape) for _, item in items])
    torch.manual_seed(0)
    widths = [3, 16, 32, 32, 64]
    blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1),
                                          nn.BatchNorm2d(b), nn.ReLU())
                            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))])
    head = nn.Linear(widths[-1], len(SHAPES))
    opt = torch.optim.Adam([*blocks.parameters(), *head.parameters()], lr=3e-3)
    seen = X[::2]
    features: dict[int, dict[str, np.ndarray]] = {}

    def snapshot(epoch: int) -> None:
        blocks.eval()
        with torch.no_grad():
            h, out = seen, {}
            for i, block in enumerate(blocks):
                h = block(h)
                out[f"block{i}"] = h.mean((2, 3)).numpy()
        features[epoch] = out
        blocks.train()

    snapshot(0)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(X)).split(32):
            h = X[idx]
            for block in blocks:
                h = block(h)
            loss = nn.functional.cross_entropy(head(h.mean((2, 3))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        snapshot(epoch)
    return features


def test_on_a_trained_convnet_the_deepest_block_settles_last() -> None:
    # What it finds (docs/statistics.md): the deepest block starts furthest from its final representation
    # (debiased CKA ~0.4 at init where the others start at ~0.8) and reaches 0.9 only at the last epoch; the three
    # earlier blocks settle together, epochs 2-3. A larger run (24 images a shape, 8 epochs) orders all four
    # bottom-up (settled at epochs 3, 5, 8, 8).
    table = cka_table(_train_small_convnet(), {f"block{i}": i for i in range(4)})
    settled = report_similarity.settled_epochs(table).set_index("module")
    assert settled.loc["block3", "settled_epoch"] > settled.loc[["block0", "block1", "block2"], "settled_epoch"].max()
    first = settled["cka_first_epoch"]
    assert first["block3"] < first[["block0", "block1", "block2"]].min() - 0.2
