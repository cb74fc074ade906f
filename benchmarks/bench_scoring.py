"""Images/s of the whole CLIP scoring step (decode + model + softmax + chunk writing) vs the bare
image tower on the same, already decoded batches. Writes benchmarks/results/bench_scoring.md.

    python benchmarks/bench_scoring.py --n-images 512 --models tiny,ViT-B-32
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from concepts_tiny_clip import register_tiny, tiny_weights  # noqa: E402

from clipprobe.concepts.pool import PoolImages, list_images  # noqa: E402
from clipprobe.concepts.scoring import ClipScorer, score_pool  # noqa: E402
from clipprobe.concepts.vocabulary import load_vocabulary  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "bench_scoring.md"


def make_pool(folder: Path, n: int, size: int = 320) -> None:
    """JPEGs of ImageNet-like size with smooth random content (decoding cost close to real photos)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        image.save(folder / f"ILSVRC2012_val_{i:08d}.JPEG", quality=90)


def make_scorer(model: str, tmp: Path, device: str, precision: str) -> ClipScorer:
    if model == "tiny":
        name = register_tiny(tmp)
        return ClipScorer.create(name, str(tiny_weights(tmp, name)), device=device, precision=precision)
    return ClipScorer.create(model, None, device=device, precision=precision)  # random weights, same shapes


def bare_tower(scorer: ClipScorer, pool: Path, paths: list[str], batch_size: int) -> float:
    """Seconds for encode_image alone over the same batches, images decoded beforehand."""
    data = PoolImages(pool, paths, scorer.preprocess)
    batches = [torch.stack([data[i][1] for i in range(s, min(s + batch_size, len(paths)))])
               for s in range(0, len(paths), batch_size)]
    with torch.inference_mode():
        scorer.image_features(batches[0][:2])  # warm-up
        sync(scorer)
        start = time.perf_counter()
        for batch in batches:
            scorer.image_features(batch)
        sync(scorer)
        return time.perf_counter() - start


def sync(scorer: ClipScorer) -> None:
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()


def whole_step(scorer: ClipScorer, pool: Path, paths: list[str], tmp: Path, batch_size: int, workers: int) -> float:
    """Seconds for score_pool: text features, DataLoader decoding, model, softmax, Parquet chunks."""
    chunks = tmp / f"chunks-{time.time_ns()}"
    start = time.perf_counter()
    score_pool(scorer, pool, paths, load_vocabulary("seed"), chunk_dir=chunks, batch_size=batch_size,
               num_workers=workers, chunk_size=max(batch_size, len(paths) // 4))
    sync(scorer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--models", default="tiny,ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_pool(tmp / "pool", args.n_images)
        paths = list_images(tmp / "pool")
        for model in args.models.split(","):
            scorer = make_scorer(model, tmp, args.device, args.precision)
            whole_step(scorer, tmp / "pool", paths[: args.batch_size], tmp, args.batch_size, 0)  # warm-up
            tower = bare_tower(scorer, tmp / "pool", paths, args.batch_size)
            step = whole_step(scorer, tmp / "pool", paths, tmp, args.batch_size, args.num_workers)
            n = len(paths)
            rows.append((model, n, n / tower, n / step, step / tower))
            logging.warning("%s: tower %.1f img/s, step %.1f img/s, ratio %.2f", model, n / tower, n / step, step / tower)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    lines = [
        "# CLIP scoring: whole step vs bare image tower",
        "",
        f"`python benchmarks/bench_scoring.py --n-images {args.n_images} --models {args.models} "
        f"--batch-size {args.batch_size} --num-workers {args.num_workers} --device {args.device} "
        f"--precision {args.precision}`",
        "",
        f"Device: {device}; {os.cpu_count()} CPU cores visible; torch {torch.__version__}; "
        f"pool: {args.n_images} JPEGs of 320x320. Goal: step / tower <= 1.2.",
        "",
        "| model | images | bare tower (img/s) | whole step (img/s) | step time / tower time |",
        "|---|---|---|---|---|",
        *[f"| {m} | {n} | {t:.1f} | {s:.1f} | {r:.2f} |" for m, n, t, s, r in rows],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
