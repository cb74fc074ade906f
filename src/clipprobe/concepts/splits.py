"""Concept splits: per concept the top-k positives, random negatives outside them, a stored train/test part."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipprobe.concepts.pool import content_digest
from clipprobe.concepts.vocabulary import Vocabulary
from clipprobe.core.parquet import read_table, write_table

SPLIT_COLUMNS = ("concept", "group", "path", "rank", "probability", "label", "part")
# Written when the images' classes are known (the concept world's shape); older files lack it.
IMAGE_CLASS_COLUMN = "image_class"
# Written when ground truth is known: whether the image truly holds the concept (the label may be CLIP's).
TRUTH_COLUMN = "truth"
# Each image's content digest (concepts.pool.content_digest): its id when test sets are matched across sweeps
# (a sweep's ``test_images`` hash), so moving or renaming the pool keeps it and changed bytes change it.
# Files written before it existed lack it; their sweeps hash the paths, as they always did.
IMAGE_DIGEST_COLUMN = "image_sha256"
# How negatives are drawn: uniformly outside the positives, or matching the positives' classes.
NEGATIVES_MATCHING = ("none", "class")


def concept_rng(seed: int, concept: str) -> np.random.Generator:
    """A generator per (seed, concept): adding a concept to the vocabulary leaves the others' draws alone."""
    return np.random.default_rng([seed, zlib.crc32(concept.encode())])


def stratified_parts(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``"train"``/``"test"`` per row; ``round(n * test_fraction)`` of each class goes to test."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    parts = np.full(len(labels), "train", dtype=object)
    for value in (1, 0):
        rows = np.flatnonzero(labels == value)
        if len(rows) == 1:
            name, option = ("positive", "--top-k") if value else ("negative", "--negatives")
            raise ValueError(f"1 {name} cannot have images in both the train and the test part: every class "
                             f"needs at least 2; raise {option}")
        n_test = round(len(rows) * test_fraction)
        if len(rows) and not 0 < n_test < len(rows):
            raise ValueError(
                f"test_fraction {test_fraction} of {len(rows)} {'positives' if value else 'negatives'} "
                f"puts {n_test} in test: every class needs images in both parts; change --test-fraction"
            )
        parts[rng.choice(rows, size=n_test, replace=False)] = "test"
    return parts


def select_splits(
    scores: pd.DataFrame,
    vocabulary: Vocabulary,
    *,
    top_k: int = 100,
    negatives: int = 200,
    test_fraction: float = 0.3,
    seed: int = 0,
    known_labels: pd.DataFrame | None = None,
    image_classes: pd.Series | None = None,
    negatives_matching: str = "none",
) -> pd.DataFrame:
    """Rows ``concept, group, path, rank, probability, label, part`` for every concept.

    ``scores`` has ``path`` and a probability column per concept. Ranks are 1-based in descending
    probability, ties broken by a seeded shuffle. Negatives are drawn uniformly (seeded) from images
    outside the concept's positives; given ``known_labels`` (``path`` + a bool column per concept,
    same row order) images known to hold the concept are never drawn as negatives. Given
    ``image_classes`` (class name by path, e.g. the world's shape), each row also gets an
    ``image_class`` column (missing for a path the series lacks); the draws do not depend on it,
    unless ``negatives_matching="class"``: then the negatives follow the positives' class
    distribution where the pool allows (a striped probe must not just find zebras; see
    :func:`class_matched_negatives`).
    """
    if negatives_matching not in NEGATIVES_MATCHING:
        raise ValueError(f"unknown negatives_matching {negatives_matching!r}: expected one of "
                         f"{', '.join(NEGATIVES_MATCHING)}")
    if negatives_matching == "class" and image_classes is None:
        raise ValueError("negatives matching class needs each image's class: give class labels "
                         "(--class-labels FILE or folders)")
    if top_k < 1 or negatives < 1:
        raise ValueError(f"top_k and negatives must be at least 1, got top_k={top_k}, negatives={negatives}")
    n = len(scores)
    if n < top_k + negatives:
        raise ValueError(
            f"the pool has {n} scored images but top_k + negatives = {top_k} + {negatives} = "
            f"{top_k + negatives} are needed: lower --top-k / --negatives or add images"
        )
    missing = [c for c in vocabulary.concepts if c not in scores.columns]
    if missing:
        raise ValueError(f"scores table has no column for concept(s) {', '.join(missing)}: rescore the pool")
    paths = scores["path"].to_numpy()
    classes = None
    if image_classes is not None:
        mapped = pd.Series(paths).map(image_classes)
        classes = np.where(mapped.notna(), mapped.astype(str), None).astype(object)
    frames = []
    for concept in vocabulary.concepts:
        rng = concept_rng(seed, concept)
        prob = scores[concept].to_numpy(dtype=np.float64)
        order = np.lexsort((rng.permutation(n), -prob))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(1, n + 1)
        positives = order[:top_k]
        outside = np.ones(n, dtype=bool)
        outside[positives] = False
        if known_labels is not None:
            outside &= ~known_labels[concept].to_numpy(dtype=bool)
        candidates = np.flatnonzero(outside)
        if len(candidates) < negatives:
            raise ValueError(
                f"concept {concept!r}: only {len(candidates)} images lie outside its positives"
                f"{' and lack it' if known_labels is not None else ''}, fewer than negatives={negatives}: "
                "lower --negatives or add images"
            )
        if negatives_matching == "class":
            chosen = np.sort(class_matched_negatives(classes, positives, candidates, negatives, rng))
        else:
            chosen = np.sort(rng.choice(candidates, size=negatives, replace=False))
        rows = np.concatenate([positives, chosen[np.argsort(rank[chosen], kind="stable")]])
        labels = np.r_[np.ones(top_k, dtype=np.int64), np.zeros(negatives, dtype=np.int64)]
        frames.append(pd.DataFrame({
            "concept": concept,
            "group": vocabulary.group_of(concept),
            "path": paths[rows],
            "rank": rank[rows],
            "probability": prob[rows],
            "label": labels,
            "part": stratified_parts(labels, test_fraction, rng),
        }))
    table = pd.concat(frames, ignore_index=True)
    if image_classes is not None:
        table[IMAGE_CLASS_COLUMN] = table["path"].map(image_classes)
    return table


def class_matched_negatives(
    classes: np.ndarray, positives: np.ndarray, candidates: np.ndarray, negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``negatives`` rows of ``candidates`` whose classes follow those of ``positives``.

    Each class of the positives gets its share of the negatives (largest remainders), drawn from
    the candidates of that class; what a class cannot fill (too few candidates) and the share of
    positives without a class are drawn uniformly from the remaining candidates.
    """
    known = pd.notna(classes[positives])
    values, counts = np.unique(classes[positives][known].astype(str), return_counts=True)
    exact = counts * negatives / len(positives)
    quota = np.floor(exact).astype(int)
    short = int(round(negatives * known.mean())) - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:max(short, 0)]] += 1
    candidate_classes = classes[candidates]
    taken: list[np.ndarray] = []
    for value, want in zip(values, quota, strict=True):
        pool = candidates[candidate_classes == value]
        taken.append(rng.choice(pool, size=min(want, len(pool)), replace=False))
    chosen = np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(candidates, chosen)
    fill = rng.choice(rest, size=negatives - len(chosen), replace=False)
    return np.concatenate([chosen, fill]).astype(np.int64)


def split_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Per concept: ``n_train``, ``n_train_pos``, ``n_test``, ``n_test_pos``."""
    grouped = table.groupby(["concept", "part"], sort=False)["label"].agg(["size", "sum"]).unstack("part")
    out = pd.DataFrame({
        "n_train": grouped[("size", "train")],
        "n_train_pos": grouped[("sum", "train")],
        "n_test": grouped[("size", "test")],
        "n_test_pos": grouped[("sum", "test")],
    }).astype(int)
    return out.loc[table["concept"].unique()]


@dataclass(frozen=True)
class ConceptSplits:
    """A splits table and its provenance; image paths resolve against ``pool_root``."""

    table: pd.DataFrame
    metadata: dict[str, Any]

    @property
    def pool_root(self) -> Path:
        return Path(self.metadata["pool_root"])

    @property
    def concepts(self) -> list[str]:
        return list(self.table["concept"].unique())

    def group_of(self, concept: str) -> str:
        return str(self.select(concept)["group"].iloc[0])

    def select(self, concept: str, part: str | None = None) -> pd.DataFrame:
        """The rows of one concept (positives first, by rank), optionally of one part only."""
        if concept not in self.concepts:
            raise KeyError(f"unknown concept {concept!r}: the splits hold {', '.join(self.concepts)}")
        if part not in (None, "train", "test"):
            raise ValueError(f"unknown part {part!r}: expected train or test")
        rows = self.table[self.table["concept"] == concept]
        return rows if part is None else rows[rows["part"] == part]

    def image_paths(self, concept: str, part: str | None = None) -> list[Path]:
        return [self.pool_root / p for p in self.select(concept, part)["path"]]

    def labels(self, concept: str, part: str | None = None) -> np.ndarray:
        return self.select(concept, part)["label"].to_numpy()

    @property
    def has_image_class(self) -> bool:
        """Whether the rows carry their image's class (splits made before the column existed do not)."""
        return IMAGE_CLASS_COLUMN in self.table.columns

    def image_classes(self, concept: str, part: str | None = None) -> np.ndarray:
        """The class of each row's image (missing where unknown), in :meth:`select`'s order."""
        if not self.has_image_class:
            raise ValueError(f"these splits carry no {IMAGE_CLASS_COLUMN} column (made without class labels, "
                             "e.g. CLIP-mined on a plain folder): rerun the concepts step with a labels table")
        return self.select(concept, part)[IMAGE_CLASS_COLUMN].to_numpy()

    def sizes(self) -> pd.DataFrame:
        return split_sizes(self.table)


def with_image_digests(table: pd.DataFrame, pool_root: str | Path) -> pd.DataFrame:
    """``table`` with each row's image content digest (``IMAGE_DIGEST_COLUMN``); every image is read once."""
    root = Path(pool_root)
    digests = {p: content_digest(root / p) for p in table["path"].unique()}
    return table.assign(**{IMAGE_DIGEST_COLUMN: table["path"].map(digests)})


def image_ids(rows: pd.DataFrame) -> np.ndarray:
    """The ids that match rows' images across sweeps: their content digests, or (splits written before
    ``IMAGE_DIGEST_COLUMN``) their paths relative to the pool."""
    if IMAGE_DIGEST_COLUMN in rows.columns and rows[IMAGE_DIGEST_COLUMN].notna().all():
        return rows[IMAGE_DIGEST_COLUMN].astype(str).to_numpy()
    return rows["path"].astype(str).to_numpy()


def write_splits(table: pd.DataFrame, path: str | Path, metadata: dict[str, Any]) -> Path:
    if "pool_root" not in metadata:
        raise ValueError("splits metadata needs pool_root (the folder image paths are relative to)")
    columns = [*SPLIT_COLUMNS, *(c for c in (IMAGE_CLASS_COLUMN, TRUTH_COLUMN, IMAGE_DIGEST_COLUMN)
                                 if c in table.columns)]
    return write_table(table[columns], path, metadata)


def load_splits(path: str | Path) -> ConceptSplits:
    """Read ``concepts/splits.parquet`` (as written by the concepts step) with its provenance.

    ``image_class`` is optional: files written before it existed load without it.
    """
    table, metadata = read_table(path)
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a concept splits table: columns {', '.join(missing)} are missing")
    if "pool_root" not in metadata:
        raise ValueError(f"{path} has no pool_root in its metadata: rerun the concepts step to rewrite it")
    return ConceptSplits(table, metadata)
