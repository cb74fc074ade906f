"""A small CLIP that knows the concept world: trained with open_clip's own model config and
contrastive loss on the world's training images, captioned from their known attributes.

The model is an open_clip architecture like any other: a JSON config (``<name>.json``, open_clip's
format) beside a plain state-dict file (``<name>.pt``), so ``concepts --clip-model <name>
--clip-weights <name>.pt`` loads it by the route a user's own CLIP file takes. Nothing here imports
MLflow or the CLI.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.loss import ClipLoss
from PIL import Image

from clipprobe.concepts.config import WORLD_CLIP_NAME, WorldClipConfig
from clipprobe.concepts.scoring import file_sha256
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, check_prompt
from clipprobe.world.generate import read_truth

log = logging.getLogger(__name__)

# A tiny ViT (8 px patches: an 8 x 8 grid at 64 px) and a one-layer causal text transformer, in open_clip's config format. The text tower keeps open_clip's BPE
# vocabulary (49,408 tokens), so open_clip's own tokenizer serves it; captions are short, hence
# a 16-token context.
WORLD_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0,
                   "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                 "mlp_ratio": 2.0},
}
# The attributes a world image is captioned with, and the zero-shot groups reported per held-out image.
ATTRIBUTES = ("colour", "pattern", "shape")
# Caption templates: the seed's prompt for each attribute alone, and descriptions naming several.
CAPTION_TEMPLATES: tuple[str, ...] = (
    DEFAULT_PROMPT.replace("{concept}", "{colour}"),
    DEFAULT_PROMPT.replace("{concept}", "{pattern}"),
    DEFAULT_PROMPT.replace("{concept}", "{shape}"),
    "a {colour} {pattern} {shape}",
    "a {pattern} {shape} in {colour}",
    "a {colour} {shape}",
)


def caption(template: str, attributes: dict[str, str]) -> str:
    """One caption of an image from a template and its attributes (``colour``, ``pattern``, ``shape``)."""
    return template.format(**attributes)


@dataclass
class WorldImages:
    """Preprocessed images of one world split and their attributes, row for row."""

    pixels: torch.Tensor  # (n, 3, size, size), the model's own eval transform applied
    attributes: pd.DataFrame  # path, colour, pattern, shape


@dataclass
class TrainedWorldClip:
    """The trained model with its transform and tokenizer, the loss per epoch and the wall time."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    config: WorldClipConfig
    model_config: dict
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_train_images: int = 0


def register_model_config(folder: str | Path, name: str = WORLD_CLIP_NAME, config: dict | None = None) -> Path:
    """Write ``<folder>/<name>.json`` (open_clip's config format) and register it with open_clip."""
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config or WORLD_CLIP_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(path)
    return path


def load_world_images(world_root: str | Path, split: str, preprocess: Callable) -> WorldImages:
    """Every image of ``split`` (train, val or pool) through ``preprocess``, with its truth row."""
    root = Path(world_root)
    truth = pd.read_parquet(root / "truth.parquet", columns=["path", "split", *ATTRIBUTES])
    rows = truth[truth["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{root / 'truth.parquet'} has no {split!r} images: generate the world with "
                         f"--{split}-per-class above 0 (`clipprobe world`)")
    tensors = []
    for rel in rows["path"]:
        with Image.open(root / rel) as image:
            tensors.append(preprocess(image.convert("RGB")))
    return WorldImages(torch.stack(tensors), rows.drop(columns="split"))


def _cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings' positions and the temperature (open_clip's own rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        flat = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if flat else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def create_world_clip(config: WorldClipConfig, folder: str | Path, model_config: dict | None = None):
    """A fresh, seeded open_clip model of the registered world config: (model, preprocess, tokenizer)."""
    register_model_config(folder, config.clip_model, model_config)
    torch.manual_seed(config.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(config.clip_model, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(config.clip_model)


def train_world_clip(
    world_root: str | Path,
    folder: str | Path,
    config: WorldClipConfig | None = None,
    *,
    model_config: dict | None = None,
    max_steps: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainedWorldClip:
    """Train the world CLIP on the world's training images with open_clip's :class:`ClipLoss`.

    Each image gets a caption drawn per step from :data:`CAPTION_TEMPLATES` (the seed's prompt among
    them) and a random horizontal flip (colour, pattern and shape survive it). AdamW with a linear
    warm-up and a cosine decay per step. ``max_steps`` stops early (tests); ``on_epoch(epoch,
    mean_loss)`` reports each epoch. The config JSON is written to ``folder``.
    """
    config = config or WorldClipConfig()
    model_config = model_config or WORLD_CLIP_CONFIG
    model, preprocess, tokenizer = create_world_clip(config, folder, model_config)
    model.to(device)
    data = load_world_images(world_root, "train", preprocess)
    n = len(data.pixels)
    _check_batch(n, config)
    records = data.attributes[list(ATTRIBUTES)].to_dict("records")
    # Every caption tokenised once: (image, template) -> tokens.
    tokens = torch.stack([tokenizer([caption(t, r) for t in CAPTION_TEMPLATES]) for r in records])
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = n // config.batch_size
    total = config.epochs * steps_per_epoch if max_steps is None else min(max_steps, config.epochs * steps_per_epoch)
    warmup = max(1, round(config.warmup_pct * total))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    history: list[float] = []
    start, step = time.perf_counter(), 0
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            images = data.pixels[idx].to(device)
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            text = tokens[idx, torch.as_tensor(rng.integers(len(CAPTION_TEMPLATES), size=len(idx)))].to(device)
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(step, total, config.lr, warmup)
            image_features, text_features, logit_scale = model(images, text)
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # CLIP's clamp: the temperature stays at most 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
        if losses:
            history.append(float(np.mean(losses)))
            log.info("world CLIP epoch %d: loss %.3f", epoch, history[-1])
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
        if step >= total:
            break
    model.eval().cpu()
    return TrainedWorldClip(model, preprocess, tokenizer, config, model_config, history,
                            time.perf_counter() - start, n)


@torch.inference_mode()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    images: WorldImages,
    *,
    prompt: str = DEFAULT_PROMPT,
    values: dict[str, Sequence[str]] | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Per attribute (colour, pattern, shape): zero-shot accuracy of ``prompt`` over the attribute's
    values, on ``images``. Rows: ``group``, ``accuracy``, ``chance`` (1 / number of values),
    ``n_images``, ``n_values``. ``values`` defaults to the values the images hold."""
    check_prompt(prompt)
    model.eval()
    feats = torch.cat([model.encode_image(images.pixels[i:i + batch_size]).float()
                       for i in range(0, len(images.pixels), batch_size)])
    feats = torch.nn.functional.normalize(feats, dim=-1)
    rows = []
    for attribute in ATTRIBUTES:
        names = list(values[attribute]) if values and attribute in values else sorted(images.attributes[attribute].unique())
        text = torch.nn.functional.normalize(
            model.encode_text(tokenizer([prompt.format(concept=v) for v in names])).float(), dim=-1)
        predicted = np.asarray(names, dtype=object)[(feats @ text.T).argmax(dim=1).numpy()]
        truth = images.attributes[attribute].to_numpy()
        rows.append({"group": attribute, "accuracy": float((predicted == truth).mean()),
                     "chance": 1.0 / len(names), "n_images": len(truth), "n_values": len(names)})
    return pd.DataFrame(rows)


def save_world_clip(trained: TrainedWorldClip, folder: str | Path) -> tuple[Path, Path]:
    """``<folder>/<name>.pt`` (a plain state dict) and ``<folder>/<name>.json`` (its open_clip config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = trained.config.clip_model
    weights = folder / f"{name}.pt"
    torch.save({k: v.detach().cpu() for k, v in trained.model.state_dict().items()}, weights)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(trained.model_config, indent=2) + "\n")
    return weights, config


def attribute_values(world_root: str | Path) -> dict[str, list[str]]:
    """Every value of each attribute the world was generated with (the zero-shot candidates); a
    ``WorldError`` when ``world_root`` holds no concept world."""
    _, spec = read_truth(world_root)
    return {"colour": list(spec.colours), "pattern": list(spec.patterns), "shape": list(spec.shapes)}


def _check_batch(n_train: int, config: WorldClipConfig) -> None:
    if n_train < config.batch_size:
        raise ValueError(f"the world has {n_train} training images, fewer than a batch of {config.batch_size}: "
                         "lower --batch-size or generate more (--train-per-class)")


def check_world(world_root: str | Path, config: WorldClipConfig) -> None:
    """That ``world_root`` holds a concept world (``WorldError``) with a batch of training images at least
    (``ValueError``): what ``make_world_clip`` needs, checked from the truth table alone, before any run."""
    attribute_values(world_root)
    truth = pd.read_parquet(Path(world_root) / "truth.parquet", columns=["split"])
    _check_batch(int((truth["split"] == "train").sum()), config)


@dataclass
class WorldClipResult:
    """A trained, evaluated and saved world CLIP: what the ``clip`` step logs and prints."""

    trained: TrainedWorldClip
    accuracy: pd.DataFrame  # zero_shot_accuracy on the world's validation images
    n_val_images: int
    weights: Path
    config_file: Path
    sha256: str

    def metrics(self) -> dict[str, float]:
        out = {"train_seconds": self.trained.seconds,
               "n_parameters": sum(p.numel() for p in self.trained.model.parameters())}
        for row in self.accuracy.itertuples():
            out[f"val_zero_shot_acc.{row.group}"] = row.accuracy
            out[f"val_zero_shot_chance.{row.group}"] = row.chance
        return out


def make_world_clip(world_root: str | Path, out: str | Path, config: WorldClipConfig, *,
                    device: str | torch.device = "cpu",
                    on_epoch: Callable[[int, float], None] | None = None) -> WorldClipResult:
    """Train the world CLIP (:func:`train_world_clip`), measure its zero-shot accuracy with ``config.prompt``
    over every value the world was generated with, and save it to ``out`` (:func:`save_world_clip`)."""
    values = attribute_values(world_root)
    trained = train_world_clip(world_root, out, config, device=device, on_epoch=on_epoch)
    val = load_world_images(world_root, "val", trained.preprocess)
    accuracy = zero_shot_accuracy(trained.model, trained.tokenizer, val, prompt=config.prompt, values=values)
    weights, config_file = save_world_clip(trained, out)
    return WorldClipResult(trained, accuracy, len(val.pixels), weights, config_file, file_sha256(weights))
