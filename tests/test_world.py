"""The concept world tells the truth: declared colours and patterns are what the pixels show."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from clipprobe.cli import main
from clipprobe.world.config import COLOURS, WorldError, WorldSpec
from clipprobe.world.generate import (
    INK_FACTOR,
    _shape_polygon,
    generate_world,
    is_world_truth,
    read_truth,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = WorldSpec(seed=3, size=96, train_per_class=3, val_per_class=1, pool_size=80)
    return generate_world(tmp_path_factory.mktemp("world"), spec)


def _object_pixels(world, row):
    """Pixels inside the declared object, split into body and pattern ink."""
    size = world.spec.size
    canvas = Image.new("L", (size, size), 0)
    poly = _shape_polygon(row["shape"], row["cx"], row["cy"], row["radius"], row["rotation"])
    ImageDraw.Draw(canvas).polygon(poly, fill=255)
    mask = np.asarray(canvas) > 127
    pixels = np.asarray(Image.open(world.root / row["path"]).convert("RGB")).astype(float)
    rgb = np.array([row["r"], row["g"], row["b"]], dtype=float)
    is_ink = np.abs(pixels - rgb * INK_FACTOR).max(axis=-1) <= 1
    return pixels, mask, is_ink, rgb


def test_layout_and_truth_table(world):
    table, spec = read_truth(world.root)
    assert spec == world.spec
    assert table.num_rows == 10 * 3 + 10 * 1 + 80
    assert set(table.column_names) >= {"path", "split", "shape", "colour", "pattern"}
    for path, split, shape in zip(*(table[c].to_pylist() for c in ("path", "split", "shape")), strict=True):
        assert (world.root / path).is_file()
        if split in ("train", "val"):
            assert path.startswith(f"{split}/{shape}/")  # ImageFolder: class sub-folders
        else:
            assert path.startswith("pool/") and path.count("/") == 1  # flat, like ImageNet val


def test_object_pixels_carry_the_declared_colour(world):
    table = pq.read_table(world.truth_path).to_pylist()
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=float)
    for row in table:
        pixels, mask, is_ink, rgb = _object_pixels(world, row)
        body = pixels[mask & ~is_ink]
        assert len(body) > 50, row["path"]
        median = np.median(body, axis=0)
        nearest = names[int(np.argmin(((palette - median) ** 2).sum(axis=1)))]
        assert nearest == row["colour"], row["path"]
        assert np.abs(median - np.array(COLOURS[row["colour"]])).max() <= 10


def test_patterns_are_visible(world):
    rows = pq.read_table(world.truth_path).to_pylist()
    seen = set()
    for row in rows:
        pixels, mask, is_ink, _ = _object_pixels(world, row)
        ink_fraction = (is_ink & mask).sum() / mask.sum()
        if row["pattern"] == "plain":
            assert ink_fraction < 0.02, row["path"]
        else:
            assert ink_fraction > 0.08, row["path"]
        if row["pattern"] == "striped":
            # Average luminance along the stripe axis inside the object: dominant frequency 1/period.
            lum = pixels.mean(axis=-1)
            axis = 0 if row["pattern_axis"] == "x" else 1
            counts = mask.sum(axis=axis)
            profile = (lum * mask).sum(axis=axis)[counts > 0] / counts[counts > 0]
            profile = profile - profile.mean()
            spectrum = np.abs(np.fft.rfft(profile, n=1024))
            freqs = np.fft.rfftfreq(1024)
            peak = freqs[1:][np.argmax(spectrum[1:])]
            assert abs(peak - 1 / row["pattern_period"]) < 0.02, row["path"]
        seen.add(row["pattern"])
    assert seen == {"plain", "dotted", "striped", "zigzagged"}


def test_truth_table_carries_the_shared_provenance_scheme(world):
    from clipprobe import __version__
    from clipprobe.core.parquet import read_metadata

    assert read_metadata(world.truth_path) == {"kind": "world_truth", "clipprobe_version": __version__,
                                               "world_spec": world.spec.to_dict()}
    assert world.spec.to_dict()["size"] == 96 and world.spec.to_dict()["shapes"][0] == "circle"
    assert is_world_truth(world.truth_path)


def test_truth_tables_written_before_the_shared_scheme_still_read(tmp_path):
    import json

    import pyarrow as pa

    old = WorldSpec(seed=5, size=32, train_per_class=1, val_per_class=0, pool_size=2, colours=("red", "blue"))
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in old.__dict__.items()}
    table = pa.table({"path": ["pool/0.png"], "split": ["pool"], "shape": ["circle"]})
    pq.write_table(table.replace_schema_metadata({"clipprobe.kind": "world_truth",
                                                  "clipprobe.world_spec": json.dumps(fields)}), tmp_path / "truth.parquet")
    assert read_truth(tmp_path)[1] == old
    assert is_world_truth(tmp_path / "truth.parquet")
    pq.write_table(table, tmp_path / "labels.parquet")  # a user's labels table: no world spec
    assert not is_world_truth(tmp_path / "labels.parquet")
    with pytest.raises(WorldError, match="labels.parquet is not a concept-world truth table"):
        read_truth(tmp_path / "labels.parquet")


def test_same_seed_gives_byte_identical_files(tmp_path):
    spec = WorldSpec(seed=11, size=32, train_per_class=1, val_per_class=1, pool_size=12)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a = digest(generate_world(tmp_path / "a", spec).root)
    b = digest(generate_world(tmp_path / "b", spec).root)
    c = digest(generate_world(tmp_path / "c", WorldSpec(**{**spec.__dict__, "seed": 12})).root)
    assert a == b  # the masks too
    masks = [k for k in a if k.startswith("pool/masks/")]
    assert len(a) - len(masks) == 10 * 2 + 12 + 1
    pngs = [k for k in a if k.endswith(".png") and k not in masks]
    assert all(a[k] != c[k] for k in pngs)


def test_colour_and_pattern_are_independent_of_shape(tmp_path):
    spec = WorldSpec(seed=0, size=16, train_per_class=40, val_per_class=0, pool_size=0)
    table, _ = read_truth(generate_world(tmp_path, spec).root)
    rows = table.to_pylist()
    for shape in spec.shapes:
        colours = {r["colour"] for r in rows if r["shape"] == shape}
        patterns = {r["pattern"] for r in rows if r["shape"] == shape}
        assert len(colours) >= 5 and len(patterns) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "image size must be at least 16 pixels, got 0"),
        ({"size": -5}, "image size must be at least 16 pixels, got -5"),
        ({"colours": ("red", "magenta")}, "unknown colour 'magenta': known colours are red, blue"),
        ({"patterns": ("checkered",)}, "unknown pattern 'checkered': known patterns are plain"),
        ({"pool_size": -1}, "pool_size must be >= 0"),
    ],
)
def test_bad_spec_is_one_clear_error(kwargs, message):
    with pytest.raises(WorldError, match=message):
        WorldSpec(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "0"], "Error: image size must be at least 16 pixels, got 0"),
        (["--colours", "red,magenta"], "Error: unknown colour 'magenta'"),
        (["--patterns", "plain,checkered"], "Error: unknown pattern 'checkered'"),
    ],
)
def test_cli_bad_input_is_one_line_not_a_traceback(tracking_store, args, message):
    result = CliRunner().invoke(main, ["world", "--out", "w", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_non_empty_folder_unless_overwrite(tracking_store, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    small = ["--pool-size", "6", "--train-per-class", "1", "--val-per-class", "0", "--size", "16"]
    result = CliRunner().invoke(main, ["world", "--out", str(out), *small])
    assert result.exit_code == 2
    assert f"output folder {out} exists and is not empty" in result.output
    assert "--overwrite" in result.output
    result = CliRunner().invoke(main, ["world", "--out", str(out), *small, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"  # only the world's own files are replaced
    assert len(list((out / "pool").glob("*.png"))) == 6


def test_cli_logs_the_truth_table_to_the_tracking_store(tracking_store, tmp_path):
    from mlflow.tracking import MlflowClient

    from clipprobe.tracking.runs import find_latest_run

    result = CliRunner().invoke(
        main, ["world", "--out", "w", "--pool-size", "8", "--train-per-class", "1",
               "--val-per-class", "1", "--size", "24", "--experiment-name", "worlds"])
    assert result.exit_code == 0, result.output
    run = find_latest_run("world")
    assert run is not None
    assert run.data.tags["clipprobe.step"] == "world"
    assert run.data.tags["clipprobe.world_root"] == str((tmp_path / "w").resolve())
    assert run.data.params["pool_size"] == "8"
    assert run.data.metrics["n_pool"] == 8
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "world")}
    assert names == {"world/truth.parquet", "world/preview.png", "world/config.json"}
    from clipprobe.tracking.configs import load_config

    assert load_config(WorldSpec, run.info.run_id) == WorldSpec(size=24, train_per_class=1, val_per_class=1,
                                                                 pool_size=8)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "worlds"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    local = client.download_artifacts(run.info.run_id, "world/truth.parquet", str(tmp_path))
    assert pq.read_table(local).num_rows == 10 + 10 + 8
