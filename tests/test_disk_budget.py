"""The activation cache's disk budget: its estimate is what the cache writes, it is printed up front, and a
sweep the disk cannot hold is refused before any run exists, naming --no-keep-cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sweep_fakes import TRANSFORM, make_splits, mobilenet
from sweep_store import OPTS, log_splits, register

from clipprobe.activations import disk_budget
from clipprobe.activations.cache import ActivationCache
from clipprobe.activations.decoding import load_images
from clipprobe.activations.disk_budget import (
    CacheBudget,
    activation_bytes,
    cache_budget,
    module_shapes,
)
from clipprobe.activations.options import ExtractOptions
from clipprobe.cli import main
from clipprobe.tracking import runs

MODULES = {"features.0": "features.0", "features.1": "features.1", "features.4": "features.4"}


def written_bytes(folder):
    return sum(f.stat().st_size for f in folder.glob("*.npy"))


def test_estimate_is_exactly_what_the_cache_writes(tmp_path):
    splits = make_splits(tmp_path / "pool")
    paths = sorted(splits.table["path"].unique())
    images = load_images(splits.pool_root, paths, TRANSFORM, cache_dir=tmp_path / "cache", progress=False)
    model = mobilenet()
    shapes = module_shapes(model, MODULES, images.pixels[0])
    assert shapes == {"features.0": (8, 16, 16), "features.1": (8, 16, 16), "features.4": (8, 4, 4)}
    cache = ActivationCache(tmp_path / "cache")
    acts = cache.get(model, MODULES, images, fingerprint="f" * 64, progress=False)
    assert written_bytes(acts.folder) == activation_bytes(shapes, len(paths))
    images_file = next((tmp_path / "cache" / "images").glob("*.npy"))
    assert images_file.stat().st_size == len(paths) * int(np.prod(images.pixels.shape[1:])) * 4 + disk_budget.NPY_HEADER

    budget = cache_budget(cache, shapes=shapes, image_shape=images.pixels.shape[1:], images_key=images.key,
                          n_images=len(paths), fingerprints=["f" * 64, "e" * 64, "d" * 64],
                          options=ExtractOptions(), keep_cache=True)
    # the cached checkpoint and the decoded images cost nothing more; the two others a folder each
    assert (budget.images, budget.to_write, budget.checkpoints) == (0, 2, 3)
    assert budget.peak == 2 * activation_bytes(shapes, len(paths))


def test_seed_sizes_5_6_gb_per_checkpoint_and_refusal_names_no_keep_cache():
    # MobileNetV2 at 224 px: module output shapes of features.0..18; ~2,700 images (9 concepts x 300, few shared)
    shapes = {0: (32, 112, 112), 1: (16, 112, 112), 2: (24, 56, 56), 3: (24, 56, 56), **{i: (32, 28, 28) for i in (4, 5, 6)},
              **{i: (64, 14, 14) for i in (7, 8, 9, 10)}, **{i: (96, 14, 14) for i in (11, 12, 13)},
              **{i: (160, 7, 7) for i in (14, 15, 16)}, 17: (320, 7, 7), 18: (1280, 7, 7)}
    per = activation_bytes(shapes, 2700)
    assert 5.2e9 < per < 5.7e9
    kept = CacheBudget("cache", per, 2700 * 3 * 224 * 224 * 4, 300, 300, True, free=100 * 2**30)
    assert kept.peak > 1.6e12
    with pytest.raises(ValueError, match=r"needs 15\d\d\.\d GiB under cache \(.*\) but only 100\.0 GiB is free: "
                                         r"pass --no-keep-cache \(then at most \d\.\d GiB at a time\)"):
        kept.check()
    bounded = CacheBudget("cache", per, 2700 * 3 * 224 * 224 * 4, 300, 300, False, free=100 * 2**30)
    bounded.check()  # one checkpoint at a time fits
    assert bounded.peak == per + bounded.images
    with pytest.raises(ValueError, match="--cache-dir on a disk with more room"):
        CacheBudget("cache", per, 0, 300, 300, False, free=2**30).check()


def test_probe_prints_its_plan_and_refuses_a_full_disk_before_any_run(tracking_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    register({0: mobilenet(0), 1: mobilenet(1), 2: mobilenet(2)})
    log_splits(tmp_path)
    real = shutil.disk_usage
    monkeypatch.setattr(disk_budget.shutil, "disk_usage", lambda p: real(p)._replace(free=200_000))
    result = CliRunner().invoke(main, ["probe", *OPTS])
    assert result.exit_code == 2, result.output
    assert "the activation cache needs" in result.output and "pass --no-keep-cache" in result.output
    assert runs.find_latest_run("probe") is None  # refused before the sweep run existed
    assert not (tmp_path / "cache").exists()  # and before it wrote anything

    monkeypatch.setattr(disk_budget.shutil, "disk_usage", real)
    result = CliRunner().invoke(main, ["probe", *OPTS, "--epochs", "0,1"])
    assert result.exit_code == 0, result.output
    assert "plan: 2 checkpoints x 2 modules x 2 concepts x 2 probe kinds = 16 fits; 89 images" in result.output
    assert "per checkpoint" in result.output and "kept: " in result.output and "for 2 checkpoints not cached" in result.output
    assert "checkpoints: 100%" in result.output and "2/2" in result.output  # the sweep's own progress bar
    # epochs 0 and 1 are cached now: a sweep over all three writes one new checkpoint folder
    result = CliRunner().invoke(main, ["probe", *OPTS, "--no-keep-cache"])
    assert result.exit_code == 0, result.output
    assert "--no-keep-cache: at most" in result.output


def test_a_sweep_without_map_probes_caches_pooled_vectors_only(tmp_path):
    from forward_count import ForwardCount

    from clipprobe.sweep.plan import Sweep, SweepPlan

    splits = make_splits(tmp_path / "pool")
    model = mobilenet()
    counted = ForwardCount(model)
    gap_only = Sweep(splits, SweepPlan(probes=("linear_gap", "non_linear_gap")), cache_dir=tmp_path / "cache",
                     progress=False)
    assert not gap_only.plan.needs_maps
    images = gap_only.images(TRANSFORM)
    acts = gap_only.cache.get(model, MODULES, images, fingerprint="a" * 64, progress=False,
                              maps=gap_only.plan.needs_maps)
    assert not list(acts.folder.glob("*.map.npy"))  # no full maps written
    shapes = module_shapes(mobilenet(), MODULES, images.pixels[0])
    assert written_bytes(acts.folder) == activation_bytes(shapes, len(images), maps=False)
    with pytest.raises(KeyError, match="has no full maps .* get it again with maps=True"):
        acts.map("features.0")
    passes = counted.batches
    again = gap_only.cache.get(model, MODULES, images, fingerprint="a" * 64, progress=False, maps=False)
    assert counted.batches == passes  # read from the cache
    # a sweep with a full-map probe on the same checkpoint runs the pass again and gets its maps
    with_maps = Sweep(splits, SweepPlan(probes=("non_linear_non_gap",)), cache_dir=tmp_path / "cache", progress=False)
    assert with_maps.plan.needs_maps
    full = with_maps.cache.get(model, MODULES, images, fingerprint="a" * 64, progress=False, maps=True)
    assert counted.batches > passes
    assert full.map("features.0").shape == (len(images), 8 * 16 * 16)
    np.testing.assert_array_equal(full.gap("features.4"), again.gap("features.4"))
    assert written_bytes(full.folder) == activation_bytes(shapes, len(images))


def test_300_checkpoints_are_described_in_one_short_line():
    from clipprobe.steps.probe import describe_checkpoints
    from clipprobe.sweep.plan import CheckpointRef

    refs = [CheckpointRef(e, f"{e:064x}", load=lambda: None, version=str(e + 1)) for e in range(300)]
    line = describe_checkpoints("mobilenet_v2", refs)
    assert line == ("model: mobilenet_v2 (300 checkpoints: v1 = epoch 0, v2 = epoch 1, v3 = epoch 2, v4 = epoch 3, "
                    "292 more, v297 = epoch 296, v298 = epoch 297, v299 = epoch 298, v300 = epoch 299)")
    assert describe_checkpoints("toy", refs[:2]) == "model: toy (v1 = epoch 0, v2 = epoch 1)"


def test_no_keep_cache_holds_one_checkpoint_per_worker_running_at_once(tmp_path):
    """Each worker keeps its checkpoint's activations until it is done: N workers at once peak at N of them."""
    per, images = 5 * 2**30, 2**30
    one = CacheBudget("cache", per, images, 300, 300, False, free=100 * 2**30)
    assert one.peak == images + per and "at a time;" in one.describe()
    eight = CacheBudget("cache", per, images, 300, 300, False, free=100 * 2**30, workers=8,
                        workers_from="a new local Ray cluster has 8 CPUs and 0 GPUs, a checkpoint task takes 1 CPU")
    assert eight.peak == images + 8 * per
    assert ("--no-keep-cache: at most 41.0 GiB at a time (8 workers at once: a new local Ray cluster has 8 CPUs "
            "and 0 GPUs, a checkpoint task takes 1 CPU)") in eight.describe()
    eight.check()  # 41 GiB of 100
    with pytest.raises(ValueError, match=r"needs 41\.0 GiB under cache \(5\.0 GiB per checkpoint x 8 \+ 1\.0 GiB of "
                                         r"images\) but only 30\.0 GiB is free: .* or fewer checkpoints at once "
                                         r"\(8 assumed: a new local Ray"):
        CacheBudget("cache", per, images, 300, 300, False, free=30 * 2**30, workers=8, workers_from="a new local Ray "
                    "cluster").check()
    # more workers than checkpoints left to write: only those are held
    assert CacheBudget("cache", per, images, 300, 3, False, free=0, workers=8).peak == images + 3 * per
    # keeping the cache: --no-keep-cache is offered with the peak it would have under these workers
    with pytest.raises(ValueError, match=r"pass --no-keep-cache \(then at most 41\.0 GiB at a time\)"):
        CacheBudget("cache", per, images, 300, 300, True, free=100 * 2**30, workers=8).check()

    # through cache_budget, as the probe step calls it with its executor's parallelism
    cache = ActivationCache(tmp_path / "cache")
    shapes = {"features.0": (8, 16, 16)}
    budget = cache_budget(cache, shapes=shapes, image_shape=(3, 16, 16), images_key="k", n_images=10,
                          fingerprints=["a" * 64, "b" * 64, "c" * 64], options=ExtractOptions(), keep_cache=False,
                          workers=2, workers_from="test")
    assert (budget.workers, budget.held) == (2, 2)
    assert budget.peak == budget.images + 2 * activation_bytes(shapes, 10)


def test_executors_say_how_many_checkpoints_run_at_once(monkeypatch):
    pytest.importorskip("ray")
    from clipprobe.executors import LocalExecutor
    from clipprobe.executors import ray as ray_executor

    assert LocalExecutor().parallelism()[0] == 1
    assert ray_executor.tasks_at_once({"CPU": 16.0, "GPU": 2.0}, 0.0) == 16  # a CPU task each
    assert ray_executor.tasks_at_once({"CPU": 16.0, "GPU": 2.0}, 0.5) == 4  # 2 GPUs / 0.5 a task
    assert ray_executor.tasks_at_once({"CPU": 2.0, "GPU": 8.0}, 1.0) == 2  # CPUs bound it too
    assert ray_executor.tasks_at_once({"CPU": 16.0}, 1.0) == 1  # no GPU: at least one (Ray would wait)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # another test's session cluster may be up
    monkeypatch.setattr(ray_executor, "local_resources", lambda: {"CPU": 12.0, "GPU": 1.0})
    n, why = ray_executor.RayExecutor(gpus_per_task=0.25).parallelism()
    assert (n, why) == (4, "a new local Ray cluster has 12 CPUs and 1 GPUs, a checkpoint task takes 0.25 GPU")
