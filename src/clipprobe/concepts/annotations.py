"""Known labels instead of CLIP: a labels table (the world's truth.parquet) as concept scores, and
the precision of CLIP-chosen positives against it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from clipprobe.concepts.pool import open_rgb
from clipprobe.concepts.vocabulary import Vocabulary

NON_LABEL_COLUMNS = ("path", "split")


def concept_labels(
    labels: pd.DataFrame, vocabulary: Vocabulary, *, labels_root: str | Path, pool_root: str | Path
) -> pd.DataFrame:
    """``path`` (relative to ``pool_root``) and a bool column per concept, for rows inside the pool.

    A concept is present in an image iff one of its string label columns (all but ``path`` and
    ``split``, e.g. ``colour``, ``pattern``) equals the concept's name.
    """
    if "path" not in labels.columns:
        raise ValueError("labels table has no `path` column: expected path + label columns like colour, pattern")
    label_cols = [c for c in labels.columns if c not in NON_LABEL_COLUMNS
                  and (pd.api.types.is_string_dtype(labels[c]) or pd.api.types.is_object_dtype(labels[c]))]
    values = {c: labels[c].astype(str).to_numpy() for c in label_cols}
    absent = [c for c in vocabulary.concepts if not any((v == c).any() for v in values.values())]
    if absent:
        raise ValueError(
            f"concept(s) {', '.join(absent)} of vocabulary {vocabulary.source} never appear in the labels table's "
            f"columns {', '.join(label_cols)}: pass --vocabulary FILE.toml without them (a [groups] table of the "
            "concepts the table has; the world's defaults need a world made with all its shapes)"
        )
    rel, inside = _pool_paths(labels, labels_root, pool_root)
    out = pd.DataFrame({"path": rel[inside]})
    for concept in vocabulary.concepts:
        present = np.zeros(len(labels), dtype=bool)
        for v in values.values():
            present |= v == concept
        out[concept] = present[inside]
    return out.sort_values("path", ignore_index=True)


def _pool_paths(labels: pd.DataFrame, labels_root: str | Path, pool_root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Each row's path relative to ``pool_root`` (POSIX) and whether it lies inside the pool."""
    labels_root, pool_root = Path(labels_root).resolve(), Path(pool_root).resolve()
    rel = [os.path.relpath(labels_root / p, pool_root) for p in labels["path"]]
    inside = np.array([not r.startswith("..") for r in rel], dtype=bool)
    if not inside.any():
        raise ValueError(f"no image of the labels table lies inside the pool {pool_root}: check --pool and --truth")
    return np.array([Path(r).as_posix() for r in rel], dtype=object), inside


def image_classes(
    labels: pd.DataFrame, column: str, *, labels_root: str | Path, pool_root: str | Path
) -> pd.Series:
    """The class of each pool image (``column`` of the labels table, e.g. the world's ``shape``), by path."""
    if column not in labels.columns:
        raise ValueError(f"labels table has no {column!r} column to take image classes from: "
                         f"its columns are {', '.join(labels.columns)}")
    rel, inside = _pool_paths(labels, labels_root, pool_root)
    return pd.Series(labels[column].astype(str).to_numpy()[inside], index=pd.Index(rel[inside], name="path"),
                     name="image_class")


def unreadable_images(root: str | Path, paths: Iterable[str], *, progress: bool = True) -> list[str]:
    """The images among ``paths`` (relative to ``root``) that cannot be decoded, as the CLIP path finds them
    (``pool.PoolImages``: open, decode, convert to RGB): annotations alone never open an image, and the probe
    step would die on one later."""
    root, bad = Path(root), []
    for rel in tqdm(list(paths), desc="check images", unit="img", disable=not progress):
        try:
            open_rgb(root / rel)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(str(rel))
    return bad


def annotation_scores(labels: pd.DataFrame, vocabulary: Vocabulary, top_k: int) -> pd.DataFrame:
    """Scores 1.0 where a concept is present, 0.0 elsewhere; refuses a concept with fewer than top_k images."""
    short = {c: int(labels[c].sum()) for c in vocabulary.concepts if labels[c].sum() < top_k}
    if short:
        listed = ", ".join(f"{c} ({n})" for c, n in short.items())
        raise ValueError(
            f"concept(s) with fewer labelled images than top_k={top_k}: {listed}: lower --top-k or use a larger pool"
        )
    out = labels[["path"]].copy()
    for concept in vocabulary.concepts:
        out[concept] = labels[concept].astype(np.float32)
    return out


def positive_precision(splits: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Per concept, the fraction of its positives that the labels say hold the concept."""
    truth = labels.set_index("path")
    out = {}
    for concept, rows in splits[splits["label"] == 1].groupby("concept", sort=False):
        known = truth.reindex(rows["path"])[concept]
        out[str(concept)] = float(known.fillna(False).astype(bool).mean())
    return out
