"""CLIP zero-shot scoring of an image pool: per image, a softmax over each group's concepts."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.model import get_input_dtype
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clipprobe.concepts.parquet import read_table, write_table
from clipprobe.concepts.pool import PoolImages, collate_readable
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, Vocabulary, check_prompt

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def group_probabilities(
    image_features: torch.Tensor, text_features: Sequence[torch.Tensor], scale: float
) -> torch.Tensor:
    """``(images, concepts)``: per group, softmax of ``scale * cosine`` over that group's concepts.

    Features must be L2-normalised; groups are concatenated in vocabulary order. Float64, so
    probabilities close to 1 stay distinct and their ranking stays exact.
    """
    image = image_features.double()
    return torch.cat([(scale * image @ t.double().T).softmax(dim=-1) for t in text_features], dim=1)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(WEIGHTS_SUFFIXES)


@dataclass
class ClipScorer:
    """An open_clip model with its image transform and tokenizer, and where its weights came from."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    model_name: str
    pretrained: str | None
    weights_sha256: str | None
    device: torch.device
    precision: str = "fp32"
    _text_cache: dict[tuple[str, str, tuple[str, ...]], torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        model_name: str,
        pretrained: str | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
    ) -> ClipScorer:
        """Like ``open_clip.create_model_and_transforms``: ``pretrained`` is a tag, a local file, or
        ignored for an ``hf-hub:org/repo`` name. Errors name what was asked for and what exists."""
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device: use bf16 on CPU (or fp32)")
        sha = None
        if model_name.startswith("hf-hub:"):
            pretrained = None
        else:
            if model_name not in open_clip.list_models():
                close = [m for m in open_clip.list_models() if model_name.lower()[:4] in m.lower()][:8]
                raise ValueError(
                    f"unknown CLIP architecture {model_name!r}: open_clip has e.g. "
                    f"{', '.join(close or open_clip.list_models()[:8])} (see open_clip.list_models())"
                )
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained and pretrained not in tags:
                path = Path(pretrained).expanduser()
                if path.is_file():
                    pretrained = str(path)
                    sha = file_sha256(path)
                elif _looks_like_path(pretrained):
                    raise FileNotFoundError(
                        f"CLIP weights file not found: {pretrained} (give an existing weights file, "
                        f"or a pretrained tag of {model_name}: {', '.join(tags) or 'none known'})"
                    )
                else:
                    raise ValueError(
                        f"unknown pretrained tag {pretrained!r} for {model_name}: known tags are "
                        f"{', '.join(tags) or 'none'}; or give a local weights file"
                    )
            if not pretrained:
                log.warning("no CLIP weights given for %s: the model is randomly initialised", model_name)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, precision=precision, cache_dir=cache_dir
            )
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RuntimeError(
                f"could not load CLIP {model_name} with pretrained={pretrained!r}: {first} "
                "(offline? download the weights elsewhere and pass the local file)"
            ) from err
        model.eval()
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model, preprocess, tokenizer, model_name, pretrained, sha, device, precision)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature ``exp(logit_scale)``, the factor on cosines before the softmax."""
        return float(self.model.logit_scale.detach().float().exp().reshape(-1)[0])

    def provenance(self) -> dict[str, Any]:
        return {
            "clip_model": self.model_name,
            "clip_pretrained": self.pretrained if self.weights_sha256 is None else Path(self.pretrained).name,
            "clip_weights_sha256": self.weights_sha256,
            "precision": self.precision,
            "logit_scale": self.logit_scale,
        }

    @torch.inference_mode()
    def text_features(self, vocabulary: Vocabulary, prompt: str = DEFAULT_PROMPT) -> list[torch.Tensor]:
        """One L2-normalised ``(concepts, dim)`` float32 matrix per group, computed once and cached."""
        check_prompt(prompt)
        out = []
        for group in vocabulary.groups:
            key = (prompt, group.name, group.concepts)
            if key not in self._text_cache:
                tokens = self.tokenizer([prompt.format(concept=c) for c in group.concepts]).to(self.device)
                feats = self.model.encode_text(tokens).float()
                self._text_cache[key] = torch.nn.functional.normalize(feats, dim=-1)
            out.append(self._text_cache[key])
        return out

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings of a preprocessed batch."""
        images = images.to(self.device, dtype=get_input_dtype(self.precision), non_blocking=True)
        return torch.nn.functional.normalize(self.model.encode_image(images).float(), dim=-1)

    def score_images(self, images: torch.Tensor, text_features: Sequence[torch.Tensor]) -> np.ndarray:
        """``(images, concepts)`` group probabilities of one preprocessed batch."""
        probs = group_probabilities(self.image_features(images), text_features, self.logit_scale)
        return probs.cpu().numpy()


@dataclass
class PoolScores:
    """Scores of the readable images and the list of files that could not be decoded."""

    scores: pd.DataFrame
    unreadable: list[str]
    seconds: float = 0.0
    images_scored_now: int = 0


def _chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk-{index:05d}.parquet"


def _prepare_chunk_dir(chunk_dir: Path, key: dict[str, Any]) -> None:
    """Keep chunks written with the same settings; clear those of other settings."""
    chunk_dir.mkdir(parents=True, exist_ok=True)
    manifest = chunk_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) != key:
        log.warning("score chunks in %s were made with other settings: starting afresh", chunk_dir)
        for old in chunk_dir.glob("chunk-*.parquet"):
            old.unlink()
    manifest.write_text(json.dumps(key, indent=1, sort_keys=True))


def score_pool(
    scorer: ClipScorer,
    root: str | Path,
    paths: Sequence[str],
    vocabulary: Vocabulary,
    prompt: str = DEFAULT_PROMPT,
    *,
    chunk_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 2,
    chunk_size: int = 4096,
    resume_key: dict[str, Any] | None = None,
) -> PoolScores:
    """Score every image of the pool, writing ``chunk_size`` images per Parquet chunk in ``chunk_dir``.

    A rerun with the same ``resume_key`` (settings) skips the chunks already written.
    """
    if not paths:
        raise ValueError(f"image pool {root} is empty: nothing to score")
    chunk_dir = Path(chunk_dir)
    concepts = vocabulary.concepts
    _prepare_chunk_dir(chunk_dir, {"resume_key": resume_key or {}, "n_images": len(paths),
                                   "chunk_size": chunk_size, "concepts": concepts})
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    pending = [c for c in range(n_chunks) if not _chunk_path(chunk_dir, c).is_file()]
    if len(pending) < n_chunks:
        log.info("resuming: %d of %d score chunks already written in %s", n_chunks - len(pending), n_chunks, chunk_dir)
    batches, batch_chunk = [], []
    for c in pending:
        stop = min((c + 1) * chunk_size, len(paths))
        for start in range(c * chunk_size, stop, batch_size):
            batches.append(list(range(start, min(start + batch_size, stop))))
            batch_chunk.append(c)
    text = scorer.text_features(vocabulary, prompt)
    started = time.perf_counter()
    n_now = sum(len(b) for b in batches)
    if batches:
        loader = DataLoader(
            PoolImages(root, paths, scorer.preprocess),
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=collate_readable,
            pin_memory=scorer.device.type == "cuda",
            persistent_workers=False,
        )
        buffer: dict[int, np.ndarray] = {}
        bar = tqdm(total=n_now, unit="img", desc="CLIP scoring", smoothing=0.1)
        for (good, images, bad), batch, c in zip(loader, batches, batch_chunk, strict=True):
            if images is not None:
                buffer.update(zip(good, scorer.score_images(images, text), strict=True))
            bar.update(len(good) + len(bad))
            chunk_end = min((c + 1) * chunk_size, len(paths))
            if batch[-1] == chunk_end - 1:  # batches never straddle chunks, and arrive in order
                _write_chunk(chunk_dir, c, paths, range(c * chunk_size, chunk_end), buffer, concepts)
                buffer.clear()
        bar.close()
    seconds = time.perf_counter() - started
    table = pd.concat([read_table(_chunk_path(chunk_dir, c))[0] for c in range(n_chunks)], ignore_index=True)
    unreadable = table.loc[~table["readable"], "path"].tolist()
    if unreadable:
        log.warning("%d unreadable image(s) skipped, e.g. %s", len(unreadable), unreadable[0])
    scores = table.loc[table["readable"]].drop(columns="readable").reset_index(drop=True)
    return PoolScores(scores, unreadable, seconds, n_now)


def _write_chunk(
    chunk_dir: Path, chunk: int, paths: Sequence[str], indices: range, buffer: dict[int, np.ndarray],
    concepts: list[str],
) -> None:
    nan = np.full(len(concepts), np.nan)
    rows = np.stack([buffer.get(i, nan) for i in indices])
    df = pd.DataFrame(rows, columns=concepts)
    df.insert(0, "readable", [i in buffer for i in indices])
    df.insert(0, "path", [paths[i] for i in indices])
    write_table(df, _chunk_path(chunk_dir, chunk), {"chunk": chunk})
