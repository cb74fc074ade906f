"""Extraction precision on trained-like weights: fp32 by default, bf16 erases features that sit far from zero,
``auto`` proves bf16 per module and falls back to fp32 where it fails, stored maps keep the variation.

The trained-like network is a random MobileNetV2 whose features.17 BatchNorm puts every channel at
1e4 times its spread from zero, as deep features of trained networks are (spread 1e-5..1e-7 of the mean).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from forward_count import ForwardCount
from sweep_fakes import TRANSFORM, make_splits, mobilenet

from clipprobe.activations.cache import ActivationCache
from clipprobe.activations.decoding import load_images
from clipprobe.activations.features import Bf16Matrix, from_bf16_bits, to_bf16_bits
from clipprobe.activations.options import ExtractOptions
from clipprobe.activations.precision import calibrate
from clipprobe.backbones.checkpoints import fingerprint
from clipprobe.core import devices
from clipprobe.probes import fit_many
from clipprobe.sweep.plan import concept_tasks

CONCEPTS = ("red", "blue", "green", "grey")
MODULES = {"module:3": "features.3", "module:10": "features.10", "module:17": "features.17"}
OFFSET_MODULE = "features.17"
OFFSET_RATIO = 1e4  # channel mean / channel std at the offset module


def bf16_support(monkeypatch, supported: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"} if supported else {"avx512f"})


def test_plain_avx512_only_emulates_bf16(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # oneDNN would emulate
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert not devices.native_bf16("cpu")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert devices.native_bf16("cpu")


def test_default_is_fp32_everywhere_and_auto_calibrates_only_with_native_bf16(monkeypatch):
    default = ExtractOptions()
    assert default.precision == "fp32"
    bf16_support(monkeypatch, True)
    assert default.resolve("cpu") == default  # exact even where bf16 is fast
    auto = ExtractOptions(precision="auto")
    assert auto.resolve("cpu").precision == "auto"  # calibrated per module by ActivationCache.get
    bf16_support(monkeypatch, False)
    assert auto.resolve("cpu").precision == "fp32"  # no native bf16: plain fp32, no calibration
    assert auto.resolve("cpu", native_bf16=True).precision == "auto"  # the decision can be injected
    assert ExtractOptions(precision="bf16").resolve("cpu").precision == "bf16"  # an explicit choice stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto.resolve("cuda").precision == "fp32"
    assert ExtractOptions(precision="bf16").key() == ExtractOptions().key() == "v2-cl-fold"  # precision: per file
    with pytest.raises(ValueError, match="unknown precision 'fp16': expected one of fp32, bf16, auto"):
        ExtractOptions(precision="fp16")
    with pytest.raises(ValueError, match="auto is decided per module by ActivationCache.get"):
        from clipprobe.activations.hooks import forward_activations

        forward_activations(mobilenet(), MODULES, np.zeros((1, 3, 32, 32), np.float32), lambda *a: None,
                            options=auto)


@torch.no_grad()
def trained_like(model: torch.nn.Module, pixels: np.ndarray) -> torch.nn.Module:
    """Set features.17's last BatchNorm so each channel's output is b_c + 1e-4 b_c * (its standardised signal)."""
    bn = model.features[17].conv[3]
    out = []
    hook = model.features[17].register_forward_hook(lambda _m, _i, o: out.append(o.mean((2, 3))))
    model(torch.from_numpy(np.asarray(pixels)))
    hook.remove()
    mean, std = out[0].mean(0), out[0].std(0)
    level = torch.linspace(1.0, 2.0, len(std))  # channel means between 1 and 2
    k = level / OFFSET_RATIO / std  # the output is affine in (weight, bias): scaling both scales it
    bn.weight.mul_(k)
    bn.bias.mul_(k).add_(level - mean * k)
    return model


def plain_fp32(model: torch.nn.Module, pixels: np.ndarray) -> dict[str, torch.Tensor]:
    """The reference: plain forward hooks, no folding, NCHW, fp32."""
    out: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())
    hooks = [named[p].register_forward_hook(lambda _m, _i, o, p=p: out.__setitem__(p, o.clone()))
             for p in MODULES.values()]
    with torch.no_grad():
        model(torch.from_numpy(np.asarray(pixels)))
    for h in hooks:
        h.remove()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """96 coloured-square images, 4 concept tasks, the trained-like network, its activations per precision."""
    root = tmp_path_factory.mktemp("precision")
    splits = make_splits(root / "pool", concepts=CONCEPTS)
    paths, tasks, _ = concept_tasks(splits)
    images = load_images(splits.pool_root, paths, TRANSFORM, progress=False)
    model = trained_like(mobilenet(seed=2), images.pixels)
    counted = ForwardCount(model)
    reference = plain_fp32(model, images.pixels)
    cache = ActivationCache(root / "acts")
    fp = fingerprint(model.state_dict())
    acts = {p: cache.get(model, MODULES, images, fingerprint=fp, options=ExtractOptions(precision=p), progress=False)
            for p in ("fp32", "bf16")}
    before = counted.images
    acts["auto"] = cache.get(model, MODULES, images, fingerprint=fp, options=ExtractOptions(precision="auto"),
                             native_bf16=True, progress=False)
    auto_images = counted.images - before
    acts["default"] = cache.get(model, MODULES, images, fingerprint=fp, progress=False)
    return SimpleNamespace(model=model, images=images, tasks=tasks, cache=cache, fingerprint=fp, acts=acts,
                           reference=reference, auto_images=auto_images, counted=counted)


def test_the_constructed_module_sits_1e4_spreads_from_zero(world):
    gap = world.reference[OFFSET_MODULE].mean((2, 3))
    ratio = gap.mean(0).abs() / gap.std(0)
    assert 0.5 * OFFSET_RATIO < ratio.min() and ratio.max() < 2 * OFFSET_RATIO
    early = world.reference["features.3"].mean((2, 3))
    assert (early.mean(0).abs() / early.std(0)).median() < 10  # random-init modules: no such offset


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-300)


def test_explicit_bf16_destroys_the_offset_features_and_fp32_keeps_them(world):
    ref = world.reference[OFFSET_MODULE].mean((2, 3)).double().numpy()
    bf16 = np.asarray(world.acts["bf16"].gap(OFFSET_MODULE), dtype=np.float64)
    fp32 = np.asarray(world.acts["fp32"].gap(OFFSET_MODULE), dtype=np.float64)
    distinct = np.median([len(np.unique(bf16[:, j])) for j in range(bf16.shape[1])])
    assert distinct <= 3, distinct  # 96 images, a feature takes a handful of values: bf16 spacing at 1..2 is 2^-7
    assert np.median(correlations(ref, bf16)) < 0.5
    assert correlations(ref, fp32).min() > 0.999
    for path in ("features.3", "features.10"):  # random-init modules: bf16 is fine there
        assert correlations(world.reference[path].mean((2, 3)).double().numpy(),
                            np.asarray(world.acts["bf16"].gap(path), np.float64)).min() > 0.99


def test_auto_falls_back_to_fp32_exactly_at_the_offset_module(world):
    auto = world.acts["auto"]
    assert {p: auto.precision_of(p) for p in MODULES.values()} == {
        "features.3": "bf16", "features.10": "bf16", "features.17": "fp32"}
    cal = {p: auto.calibration_of(p) for p in MODULES.values()}
    # measured here: features.3 gap 0.017 / map 0.018, features.10 0.035 / 0.037; features.17 ~1 and above
    for path in ("features.3", "features.10"):
        assert max(cal[path]["gap_error"], cal[path]["map_error"]) < 0.05, cal[path]
    assert min(cal[OFFSET_MODULE]["gap_error"], cal[OFFSET_MODULE]["map_error"]) > 0.5, cal[OFFSET_MODULE]
    # its files are the explicit passes' files: nothing was extracted again, only the 2 x 64 calibration images ran
    assert world.auto_images == 2 * 64
    assert auto.folder == world.acts["fp32"].folder == world.acts["bf16"].folder
    np.testing.assert_array_equal(auto.gap(OFFSET_MODULE), world.acts["fp32"].gap(OFFSET_MODULE))
    np.testing.assert_array_equal(auto.gap("features.3"), world.acts["bf16"].gap("features.3"))
    assert auto.gap("features.3").computed_in == "bf16" and auto.map(OFFSET_MODULE).computed_in == "fp32"
    assert world.acts["default"].precisions == dict.fromkeys(MODULES.values(), "fp32")


def test_calibration_passes_a_random_init_network(world):
    images = world.images.pixels
    decided = calibrate(mobilenet(seed=2), list(MODULES.values()), images, options=ExtractOptions(precision="auto"))
    assert {p: d["precision"] for p, d in decided.items()} == dict.fromkeys(MODULES.values(), "bf16")
    assert all(d["images"] == 64 for d in decided.values())
    assert max(max(d["gap_error"], d["map_error"]) for d in decided.values()) < 0.1


def test_auto_decision_is_kept_and_not_recalibrated(world):
    before = world.counted.images
    again = world.cache.get(world.model, MODULES, world.images, fingerprint=world.fingerprint,
                            options=ExtractOptions(precision="auto"), native_bf16=True, progress=False)
    assert world.counted.images == before
    assert again.precisions == world.acts["auto"].precisions
    stricter = ExtractOptions(precision="auto", calibration_rtol=1e-3)  # another criterion: decided anew
    got = world.cache.get(world.model, {"m": "features.3"}, world.images, fingerprint=world.fingerprint,
                          options=stricter, native_bf16=True, progress=False)
    assert got.precision_of("features.3") == "fp32"
    assert world.counted.images == before + 2 * 64  # calibration only: the fp32 files existed


def test_auto_without_native_bf16_is_fp32_with_no_calibration(world):
    before = world.counted.images
    got = world.cache.get(world.model, MODULES, world.images, fingerprint=world.fingerprint,
                          options=ExtractOptions(precision="auto"), native_bf16=False, progress=False)
    assert world.counted.images == before and got.precisions == dict.fromkeys(MODULES.values(), "fp32")
    assert got.calibration_of("features.3") is None


def stored_split_predictions(X, tasks) -> tuple[np.ndarray, np.ndarray]:
    """A linear probe on each task's stored split: test predictions and labels, concatenated over tasks."""
    preds, truth = [], []
    for task in tasks:
        rows, labels, train = np.asarray(task.rows), np.asarray(task.labels), np.asarray(task.train, bool)
        Y = np.zeros((1, X.shape[0]), np.int64)
        Y[0, rows] = labels
        tr = np.zeros((1, X.shape[0]), bool)
        tr[0, rows[train]] = True
        ev = np.zeros((1, X.shape[0]), bool)
        ev[0, rows] = True
        fit = fit_many("linear_gap", X, Y, tr, ev)
        preds.append(fit.predictions()[0].numpy()[rows[~train]])
        truth.append(labels[~train])
    return np.concatenate(preds), np.concatenate(truth)


@pytest.mark.parametrize("path", list(MODULES.values()))
def test_default_and_auto_predict_like_the_plain_fp32_reference(world, path):
    ref_pred, truth = stored_split_predictions(world.reference[path].mean((2, 3)).numpy(), world.tasks)
    ref_acc = (ref_pred == truth).mean()
    assert ref_acc > 0.75, ref_acc  # the probes learn the colours: the comparison means something
    moved = {}
    for name in ("default", "auto", "bf16"):
        pred, _ = stored_split_predictions(world.acts[name].gap(path), world.tasks)
        moved[name] = int((pred != ref_pred).sum())
    n_test = len(truth)
    # measured: default 0, auto 0 (bf16 at features.3/10 moves no prediction here); explicit bf16 at features.17
    # moves about a third of the test predictions
    assert moved["default"] == 0, moved
    assert moved["auto"] <= len(world.tasks) // 2, moved  # less than one test image per concept on average
    if path == OFFSET_MODULE:
        assert moved["auto"] == 0
        assert moved["bf16"] > 0.15 * n_test, moved  # the failure the default avoids, shown to be real


@pytest.mark.parametrize("path", list(MODULES.values()))
def test_stored_maps_predict_like_the_plain_fp32_maps(world, path):
    ref = world.reference[path].flatten(1).numpy()
    ref_pred, truth = stored_split_predictions(ref, world.tasks)
    assert (ref_pred == truth).mean() > 0.75
    moved = {name: int((stored_split_predictions(world.acts[name].map(path), world.tasks)[0] != ref_pred).sum())
             for name in ("fp32", "auto", "bf16")}
    raw = Bf16Matrix(to_bf16_bits(world.reference[path].flatten(1)))  # bf16 of the raw values, no offset
    moved["raw"] = int((stored_split_predictions(raw, world.tasks)[0] != ref_pred).sum())
    # measured: fp32 and auto maps (bf16-stored on their offsets) move 0 predictions at every module; at
    # features.17 explicit bf16 and raw bf16 storage move 27 of 84 (their features are dropped as rounding noise)
    assert moved["fp32"] == 0 and moved["auto"] == 0, moved
    if path == OFFSET_MODULE:
        assert moved["bf16"] > 0.15 * len(truth) and moved["raw"] > 0.15 * len(truth), moved


def test_stored_maps_keep_the_centred_variation(world):
    ref = world.reference[OFFSET_MODULE].flatten(1).double().numpy()
    centred = ref - ref.mean(0)
    got = np.asarray(world.acts["fp32"].map(OFFSET_MODULE)[:, :], np.float64)
    raw = from_bf16_bits(to_bf16_bits(world.reference[OFFSET_MODULE].flatten(1))).astype(np.float64)
    err = np.linalg.norm(got - ref, axis=0) / np.linalg.norm(centred, axis=0)
    err_raw = np.linalg.norm(raw - ref, axis=0) / np.linalg.norm(centred, axis=0)
    assert err.max() < 1e-2, err.max()  # measured ~3e-3: bf16 rounding of the centred values (plus fp32 folding)
    assert np.median(err_raw) > 0.3, np.median(err_raw)  # what storing bf16 of the raw values would keep
    offset = world.acts["fp32"].map_offset(OFFSET_MODULE)
    assert np.all(np.abs(offset - ref.mean(0)) < 0.1 * np.abs(ref.mean(0)))  # the offset sits at the mean


def test_fp32_passes_switch_off_tf32_on_cuda_and_restore_it():
    from clipprobe.activations.hooks import ieee_fp32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with ieee_fp32(torch.device("cuda")):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_fp32(torch.device("cpu")):
        assert (conv.fp32_precision, matmul.fp32_precision) == before
