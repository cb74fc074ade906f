"""The classifier's own units: ``logits`` (the model's output) is a probe module, cached exactly, with no maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from forward_count import ForwardCount
from sweep_fakes import make_splits, mobilenet, ref

from clipprobe.activations.cache import ActivationCache
from clipprobe.activations.disk_budget import activation_bytes
from clipprobe.activations.options import ExtractOptions
from clipprobe.backbones.architectures import resolve_probe_modules
from clipprobe.backbones.names import LOGITS
from clipprobe.probes.kinds import SEED_PROBE_KINDS
from clipprobe.sweep.plan import Sweep, SweepPlan


class FakeImages:
    def __init__(self, pixels: np.ndarray, key: str = "imgs-logits") -> None:
        self.pixels, self.key = pixels, key

    def __len__(self) -> int:
        return len(self.pixels)


def _pixels(n: int = 6, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)


def test_logits_resolve_beside_a_module_and_unknown_names_mention_them():
    model = mobilenet()
    assert resolve_probe_modules(model, ["module:3", LOGITS]) == {"module:3": "features.3", "logits": "logits"}
    assert LOGITS not in resolve_probe_modules(model).values()  # asked for, never a default
    with pytest.raises(ValueError, match=r"unknown module 'logit' .* and logits for the model's output"):
        resolve_probe_modules(model, ["logit"])


def test_the_cache_returns_the_models_logits_exactly_and_no_maps(tmp_path):
    model, images = mobilenet(), FakeImages(_pixels())
    modules = resolve_probe_modules(model, ["module:3", LOGITS])
    exact = ExtractOptions(batch_size=len(images), precision="fp32", fold_batchnorm=False, channels_last=False)
    cache = ActivationCache(tmp_path)
    acts = cache.get(model, modules, images, fingerprint="a" * 64, options=exact, progress=False)
    with torch.no_grad():
        want = model(torch.from_numpy(images.pixels)).numpy()
    np.testing.assert_array_equal(acts.gap(LOGITS), want)  # the model's own output, bit for bit
    assert acts.gap(LOGITS).shape == (6, 4) and acts.map_shape(LOGITS) == (4,)
    assert acts.map("features.3").shape[0] == 6  # the conv module beside it keeps its maps
    with pytest.raises(ValueError, match="module 'logits' outputs 4 values an image, not maps: it has no full maps "
                                         r"for a non-gap probe kind; probe it with a gap kind \(linear_gap"):
        acts.features(LOGITS, "map")
    assert acts.meta["stored"][LOGITS] == ["fp32:gap"]
    count = ForwardCount(model)
    again = cache.get(model, modules, images, fingerprint="a" * 64, options=exact, progress=False)  # maps=True
    assert count.batches == 0  # logits have no maps to miss: the pass is not run again
    np.testing.assert_array_equal(again.gap(LOGITS), want)
    # The default (fast) forward folds BatchNorm and goes channels-last: the logits move by rounding only.
    fast = cache.get(model, modules, images, fingerprint="a" * 64, options=ExtractOptions(batch_size=4),
                     progress=False)
    np.testing.assert_allclose(fast.gap(LOGITS), want, rtol=1e-4, atol=1e-5)
    assert activation_bytes({LOGITS: (4,)}, 10, maps=True) == activation_bytes({LOGITS: (4,)}, 10, maps=False)


def test_a_map_probe_kind_refuses_logits_and_a_gap_sweep_probes_them(tmp_path):
    with pytest.raises(ValueError, match="module logits .* has no maps for probe kind.s. non_linear_non_gap: pass "
                                         "--probes with gap kinds only"):
        SweepPlan(modules=["module:3", LOGITS], probes=SEED_PROBE_KINDS)
    splits = make_splits(tmp_path / "pool", concepts=("red",))
    plan = SweepPlan(modules=["module:3", LOGITS], concepts=["red"], probes=["linear_gap"], repeats=0,
                     permutations=0)
    rows = Sweep(splits, plan, cache_dir=tmp_path / "cache", progress=False).run([ref(mobilenet(), 0)])
    by_module = {r["module"]: r for r in rows}
    assert set(by_module) == {"module:3", LOGITS}
    assert by_module[LOGITS]["module_path"] == LOGITS and by_module[LOGITS]["n_test"] == 21
    assert 0 <= by_module[LOGITS]["test_acc"] <= 1


def test_probe_refuses_logits_with_a_map_kind_in_one_usage_line_before_any_run(tracking_store):
    from click.testing import CliRunner

    from clipprobe.cli import main

    res = CliRunner().invoke(main, ["probe", "--modules", "module:3,logits"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        "Error: module logits (the model's output, one value per class) has no maps for probe kind(s) "
        "non_linear_non_gap: pass --probes with gap kinds only (linear_gap, non_linear_gap), or probe logits in a "
        "sweep of its own")
