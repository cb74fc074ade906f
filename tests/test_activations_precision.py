"""Extraction precision: ``auto`` means bf16 where the device computes it, the cache is keyed by what ran,
bf16 maps are the module's own bits, and probe accuracies move by less than one test image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sweep_fakes import TRANSFORM, make_splits, mobilenet

from clipprobe import devices
from clipprobe.activations import (
    ActivationCache,
    ExtractOptions,
    ForwardCounter,
    forward_activations,
    from_bf16_bits,
    load_images,
)
from clipprobe.backbones.checkpoints import fingerprint
from clipprobe.probes.evaluation import evaluate_concepts
from clipprobe.probes.kinds import probe_kind
from clipprobe.sweep import concept_tasks

CONCEPTS = ("red", "blue", "green", "grey")  # green and grey stay below ceiling, where rounding could show
MODULES = {"module:3": "features.3", "module:10": "features.10", "module:16": "features.16"}
PROBES = ("linear_gap", "non_linear_gap", "non_linear_non_gap")
REPEATS = 2


def bf16_support(monkeypatch, supported: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"} if supported else {"avx512f"})


def test_plain_avx512_only_emulates_bf16_so_auto_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # oneDNN would emulate
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert not devices.native_bf16("cpu")
    assert ExtractOptions().resolve("cpu").precision == "fp32"
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert devices.native_bf16("cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """96 coloured-square images, 4 concept tasks, a random MobileNetV2 and its activations in fp32 and bf16."""
    root = tmp_path_factory.mktemp("precision")
    splits = make_splits(root / "pool", concepts=CONCEPTS)
    paths, tasks, _ = concept_tasks(splits)
    images = load_images(splits.pool_root, paths, TRANSFORM, progress=False)
    model = mobilenet(seed=2)
    cache = ActivationCache(root / "acts")
    fp = fingerprint(model.state_dict())
    acts = {p: cache.get(model, MODULES, images, fingerprint=fp, options=ExtractOptions(precision=p), progress=False)
            for p in ("fp32", "bf16")}
    return SimpleNamespace(model=model, images=images, tasks=tasks, cache=cache, fingerprint=fp, acts=acts)


def test_auto_is_bf16_where_the_cpu_computes_it_and_fp32_elsewhere(monkeypatch):
    auto = ExtractOptions()
    assert auto.precision == "auto"
    bf16_support(monkeypatch, True)
    assert auto.resolve("cpu") == ExtractOptions(precision="bf16")
    assert auto.resolve(torch.device("cpu")).key() == ExtractOptions(precision="bf16").key() == "bf16-cl-fold"
    assert ExtractOptions(precision="fp32").resolve("cpu").precision == "fp32"  # an explicit choice stays
    bf16_support(monkeypatch, False)
    assert auto.resolve("cpu") == ExtractOptions(precision="fp32")
    assert auto.resolve("cpu").key() == ExtractOptions(precision="fp32").key() == "fp32-cl-fold"
    assert ExtractOptions(precision="bf16").resolve("cpu").precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto.resolve("cuda").precision == "fp32"
    with pytest.raises(ValueError, match=r"precision 'auto' has no cache key: call options.resolve\(device\) first"):
        auto.key()
    with pytest.raises(ValueError, match="unknown precision 'fp16': expected one of auto, fp32, bf16"):
        ExtractOptions(precision="fp16")


def test_auto_reads_the_cache_of_the_precision_it_resolves_to(world, monkeypatch):
    assert world.acts["fp32"].folder != world.acts["bf16"].folder
    before = ForwardCounter.batches
    for supported, precision in ((True, "bf16"), (False, "fp32")):
        bf16_support(monkeypatch, supported)
        got = world.cache.get(world.model, MODULES, world.images, fingerprint=world.fingerprint,
                              options=ExtractOptions(), progress=False)
        assert got.folder == world.acts[precision].folder
        assert got.meta["options"] == f"{precision}-cl-fold"
    assert ForwardCounter.batches == before  # both read from the cache, no forward pass


def test_bf16_maps_are_the_modules_own_bits_and_gap_pools_them_in_fp32(world):
    outputs: dict[str, list[torch.Tensor]] = {p: [] for p in MODULES.values()}

    def keep(path: str, _start: int, out: torch.Tensor) -> None:
        outputs[path].append(out.clone())

    forward_activations(world.model, MODULES, world.images.pixels, keep, options=ExtractOptions(precision="bf16"),
                        progress=False)
    acts = world.acts["bf16"]
    for path, parts in outputs.items():
        out = torch.cat(parts)
        assert out.dtype == torch.bfloat16, path  # the sink sees what the module computed, not a float copy
        bits = out.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(len(out), -1)
        np.testing.assert_array_equal(np.asarray(acts.map(path).bits), bits)
        np.testing.assert_allclose(acts.gap(path), out.double().mean((2, 3)).numpy(), rtol=1e-5, atol=0)
        np.testing.assert_array_equal(acts.map(path)[:, :], from_bf16_bits(bits))


def test_bf16_pooled_features_are_close_to_fp32_but_not_equal(world):
    for path in MODULES.values():
        a, b = world.acts["fp32"].gap(path), world.acts["bf16"].gap(path)
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        # bf16 keeps 8 significant bits (~0.4%): the pass ran in bf16 (fp32 rounding would be ~1e-6) and stays close
        assert 5e-4 < rel < 0.02, (path, rel)


@pytest.mark.parametrize("probe", PROBES)
def test_bf16_forward_moves_probe_accuracies_by_less_than_one_test_image(world, probe):
    kind = probe_kind(probe)
    diffs, accs = [], []
    for path in MODULES.values():
        exact, fast = (evaluate_concepts(world.acts[p].features(path, kind.features), world.tasks, kind,
                                         repeats=REPEATS, seed=0) for p in ("fp32", "bf16"))
        for a, b in zip(exact, fast, strict=True):
            diffs.append(abs(a.test_acc - b.test_acc) * a.n_test)
            accs.append(a.test_acc)
    diffs = np.array(diffs)
    assert len(diffs) == len(CONCEPTS) * len(MODULES)
    assert diffs.mean() < 1.0, diffs  # test images, averaged over (concept, module)
    assert 0.7 < np.mean(accs) < 0.99, accs  # the probes learn something, and not all sit at the ceiling
