"""ImageNet's validation folder as the seed used it: a flat folder of JPEGs whose classes come from
the devkit's ground truth (both forms), or class subfolders; class-matched negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from concepts_tiny_clip import register_tiny, tiny_weights
from PIL import Image
from scipy.io import savemat

from clipprobe.cli import main
from clipprobe.concepts.classes import read_image_classes
from clipprobe.concepts.splits import load_splits, select_splits
from clipprobe.concepts.vocabulary import load_vocabulary
from clipprobe.tracking.runs import download_artifact, find_latest_run

WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark: ILSVRC2012_IDs 449, 450, 442
IDS = ("449", "450", "442")
PER_CLASS = 20


def _class_of(i: int) -> int:
    return (i * 7) % 3  # classes interleaved over the file numbers, as in the real val set


def _jpeg(path, i):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """val/ (flat, 60 JPEGs), the devkit's two ground-truth forms, and val_folders/ (ImageFolder)."""
    root = tmp_path_factory.mktemp("imagenet")
    n = 3 * PER_CLASS
    for i in range(1, n + 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        _jpeg(root / "val" / name, i)
        _jpeg(root / "val_folders" / WNIDS[_class_of(i)] / name, i)
    rows = [f"ILSVRC2012_val_{i:08d},{WNIDS[_class_of(i)]} 10 12 80 90 {WNIDS[_class_of(i)]} 1 2 3 4 "
            for i in range(n, 0, -1)]  # any order, several boxes of the one class
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    # The real file has 50,000 lines; this one covers the 60 images and 2 more the pool lacks.
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{IDS[_class_of(i)]}\n" for i in range(1, n + 3)))
    bare = root / "bare"
    bare.mkdir()
    (bare / "ILSVRC2012_validation_ground_truth.txt").write_text(
        (devkit / "ILSVRC2012_validation_ground_truth.txt").read_text())
    synsets = np.zeros((3, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for k, (i, w) in enumerate(zip(IDS, WNIDS, strict=True)):
        synsets[k, 0] = (int(i), w, w)
    savemat(devkit / "meta.mat", {"synsets": synsets})
    return root


def _expected(paths):
    return [WNIDS[_class_of(int(p.split("_")[-1].split(".")[0]))] for p in paths]


def test_every_ground_truth_form_gives_each_image_its_class(imagenet):
    flat = sorted(p.name for p in (imagenet / "val").iterdir())
    loc = read_image_classes(imagenet / "LOC_val_solution.csv", flat)
    assert (loc.kind, loc.n_known) == ("wnid", 60) and loc.classes.tolist() == _expected(flat)
    devkit = read_image_classes(imagenet / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", flat)
    assert devkit.kind == "wnid" and devkit.classes.tolist() == _expected(flat)  # ids -> wnids by meta.mat
    bare = read_image_classes(imagenet / "bare/ILSVRC2012_validation_ground_truth.txt", flat)
    assert bare.kind == "ILSVRC2012_ID" and bare.classes.tolist() == [IDS[WNIDS.index(w)] for w in _expected(flat)]
    nested = sorted(f"{p.parent.name}/{p.name}" for p in (imagenet / "val_folders").glob("*/*.JPEG"))
    folders = read_image_classes("folders", nested)
    assert folders.kind == "folder" and folders.classes.tolist() == _expected(nested)
    # The devkit names files by their stem: the same labels serve the ImageFolder copy.
    assert read_image_classes(imagenet / "LOC_val_solution.csv", nested).classes.tolist() == _expected(nested)


def test_bad_class_labels_are_one_line(imagenet, tmp_path):
    flat = sorted(p.name for p in (imagenet / "val").iterdir())
    with pytest.raises(FileNotFoundError, match="class labels file not found: .*give LOC_val_solution.csv"):
        read_image_classes(tmp_path / "nope.csv", flat)
    (tmp_path / "other.csv").write_text("path,label\na.jpg,x\n")
    with pytest.raises(ValueError, match=r"other.csv: not a class labels file: expected LOC_val_solution.csv"):
        read_image_classes(tmp_path / "other.csv", flat)
    with pytest.raises(ValueError, match="names none of the pool's 2 images .* point --pool at"):
        read_image_classes(imagenet / "LOC_val_solution.csv", ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="2 image\\(s\\) lie directly in the pool, not in a class subfolder"):
        read_image_classes("folders", ["a.jpg", "n1/b.jpg", "c.jpg"])


def test_class_matched_negatives_follow_the_positives_classes():
    vocab = load_vocabulary("world")
    rng = np.random.default_rng(0)
    n = 90
    classes = pd.Series(np.repeat(["zebra", "horse", "cat"], 30), index=[f"{i}.jpg" for i in range(n)])
    scores = pd.DataFrame({"path": classes.index})
    for concept in vocab.concepts:
        scores[concept] = rng.random(n)
    scores["striped"] = np.r_[rng.random(30) + 1, rng.random(60)]  # stripes: the zebras, and only them
    plain = select_splits(scores, vocab, top_k=6, negatives=18, image_classes=classes)
    matched = select_splits(scores, vocab, top_k=6, negatives=18, image_classes=classes,
                            negatives_matching="class")
    for table in (plain, matched):
        rows = table[table["concept"] == "striped"]
        assert (rows.loc[rows["label"] == 1, "image_class"] == "zebra").all()
    negs = matched[(matched["concept"] == "striped") & (matched["label"] == 0)]
    assert (negs["image_class"] == "zebra").sum() == 18  # uniform draws would give about 6 of 18
    assert not set(negs["path"]) & set(matched.loc[(matched["concept"] == "striped") & (matched["label"] == 1), "path"])
    for concept in vocab.concepts:  # every concept: negatives per class = 3 x its positives per class
        rows = matched[matched["concept"] == concept]
        pos = rows.loc[rows["label"] == 1, "image_class"].value_counts()
        neg = rows.loc[rows["label"] == 0, "image_class"].value_counts()
        assert neg.to_dict() == (3 * pos).to_dict(), concept
    # Without the option the draws are the same as before image classes existed.
    assert plain.drop(columns="image_class").equals(select_splits(scores, vocab, top_k=6, negatives=18))
    with pytest.raises(ValueError, match="negatives matching class needs each image's class"):
        select_splits(scores, vocab, top_k=6, negatives=18, negatives_matching="class")


def test_class_matching_fills_what_a_class_lacks_uniformly():
    vocab = load_vocabulary("world")
    n = 60
    classes = pd.Series(["zebra"] * 8 + ["horse"] * 52, index=[f"{i}.jpg" for i in range(n)])
    scores = pd.DataFrame({"path": classes.index})
    for concept in vocab.concepts:
        scores[concept] = np.r_[np.linspace(2, 1, 8), np.linspace(0, 1, 52)]  # top 4: zebras
    table = select_splits(scores, vocab, top_k=4, negatives=12, image_classes=classes, negatives_matching="class")
    negs = table[(table["concept"] == "striped") & (table["label"] == 0)]
    assert len(negs) == 12 and negs["path"].is_unique
    assert (negs["image_class"] == "zebra").sum() == 4  # all the zebras left; the rest from horses


def _concepts(*args):
    return CliRunner().invoke(main, ["concepts", *args], catch_exceptions=False)


@pytest.mark.parametrize("layout", ["flat+LOC", "flat+devkit", "folders"])
def test_concepts_on_imagenet_val_layouts(imagenet, tracking_store, tmp_path, layout):
    name = register_tiny(tmp_path)
    weights = tiny_weights(tmp_path, name)
    pool, labels = {
        "flat+LOC": ("val", str(imagenet / "LOC_val_solution.csv")),
        "flat+devkit": ("val", str(imagenet / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")),
        "folders": ("val_folders", "folders"),
    }[layout]
    result = _concepts("--pool", str(imagenet / pool), "--class-labels", labels, "--negatives-matching", "class",
                       "--clip-model", name, "--clip-weights", str(weights), "--vocabulary", "world",
                       "--num-workers", "0", "--top-k", "3", "--negatives", "9",
                       "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    run = find_latest_run("concepts")
    assert run.data.params["negatives_matching"] == "class"
    assert run.data.metrics["n_pool_images"] == 60
    splits = load_splits(download_artifact(run.info.run_id, "concepts/splits.parquet"))
    assert splits.has_image_class
    assert splits.metadata["image_class_column"] == ("folder" if layout == "folders" else "wnid")
    assert splits.table["image_class"].tolist() == _expected(splits.table["path"].tolist())
    for concept in splits.concepts:
        rows = splits.select(concept)
        pos = rows.loc[rows["label"] == 1, "image_class"].value_counts()
        neg = rows.loc[rows["label"] == 0, "image_class"].value_counts()
        assert neg.to_dict() == (3 * pos).to_dict(), concept


def test_concepts_class_options_name_the_fix(imagenet, tracking_store, tmp_path):
    name = register_tiny(tmp_path)
    weights = tiny_weights(tmp_path, name)
    common = ["--pool", str(imagenet / "val"), "--clip-model", name, "--clip-weights", str(weights),
              "--num-workers", "0", "--top-k", "3", "--negatives", "9", "--vocabulary", "world"]
    result = _concepts(*common, "--negatives-matching", "class")
    assert result.exit_code == 2 and "--negatives-matching class needs each image's class: pass --class-labels" \
        in result.output
    result = _concepts(*common, "--class-labels", "folders")
    assert result.exit_code == 2 and "60 image(s) lie directly in the pool" in result.output
