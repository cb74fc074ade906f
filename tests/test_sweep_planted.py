"""The sweep finds a planted concept, tells checkpoints apart, refuses equal weights, reads its cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from forward_count import ForwardCount
from sweep_fakes import Loads, blind, make_splits, mobilenet, plant_red, ref

from clipprobe.activations.options import ExtractOptions
from clipprobe.report.significance import mcnemar_exact
from clipprobe.sweep.plan import (
    DuplicateWeightsError,
    Sweep,
    SweepPlan,
    check_distinct_weights,
    concept_tasks,
    parse_epochs,
    parse_names,
    select_checkpoints,
)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_splits(tmp_path_factory.mktemp("pool"))


def by_key(rows):
    return {(r["concept"], r["module"], r["probe"], r["epoch"]): r for r in rows}


def test_planted_red_channel_is_found_and_its_permutation_baseline_is_not(splits, tmp_path):
    plan = SweepPlan(modules=["module:0", "module:1"], concepts=["red"], probes=["linear_gap"], repeats=2)
    rows = by_key(Sweep(splits, plan, cache_dir=tmp_path, progress=False).run([ref(plant_red(mobilenet()), 1)]))
    assert len(rows) == 2
    for module in ("module:0", "module:1"):
        r = rows[("red", module, "linear_gap", 1)]
        assert r["test_acc"] >= 0.95, r
        assert r["test_acc_ci_low"] > r["test_majority_acc"], r  # the exact interval clears the baseline
        assert r["test_permutation_acc"] <= r["test_majority_acc"] + 0.15, r
        assert r["test_permutation_p"] == pytest.approx(1 / 20)  # no permutation of 19 reaches it
        assert np.isnan(r["test_control_acc"]) and np.isnan(r["test_selectivity"])  # no image classes
        assert r["n_test"] == 21 and r["n_test_pos"] == 7 and r["repeats"] == 2
        assert len(r["test_correct"]) == 21 and r["test_correct"].count("1") == round(r["test_acc"] * 21)
        assert r["module_path"] == f"features.{module[-1]}"
    assert rows[("red", "module:0", "linear_gap", 1)]["test_images"] == rows[("red", "module:1", "linear_gap", 1)]["test_images"]
    assert rows[("red", "module:0", "linear_gap", 1)]["n_dropped_features"] == 7  # 7 of 8 channels are zero


def test_image_class_column_feeds_the_control_task(tmp_path):
    splits = make_splits(tmp_path / "pool", with_classes=True)
    paths, tasks, _ = concept_tasks(splits)
    red = tasks[0]
    assert red.classes is not None and set(red.classes[red.labels == 1]) == {"red"}
    assert list(red.images) == list(splits.select("red")["path"])
    assert concept_tasks(make_splits(tmp_path / "plain"))[1][0].classes is None
    partial = make_splits(tmp_path / "part", with_classes=True)
    partial.table.loc[0, "image_class"] = None  # one unknown class: no control task for that concept
    assert concept_tasks(partial)[1][0].classes is None
    plan = SweepPlan(modules=["module:0"], concepts=["red"], probes=["linear_gap"], repeats=0)
    [r] = Sweep(splits, plan, cache_dir=tmp_path, progress=False).run([ref(plant_red(mobilenet()), 1)])
    assert r["test_control_acc"] * r["n_test"] == pytest.approx(round(r["test_control_acc"] * r["n_test"]))  # a count of test images
    assert r["test_selectivity"] == pytest.approx(r["test_acc"] - r["test_control_acc"])


def test_when_two_checkpoints_differ_by_a_paired_test(splits, tmp_path):
    plan = SweepPlan(modules=["module:0"], concepts=["red"], probes=["linear_gap", "non_linear_gap"], repeats=2)
    refs = [ref(blind(mobilenet()), 0), ref(plant_red(mobilenet()), 3)]
    rows = by_key(Sweep(splits, plan, cache_dir=tmp_path, progress=False).run(refs))
    assert len(rows) == 4
    for probe in ("linear_gap", "non_linear_gap"):
        before, after = rows[("red", "module:0", probe, 0)], rows[("red", "module:0", probe, 3)]
        assert before["test_images"] == after["test_images"]  # same test images: a paired test applies
        lost, gained, p = mcnemar_exact(before["test_correct"], after["test_correct"])
        assert gained >= 6 and lost == 0 and p < 0.05, (before, after)
        assert after["test_acc_ci_low"] > after["test_majority_acc"] >= before["test_acc_ci_low"]
        assert before["fingerprint"] != after["fingerprint"]
        assert before["n_dropped_features"] == 8  # a blind module: every feature constant, none amplified


def test_equal_weights_as_different_epochs_are_refused(splits, tmp_path, caplog):
    model = mobilenet()
    refs = [ref(model, 0), ref(model, 1)]
    Loads.n = 0
    with pytest.raises(DuplicateWeightsError, match=r"epochs 0, 1 have the same weights .*--allow-duplicate-weights"):
        Sweep(splits, SweepPlan(), cache_dir=tmp_path, progress=False).run(refs)
    assert Loads.n == 0  # refused before loading anything
    with caplog.at_level(logging.WARNING):
        check_distinct_weights(refs, allow_duplicate_weights=True)
    assert "same weights" in caplog.text


def test_a_second_sweep_reads_the_cache_and_resume_skips_done_fits(splits, tmp_path):
    plan = SweepPlan(modules=["module:2"], concepts=["red", "blue"], probes=["linear_gap", "non_linear_non_gap"],
                     repeats=0)
    model = mobilenet(seed=1)
    counted = ForwardCount(model)
    r = ref(model, 5)
    before = counted.batches
    first = Sweep(splits, plan, cache_dir=tmp_path, extract=ExtractOptions(batch_size=64), progress=False).run([r])
    passes = counted.batches - before
    assert passes == 2  # 96 images of red or blue, in batches of 64: ONE pass for every module
    second = Sweep(splits, plan, cache_dir=tmp_path, progress=False).run([r])
    assert counted.batches - before == passes  # activations came from the cache
    for a, b in zip(first, second, strict=True):
        assert a["test_acc"] == b["test_acc"] and a["concept"] == b["concept"]
    done = {(x["concept"], x["module"], x["probe"], x["epoch"]) for x in first[:3]}
    rest = Sweep(splits, plan, cache_dir=tmp_path, progress=False).run([r], done=done)
    assert len(rest) == 1 and (rest[0]["concept"], rest[0]["probe"]) == (first[3]["concept"], first[3]["probe"])


def test_bf16_folded_channels_last_forward_keeps_accuracies_within_noise(splits, tmp_path):
    plan = SweepPlan(modules=["module:1", "module:3", "module:6"], concepts=["red", "blue"],
                     probes=["linear_gap", "non_linear_gap"], repeats=1)
    r = ref(mobilenet(seed=2), 0)
    plain = ExtractOptions(precision="fp32", channels_last=False, fold_batchnorm=False)
    exact = Sweep(splits, plan, cache_dir=tmp_path, extract=plain, progress=False).run([r])
    fast = Sweep(splits, plan, cache_dir=tmp_path, progress=False,
                 extract=ExtractOptions(precision="bf16", channels_last=True, fold_batchnorm=True)).run([r])
    diffs = np.array([abs(a["test_acc"] - b["test_acc"]) * a["n_test"] for a, b in zip(exact, fast, strict=True)])
    assert diffs.mean() <= 1.0, diffs  # within one test image on average
    assert diffs.max() <= 3.0, diffs


def test_epoch_and_name_lists_parse_and_unknown_epochs_are_named(splits):
    assert parse_epochs("all") is None
    assert parse_epochs("0,2,5") == [0, 2, 5]
    assert parse_epochs("0-3") == [0, 1, 2, 3]
    assert parse_epochs("7, 0-1") == [0, 1, 7]
    with pytest.raises(ValueError, match="bad epochs '3-1'"):
        parse_epochs("3-1")
    assert parse_names("all") is None and parse_names("a, b") == ["a", "b"]
    refs = [ref(mobilenet(seed=s), s) for s in (0, 1)]
    with pytest.raises(ValueError, match="epoch.s. 4 not registered: the model has epochs 0, 1"):
        select_checkpoints(refs, [1, 4])
    with pytest.raises(ValueError, match="unknown concept.s. purple: the splits hold red, blue"):
        Sweep(splits, SweepPlan(concepts=["purple"]))
    with pytest.raises(ValueError, match="unknown probe kind 'cnn'"):
        SweepPlan(probes=["cnn"])


def test_no_keep_cache_deletes_a_checkpoints_activations_once_probed(splits, tmp_path):
    plan = SweepPlan(modules=["module:1"], concepts=["red"], probes=["linear_gap"], repeats=0)
    rows = Sweep(splits, plan, cache_dir=tmp_path, keep_cache=False, progress=False).run([ref(mobilenet(), 0)])
    assert len(rows) == 1
    # decoded images stay, activations go (the cache's lock files are hidden)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["images"]
