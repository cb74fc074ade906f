"""The ``concepts`` step as library code: the inputs it reads, the tables it makes.

``concepts.config.ConceptsConfig`` holds every choice (resolved: the pool, the labels table, the vocabulary and
the CLIP are named, not left to "the latest world run"); ``read_inputs`` reads and checks what it points at;
``make_concepts`` scores the pool with CLIP (or takes the labels), selects the splits and measures CLIP's
labels against the truth; ``ConceptTables.write`` writes the step's files. Nothing here imports MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipprobe.concepts.annotations import (
    annotation_scores,
    concept_labels,
    image_classes,
    unreadable_images,
)
from clipprobe.concepts.classes import FOLDERS, read_image_classes
from clipprobe.concepts.config import ConceptsConfig
from clipprobe.concepts.label_quality import label_quality, quality_metrics, with_truth
from clipprobe.concepts.pool import DECODING, list_images, pool_fingerprint
from clipprobe.concepts.scoring import ClipScorer, score_pool
from clipprobe.concepts.sheets import write_contact_sheets
from clipprobe.concepts.splits import select_splits, split_sizes, with_image_digests, write_splits
from clipprobe.concepts.vocabulary import Vocabulary, load_vocabulary
from clipprobe.core.caches import SCORES
from clipprobe.core.caches import cache_dir as cache_folder
from clipprobe.core.errors import InputError
from clipprobe.core.parquet import provenance, write_table

log = logging.getLogger(__name__)
SCALE_NOTE = "softmax over the group's concepts of logit_scale * cosine(image, prompt)"
SIMILARITY_NOTE = "cosine(image, prompt) of L2-normalised CLIP embeddings, no scale, no softmax"
SIMILARITIES_FILE = "similarities.parquet"  # in the step's concepts/ folder (CLIP runs only)
SIMILARITIES_KIND = "concept_similarities"  # its provenance ``kind``
# The concept world's classes (what its backbone is trained on): each split row's image_class.
WORLD_CLASS_COLUMN = "shape"
@dataclass
class ConceptInputs:
    """What a config points at, read and checked: the vocabulary, the pool's images, their labels and classes."""

    vocabulary: Vocabulary
    paths: list[str]  # pool images, relative to the pool
    fingerprint: str  # pool_fingerprint of those images
    labels: pd.DataFrame | None  # concept labels from the truth table, rows of the pool's images
    classes: pd.Series | None  # each image's class (the class control task, negatives matching)
    class_kind: str | None  # where the classes come from: shape, folder, wnid, ...


def read_inputs(config: ConceptsConfig) -> ConceptInputs:
    """The vocabulary, the pool, the labels and the classes of ``config``; ``ValueError`` or
    ``FileNotFoundError`` naming the file and the fix."""
    config = config.resolved()
    vocab = load_vocabulary(config.vocabulary)
    paths = list_images(config.pool)
    labels = classes = None
    if config.truth is not None:
        truth_table = pd.read_parquet(config.truth)
        labels_root = config.truth.parent
        labels = concept_labels(truth_table, vocab, labels_root=labels_root, pool_root=config.pool)
        labels = labels[labels["path"].isin(set(paths))].reset_index(drop=True)
        if config.on_world:
            classes = image_classes(truth_table, WORLD_CLASS_COLUMN, labels_root=labels_root, pool_root=config.pool)
    class_kind = WORLD_CLASS_COLUMN if classes is not None else None
    if config.class_labels:
        found = read_image_classes(config.class_labels, paths)
        classes, class_kind = found.classes, found.kind
        log.info("image classes from %s: %d of %d images, %d classes", found.source, found.n_known,
                 len(paths), classes.nunique())
    if config.negatives_matching == "class" and classes is None:
        raise ValueError("--negatives-matching class needs each image's class: pass --class-labels "
                         f"FILE (LOC_val_solution.csv, ILSVRC2012_validation_ground_truth.txt) or {FOLDERS}")
    return ConceptInputs(vocab, paths, pool_fingerprint(config.pool, paths), labels, classes, class_kind)


def create_scorer(config: ConceptsConfig, device: Any) -> ClipScorer | None:
    """The CLIP scorer of a ``clip`` run (``None`` for annotations); ``RuntimeError`` when weights cannot load."""
    if config.source != "clip":
        return None
    weights = str(config.clip_weights) if config.clip_weights else config.clip_pretrained
    return ClipScorer.create(config.clip_model, weights, device=device, precision=config.precision)


def made_by(config: ConceptsConfig, inputs: ConceptInputs, scorer: ClipScorer | None) -> dict[str, Any]:
    """What made the concept tables (their Parquet provenance, beside ``kind`` and the clipprobe version)."""
    vocab = inputs.vocabulary
    meta = {"source": config.source, "vocabulary": vocab.to_dict(), "vocabulary_file": vocab.source,
            "vocabulary_fingerprint": vocab.fingerprint(), "prompt": config.prompt, "pool_root": str(config.pool),
            "pool_fingerprint": inputs.fingerprint, "n_pool_images": len(inputs.paths), "seed": config.seed}
    if scorer is not None:
        meta.update(scorer.provenance(), probability=SCALE_NOTE)
    return meta


def run_params(config: ConceptsConfig, inputs: ConceptInputs, scorer: ClipScorer | None) -> dict[str, Any]:
    """The step run's MLflow params (the scorer's resolved weights included)."""
    params = {"source": config.source, "pool": str(config.pool), "truth": config.truth,
              "vocabulary": inputs.vocabulary.source, "prompt": config.prompt, "top_k": config.top_k,
              "negatives": config.negatives, "test_fraction": config.test_fraction, "seed": config.seed,
              "pool_fingerprint": inputs.fingerprint, "negatives_matching": config.negatives_matching,
              "class_labels": config.class_labels}
    if scorer is not None:
        params.update(clip_model=config.clip_model, clip_pretrained=scorer.provenance()["clip_pretrained"],
                      clip_weights_sha256=scorer.weights_sha256, clip_weights_form=scorer.weights_form,
                      precision=config.precision, logit_scale=round(scorer.logit_scale, 4),
                      batch_size=config.batch_size, num_workers=config.num_workers)
    return params


@dataclass
class ConceptTables:
    """The step's tables: scores per pool image, the splits, their sizes and (with labels) CLIP's label quality;
    with CLIP, also each pool image's cosine similarity to every concept (same rows as ``scores``)."""

    scores: pd.DataFrame
    splits: pd.DataFrame
    sizes: pd.DataFrame
    quality: pd.DataFrame | None
    unreadable: list[str]
    meta: dict[str, Any]  # made_by() of the run
    split_meta: dict[str, Any]
    images_per_second: float | None = None  # of the images scored now (none when all came from the cache)
    similarities: pd.DataFrame | None = None  # CLIP runs: path + one cosine column per concept

    def write(self, folder: Path, pool: Path) -> None:
        """scores.parquet, similarities.parquet (CLIP), splits.parquet, label_quality.parquet, contact_sheets/,
        unreadable.txt in ``folder``."""
        write_table(self.scores, folder / "scores.parquet",
                    provenance("concept_scores", **self.meta, n_unreadable=len(self.unreadable)))
        if self.similarities is not None:
            meta = {k: v for k, v in self.meta.items() if k != "probability"}
            write_table(self.similarities, folder / SIMILARITIES_FILE,
                        provenance(SIMILARITIES_KIND, **meta, similarity=SIMILARITY_NOTE,
                                   n_unreadable=len(self.unreadable)))
        write_splits(self.splits, folder / "splits.parquet", provenance("concept_splits", **self.split_meta))
        if self.quality is not None:
            write_table(self.quality, folder / "label_quality.parquet",
                        provenance("label_quality", source=self.meta["source"], prompt=self.meta["prompt"]))
        write_contact_sheets(self.splits, pool, folder / "contact_sheets")
        if self.unreadable:
            (folder / "unreadable.txt").write_text("\n".join(self.unreadable) + "\n")

    @property
    def clip_quality(self) -> pd.DataFrame | None:
        """CLIP's label quality (``None`` for annotations: those labels are the truth, nothing to measure)."""
        return self.quality if self.meta["source"] == "clip" else None

    def metrics(self) -> dict[str, float]:
        metrics = {"n_pool_images": self.meta["n_pool_images"], "n_unreadable": len(self.unreadable),
                   "n_scored": len(self.scores)}
        for concept, row in self.sizes.iterrows():
            metrics.update({f"{k}.{concept}": v for k, v in row.items()})
        if self.clip_quality is not None:
            metrics.update(quality_metrics(self.clip_quality))
        return metrics


class PoolError(InputError, ValueError):
    """The pool cannot give the splits asked for (too few labelled or readable images for --top-k and
    --negatives, a class without images in both parts, ...): the user's data, found only once it is scored."""


def make_concepts(config: ConceptsConfig, inputs: ConceptInputs, scorer: ClipScorer | None, *,
                  cache_dir: str | Path | None = None) -> ConceptTables:
    """:func:`_make_concepts`, its ``ValueError`` (the pool cannot give the splits asked for) a ``PoolError``."""
    try:
        return _make_concepts(config, inputs, scorer, cache_dir=cache_dir)
    except PoolError:
        raise
    except ValueError as err:
        raise PoolError(str(err)) from err


def _make_concepts(config: ConceptsConfig, inputs: ConceptInputs, scorer: ClipScorer | None, *,
                   cache_dir: str | Path | None = None) -> ConceptTables:
    """Score (or label) the pool, select the splits, and set the truth beside each mined label.

    CLIP scores are kept in chunks under ``cache_dir`` (default: the cache root's ``scores`` folder), keyed by the
    scorer, prompt, vocabulary and pool, so an interrupted run resumes. ``ValueError`` when the pool cannot
    give the splits asked for.
    """
    meta = made_by(config, inputs, scorer)
    speed = None
    if scorer is not None:
        key = {**scorer.provenance(), "prompt": config.prompt, "vocabulary": inputs.vocabulary.to_dict(),
               "pool_fingerprint": inputs.fingerprint, "pool_root": str(config.pool), "decoding": DECODING}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        chunk_dir = cache_folder(SCORES, cache_dir) / digest
        scored = score_pool(scorer, config.pool, inputs.paths, inputs.vocabulary, config.prompt, chunk_dir=chunk_dir,
                            batch_size=config.batch_size, num_workers=config.num_workers,
                            chunk_size=config.chunk_size, resume_key=key)
        scores, unreadable, known, similarities = scored.scores, scored.unreadable, None, scored.similarities
        if scored.images_scored_now and scored.seconds > 0:
            speed = scored.images_scored_now / scored.seconds
    else:
        unreadable = unreadable_images(config.pool, inputs.labels["path"])
        if unreadable:
            log.warning("%d unreadable image(s) skipped, e.g. %s", len(unreadable), unreadable[0])
        known = inputs.labels[~inputs.labels["path"].isin(set(unreadable))].reset_index(drop=True)
        scores = annotation_scores(known, inputs.vocabulary, config.top_k)
        similarities = None
    splits = select_splits(scores, inputs.vocabulary, top_k=config.top_k, negatives=config.negatives,
                           test_fraction=config.test_fraction, seed=config.seed, known_labels=known,
                           image_classes=inputs.classes, negatives_matching=config.negatives_matching)
    quality = None
    if inputs.labels is not None:  # the truth beside each mined label, and how often they agree
        splits = with_truth(splits, inputs.labels)
        quality = label_quality(splits)
    splits = with_image_digests(splits, config.pool)  # content ids: a moved pool keeps its test sets' hashes
    sizes = split_sizes(splits)
    split_meta = {**meta, "top_k": config.top_k, "negatives": config.negatives, "test_fraction": config.test_fraction,
                  "negatives_matching": config.negatives_matching, "image_class_column": inputs.class_kind,
                  "class_labels": config.class_labels, "sizes": sizes.to_dict(orient="index")}
    return ConceptTables(scores, splits, sizes, quality, unreadable, meta, split_meta, speed, similarities)
