"""`clipprobe concepts` end to end on a small generated world: artifacts, dataset inputs, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from concepts_tiny_clip import register_tiny, tiny_weights
from mlflow.tracking import MlflowClient

from clipprobe.cli import main
from clipprobe.concepts.splits import load_splits
from clipprobe.core.parquet import read_table
from clipprobe.tracking.runs import download_artifact, find_latest_run


@pytest.fixture
def world(tracking_store, tmp_path):
    result = CliRunner().invoke(main, ["world", "--out", str(tmp_path / "world"), "--size", "32",
                                       "--train-per-class", "0", "--val-per-class", "0", "--pool-size", "160"])
    assert result.exit_code == 0, result.output
    return tmp_path / "world"


def _concepts(*args):
    return CliRunner().invoke(main, ["concepts", *args], catch_exceptions=False)


def test_annotations_on_the_latest_world(world):
    result = _concepts("--source", "annotations", "--top-k", "10", "--negatives", "30")
    assert result.exit_code == 0, result.output
    run = find_latest_run("concepts")
    assert run.data.params["vocabulary"] == "world.toml" and run.data.params["source"] == "annotations"
    assert run.data.metrics["n_test.red"] == 12 and run.data.metrics["n_test_pos.dotted"] == 3
    assert run.data.metrics["n_pool_images"] == 160 and run.data.metrics["n_unreadable"] == 0
    splits = load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet"))
    assert splits.pool_root == (world / "pool").resolve()
    assert splits.concepts == ["red", "blue", "green", "yellow", "dotted", "striped", "zigzagged",
                               "circle", "triangle", "star", "square"]
    assert all(p.is_file() for p in splits.image_paths("red", "test"))
    # Every row carries its image's shape (the world's class), straight from the truth table.
    truth = pd.read_parquet(world / "truth.parquet").set_index("path")["shape"]
    assert splits.has_image_class and splits.metadata["image_class_column"] == "shape"
    from clipprobe import __version__
    from clipprobe.core.parquet import read_metadata

    assert (splits.metadata["kind"], splits.metadata["clipprobe_version"]) == ("concept_splits", __version__)
    scores_made_by = read_metadata(download_artifact(run.info.run_id, "concepts/scores.parquet"))
    assert (scores_made_by["kind"], scores_made_by["n_pool_images"]) == ("concept_scores", 160)
    assert splits.table["image_class"].tolist() == truth.loc["pool/" + splits.table["path"]].tolist()
    assert (splits.image_classes("star")[splits.labels("star") == 1] == "star").all()
    assert download_artifact(run.info.run_id, "concepts/contact_sheets/red.png").is_file()
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["concepts-scores", "concepts-splits"]
    # The run's config, rebuilt: resolved to the world's pool, truth and vocabulary.
    from clipprobe.concepts.config import ConceptsConfig
    from clipprobe.tracking.configs import load_config

    assert load_config(ConceptsConfig, run.info.run_id) == ConceptsConfig(
        pool=world / "pool", truth=world.resolve() / "truth.parquet", source="annotations", top_k=10, negatives=30,
        vocabulary="world")
    from clipprobe.tracking.concept_tables import read_similarities

    with pytest.raises(LookupError, match=f"concepts run {run.info.run_id} takes its labels from annotations: it "
                                          "has no CLIP similarities"):
        read_similarities(run.info.run_id)


def test_clip_source_with_local_weights_logs_precision(world, tmp_path):
    name = register_tiny(tmp_path)
    weights = tiny_weights(tmp_path, name)
    args = ["--pool", str(world / "pool"), "--truth", str(world / "truth.parquet"), "--clip-model", name,
            "--clip-weights", str(weights), "--num-workers", "0", "--batch-size", "32", "--top-k", "10",
            "--negatives", "30", "--cache-dir", str(tmp_path / "cache")]
    result = _concepts(*args)
    assert result.exit_code == 0, result.output
    run = find_latest_run("concepts")
    metrics = run.data.metrics
    # precision of the positives: the share of CLIP's red positives that the truth table calls red
    picked = load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet")).table
    red = picked[(picked["concept"] == "red") & (picked["label"] == 1)]
    colour = pd.read_parquet(world / "truth.parquet").set_index("path")["colour"]
    assert metrics["positive_precision.red"] == pytest.approx((colour.loc["pool/" + red["path"]] == "red").mean())
    per_concept = [v for k, v in metrics.items() if k.startswith("positive_precision.")]
    assert metrics["positive_precision_mean"] == pytest.approx(sum(per_concept) / len(per_concept))
    assert "images_per_second" in metrics  # logged when images were scored (its value is a timing)
    scores, meta = read_table(download_artifact(run.info.run_id, "concepts/scores.parquet"))
    assert len(scores) == 160 and meta["clip_model"] == name and meta["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
    assert meta["clip_weights_sha256"] == run.data.params["clip_weights_sha256"]
    assert load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet")).has_image_class
    # CLIP's raw cosines beside the probabilities: the group softmax of logit_scale * cosine gives the scores back.
    from clipprobe.tracking.concept_tables import read_similarities

    cosines, made_by = read_similarities(run.info.run_id)
    assert list(cosines.columns) == ["path", *scores.columns[1:]] and cosines["path"].tolist() == scores["path"].tolist()
    assert made_by["kind"] == "concept_similarities" and made_by["pool_fingerprint"] == meta["pool_fingerprint"]
    assert made_by["clip_weights_sha256"] == meta["clip_weights_sha256"] and "probability" not in made_by
    assert ((cosines.iloc[:, 1:] >= -1) & (cosines.iloc[:, 1:] <= 1)).all().all()
    for group in (["red", "blue", "green", "yellow"], ["circle", "triangle", "star", "square"]):
        logits = meta["logit_scale"] * cosines[group].to_numpy()
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), scores[group].to_numpy(), atol=1e-6)
    with pytest.raises(LookupError, match="not a concepts run"):
        read_similarities(find_latest_run("world").info.run_id)
    # Without a labels table: the scores come back from the chunk cache, and no class is known.
    rerun = _concepts(*[a for a in args if a not in ("--truth", str(world / "truth.parquet"))], "--seed", "1",
                      "--vocabulary", "world")
    assert rerun.exit_code == 0, rerun.output
    run = find_latest_run("concepts")
    assert "images_per_second" not in run.data.metrics and "positive_precision_mean" not in run.data.metrics
    splits = load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet"))
    assert not splits.has_image_class and splits.metadata["image_class_column"] is None


def test_bad_inputs_are_one_line(world, tmp_path):
    missing = _concepts("--clip-model", "RN50", "--clip-weights", str(tmp_path / "none.pt"))
    assert missing.exit_code == 2 and "CLIP weights file not found" in missing.output
    short = _concepts("--source", "annotations", "--top-k", "100", "--negatives", "200")
    assert short.exit_code != 0 and "fewer labelled images than top_k=100" in short.output
    few = _concepts("--source", "annotations", "--top-k", "10", "--negatives", "155")
    assert few.exit_code != 0 and "the pool has 160 scored images but top_k + negatives = 10 + 155 = 165" in few.output


def test_no_pool_and_no_world_run(tracking_store):
    result = _concepts("--source", "annotations")
    assert result.exit_code == 2 and "no --pool given and no finished world run found" in result.output


def test_annotations_skip_unreadable_images_as_the_clip_path_does(world, caplog):
    truth = pd.read_parquet(world / "truth.parquet")
    broken = sorted(p for p in truth["path"] if p.startswith("pool/"))[0]
    (world / broken).write_bytes(b"not an image")
    with caplog.at_level("WARNING"):
        result = _concepts("--source", "annotations", "--top-k", "10", "--negatives", "30")
    assert result.exit_code == 0, result.output
    rel = broken.removeprefix("pool/")
    assert "1 unreadable image(s) skipped (listed in concepts/unreadable.txt)" in result.output
    assert any(f"1 unreadable image(s) skipped, e.g. {rel}" in r.getMessage() for r in caplog.records)
    run = find_latest_run("concepts")
    assert run.data.metrics["n_unreadable"] == 1 and run.data.metrics["n_scored"] == 159
    assert download_artifact(run.info.run_id, "concepts/unreadable.txt").read_text() == rel + "\n"
    splits = load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet"))
    assert rel not in set(splits.table["path"])
