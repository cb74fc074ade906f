"""The typed configs of the two concept steps: ``ConceptsConfig`` (concepts) and ``WorldClipConfig`` (clip).

Each is the one place its step's defaults live (the click options show them) and checks itself when built
(``ValueError`` naming the option and the fix), so a bad setting never reaches a run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from clipprobe.concepts.classes import FOLDERS
from clipprobe.concepts.scoring import CLIP_PRECISIONS, score_pool
from clipprobe.concepts.splits import NEGATIVES_MATCHING, select_splits
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, check_prompt
from clipprobe.core.step_config import StepConfig
from clipprobe.world.generate import is_world_truth

SOURCES = ("clip", "annotations")
WORLD_CLIP_NAME = "WorldCLIP-ViT-T-8"  # the world CLIP's open_clip architecture name (its <name>.json)


def _default(fn, name: str):
    """The library's default for a parameter, so no second copy drifts from it."""
    return inspect.signature(fn).parameters[name].default


@dataclass(frozen=True)
class ConceptsConfig(StepConfig):
    """Every choice of one ``concepts`` run; logged (resolved) as ``concepts/config.json``.

    ``pool`` None: the pool of the latest world run, with its truth (``steps.concepts.resolve`` fills both in).
    ``truth``: a labels table (``path`` + label columns, paths relative to its folder). ``class_labels``:
    a devkit file of image classes, or ``folders``. ``vocabulary``: ``seed``, ``world`` or a TOML file;
    ``None`` picks ``world`` on the concept world, else ``seed``. ``clip_weights`` replaces ``clip_pretrained``.
    """

    STEP = "concepts"

    pool: Path | None = None
    truth: Path | None = None
    class_labels: str | None = None
    source: str = SOURCES[0]
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    clip_weights: Path | None = None
    precision: str = "fp32"
    batch_size: int = _default(score_pool, "batch_size")
    num_workers: int = _default(score_pool, "num_workers")
    chunk_size: int = _default(score_pool, "chunk_size")
    top_k: int = _default(select_splits, "top_k")
    negatives: int = _default(select_splits, "negatives")
    negatives_matching: str = _default(select_splits, "negatives_matching")
    test_fraction: float = _default(select_splits, "test_fraction")
    seed: int = _default(select_splits, "seed")
    vocabulary: str | None = None
    prompt: str = DEFAULT_PROMPT

    def __post_init__(self) -> None:
        for name in ("pool", "truth", "clip_weights"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).resolve() if name == "pool" else Path(value))
        if self.class_labels and self.class_labels != FOLDERS:
            object.__setattr__(self, "class_labels", str(Path(self.class_labels).resolve()))
        check_prompt(self.prompt)
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.source == "annotations" and self.truth is None and self.pool is not None:
            raise ValueError("--source annotations needs a labels table: pass --truth FILE")
        if self.precision not in CLIP_PRECISIONS or self.negatives_matching not in NEGATIVES_MATCHING:
            raise ValueError(f"precision {self.precision!r} or negatives matching {self.negatives_matching!r} "
                             f"unknown: choose from {', '.join(CLIP_PRECISIONS)} and {', '.join(NEGATIVES_MATCHING)}")
        if self.batch_size < 1 or self.chunk_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch size and chunk size must be >= 1 and workers >= 0, got "
                             f"{self.batch_size}, {self.chunk_size}, {self.num_workers}")

    @property
    def on_world(self) -> bool:
        """Whether the labels table is a concept world's truth (its shapes are the images' classes)."""
        return self.truth is not None and is_world_truth(self.truth)

    def resolved(self) -> ConceptsConfig:
        """The config with its vocabulary named (``world`` on the concept world, else ``seed``)."""
        return self.replace(vocabulary=self.vocabulary or ("world" if self.on_world else "seed"))


@dataclass(frozen=True)
class WorldClipConfig(StepConfig):
    """How the world CLIP is trained; the one place its defaults live (the ``clip`` command reads them).
    The ``clip`` step's config, logged as ``clip/config.json``. ``clip_model`` is the open_clip architecture
    name (``--clip-model``, as ``concepts`` names it); the registered model's name is the run's ``model_name``.

    15 epochs of 2,000 world images: colours at 5 epochs already, patterns only later (measured on the
    demo's world: zero-shot colour 1.000, pattern 0.665, shape 0.080 on its 200 validation images)."""

    STEP = "clip"
    FORMAT = 2
    RENAMED: ClassVar[dict[int, dict[str, str]]] = {1: {"model_name": "clip_model"}}  # clip/config.json before the rename

    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_pct: float = 0.1
    seed: int = 0
    clip_model: str = WORLD_CLIP_NAME
    prompt: str = DEFAULT_PROMPT

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch size >= 2 (a contrastive loss needs pairs), "
                             f"got epochs={self.epochs}, batch_size={self.batch_size}")
        if self.lr <= 0 or not 0 <= self.warmup_pct < 1:
            raise ValueError(f"lr must be > 0 and warmup_pct in [0, 1), got lr={self.lr}, "
                             f"warmup_pct={self.warmup_pct}")
        check_prompt(self.prompt)
