"""The built-in concept world: generated images whose shape, colour and fill pattern are known exactly.

Each image shows one object on a greyish, varied background. The object's shape is the class a
backbone learns; its colour and fill pattern are drawn independently of the shape, so they are
concepts the backbone may or may not pick up. Everything is seeded per image, so the same seed
gives byte-identical files. Each pool image also gets a pixel mask per concept it shows (``world.masks``):
its colour and shape (the object's pixels) and its pattern (the marks inside the object; none for plain).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from clipprobe.core import parquet
from clipprobe.world.config import COLOURS, PATTERNS, WorldError, WorldSpec
from clipprobe.world.masks import write_mask

SPLITS: tuple[str, ...] = ("train", "val", "pool")
TRUTH_FILE = "truth.parquet"
TRUTH_KIND = "world_truth"  # the truth table's provenance ``kind`` (clipprobe.core.parquet)
# Where truth tables written before the shared provenance scheme keep the kind and the spec.
_OLD_KIND_KEY, _OLD_SPEC_KEY = b"clipprobe.kind", b"clipprobe.world_spec"
# Pattern marks are the object's own colour darkened by this factor, so the hue stays the colour.
INK_FACTOR = 0.35
COLOUR_JITTER = 10
MAX_TILT = math.radians(15)


@dataclass(frozen=True)
class WorldItem:
    """One image's ground truth, plus the drawing parameters that let a test check it."""

    path: str
    split: str
    shape: str
    colour: str
    pattern: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    rotation: float
    pattern_period: float
    pattern_axis: str
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class World:
    """A generated world on disk."""

    root: Path
    spec: WorldSpec
    n_images: dict[str, int]

    @property
    def truth_path(self) -> Path:
        return self.root / TRUTH_FILE

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with outer radius r, rotated by rot radians."""

    def ring(n: int, radii: Sequence[float], phase: float = -math.pi / 2) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = phase + rot + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "circle":
        return ring(48, [r])
    if shape == "ellipse":
        pts = []
        for i in range(48):
            a = 2 * math.pi * i / 48
            x, y = r * math.cos(a), 0.55 * r * math.sin(a)
            pts.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
        return pts
    if shape == "square":
        return ring(4, [r], phase=-math.pi / 4)
    if shape == "diamond":
        return ring(4, [r])
    if shape == "triangle":
        return ring(3, [r])
    if shape == "pentagon":
        return ring(5, [r])
    if shape == "hexagon":
        return ring(6, [r])
    if shape == "star":
        return ring(5, [r, 0.45 * r])
    if shape == "cross":
        w = 0.36 * r
        base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    elif shape == "trapezoid":
        base = [(-0.5 * r, -0.6 * r), (0.5 * r, -0.6 * r), (r, 0.6 * r), (-r, 0.6 * r)]
    else:  # pragma: no cover - names are validated before drawing
        raise WorldError(f"unknown shape {shape!r}")
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def pattern_mask(pattern: str, size: int, period: float, axis: str, phase: float) -> np.ndarray:
    """Boolean mask of the pattern's ink over the whole image (the object mask limits it later)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = (xx, yy) if axis == "x" else (yy, xx)
    if pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    if pattern == "striped":
        # Ink on the first half of each period along u: dominant frequency 1/period along u.
        return ((u + phase) % period) < period / 2
    if pattern == "dotted":
        du = ((u + phase) % period) - period / 2
        dv = ((v + phase) % period) - period / 2
        return du * du + dv * dv <= (0.28 * period) ** 2
    if pattern == "zigzagged":
        # Lines across u that zigzag along v: a triangle wave of wavelength `period`.
        tri = np.abs(((v + phase) % period) / period - 0.5) * 2  # 0..1
        offset = (u + phase - tri * period * 0.5) % period
        return offset < max(1.0, period * 0.22)
    raise WorldError(f"unknown pattern {pattern!r}: known patterns are {', '.join(PATTERNS)}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation gradient with soft noise: varied, but never one of the concept colours."""
    a = rng.uniform(40, 215)
    b = rng.uniform(40, 215)
    tint = rng.uniform(-12, 12, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 1.5) / 3.0
    grey = a + (b - a) * t
    img = grey[..., None] + tint[None, None, :]
    img += rng.normal(0, 6, size=(size, size, 1))
    return np.clip(img, 0, 255)


def render_item(rng: np.random.Generator, spec: WorldSpec, path: str, split: str, shape: str) -> tuple[np.ndarray, WorldItem]:
    """Draw one image (HxWx3 uint8) of ``shape`` with a random colour and pattern."""
    size = spec.size
    colour = spec.colours[rng.integers(len(spec.colours))]
    pattern = spec.patterns[rng.integers(len(spec.patterns))]
    radius = rng.uniform(0.28, 0.42) * size
    cx = rng.uniform(radius * 0.8, size - radius * 0.8)
    cy = rng.uniform(radius * 0.8, size - radius * 0.8)
    # A small tilt only: under free rotation a square is a diamond and the classes would overlap.
    rotation = rng.uniform(-MAX_TILT, MAX_TILT)
    period = max(4.0, size / rng.uniform(7.0, 9.0))
    axis = "x" if rng.random() < 0.5 else "y"
    phase = rng.uniform(0, period)
    base = np.array(COLOURS[colour], dtype=np.float64)
    rgb = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)

    img = _background(rng, size)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(_shape_polygon(shape, cx, cy, radius, rotation), fill=255)
    obj = np.asarray(canvas) > 127
    ink = pattern_mask(pattern, size, period, axis, phase) & obj
    img[obj] = rgb
    img[ink] = rgb * INK_FACTOR
    item = WorldItem(
        path=path, split=split, shape=shape, colour=colour, pattern=pattern,
        rgb=tuple(int(c) for c in rgb), cx=cx, cy=cy, radius=radius, rotation=rotation,
        pattern_period=period, pattern_axis=axis, extra={"masks": concept_masks(colour, shape, pattern, obj, ink)},
    )
    return img.round().astype(np.uint8), item


def concept_masks(colour: str, shape: str, pattern: str, obj: np.ndarray, ink: np.ndarray) -> dict[str, np.ndarray]:
    """Each concept's pixels in one image: colour and shape cover the object, a pattern its marks."""
    masks = {colour: obj, shape: obj}
    if pattern != "plain":  # a plain object has no marks: "plain" is no region
        masks[pattern] = ink
    return masks


def _plan(spec: WorldSpec) -> list[tuple[str, str, str]]:
    """(split, relative path, shape) for every image, in a fixed order."""
    plan = []
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        for shape in spec.shapes:
            for i in range(per_class):
                plan.append((split, f"{split}/{shape}/{shape}_{i:05d}.png", shape))
    pool_rng = np.random.default_rng([spec.seed, 7919])
    pool_shapes = pool_rng.integers(len(spec.shapes), size=spec.pool_size)
    for i, s in enumerate(pool_shapes):
        plan.append(("pool", f"pool/world_val_{i + 1:08d}.png", spec.shapes[s]))
    return plan


def check_out_dir(out: Path, overwrite: bool) -> None:
    """``WorldError`` unless a world may be written into ``out``: a new or empty folder, or ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise WorldError(f"output {out} is a file, not a folder: choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise WorldError(f"output folder {out} exists and is not empty: choose another --out or pass --overwrite")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    check_out_dir(out, overwrite)
    if out.exists() and any(out.iterdir()):
        for name in ("train", "val", "pool"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / TRUTH_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate_world(
    out_dir: str | Path,
    spec: WorldSpec | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> World:
    """Render the world described by ``spec`` into ``out_dir`` and write its truth table."""
    spec = spec or WorldSpec()
    out = Path(out_dir).resolve()
    _prepare_out_dir(out, overwrite)
    plan = _plan(spec)
    iterator = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc="rendering world", unit="img")
    rows: list[WorldItem] = []
    for index, (split, rel, shape) in enumerate(iterator):
        rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
        pixels, item = render_item(rng, spec, rel, split, shape)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="RGB").save(dest, format="PNG", optimize=False)
        if split == "pool":  # masks inside the pool folder (train/ and val/ are class folders: no extra folder there)
            for concept, mask in item.extra["masks"].items():
                write_mask(out / "pool", concept, Path(rel).relative_to("pool").as_posix(), mask)
        rows.append(item)
    write_truth(out / TRUTH_FILE, rows, spec)
    counts = {s: sum(r.split == s for r in rows) for s in SPLITS}
    return World(root=out, spec=spec, n_images=counts)


def write_truth(path: Path, rows: Sequence[WorldItem], spec: WorldSpec) -> None:
    """Ground truth as Parquet; the generator's parameters travel in its provenance (``clipprobe.core.parquet``:
    ``kind`` = ``world_truth``, ``world_spec`` = the spec's stored form)."""
    cols = ("path", "split", "shape", "colour", "pattern", "cx", "cy", "radius", "rotation",
            "pattern_period", "pattern_axis")
    data = {c: [getattr(r, c) for r in rows] for c in cols}
    data["r"] = [r.rgb[0] for r in rows]
    data["g"] = [r.rgb[1] for r in rows]
    data["b"] = [r.rgb[2] for r in rows]
    parquet.write_table(pd.DataFrame(data), path, parquet.provenance(TRUTH_KIND, world_spec=spec.to_dict()))


def _stored_spec(path: Path) -> dict | None:
    """The spec a truth table stores (either scheme: the shared provenance, or the keys of older files)."""
    made_by = parquet.read_metadata(path)
    if made_by.get("kind") == TRUTH_KIND:
        return made_by["world_spec"]
    raw = (pq.read_schema(path).metadata or {}).get(_OLD_SPEC_KEY)
    return None if raw is None else {"format": WorldSpec.FORMAT, **json.loads(raw)}


def is_world_truth(path: str | Path) -> bool:
    """Whether ``path`` is a concept world's truth table (a labels table of another kind is not)."""
    made_by = parquet.read_metadata(path)
    if made_by:
        return made_by.get("kind") == TRUTH_KIND
    return (pq.read_schema(path).metadata or {}).get(_OLD_KIND_KEY) == TRUTH_KIND.encode()


def read_truth(path: str | Path) -> tuple[pa.Table, WorldSpec]:
    """Load a truth table and the spec that generated it."""
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    if not path.exists():
        raise WorldError(f"no ground truth at {path}: generate a world with `clipprobe world`")
    stored = _stored_spec(path)
    if stored is None:
        raise WorldError(f"{path} is not a concept-world truth table (no world_spec in its clipprobe metadata)")
    return pq.read_table(path), WorldSpec.from_dict(stored, source=str(path))


def preview(world_root: str | Path, n: int = 32, columns: int = 8, split: str = "pool") -> Image.Image:
    """A contact sheet of the first ``n`` images of a split, for a quick look."""
    table, spec = read_truth(world_root)
    paths = [p for p, s in zip(table["path"].to_pylist(), table["split"].to_pylist(), strict=True) if s == split][:n]
    if not paths:
        raise WorldError(f"split {split!r} of {world_root} has no images")
    rows = math.ceil(len(paths) / columns)
    sheet = Image.new("RGB", (columns * spec.size, rows * spec.size), (255, 255, 255))
    for i, rel in enumerate(paths):
        with Image.open(Path(world_root) / rel) as im:
            sheet.paste(im.convert("RGB"), ((i % columns) * spec.size, (i // columns) * spec.size))
    return sheet
