"""CLIP zero-shot scoring of an image pool: per image, a softmax over each group's concepts, and the raw cosine
similarity to every concept (CLIP-Dissect's input, no softmax).

CLIP weights come in the forms people have them: an open_clip pretrained tag, an ``hf-hub:`` name,
a plain state dict, an open_clip training checkpoint (``epoch_N.pt``) or OpenAI's TorchScript
archive; each scorer records the form and the sha256 of the file it loaded."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import pickle
import re
import socket
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import get_input_dtype
from open_clip.pretrained import (
    download_pretrained,
    download_pretrained_from_hf,
    get_pretrained_cfg,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clipprobe.concepts.pool import PoolImages, collate_readable
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, Vocabulary, check_prompt
from clipprobe.core.errors import InputError
from clipprobe.core.parquet import read_table, write_table

log = logging.getLogger(__name__)

CLIP_PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
# How CLIP weights were given: nothing (random), a pretrained tag, an hf-hub name, or a local file
# as a state dict, an open_clip training checkpoint, OpenAI's TorchScript archive, safetensors, npz.
WEIGHT_FORMS = ("random", "tag", "hf-hub", "state_dict", "training_checkpoint", "torchscript",
                "safetensors", "npz")
_FILE_FORMS = WEIGHT_FORMS[3:]
COSINE_PREFIX = "cosine:"  # a score chunk's cosine columns (beside the probability columns named by concept)


@dataclass(frozen=True)
class ClipWeights:
    """Where a scorer's weights came from: their form, the local file (downloaded or given), its sha256."""

    form: str
    path: Path | None = None
    sha256: str | None = None


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def _refused_object(err: BaseException) -> str | None:
    """The class a ``weights_only`` load refused (a pickled Python object, e.g. a whole ``nn.Module``), else None."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    return found.group(1) if isinstance(err, pickle.UnpicklingError) and found else None


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connect to the hub; huggingface_hub itself retries for about a minute
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached, in a few words, else None.

    One TCP connect, so a machine without network learns it at once instead of after huggingface_hub's
    retries. Behind a proxy (``HTTPS_PROXY`` ...) a direct connect proves nothing: None."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    url = urllib.parse.urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} is unreachable: {_first_line(err, 80)}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (cached files only, no request) while ``offline``."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class ClipWeightsError(InputError, RuntimeError):
    """CLIP weights that cannot be fetched or loaded (one line naming the weights and the fix)."""


def _download_failed(what: str, fetch: str, err: BaseException, unreachable: str | None = None) -> ClipWeightsError:
    if _offline():
        why = "HF_HUB_OFFLINE is set and they are not in the cache"
    else:
        why = f"{unreachable} and they are not in the cache" if unreachable else _first_line(err)
    return ClipWeightsError(
        f"CLIP weights {what} could not be fetched ({why}): on a machine with network run "
        f"`python -c \"import open_clip; {fetch}\"` and copy its cache (HF_HOME) here, or pass the "
        "weights file with --clip-weights"
    )


def weights_file_form(path: str | Path) -> str:
    """The form of a local CLIP weights file; ValueError (one line naming the file) when it is none.

    ``torchscript``: OpenAI's archive (``torch.jit.save``); ``training_checkpoint``: a dict with
    ``state_dict`` (open_clip's ``epoch_N.pt``, keys maybe ``module.``-prefixed by DDP);
    ``state_dict``: tensors by name; ``safetensors`` and ``npz`` by their suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".npz", ".npy"):
        return "npz"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist()):
                return "torchscript"
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no copy of the tensors
        except RuntimeError:
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the legacy, non-zip format
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        refused = _refused_object(err)
        what = (f"a pickled {refused}, which weights-only loading refuses; save model.state_dict() instead"
                if refused else f"not a readable CLIP weights file ({_first_line(err, 120)})")
        raise ValueError(
            f"{path}: {what}: expected a state dict, an open_clip training checkpoint (epoch_N.pt) or OpenAI's "
            "TorchScript archive"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return "training_checkpoint"
    if isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict"
    keys = f" (keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) else ""
    hint = "; a dict with 'model' is a backbone checkpoint: import it with `clipprobe checkpoints`" \
        if isinstance(obj, Mapping) and "model" in obj else ""
    raise ValueError(
        f"{path}: holds a {type(obj).__name__} without tensors{keys}, not CLIP weights: expected a state dict, "
        f"an open_clip training checkpoint (a dict with 'state_dict') or OpenAI's TorchScript archive{hint}"
    )


def resolve_clip_weights(model_name: str, pretrained: str | None, *, cache_dir: str | None = None) -> ClipWeights:
    """The local file behind ``model_name``/``pretrained`` and its form, downloading a tag's or an
    hf-hub repo's weights into open_clip's cache when they are not there yet.

    RuntimeError (one line, naming the fix) when a download is needed and fails, e.g. offline.
    """
    if model_name.startswith("hf-hub:"):
        model_id = model_name.removeprefix("hf-hub:")
        unreachable = None if _offline() else hub_unreachable()
        try:
            with _hub_offline(unreachable is not None):  # the cache still serves what it holds
                path = Path(download_pretrained_from_hf(model_id, cache_dir=cache_dir))
        except Exception as err:
            raise _download_failed(model_name, f"open_clip.create_model('{model_name}')", err, unreachable) from None
        return ClipWeights("hf-hub", path, file_sha256(path))
    if not pretrained:
        return ClipWeights("random")
    cfg = get_pretrained_cfg(model_name, pretrained)
    if cfg:
        unreachable = None if _offline() or not cfg.get("hf_hub") else hub_unreachable()
        try:
            with _hub_offline(unreachable is not None):
                path = Path(download_pretrained(cfg, cache_dir=cache_dir))
        except Exception as err:
            raise _download_failed(f"{model_name} pretrained {pretrained!r}",
                                   f"open_clip.create_model('{model_name}', pretrained='{pretrained}')",
                                   err, unreachable) from None
        return ClipWeights("tag", path, file_sha256(path))
    path = Path(pretrained).expanduser()
    return ClipWeights(weights_file_form(path), path, file_sha256(path))


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


def config_beside_weights(model_name: str, weights: str | None) -> Path | None:
    """``<model_name>.json`` in the weights file's folder, when both exist: an open_clip model config
    (``embed_dim``, ``vision_cfg``, ``text_cfg``) that travels with its weights, as the ``clip`` step
    saves them. Registered with ``open_clip.add_model_config`` it makes ``model_name`` a known
    architecture, so the file loads like any other."""
    if not weights or not Path(weights).expanduser().is_file():
        return None
    config = Path(weights).expanduser().with_name(f"{model_name}.json")
    return config if config.is_file() else None


def _closest(name: str, known: Sequence[str]) -> str:
    """"did you mean" for an architecture name: same name in other case first, then the nearest spellings."""
    by_case = {m.lower(): m for m in known}
    near = difflib.get_close_matches(name.lower(), list(by_case), n=5, cutoff=0.6)
    if not near:
        return f"open_clip has e.g. {', '.join(known[:8])}"
    return f"did you mean {' or '.join(by_case[m] for m in near)}?"


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
    weights_form: str = "random"  # one of WEIGHT_FORMS
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
        """Like ``open_clip.create_model_and_transforms``: ``pretrained`` is a tag, a local file (a
        state dict, an open_clip training checkpoint, OpenAI's TorchScript archive), or ignored for
        an ``hf-hub:org/repo`` name. Errors name what was asked for, what exists and the fix."""
        device = torch.device(device)
        if precision not in CLIP_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(CLIP_PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device: use bf16 on CPU (or fp32)")
        if model_name.startswith("hf-hub:"):
            pretrained = None
        else:
            if pretrained and _looks_like_path(pretrained) and not Path(pretrained).expanduser().is_file():
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none known"
                raise FileNotFoundError(f"CLIP weights file not found: {pretrained} (give an existing weights file, "
                                        f"or a pretrained tag of {model_name}: {tags})")
            beside = config_beside_weights(model_name, pretrained)
            if beside is not None:
                open_clip.add_model_config(beside)  # the user's own architecture, as open_clip reads it
            if model_name not in open_clip.list_models():
                raise ValueError(
                    f"unknown CLIP architecture {model_name!r}: {_closest(model_name, open_clip.list_models())} "
                    "(see open_clip.list_models()); "
                    f"for your own architecture put its open_clip config as {model_name}.json next to the "
                    "weights file"
                )
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained and pretrained not in tags:
                path = Path(pretrained).expanduser()
                if path.is_file():
                    pretrained = str(path)
                else:
                    raise ValueError(
                        f"unknown pretrained tag {pretrained!r} for {model_name}: known tags are "
                        f"{', '.join(tags) or 'none'}; or give a local weights file"
                    )
            if not pretrained:
                log.warning("no CLIP weights given for %s: the model is randomly initialised", model_name)
        weights = resolve_clip_weights(model_name, pretrained, cache_dir=cache_dir)
        try:
            if weights.form == "torchscript":
                # OpenAI's archive: the architecture is read from its weights (open_clip's own loader).
                model = open_clip.load_openai_model(str(weights.path), precision=precision, device=device)
                preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                                       mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
            else:
                # A tag trained with QuickGELU (OpenAI's) needs it in the model too; open_clip only warns.
                quick_gelu = weights.form == "tag" and bool(get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=device, precision=precision, cache_dir=cache_dir,
                    force_quick_gelu=quick_gelu,
                )
        except (RuntimeError, KeyError, ValueError, AssertionError) as err:  # open_clip asserts on shapes
            if weights.form in ("tag", "hf-hub"):
                raise _download_failed(model_name if pretrained is None else f"{model_name} pretrained "
                                       f"{pretrained!r}", f"open_clip.create_model('{model_name}'"
                                       + (f", pretrained='{pretrained}')" if pretrained else ")"), err) from err
            raise ClipWeightsError(
                f"could not load CLIP {model_name} from {pretrained} ({weights.form}): {_first_line(err)}; "
                "check that --clip-model names the architecture these weights were saved from"
            ) from err
        model.eval()
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        return cls(model=model, preprocess=preprocess, tokenizer=tokenizer, model_name=model_name,
                   pretrained=pretrained, weights_sha256=weights.sha256, device=device, precision=precision,
                   weights_form=weights.form)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature ``exp(logit_scale)``, the factor on cosines before the softmax."""
        return float(self.model.logit_scale.detach().float().exp().reshape(-1)[0])

    def provenance(self) -> dict[str, Any]:
        return {
            "clip_model": self.model_name,
            "clip_pretrained": Path(self.pretrained).name if self.weights_form in _FILE_FORMS else self.pretrained,
            "clip_weights_form": self.weights_form,
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
        return self.score_and_cosines(images, text_features)[0]

    def score_and_cosines(self, images: torch.Tensor, text_features: Sequence[torch.Tensor]
                          ) -> tuple[np.ndarray, np.ndarray]:
        """``(images, concepts)`` group probabilities and cosine similarities (float64) of one batch, from one
        image encoding."""
        image = self.image_features(images)
        probs = group_probabilities(image, text_features, self.logit_scale)
        cosines = image.double() @ torch.cat(list(text_features)).double().T
        return probs.cpu().numpy(), cosines.cpu().numpy()


@dataclass
class PoolScores:
    """Scores of the readable images (group probabilities; the cosine similarities in ``similarities``, same rows)
    and the list of files that could not be decoded."""

    scores: pd.DataFrame
    unreadable: list[str]
    seconds: float = 0.0
    images_scored_now: int = 0
    similarities: pd.DataFrame | None = None


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
    # "columns" keeps chunks written before the cosines were stored from being reused (they lack them)
    _prepare_chunk_dir(chunk_dir, {"resume_key": resume_key or {}, "n_images": len(paths),
                                   "chunk_size": chunk_size, "concepts": concepts,
                                   "columns": "probabilities+cosines"})
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
        buffer: dict[int, np.ndarray] = {}  # per image: its probabilities, then its cosines
        bar = tqdm(total=n_now, unit="img", desc="CLIP scoring", smoothing=0.1)
        for (good, images, bad), batch, c in zip(loader, batches, batch_chunk, strict=True):
            if images is not None:
                probs, cosines = scorer.score_and_cosines(images, text)
                buffer.update(zip(good, np.concatenate([probs, cosines], axis=1), strict=True))
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
    readable = table.loc[table["readable"]].drop(columns="readable").reset_index(drop=True)
    cosine_columns = [COSINE_PREFIX + c for c in concepts]
    scores = readable.drop(columns=cosine_columns)
    similarities = readable[["path", *cosine_columns]].rename(columns=dict(zip(cosine_columns, concepts, strict=True)))
    return PoolScores(scores, unreadable, seconds, n_now, similarities)


def _write_chunk(
    chunk_dir: Path, chunk: int, paths: Sequence[str], indices: range, buffer: dict[int, np.ndarray],
    concepts: list[str],
) -> None:
    nan = np.full(2 * len(concepts), np.nan)
    rows = np.stack([buffer.get(i, nan) for i in indices])
    df = pd.DataFrame(rows, columns=[*concepts, *(COSINE_PREFIX + c for c in concepts)])
    df.insert(0, "readable", [i in buffer for i in indices])
    df.insert(0, "path", [paths[i] for i in indices])
    write_table(df, _chunk_path(chunk_dir, chunk), {"chunk": chunk})
