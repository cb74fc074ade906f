"""Pool listing, corrupt files skipped and listed, interrupted scoring resumed where it stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concepts_tiny_clip import register_tiny, tiny_weights
from PIL import Image

from clipprobe.concepts.pool import list_images, pool_fingerprint
from clipprobe.concepts.scoring import ClipScorer, score_pool
from clipprobe.concepts.vocabulary import load_vocabulary


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    name = register_tiny(folder)
    return ClipScorer.create(name, str(tiny_weights(folder, name)))


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (value, 255 - value, 60)).save(path)


def test_listing_is_recursive_sorted_and_filtered(tmp_path):
    _image(tmp_path / "b" / "x.JPEG", 10)
    _image(tmp_path / "a.png", 20)
    (tmp_path / "notes.txt").write_text("hi")
    _image(tmp_path / ".hidden" / "y.png", 30)
    assert list_images(tmp_path) == ["a.png", "b/x.JPEG"]
    assert pool_fingerprint(tmp_path, ["a.png"]) != pool_fingerprint(tmp_path, ["a.png", "b/x.JPEG"])


def test_one_image_hash_for_provenance_and_cache_keys(tmp_path):
    """The pool's fingerprint survives a copy (same paths and sizes); the cache key (with_mtime) sees a rewrite."""
    import os

    _image(tmp_path / "a.png", 20)
    plain, keyed = pool_fingerprint(tmp_path, ["a.png"]), pool_fingerprint(tmp_path, ["a.png"], with_mtime=True)
    st = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pool_fingerprint(tmp_path, ["a.png"]) == plain
    assert pool_fingerprint(tmp_path, ["a.png"], with_mtime=True) != keyed
    _image(tmp_path / "c.png", 20)  # same size, other name
    assert pool_fingerprint(tmp_path, ["c.png"]) != plain


def test_empty_pool_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"image pool .* holds no images \(.jpg.*\): point the pool at a folder"):
        list_images(tmp_path)


def test_corrupt_files_are_skipped_counted_and_listed(scorer, tmp_path):
    for i in range(6):
        _image(tmp_path / f"ok_{i}.png", 40 * i)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    good = (tmp_path / "ok_0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    paths = list_images(tmp_path)
    out = score_pool(scorer, tmp_path, paths, load_vocabulary("seed"), chunk_dir=tmp_path / ".chunks",
                     batch_size=3, num_workers=2, chunk_size=4)
    assert sorted(out.unreadable) == ["broken.jpg", "truncated.png"]
    assert out.scores["path"].tolist() == [f"ok_{i}.png" for i in range(6)]
    assert not out.scores.isna().any().any()


def test_interrupted_scoring_resumes_from_the_written_chunks(scorer, tmp_path, monkeypatch):
    for i in range(20):
        _image(tmp_path / "pool" / f"{i:02d}.png", 12 * i)
    paths = list_images(tmp_path / "pool")
    vocab = load_vocabulary("seed")
    kwargs = dict(chunk_dir=tmp_path / "chunks", batch_size=4, num_workers=0, chunk_size=8, resume_key={"k": 1})
    full = score_pool(scorer, tmp_path / "pool", paths, vocab, chunk_dir=tmp_path / "ref", batch_size=4,
                      num_workers=0, chunk_size=8)

    calls = []
    real = scorer.score_and_cosines

    def flaky(images, text):
        calls.append(len(images))
        if len(calls) == 4:  # after the first chunk (two batches of 4) and one more batch
            raise KeyboardInterrupt
        return real(images, text)

    monkeypatch.setattr(scorer, "score_and_cosines", flaky)
    with pytest.raises(KeyboardInterrupt):
        score_pool(scorer, tmp_path / "pool", paths, vocab, **kwargs)
    assert sorted(p.name for p in (tmp_path / "chunks").glob("chunk-*.parquet")) == ["chunk-00000.parquet"]
    calls.clear()
    monkeypatch.setattr(scorer, "score_and_cosines", lambda images, text: calls.append(len(images)) or real(images, text))
    resumed = score_pool(scorer, tmp_path / "pool", paths, vocab, **kwargs)
    assert sum(calls) == 12 and resumed.images_scored_now == 12  # only chunks 1 and 2
    np.testing.assert_allclose(resumed.scores[vocab.concepts], full.scores[vocab.concepts], rtol=1e-6)
    np.testing.assert_allclose(resumed.similarities[vocab.concepts], full.similarities[vocab.concepts], rtol=1e-6)
    calls.clear()
    again = score_pool(scorer, tmp_path / "pool", paths, vocab, **{**kwargs, "resume_key": {"k": 2}})
    assert sum(calls) == 20 and again.images_scored_now == 20  # other settings: starts afresh


def test_phone_photos_and_16_bit_scans_decode_as_a_viewer_shows_them(tmp_path):
    """A JPEG stored sideways with an EXIF orientation, and a 16-bit greyscale PNG, as CLIP and the probe
    step see them: upright, and scaled to 8 bits (PIL's convert alone clips 16-bit values to white)."""
    from clipprobe.activations.decoding import _decode
    from clipprobe.concepts.pool import PoolImages, open_rgb

    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:, :15] = (255, 0, 0)  # red left half, blue right half: any turn or flip shows
    upright[:, 15:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera held upright stores it
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    stored.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    levels = np.tile(np.arange(0, 256, dtype=np.uint16) * 257, (4, 1))  # every 8-bit level, in 16 bits
    Image.fromarray(levels).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode == "I;16"

    photo = np.asarray(open_rgb(tmp_path / "phone.jpg")).astype(int)
    assert photo.shape == (20, 30, 3)
    assert (abs(photo[:, :10] - (255, 0, 0)).max(), abs(photo[:, 20:] - (0, 0, 255)).max()) < (40, 40)
    scan = np.asarray(open_rgb(tmp_path / "scan.png"))
    assert scan.dtype == np.uint8 and (scan[..., 0] == np.arange(256)).all() and (scan[..., 2] == scan[..., 0]).all()

    as_array = np.asarray  # the CLIP path (PoolImages) and the probe path (activations) decode alike
    pool = PoolImages(tmp_path, ["phone.jpg", "scan.png"], as_array)
    assert (pool[0][1] == photo).all() and (pool[1][1] == scan).all()
    assert _decode(tmp_path, "scan.png", lambda im: torch.from_numpy(np.asarray(im).copy())).equal(
        torch.from_numpy(scan.copy()).float())


def test_transparent_images_lie_on_white_and_float_and_16_bit_tiffs_are_scaled_not_clipped(tmp_path):
    """An RGBA PNG as a browser shows it on a page (on white, not the colour hidden under transparent pixels),
    a float TIFF on [0, 1] and one on another range, and a 16-bit TIFF: every level kept apart, none clipped."""
    from clipprobe.concepts.pool import BACKGROUND, open_rgb

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0] = (0, 0, 0, 0)  # transparent black: shows the background
    rgba[1] = (255, 0, 0, 128)  # half-transparent red
    rgba[1, 2] = (0, 0, 255, 255)  # opaque blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    shown = np.asarray(open_rgb(tmp_path / "cutout.png")).astype(int)
    assert BACKGROUND == (255, 255, 255) and (shown[0] == 255).all()
    assert abs(shown[1, 0] - (255, 127, 127)).max() <= 1 and tuple(shown[1, 2]) == (0, 0, 255)
    Image.fromarray(rgba[..., 3], "L").convert("P").save(tmp_path / "palette.png", transparency=0)
    assert (np.asarray(open_rgb(tmp_path / "palette.png"))[0] == 255).all()  # palette transparency too

    unit = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(2, 0)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")
    Image.fromarray(unit * 4000 - 1000, "F").save(tmp_path / "counts.tif")  # a detector's range, not [0, 1]
    levels = np.tile(np.arange(0, 256, dtype=np.uint16) * 257, (2, 1))
    Image.fromarray(levels).save(tmp_path / "scan.tif")
    assert [Image.open(tmp_path / f).mode for f in ("unit.tif", "counts.tif", "scan.tif")] == ["F", "F", "I;16"]
    for name in ("unit.tif", "counts.tif", "scan.tif"):
        grey = np.asarray(open_rgb(tmp_path / name))
        assert grey.dtype == np.uint8 and (grey[0, :, 0] == np.arange(256)).all(), name
        assert (grey[..., 1] == grey[..., 0]).all() and (grey[..., 2] == grey[..., 0]).all(), name
