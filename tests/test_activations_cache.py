"""Activations: one hooked pass, gap and full maps, bf16 storage on an offset that keeps tiny and far-from-zero
values, a cache that is read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from forward_count import ForwardCount
from PIL import Image
from torch import nn

from clipprobe.activations.cache import ActivationCache
from clipprobe.activations.decoding import load_images
from clipprobe.activations.features import Bf16Matrix, from_bf16_bits, to_bf16_bits
from clipprobe.activations.options import ExtractOptions


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class TinyNet(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Scale(factor), nn.Conv2d(4, 5, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((1, 2, 3))


def tiny_net(seed: int = 0, factor: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyNet(factor)
    nn.init.zeros_(net.features[3].bias)  # keeps module 3's outputs as tiny as its inputs
    return net


def tiny_images(n: int = 10, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


class FakeImages:
    """An ImageSet stand-in: pixels and a key."""

    def __init__(self, pixels: np.ndarray, key: str = "imgs-0") -> None:
        self.pixels, self.key = pixels, key

    def __len__(self) -> int:
        return len(self.pixels)


def test_bf16_bits_keep_activations_of_1e9_where_fp16_flushes_them():
    x = torch.tensor([1e-9, -3e-9, 2.5e-10, 1.0, 0.0])
    back = from_bf16_bits(to_bf16_bits(x))
    assert np.all(np.abs(back - x.numpy()) <= 0.004 * np.abs(x.numpy()))
    assert back[0] != 0 and back[2] != 0
    assert x.half()[0].item() == 0.0  # what naive fp16 would store


def test_cache_keeps_tiny_full_maps_and_exact_gap(tmp_path):
    model = tiny_net(factor=1e-9)  # every activation after the Scale layer is ~1e-9
    images = FakeImages(tiny_images())
    modules = {"module:0": "features.0", "module:2": "features.2", "module:3": "features.3"}
    acts = ActivationCache(tmp_path).get(model, modules, images, fingerprint="f" * 64,  # fp32: compared with fp32
                                         options=ExtractOptions(batch_size=4, precision="fp32"), progress=False)
    with torch.no_grad():
        x = torch.from_numpy(images.pixels)
        want = {}
        for i, layer in enumerate(model.features):
            x = layer(x)
            want[f"features.{i}"] = x.clone()
    for path in ("features.2", "features.3"):
        ref = want[path].reshape(10, -1).numpy()
        stored = acts.map(path)
        assert stored.shape == (10, ref.shape[1])
        got = stored[:, :]
        assert np.abs(ref).max() < 1e-7  # tiny indeed
        offset = acts.map_offset(path)
        # bf16 rounding of the distance from the offset (2^-9), plus float32 rounding of adding it back
        assert np.all(np.abs(got - ref) <= 2**-8 * np.abs(ref - offset) + 2**-22 * np.abs(ref))
        at_zero = offset == 0  # features near zero keep their own bits: a ReLU's zeros stay exact zeros
        assert at_zero.mean() > 0.2
        np.testing.assert_array_equal(got[:, at_zero] == 0, ref[:, at_zero] == 0)
        np.testing.assert_allclose(acts.gap(path), want[path].mean((2, 3)).numpy(), rtol=1e-5, atol=0)
    assert acts.map_shape("features.3") == (5, 4, 4)


def test_one_pass_fires_each_module_once_per_batch_and_stops_early(tmp_path):
    model = tiny_net()
    calls = {"last": 0, "first": 0}
    model.features[3].register_forward_hook(lambda *a: calls.__setitem__("last", calls["last"] + 1))
    model.features[0].register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    images = FakeImages(tiny_images(n=9))
    ActivationCache(tmp_path).get(model, {"a": "features.0", "b": "features.2"}, images, fingerprint="a" * 64,
                                  options=ExtractOptions(batch_size=4), progress=False)
    assert calls == {"first": 3, "last": 0}  # 3 batches; features.3 is never computed


def test_second_sweep_reads_the_cache_and_only_missing_modules_run(tmp_path):
    model = tiny_net()
    images = FakeImages(tiny_images())
    cache = ActivationCache(tmp_path)
    opts = ExtractOptions(batch_size=5)
    counted = ForwardCount(model)
    before = counted.batches
    first = cache.get(model, {"m0": "features.0", "m3": "features.3"}, images, fingerprint="b" * 64, options=opts, progress=False)
    assert counted.batches - before == 2
    again = cache.get(model, {"m0": "features.0", "m3": "features.3"}, images, fingerprint="b" * 64, options=opts, progress=False)
    assert counted.batches - before == 2  # no forward pass at all
    np.testing.assert_array_equal(again.gap("features.3"), first.gap("features.3"))
    cache.get(model, {"m1": "features.1"}, images, fingerprint="b" * 64, options=opts, progress=False)
    assert counted.batches - before == 4  # one pass for the one new module
    other = cache.get(model, {"m0": "features.0"}, images, fingerprint="c" * 64, options=opts, progress=False)
    assert counted.batches - before == 6  # another checkpoint: another key
    assert other.folder != first.folder


def test_cache_folder_is_keyed_by_layout_and_files_by_precision(tmp_path):
    model = tiny_net()
    images = FakeImages(tiny_images())
    cache = ActivationCache(tmp_path)
    fp32 = cache.get(model, {"m": "features.3"}, images, fingerprint="e" * 64, progress=False)
    bf16 = cache.get(model, {"m": "features.3"}, images, fingerprint="e" * 64,
                     options=ExtractOptions(precision="bf16"), progress=False)
    assert fp32.folder == bf16.folder and fp32.folder.name.endswith("-v2-cl-fold")
    assert fp32.precision_of("features.3") == "fp32" and bf16.precision_of("features.3") == "bf16"
    assert {f.name for f in fp32.folder.glob("features.3.*")} == {
        f"features.3.{p}.{w}.npy" for p in ("fp32", "bf16") for w in ("gap", "map", "map_offset")}
    assert not np.array_equal(fp32.gap("features.3"), bf16.gap("features.3"))
    assert fp32.gap("features.3").computed_in == "fp32" and bf16.map("features.3").computed_in == "bf16"
    meta = json.loads((fp32.folder / "meta.json").read_text())
    assert meta["format"] == 2 and meta["stored"] == {"features.3": ["fp32", "bf16"]}
    with pytest.raises(KeyError, match="module 'features.1' is not in the cache"):
        fp32.precision_of("features.1")
    # a folder written by another format version is not read: its modules are extracted again
    (fp32.folder / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    counted = ForwardCount(model)
    before = counted.batches
    cache.get(model, {"m": "features.3"}, images, fingerprint="e" * 64, progress=False)
    assert counted.batches > before


def test_bf16_matrix_adds_its_offset_back_and_design_reads_the_centred_bits():
    from clipprobe.probes.design import load_columns

    vals = np.array([[1e4 + 1, 2.0, -3.0], [1e4 - 1, 4.0, 5.0]], dtype=np.float32)
    offset = np.array([1e4, 0.0, 1.0], dtype=np.float32)
    m = Bf16Matrix(to_bf16_bits(torch.from_numpy(vals - offset)), offset)
    np.testing.assert_array_equal(m[:, :], vals)  # 1e4 +- 1 survives the offset storage
    raw = from_bf16_bits(to_bf16_bits(torch.from_numpy(vals[:, 0])))
    assert raw[0] == raw[1] == 9984.0  # bf16 of the raw values: spacing 64 there, the difference is gone
    np.testing.assert_array_equal(m[np.array([1, 0]), 1:], vals[[1, 0], 1:])
    np.testing.assert_array_equal(m[1], vals[1])
    np.testing.assert_array_equal(np.asarray(m), vals)
    block = load_columns(m, None, 0, 2, torch.device("cpu"), torch.float32)
    np.testing.assert_array_equal(block.float().numpy(), (vals - offset)[:, :2])
    with pytest.raises(ValueError, match=r"offset has shape \(2,\): expected \(3,\), one per feature"):
        Bf16Matrix(m.bits, offset[:2])


def test_bf16_matrix_indexes_like_a_float_array():
    vals = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = Bf16Matrix(to_bf16_bits(torch.from_numpy(vals)))
    assert m.shape == (3, 4) and m.ndim == 2
    np.testing.assert_array_equal(m[np.array([2, 0]), 1:3], vals[[2, 0], 1:3])
    with pytest.raises(ValueError, match="uint16"):
        Bf16Matrix(vals)


def test_load_images_decodes_once_into_a_reusable_memmap(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(root / f"{i}.png")
    from clipprobe.backbones.architectures import ImageTransform

    tf = ImageTransform(resize_size=6, crop_size=6)
    a = load_images(root, ["0.png", "2.png"], tf, cache_dir=tmp_path / "c", progress=False)
    assert a.pixels.shape == (2, 3, 6, 6)
    b = load_images(root, ["0.png", "2.png"], tf, cache_dir=tmp_path / "c", progress=False)
    assert isinstance(b.pixels, np.memmap) and a.key == b.key
    np.testing.assert_array_equal(np.asarray(a.pixels), np.asarray(b.pixels))
    c = load_images(root, ["0.png", "2.png"], ImageTransform(resize_size=8, crop_size=6), progress=False)
    assert c.key != a.key
    (root / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png cannot be read"):
        load_images(root, ["bad.png"], tf, progress=False)


def test_default_fast_forward_moves_activations_by_rounding_only(tmp_path):
    from clipprobe.backbones.architectures import build_model, default_probe_modules

    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=4, width_mult=0.25).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding is not a no-op
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    modules = default_probe_modules(model)
    images = FakeImages(tiny_images(n=6, size=32))
    exact = ExtractOptions(precision="fp32", channels_last=False, fold_batchnorm=False)
    fast = ExtractOptions(precision="fp32")  # the default layout and folding; bf16: test_activations_precision.py
    assert fast.channels_last and fast.fold_batchnorm
    a = ActivationCache(tmp_path).get(model, modules, images, fingerprint="d" * 64, options=exact, progress=False)
    b = ActivationCache(tmp_path).get(model, modules, images, fingerprint="d" * 64, options=fast, progress=False)
    assert a.folder != b.folder  # the options are part of the cache key
    for path in modules.values():
        ga, gb = a.gap(path), b.gap(path)
        assert np.abs(ga - gb).max() <= 1e-4 * np.abs(ga).max() + 1e-30, path
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the caller's model is untouched


def _fill_cache(root: str, paths: list[str], barrier, out) -> None:
    """One process of test_processes_sharing_a_cache_never_crash: the same entry, started together."""
    torch.set_num_threads(1)
    model, images = tiny_net(), FakeImages(tiny_images(n=300, size=16))
    barrier.wait()
    acts = ActivationCache(root).get(model, {p: p for p in paths}, images, fingerprint="9" * 64,
                                     options=ExtractOptions(batch_size=20, precision="fp32"), progress=False)
    out.put({p: acts.gap(p).sum(dtype=np.float64) for p in paths})


def test_meta_json_is_merged_and_replaced_under_the_folders_lock(tmp_path, monkeypatch):
    """Two processes adding modules to one folder each read, merge and replace meta.json: done outside the folder's
    lock, the later replace could drop what the other had just recorded (seen once under load: a module's entry
    gone). The merge now runs holding the lock: a second, non-blocking flock on it must fail there."""
    import fcntl

    from clipprobe.activations import cache as cache_module

    seen = []
    real_merge = cache_module._merge_meta

    def merge_checking_the_lock(meta_path, mine):
        with open(tmp_path / ".locks" / meta_path.parent.name, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
                fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                seen.append("held")
        return real_merge(meta_path, mine)

    monkeypatch.setattr(cache_module, "_merge_meta", merge_checking_the_lock)
    ActivationCache(tmp_path).get(tiny_net(), {"a": "features.0"}, FakeImages(tiny_images(n=4)), fingerprint="c" * 64,
                                  options=ExtractOptions(batch_size=4, precision="fp32"), progress=False)
    assert seen == ["held"]


def test_processes_sharing_a_cache_never_crash(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    jobs = [["features.1", "features.3"], ["features.1", "features.3"], ["features.0"]]
    barrier, out = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_fill_cache, args=(str(tmp_path), paths, barrier, out)) for paths in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    sums = [out.get(timeout=5) for _ in procs]
    [folder] = [f for f in tmp_path.iterdir() if f.is_dir() and not f.name.startswith(".")]
    assert not list(folder.glob("*.tmp"))  # every process's own temporary file was renamed into place
    meta = json.loads((folder / "meta.json").read_text())
    # each process merged meta.json with the others' records: no module's files are forgotten
    assert meta["stored"] == {"features.0": ["fp32"], "features.1": ["fp32"], "features.3": ["fp32"]}
    # what the processes read equals what one process alone computes
    alone = ActivationCache(tmp_path / "alone").get(
        tiny_net(), {p: p for p in ("features.0", "features.1", "features.3")}, FakeImages(tiny_images(n=300, size=16)),
        fingerprint="9" * 64, options=ExtractOptions(batch_size=20, precision="fp32"), progress=False)
    for got in sums:
        for path, total in got.items():
            assert total == pytest.approx(alone.gap(path).sum(dtype=np.float64), rel=1e-6)
    shared = ActivationCache(tmp_path).get(tiny_net(), {"m": "features.3"}, FakeImages(tiny_images(n=300, size=16)),
                                           fingerprint="9" * 64, options=ExtractOptions(batch_size=20, precision="fp32"),
                                           progress=False)
    np.testing.assert_allclose(shared.map("features.3")[:, :], alone.map("features.3")[:, :], rtol=2**-7, atol=1e-6)


def _tiny_entry(root: str):
    return ActivationCache(root).get(tiny_net(), {"a": "features.1", "b": "features.3"},
                                     FakeImages(tiny_images(n=40, size=16)), fingerprint="7" * 64,
                                     options=ExtractOptions(batch_size=20, precision="fp32"), progress=False)


def _read_while_another_deletes(root, ready, go, out) -> None:
    acts = _tiny_entry(root)
    ready.set()
    go.wait(120)
    # read every file after the other process asked for the folder's deletion
    out.put({p: float(acts.gap(p).sum(dtype=np.float64) + acts.map(p)[:, :].sum(dtype=np.float64))
             for p in ("features.1", "features.3")})
    out.put(ActivationCache(root).release(acts, delete=True))


def _use_and_delete(root, out) -> None:
    acts = _tiny_entry(root)
    out.put(ActivationCache(root).release(acts, delete=True))


def _hold_a_lease(root, ready) -> None:
    import time

    _tiny_entry(root)
    ready.set()
    time.sleep(600)


def test_no_keep_cache_never_deletes_a_folder_another_process_reads(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    root = str(tmp_path)
    expected = _tiny_entry(root)  # made here, read by both processes
    sums = {p: float(expected.gap(p).sum(dtype=np.float64) + expected.map(p)[:, :].sum(dtype=np.float64))
            for p in ("features.1", "features.3")}
    ActivationCache(root).release(expected)
    assert not list((expected.folder / "leases").iterdir())
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_while_another_deletes, args=(root, ready, go, out))
    reader.start()
    assert ready.wait(240)
    deleter = ctx.Process(target=_use_and_delete, args=(root, out))
    deleter.start()
    deleter.join(240)
    assert deleter.exitcode == 0 and out.get(timeout=5) is False  # kept: the reader holds a lease
    assert expected.folder.is_dir() and len(list((expected.folder / "leases").iterdir())) == 1
    go.set()
    got, deleted = out.get(timeout=240), out.get(timeout=60)
    reader.join(60)
    assert reader.exitcode == 0
    assert got == pytest.approx(sums, rel=1e-6)  # every file still there for the reader
    assert deleted is True and not expected.folder.exists()  # the last reader deletes it
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_a_killed_readers_lease_does_not_keep_the_folder(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_a_lease, args=(str(tmp_path), ready))
    holder.start()
    assert ready.wait(240)
    mine = _tiny_entry(str(tmp_path))
    assert ActivationCache(tmp_path).release(_tiny_entry(str(tmp_path)), delete=True) is False  # holder and mine
    holder.kill()  # SIGKILL: its lease file stays, naming a dead pid
    holder.join(30)
    assert len(list((mine.folder / "leases").iterdir())) == 2
    assert ActivationCache(tmp_path).release(mine, delete=True) is True
    assert not mine.folder.exists()
