"""CLIP's labels against the truth: the concepts step's precision numbers, the contact sheets' marks, and
the report's label-noise arithmetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from concepts_tiny_clip import register_tiny, tiny_weights
from PIL import Image

from clipprobe.cli import main
from clipprobe.concepts.label_quality import label_quality, with_truth
from clipprobe.concepts.sheets import WRONG_COLOUR, contact_sheet
from clipprobe.report.labels import (
    LabelSources,
    expected_accuracy,
    label_noise_table,
    label_sections,
)
from clipprobe.tracking.runs import download_artifact, find_latest_run


@pytest.fixture
def world(tracking_store, tmp_path):
    result = CliRunner().invoke(main, ["world", "--out", str(tmp_path / "world"), "--size", "32",
                                       "--train-per-class", "0", "--val-per-class", "0", "--pool-size", "160"])
    assert result.exit_code == 0, result.output
    return tmp_path / "world"


def test_concepts_precision_equals_a_direct_count(world, tmp_path):
    name = register_tiny(tmp_path)
    weights = tiny_weights(tmp_path, name)
    result = CliRunner().invoke(main, [
        "concepts", "--pool", str(world / "pool"), "--truth", str(world / "truth.parquet"), "--clip-model", name,
        "--clip-weights", str(weights), "--num-workers", "0", "--top-k", "10", "--negatives", "30",
        "--cache-dir", str(tmp_path / "cache")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "CLIP's labels against the truth" in result.output
    run = find_latest_run("concepts")
    splits = pd.read_parquet(download_artifact(run.info.run_id, "concepts/splits.parquet"))
    quality = pd.read_parquet(download_artifact(run.info.run_id, "concepts/label_quality.parquet"))
    truth = pd.read_parquet(world / "truth.parquet")
    truth["rel"] = truth["path"].str.removeprefix("pool/")
    attrs = truth.set_index("rel")[["colour", "pattern", "shape"]]
    for concept in ("red", "striped", "star"):
        rows = splits[splits["concept"] == concept]
        holds = attrs.loc[rows["path"]].eq(concept).any(axis=1).to_numpy()
        assert (rows["truth"].to_numpy() == holds).all()
        pos, test = rows["label"].to_numpy() == 1, rows["part"].to_numpy() == "test"
        want = {"positive_precision": holds[pos].mean(), "negative_precision": (~holds[~pos]).mean(),
                "test_label_agreement": (holds[test] == pos[test]).mean()}
        got = quality.set_index("concept").loc[concept]
        for key, value in want.items():
            assert got[key] == pytest.approx(value)
            assert run.data.metrics[f"{key}.{concept}"] == pytest.approx(value)
        # 3 test positives, 9 test negatives: the agreement is their precisions' weighted mean.
        assert got["test_label_agreement"] == pytest.approx(
            (3 * got["test_positive_precision"] + 9 * got["test_negative_precision"]) / 12)


def _splits(truth: list[bool], labels: list[int], parts: list[str]) -> pd.DataFrame:
    n = len(truth)
    return pd.DataFrame({"concept": ["red"] * n, "group": ["colours"] * n, "path": [f"{i}.png" for i in range(n)],
                         "rank": np.arange(1, n + 1), "probability": np.linspace(1, 0, n), "label": labels,
                         "part": parts, "truth": truth})


def test_label_quality_counts():
    table = _splits([True, True, False, False, True, False], [1, 1, 1, 0, 0, 0],
                    ["test", "train", "test", "test", "train", "test"])
    q = label_quality(table).iloc[0]
    assert q["positive_precision"] == pytest.approx(2 / 3) and q["negative_precision"] == pytest.approx(2 / 3)
    assert q["test_positive_precision"] == 0.5 and q["test_negative_precision"] == 1.0
    assert q["test_label_agreement"] == 0.75


def test_with_truth_refuses_images_without_truth():
    labels = pd.DataFrame({"path": ["0.png"], "red": [True]})
    with pytest.raises(ValueError, match=r"1 split image\(s\) have no ground-truth row, e.g. 1.png"):
        with_truth(_splits([True, False], [1, 0], ["test", "test"]).drop(columns="truth"), labels)


def test_contact_sheet_frames_wrong_positives_in_red(tmp_path):
    for i in range(2):
        Image.new("RGB", (32, 32), "white").save(tmp_path / f"{i}.png")
    rows = _splits([True, False], [1, 1], ["train", "test"])
    rows["rank"] = [1, 6]
    sheet = contact_sheet(rows, tmp_path, columns=2, tile=40, title="red")
    header = 18 + 14
    assert sheet.getpixel((40 + 2, header + 20)) == WRONG_COLOUR  # the frame of rank 6 (wrong)
    assert sheet.getpixel((2, header + 20)) == (255, 255, 255)  # rank 1 is right: no frame


def test_expected_accuracy_under_label_noise():
    assert expected_accuracy(1.0, 0.8) == pytest.approx(0.8)  # a perfect probe scores the agreement
    assert expected_accuracy(0.5, 0.8) == pytest.approx(0.5)  # a coin stays a coin
    assert expected_accuracy(0.9, 0.8) == pytest.approx(0.9 * 0.8 + 0.1 * 0.2)


def test_label_noise_table_side_by_side():
    def sweep(acc):
        return pd.DataFrame({"concept": ["red", "red"], "group": ["colours"] * 2, "module": ["module:0", "module:9"],
                             "probe": ["linear_gap"] * 2, "epoch": [10, 10], "test_acc": acc})

    quality = pd.DataFrame({"concept": ["red"], "test_label_agreement": [0.8]})
    table = label_noise_table(sweep([1.0, 0.9]), sweep([0.8, 0.7]), quality)
    assert table["expected_from_noise"].tolist() == pytest.approx([0.8, 0.74])
    assert table["explained_by_noise"].tolist() == pytest.approx([0.2, 0.16])
    assert table["unexplained"].tolist() == pytest.approx([0.0, -0.04])
    (name, _, text, _), = label_sections({"t": sweep([1.0, 0.9]), "c": sweep([0.8, 0.7])},
                                         LabelSources("t", {"c": quality}))
    assert name == "c" and "expected = A * a + (1 - A) * (1 - a)" in text
