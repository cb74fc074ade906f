"""The demo end to end: world -> train -> concepts -> probe -> compare, and it recovers the world's known truths."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from pipelines import DEMO_MODULES

from clipprobe.cli import main
from clipprobe.concepts.vocabulary import load_vocabulary
from clipprobe.steps.demo import DEMO_MODEL, DemoConfig, probe_epochs
from clipprobe.tracking.runs import STEP_TAG, download_artifact, find_latest_run
from clipprobe.tracking.similarity import load_cka

WORLD = load_vocabulary("world")


def test_probed_epochs_are_early_middle_and_late():
    assert probe_epochs(10) == [0, 2, 5, 10]
    assert probe_epochs(2) == [0, 1, 2]


def test_the_demo_config_resolves_its_epochs_and_logs_the_params_it_always_has():
    config = DemoConfig()
    assert config.probe_epochs == (0, 2, 5, 10)
    assert DemoConfig(epochs=3, probe_epochs=None).probe_epochs == (0, 1, 2, 3)
    assert DemoConfig(probe_epochs=(5, 0)).probe_epochs == (5, 0)
    assert config.params() == {
        "out": "worlds/demo", "train_per_class": 200, "val_per_class": 20, "pool_size": 2000, "epochs": 10,
        "probe_epochs": "0,2,5,10", "repeats": 1, "modules": "module:0,module:3,module:6,module:9,module:12,module:15,"
        "module:18", "permutations": 0, "seed": 0, "clip": True, "clip_epochs": 15}
    assert DemoConfig(modules=None).params()["modules"] == "all"
    assert DemoConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="--probe-epochs: epochs to probe must lie in 0..10, got '0,12'"):
        DemoConfig(probe_epochs=(0, 12))


def test_the_demo_refuses_epochs_beyond_its_training_in_one_line_before_any_run(tracking_store):
    result = CliRunner().invoke(main, ["demo", "--epochs", "3", "--probe-epochs", "0,5"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "epochs to probe must lie in 0..3, got '0,5'" in result.output
    assert find_latest_run("main") is None


# Both end-to-end tests read the one demo run of tests/pipelines.py (`demo_run`, once a session, in its own store);
# under xdist (`--dist loadfile`) this file runs on one worker, so the demo runs once.
@pytest.mark.slow
def test_demo_recovers_the_worlds_known_truths(on_demo_store):
    """With the demo's own defaults (fewer modules): the backbone learns its shapes, shape concepts
    appear at a late module with training beyond their intervals, colour is decodable at module:0 throughout."""
    modules, world, output = DEMO_MODULES, on_demo_store.root / "world", on_demo_store.output
    client, parent, children = _demo_runs()
    assert sorted(r.data.tags[STEP_TAG] for r in children) == ["clip", "compare", "concepts", "concepts", "probe",
                                                                "probe", "train", "world"]

    # Every epoch is registered, each with its own weights.
    versions = client.search_model_versions(f"name = '{DEMO_MODEL}'")
    last = int(parent.data.params["epochs"])
    assert sorted(int(v.tags["clipprobe.epoch"]) for v in versions) == list(range(last + 1))
    assert len({v.tags["clipprobe.fingerprint"] for v in versions}) == last + 1

    # Truth 1: the backbone learns its task (the world's 10 shapes).
    trained = find_latest_run("train")
    val_acc = {m.step: m.value for m in client.get_metric_history(trained.info.run_id, "val_acc")}
    assert val_acc[0] < 0.3, f"the random init already tells shapes apart: {val_acc}"
    assert val_acc[last] >= 0.9, f"the demo's backbone did not learn its shapes: val_acc by epoch {val_acc}"

    # Every shape concept in the splits knows its image's class (what a control task needs).
    concepts = _step_child(children, "concepts", source="annotations")
    splits = pd.read_parquet(download_artifact(concepts.info.run_id, "concepts/splits.parquet"))
    assert splits["image_class"].notna().all()
    shapes = [g for g in WORLD.groups if g.name == "shapes"][0].concepts
    positives = splits[splits["concept"].isin(shapes) & (splits["label"] == 1)]
    assert (positives["image_class"] == positives["concept"]).all()

    sweep = _step_child(children, "probe", splits_run=concepts.info.run_id)
    results = pd.read_parquet(download_artifact(sweep.info.run_id, "probe/results.parquet"))
    epochs = probe_epochs(last)
    assert sorted(results["epoch"].unique()) == epochs
    assert set(results["module"]) == set(modules.split(","))
    assert len(results) == len(WORLD.concepts) * 3 * 3 * len(epochs)  # concepts x modules x probe kinds x epochs
    assert (results["n_test"] == 90).all() and (results["n_test_pos"] == 30).all()
    assert results["test_majority_acc"].round(3).eq(0.667).all()
    cell = results.set_index(["concept", "module", "probe", "epoch"]).sort_index()

    # Truth 2: shape concepts at the last module rise with training beyond their intervals.
    for shape in shapes:
        before, after = cell.loc[(shape, "module:18", "linear_gap", 0)], cell.loc[(shape, "module:18", "linear_gap", last)]
        assert after["test_acc_ci_low"] > before["test_acc_ci_high"], (
            f"{shape} at module:18 did not rise beyond its interval: epoch 0 {before['test_acc']:.3f} "
            f"[{before['test_acc_ci_low']:.3f}, {before['test_acc_ci_high']:.3f}], epoch {last} "
            f"{after['test_acc']:.3f} [{after['test_acc_ci_low']:.3f}, {after['test_acc_ci_high']:.3f}]")

    # Truth 3: colour is in the pixels, so module:0 decodes it at every epoch, above the majority baseline.
    colours = [g for g in WORLD.groups if g.name == "colours"][0].concepts
    for colour in colours:
        for epoch in epochs:
            row = cell.loc[(colour, "module:0", "linear_gap", epoch)]
            assert row["test_acc_ci_low"] > row["test_majority_acc"], (
                f"{colour} at module:0, epoch {epoch}: {row['test_acc']:.3f} "
                f"[{row['test_acc_ci_low']:.3f}, {row['test_acc_ci_high']:.3f}] is not above the baseline")

    # Beyond accuracy (issue 23): a shape is its class, so its selectivity is undefined; colours cut across shapes;
    # the demo turns MDL on; CKA is on by default.
    assert results.loc[results["concept"].isin(shapes), "class_alignment"].eq(1.0).all()
    assert (results.loc[results["concept"].isin(colours), "class_alignment"] < 0.5).all()
    assert results["compression"].notna().all() and (results["compression"] > 0).all()
    cka = load_cka(sweep.info.run_id)
    assert cka is not None and set(cka["module_a"]) == set(modules.split(",")) and set(cka["epoch_a"]) == set(epochs)

    # CLIP in the loop: the world CLIP names colours, its colour positives are mostly right, and the
    # last epoch probed on its labels sits beside the true-label sweep in the report.
    clip_run = _step_child(children, "clip")
    assert clip_run.data.metrics["val_zero_shot_acc.colour"] >= 0.9, clip_run.data.metrics
    assert client.search_model_versions("name = 'world_clip'")
    mined = _step_child(children, "concepts", source="clip")
    for colour in colours:
        assert mined.data.metrics[f"positive_precision.{colour}"] >= 0.9, mined.data.metrics
    clip_sweep = _step_child(children, "probe", splits_run=mined.info.run_id)
    clip_results = pd.read_parquet(download_artifact(clip_sweep.info.run_id, "probe/results.parquet"))
    assert sorted(clip_results["epoch"].unique()) == [last]
    assert len(clip_results) == len(WORLD.concepts) * 3 * 3

    report = find_latest_run("compare")
    assert report.data.params["sweep_run_ids"] == f"{sweep.info.run_id},{clip_sweep.info.run_id}"
    names = {a.path for a in client.list_artifacts(report.info.run_id, "compare")}
    assert "compare/report.html" in names
    labels = pd.read_csv(download_artifact(report.info.run_id, f"compare/{clip_sweep.info.run_id[:8]}/labels.csv"))
    assert len(labels) == len(clip_results) and labels["acc_true"].notna().all()
    row = labels.iloc[0]
    assert row["expected_from_noise"] == pytest.approx(
        row["acc_true"] * row["label_agreement"] + (1 - row["acc_true"]) * (1 - row["label_agreement"]))
    assert "CLIP-mined labels" in output and "expected = A * a + (1 - A) * (1 - a)" in output

    # Units: the first sweep's units scored at every probed epoch (its modules and the logits), with IoU from
    # the world's masks; and the classifier's own units name their own shape class once trained.
    from clipprobe.tracking import units

    table = units.read_table(sweep.info.run_id, "units", columns=["epoch", "module", "iou"])
    assert sorted(table["epoch"].unique()) == epochs and set(table["module"]) == {*modules.split(","), "logits"}
    assert table.loc[table["module"] != "logits", "iou"].notna().all()
    trained_own = _own_class_labels(world, last)
    assert min(trained_own) >= 9, f"logit units labelled with their own class (soft-WPMI, AUROC): {trained_own}/10"
    random_own = _own_class_labels(world, 0)
    assert max(random_own) <= 4, f"the random init's logits already name their classes: {random_own}/10"


def _own_class_labels(world, epoch: int) -> tuple[int, int]:
    """Of the 10 logit units of the demo's checkpoint at ``epoch``, how many get their own shape class as label by
    soft-WPMI (p from the world's true shapes) and by AUROC, over 600 pool images (CLIP-Dissect's final-layer
    check, with the truth in CLIP's place)."""
    import numpy as np
    import torch

    from clipprobe.backbones.loader import load_backbone
    from clipprobe.concepts.pool import open_rgb
    from clipprobe.neurons.auroc import unit_auroc
    from clipprobe.neurons.wpmi import soft_wpmi, truth_probabilities
    from clipprobe.world.generate import read_truth

    checkpoint = world / "checkpoints" / f"model_{epoch}.pth"
    classes = list(torch.load(checkpoint, map_location="cpu", weights_only=False)["args"]["classes"])
    backbone = load_backbone(checkpoint)
    truth = read_truth(world / "truth.parquet")[0].to_pandas()
    pool = truth[truth["split"] == "pool"].head(600)
    x = torch.stack([backbone.transform(open_rgb(world / p)) for p in pool["path"]]).float()
    with torch.no_grad():
        logits = backbone.module.eval()(x).numpy()
    y = np.array([classes.index(s) for s in pool["shape"]])
    by_wpmi = soft_wpmi(logits, truth_probabilities(np.eye(len(classes), dtype=int)[y])).argmax(1)
    by_auroc = np.stack([unit_auroc(logits, y == c).auroc for c in range(len(classes))]).argmax(0)
    own = np.arange(len(classes))
    return int((by_wpmi == own).sum()), int((by_auroc == own).sum())


def _step_child(children, step: str, **params):
    """The one child run of ``step`` whose params include ``params``."""
    found = [r for r in children if r.data.tags[STEP_TAG] == step
             and all(r.data.params.get(k) == v for k, v in params.items())]
    assert len(found) == 1, (step, params, [r.data.params for r in children if r.data.tags[STEP_TAG] == step])
    return found[0]


def _demo_runs():
    """The client, the demo's parent run and its child runs, in the store MLflow points at."""
    client = MlflowClient()
    parent = find_latest_run("main")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, children


@pytest.mark.slow
def test_demo_clip_half_runs_end_to_end(on_demo_store):
    """The CLIP half of the shared demo run: the CLIP-mined sweep runs, and the report sets it beside the
    true-label sweep with the noise formula. (It ran a small demo of its own, 1 epoch and 2 modules, until the
    two tests shared one run: the sizes below are the demo's, its last epoch and DEMO_MODULES' 3 modules.)"""
    client, parent, children = _demo_runs()
    last = int(parent.data.params["epochs"])
    assert sorted(r.data.tags[STEP_TAG] for r in children) == ["clip", "compare", "concepts", "concepts", "probe",
                                                                "probe", "train", "world"]
    clip_run = _step_child(children, "clip")
    assert 0 <= clip_run.data.metrics["val_zero_shot_acc.colour"] <= 1
    assert clip_run.data.metrics["val_zero_shot_chance.colour"] == pytest.approx(1 / 7)
    mined = _step_child(children, "concepts", source="clip")
    truth_concepts = _step_child(children, "concepts", source="annotations")
    quality = pd.read_parquet(download_artifact(mined.info.run_id, "concepts/label_quality.parquet"))
    assert list(quality["concept"]) == WORLD.concepts
    for row in quality.itertuples():
        assert mined.data.metrics[f"positive_precision.{row.concept}"] == pytest.approx(row.positive_precision)
    sweep = _step_child(children, "probe", splits_run=truth_concepts.info.run_id)
    clip_sweep = _step_child(children, "probe", splits_run=mined.info.run_id)
    clip_results = pd.read_parquet(download_artifact(clip_sweep.info.run_id, "probe/results.parquet"))
    # was `== [1]` and `* 2 * 3` at the small demo's 1 epoch and 2 modules
    n_modules = len(DEMO_MODULES.split(","))
    assert sorted(clip_results["epoch"].unique()) == [last]
    assert len(clip_results) == len(WORLD.concepts) * n_modules * 3

    report = find_latest_run("compare")
    assert report.data.params["sweep_run_ids"] == f"{sweep.info.run_id},{clip_sweep.info.run_id}"
    labels = pd.read_csv(download_artifact(report.info.run_id, f"compare/{clip_sweep.info.run_id[:8]}/labels.csv"))
    assert len(labels) == len(clip_results) and labels["acc_true"].notna().all()
    agreement = quality.set_index("concept")["test_label_agreement"]
    assert labels["label_agreement"].tolist() == pytest.approx(labels["concept"].map(agreement).tolist())
    expected = labels["acc_true"] * labels["label_agreement"] + (1 - labels["acc_true"]) * (1 - labels["label_agreement"])
    assert labels["expected_from_noise"].tolist() == pytest.approx(expected.tolist())
    output = on_demo_store.output
    assert "CLIP-mined labels" in output and "expected = A * a + (1 - A) * (1 - a)" in output


def test_demo_passes_its_small_options_to_its_steps(tracking_store, tmp_path, monkeypatch):
    """The small options the end-to-end demo test used to run with reach the steps (the steps themselves are
    recorded, not run: the demo at its own size runs once, in tests/pipelines.py)."""
    from types import SimpleNamespace

    from clipprobe.steps import demo as demo_step
    from clipprobe.tracking import discovery

    steps = []
    real_run = demo_step.run

    def recording_run(config, *, invoke, **settings):  # the demo's own run, its steps recorded instead of run
        return real_run(config, invoke=lambda name, *args: steps.append([name, *map(str, args)]), **settings)

    monkeypatch.setattr(demo_step, "run", recording_run)
    fake = SimpleNamespace(info=SimpleNamespace(run_id="r0"), data=SimpleNamespace(
        tags={discovery.CLIP_MODEL_TAG: "world_clip", discovery.CLIP_WEIGHTS_TAG: "w.pt"}))
    monkeypatch.setattr(demo_step, "_latest", lambda step: fake)
    result = CliRunner().invoke(main, [
        "demo", "--out", str(tmp_path / "world"), "--train-per-class", "20", "--val-per-class", "4",
        "--pool-size", "1500", "--epochs", "1", "--modules", "module:0,module:18", "--clip-epochs", "1",
        "--experiment-name", "demo"])
    assert result.exit_code == 0, result.output[-3000:]
    by_step = {}
    for name, *args in steps:  # --option value, or a bare --flag (value None)
        values = {a: (b if b is not None and not b.startswith("--") else None)
                  for a, b in zip(args, [*args[1:], None], strict=True) if a.startswith("--")}
        by_step.setdefault(name, []).append(values)
    assert [name for name, *_ in steps] == ["world", "train", "concepts", "probe", "neurons", "clip", "concepts",
                                            "probe", "compare"]
    world = by_step["world"][0]
    assert (world["--train-per-class"], world["--val-per-class"], world["--pool-size"]) == ("20", "4", "1500")
    assert by_step["train"][0]["--epochs"] == "1" and by_step["clip"][0]["--epochs"] == "1"
    first, on_clip = by_step["probe"]
    assert first["--epochs"] == ",".join(map(str, probe_epochs(1))) and on_clip["--epochs"] == "1"
    assert first["--modules"] == on_clip["--modules"] == "module:0,module:18"
    assert on_clip["--splits-run"] == "r0"
    params = find_latest_run("main").data.params
    assert (params["train_per_class"], params["pool_size"], params["epochs"], params["clip_epochs"]) == (
        "20", "1500", "1", "1")
