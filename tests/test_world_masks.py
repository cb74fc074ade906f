"""Pixel masks: the world writes one per (concept, pool image) that matches the drawn pixels, and the loader
reads a pool's masks (the world's or a user's) as one boolean array."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipprobe.concepts.pool import list_images
from clipprobe.world.config import WorldSpec
from clipprobe.world.generate import INK_FACTOR, generate_world, read_truth
from clipprobe.world.masks import MaskError, load_masks, mask_concepts, mask_path, write_mask

# sha256 of every image of this world as generated before masks existed (commit 9f9adbb): masks are extra files.
SPEC = WorldSpec(seed=5, size=48, train_per_class=2, val_per_class=1, pool_size=40)
DIGEST_BEFORE_MASKS = Path(__file__).parent / "fixtures" / "world_seed5_digest.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world"), SPEC)


def test_images_stay_byte_identical_to_the_world_before_masks(world):
    digest = {p.relative_to(world.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(world.root.rglob("*.png")) if "masks" not in p.parts}
    assert digest == json.loads(DIGEST_BEFORE_MASKS.read_text())


def test_each_pool_image_has_its_colour_shape_and_pattern_masks_matching_the_pixels(world):
    table, _ = read_truth(world.root)
    pool = world.pool_dir
    rows = [r for r in table.to_pylist() if r["split"] == "pool"]
    concepts = sorted({*SPEC.colours, *SPEC.shapes, "dotted", "striped", "zigzagged"})
    assert mask_concepts(pool) == sorted({c for r in rows for c in (r["colour"], r["shape"], r["pattern"])} - {"plain"})
    paths = [r["path"].removeprefix("pool/") for r in rows]
    masks = load_masks(pool, paths, concepts)
    assert masks.shape == (len(rows), len(concepts), SPEC.size, SPEC.size) and masks.dtype == bool
    for i, row in enumerate(rows):
        present = {row["colour"], row["shape"]} | ({row["pattern"]} - {"plain"})
        for j, concept in enumerate(concepts):
            assert masks[i, j].any() == (concept in present), (row["path"], concept)
        pixels = np.asarray(Image.open(world.root / row["path"]).convert("RGB")).astype(int)
        rgb = np.array([row["r"], row["g"], row["b"]])
        body = np.abs(pixels - rgb).max(axis=-1) == 0
        ink = np.abs(pixels - rgb * INK_FACTOR).max(axis=-1) <= 1
        obj = masks[i, concepts.index(row["shape"])]
        assert np.array_equal(obj, masks[i, concepts.index(row["colour"])])
        assert np.array_equal(obj, body | (obj & ink))  # the object's pixels: its colour or its marks
        assert not (body & ~obj).any()
        if row["pattern"] != "plain":
            marks = masks[i, concepts.index(row["pattern"])]
            assert np.array_equal(marks, obj & ~body) and marks.sum() > 0


def test_the_masks_folder_is_not_part_of_the_pool(world):
    paths = list_images(world.pool_dir)
    assert len(paths) == SPEC.pool_size and not any(p.startswith("masks/") for p in paths)


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (9, 9, 9)).save(path)


def test_a_users_masks_in_the_same_layout(tmp_path):
    _image(tmp_path / "a.jpg", (4, 6))
    _image(tmp_path / "sub" / "b.png", (4, 6))
    red = np.zeros((4, 6), dtype=bool)
    red[1:3, 2:5] = True
    assert write_mask(tmp_path, "red", "sub/b.png", red) == tmp_path / "masks" / "red" / "sub" / "b.png"
    sky = mask_path(tmp_path, "sky", "a.jpg")
    sky.parent.mkdir(parents=True)
    Image.fromarray(np.full((4, 6), 7, dtype=np.uint8)).save(sky)  # nonzero = concept
    masks = load_masks(tmp_path, ["a.jpg", "sub/b.png"], ["red", "sky", "dog"])
    assert masks.shape == (2, 3, 4, 6)
    assert np.array_equal(masks[1, 0], red) and not masks[0, 0].any()  # a.jpg has no red file: empty
    assert masks[0, 1].all() and not masks[1, 1].any()
    assert not masks[:, 2].any()  # no folder for dog: empty everywhere
    assert mask_concepts(tmp_path) == ["red", "sky"]
    assert list_images(tmp_path) == ["a.jpg", "sub/b.png"]


def test_a_mask_of_the_wrong_size_is_one_clear_error(tmp_path):
    _image(tmp_path / "a.png", (4, 6))
    write_mask(tmp_path, "red", "a.png", np.ones((6, 4), dtype=bool))
    with pytest.raises(MaskError, match=r"mask .*masks/red/a.png is 6x4 but its image a.png is 4x6: write each "
                                        r"mask at its image's size"):
        load_masks(tmp_path, ["a.png"], ["red"])
    _image(tmp_path / "b.png", (5, 6))
    with pytest.raises(MaskError, match="image b.png is 5x6 but a.png is 4x6: load the masks of images of one size"):
        load_masks(tmp_path, ["a.png", "b.png"], ["blue"])
