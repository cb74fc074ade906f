"""Top-k positives, negatives outside them, the stored stratified test part, Parquet round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipprobe.concepts.annotations import (
    annotation_scores,
    concept_labels,
    image_classes,
    positive_precision,
)
from clipprobe.concepts.splits import (
    SPLIT_COLUMNS,
    load_splits,
    select_splits,
    split_sizes,
    write_splits,
)
from clipprobe.concepts.vocabulary import load_vocabulary
from clipprobe.core.parquet import write_table
from clipprobe.world.config import SHAPES

SEED_VOCAB = load_vocabulary("seed")


def _scores(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(n)]})
    for group in SEED_VOCAB.groups:
        p = rng.dirichlet(np.ones(len(group.concepts)), size=n)
        for j, c in enumerate(group.concepts):
            df[c] = p[:, j]
    return df


def test_sizes_are_the_stated_ones():
    table = select_splits(_scores(500), SEED_VOCAB)  # defaults 100 / 200 / 0.3
    sizes = split_sizes(table)
    assert sizes.to_dict(orient="list") == {
        "n_train": [210] * 9, "n_train_pos": [70] * 9, "n_test": [90] * 9, "n_test_pos": [30] * 9,
    }
    assert list(sizes.index) == SEED_VOCAB.concepts


def test_positives_are_the_top_k_and_negatives_lie_outside():
    scores = _scores(400)
    table = select_splits(scores, SEED_VOCAB, top_k=50, negatives=120, seed=3)
    for concept in SEED_VOCAB.concepts:
        rows = table[table.concept == concept]
        pos, neg = rows[rows.label == 1], rows[rows.label == 0]
        assert set(pos.path) == set(scores.nlargest(50, concept).path)
        assert pos["rank"].tolist() == list(range(1, 51))
        assert not set(neg.path) & set(pos.path)
        assert len(set(neg.path)) == 120 and (neg["rank"] > 50).all()
        assert (rows.group == SEED_VOCAB.group_of(concept)).all()


def test_splits_are_deterministic_for_a_seed():
    scores = _scores(400)
    a = select_splits(scores, SEED_VOCAB, seed=7)
    b = select_splits(scores, SEED_VOCAB, seed=7)
    c = select_splits(scores, SEED_VOCAB, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["path"].equals(c["path"]) and not a["part"].equals(c["part"])


def test_too_few_images_names_the_numbers():
    with pytest.raises(ValueError, match=r"the pool has 250 scored images but top_k \+ negatives = 100 \+ 200 = 300"):
        select_splits(_scores(250), SEED_VOCAB)


def test_a_concept_with_too_few_positives_names_the_fix_that_works():
    # one positive cannot sit in both parts whatever the test fraction: the fix is more positives
    with pytest.raises(ValueError, match=r"^1 positive cannot have images in both the train and the test part: "
                                         r"every class needs at least 2; raise --top-k$"):
        select_splits(_scores(300), SEED_VOCAB, top_k=1)
    with pytest.raises(ValueError, match=r"test_fraction 0.1 of 4 positives puts 0 in test: .*change --test-fraction"):
        select_splits(_scores(300), SEED_VOCAB, top_k=4, test_fraction=0.1)
    table = select_splits(_scores(300), SEED_VOCAB, top_k=2)  # the fewest that work: one in each part
    assert (table[table["label"] == 1].groupby(["concept", "part"]).size() == 1).all()


def test_round_trip_keeps_metadata(tmp_path):
    table = select_splits(_scores(320), SEED_VOCAB, top_k=20, negatives=40)
    meta = {"pool_root": str(tmp_path), "prompt": "x {concept}", "seed": 0, "logit_scale": 100.0}
    write_splits(table, tmp_path / "splits.parquet", meta)
    splits = load_splits(tmp_path / "splits.parquet")
    pd.testing.assert_frame_equal(splits.table, table)
    assert splits.metadata == meta and splits.concepts == SEED_VOCAB.concepts
    assert len(splits.select("red", "test")) == 18 and splits.labels("red", "test").sum() == 6
    assert splits.image_paths("male")[0].parent == tmp_path
    with pytest.raises(KeyError, match="unknown concept 'purple'"):
        splits.select("purple")
    assert not splits.has_image_class
    with pytest.raises(ValueError, match="these splits carry no image_class column"):
        splits.image_classes("red")


def test_image_class_rides_along_without_changing_the_draws(tmp_path):
    scores = _scores(320)
    classes = pd.Series([f"class_{i % 3}" for i in range(319)], index=scores["path"].iloc[:319])
    plain = select_splits(scores, SEED_VOCAB, top_k=20, negatives=40, seed=5)
    table = select_splits(scores, SEED_VOCAB, top_k=20, negatives=40, seed=5, image_classes=classes)
    pd.testing.assert_frame_equal(table[list(SPLIT_COLUMNS)], plain)
    known = table["path"] != "img_0319.png"
    assert table["image_class"].isna().tolist() == (~known).tolist() and (~known).any()
    assert table["image_class"][known].tolist() == [f"class_{int(p[4:8]) % 3}" for p in table["path"][known]]
    write_splits(table, tmp_path / "splits.parquet", {"pool_root": str(tmp_path)})
    splits = load_splits(tmp_path / "splits.parquet")
    pd.testing.assert_frame_equal(splits.table, table)
    assert splits.has_image_class
    rows = splits.select("red", "test")
    assert splits.image_classes("red", "test").tolist() == table.loc[rows.index, "image_class"].tolist()


def test_old_splits_without_image_class_still_load(tmp_path):
    table = select_splits(_scores(320), SEED_VOCAB, top_k=20, negatives=40)
    write_table(table[list(SPLIT_COLUMNS)], tmp_path / "old.parquet", {"pool_root": str(tmp_path)})
    splits = load_splits(tmp_path / "old.parquet")
    assert list(splits.table.columns) == list(SPLIT_COLUMNS) and not splits.has_image_class
    assert splits.labels("red").sum() == 20


def _truth() -> pd.DataFrame:
    colours = ["red", "blue", "green", "yellow", "purple"]
    patterns = ["plain", "dotted", "striped", "zigzagged"]
    rows = [{"path": f"pool/w_{i:04d}.png", "split": "pool", "shape": SHAPES[i // 4 % len(SHAPES)],
             "colour": colours[i % 5], "pattern": patterns[i % 4]} for i in range(400)]
    rows.append({"path": "train/circle/t.png", "split": "train", "shape": "circle", "colour": "red", "pattern": "plain"})
    return pd.DataFrame(rows)


def test_annotations_choose_true_positives_and_true_negatives(tmp_path):
    vocab = load_vocabulary("world")
    labels = concept_labels(_truth(), vocab, labels_root=tmp_path, pool_root=tmp_path / "pool")
    assert len(labels) == 400 and labels["path"].iloc[0] == "w_0000.png"  # re-rooted, train row dropped
    assert labels["red"].sum() == 80 and labels["dotted"].sum() == 100
    scores = annotation_scores(labels, vocab, top_k=30)
    table = select_splits(scores, vocab, top_k=30, negatives=60, seed=1, known_labels=labels)
    truth = labels.set_index("path")
    for concept in vocab.concepts:
        rows = table[table.concept == concept]
        assert truth.loc[rows.path[rows.label == 1], concept].all()
        assert not truth.loc[rows.path[rows.label == 0], concept].any()
    assert positive_precision(table, labels) == dict.fromkeys(vocab.concepts, 1.0)
    classes = image_classes(_truth(), "shape", labels_root=tmp_path, pool_root=tmp_path / "pool")
    assert len(classes) == 400 and set(classes) == set(SHAPES)
    assert classes["w_0000.png"] == "circle" and classes["w_0004.png"] == SHAPES[1]
    with pytest.raises(ValueError, match="labels table has no 'class' column"):
        image_classes(_truth(), "class", labels_root=tmp_path, pool_root=tmp_path / "pool")
    other = select_splits(scores, vocab, top_k=30, negatives=60, seed=2, known_labels=labels)
    assert set(other[other.label == 1].path) != set(table[table.label == 1].path)  # k among the true, by seed


def test_annotations_refuse_short_concepts_and_unknown_ones(tmp_path):
    labels = concept_labels(_truth(), load_vocabulary("world"), labels_root=tmp_path, pool_root=tmp_path / "pool")
    with pytest.raises(ValueError, match=r"fewer labelled images than top_k=90: red \(80\)"):
        annotation_scores(labels, load_vocabulary("world"), top_k=90)
    with pytest.raises(ValueError, match="concept.s. female, male of vocabulary .* never appear in the labels table"):
        concept_labels(_truth(), SEED_VOCAB, labels_root=tmp_path, pool_root=tmp_path / "pool")
    # a world made with some shapes only: the message names the vocabulary in use and the way out, not itself
    with pytest.raises(ValueError, match=r"concept\(s\) star of vocabulary world.toml never appear in the labels "
                                         r"table's columns .*: pass --vocabulary FILE.toml without them"):
        concept_labels(_truth()[lambda t: t["shape"] != "star"], load_vocabulary("world"), labels_root=tmp_path,
                       pool_root=tmp_path / "pool")


def test_precision_of_clip_positives_against_truth(tmp_path):
    vocab = load_vocabulary("world")
    labels = concept_labels(_truth(), vocab, labels_root=tmp_path, pool_root=tmp_path / "pool")
    scores = annotation_scores(labels, vocab, top_k=10)
    scores["red"] = np.where(labels["red"], 0.5, 0.1)
    scores.loc[:4, "red"] = 0.9  # 5 planted false positives (rows 0..4: only row 0 is red)
    table = select_splits(scores, vocab, top_k=10, negatives=20, seed=0)
    assert positive_precision(table, labels)["red"] == pytest.approx(6 / 10)
