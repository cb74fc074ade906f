"""The test-image hash (a fit's ``test_images``, what pairs cells across sweeps for McNemar's test) is taken over
the images' content, not their paths: a moved or renamed pool keeps it, changed bytes change it, and splits
written before the digest column still read and hash their paths as before."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from clipprobe.concepts.splits import (
    IMAGE_DIGEST_COLUMN,
    SPLIT_COLUMNS,
    ConceptSplits,
    load_splits,
    with_image_digests,
    write_splits,
)
from clipprobe.probes.evaluation import hash_test_images
from clipprobe.sweep.plan import concept_tasks


def _pool(root: Path, n: int = 8) -> list[str]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    names = [f"img_{i}.png" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
    return names


def _table(paths: list[str]) -> pd.DataFrame:
    n = len(paths)
    return pd.DataFrame({"concept": "red", "group": "colour", "path": paths, "rank": range(1, n + 1),
                         "probability": np.linspace(1, 0, n), "label": [1] * (n // 2) + [0] * (n - n // 2),
                         "part": ["train", "test"] * (n // 2)})


def _hash(table: pd.DataFrame, pool: Path) -> str:
    _, (task,), _ = concept_tasks(ConceptSplits(table, {"pool_root": str(pool)}))
    return hash_test_images(task)


def test_a_moved_and_renamed_pool_keeps_the_hash_and_changed_bytes_change_it(tmp_path):
    names = _pool(tmp_path / "a")
    first = _hash(with_image_digests(_table(names), tmp_path / "a"), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    (tmp_path / "elsewhere" / "b" / names[1]).rename(tmp_path / "elsewhere" / "b" / "renamed.png")  # a test image
    moved = [("renamed.png" if n == names[1] else n) for n in names]
    pool = tmp_path / "elsewhere" / "b"
    assert _hash(with_image_digests(_table(moved), pool), pool) == first
    # a test image's bytes changed, its name kept: another test set
    Image.new("RGB", (8, 8), "white").save(pool / names[3])
    assert _hash(with_image_digests(_table(moved), pool), pool) != first
    # a train image changed: the test set is the same
    Image.new("RGB", (8, 8), "black").save(tmp_path / "a" / names[0])
    assert _hash(with_image_digests(_table(names), tmp_path / "a"), tmp_path / "a") == first


def test_stored_splits_keep_the_digests_and_older_splits_hash_their_paths(tmp_path):
    names = _pool(tmp_path / "pool")
    table = with_image_digests(_table(names), tmp_path / "pool")
    write_splits(table, tmp_path / "splits.parquet", {"pool_root": str(tmp_path / "pool")})
    loaded = load_splits(tmp_path / "splits.parquet")
    assert loaded.table[IMAGE_DIGEST_COLUMN].tolist() == table[IMAGE_DIGEST_COLUMN].tolist()
    assert loaded.table[IMAGE_DIGEST_COLUMN].str.fullmatch("[0-9a-f]{16}").all()
    # splits written before the column: they read, and their hash is the one their sweeps stored (paths)
    old = _table(names)[list(SPLIT_COLUMNS)]
    write_splits(old, tmp_path / "old.parquet", {"pool_root": str(tmp_path / "pool")})
    tests = [n for n, part in zip(names, old["part"], strict=True) if part == "test"]
    expected = hashlib.sha1("\n".join(tests).encode()).hexdigest()[:16]
    assert _hash(load_splits(tmp_path / "old.parquet").table, tmp_path / "pool") == expected
