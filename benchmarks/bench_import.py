"""Seconds per checkpoint to import N MobileNetV2 checkpoints into the MLflow registry, beyond
reading the files. Writes benchmarks/results/bench_import.md.

    python benchmarks/bench_import.py            # 300 checkpoints, full-size MobileNetV2 (14 MB each)
    python benchmarks/bench_import.py --n 20     # quicker
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

RESULT = Path(__file__).resolve().parent / "results" / "bench_import.md"


def write_checkpoints(folder: Path, n: int, width_mult: float, num_classes: int) -> None:
    """model_1.pth .. model_<n>.pth in the reference format, each with distinct weights."""
    from clipprobe.backbones.architectures import build_model
    from clipprobe.backbones.checkpoints import write_checkpoint

    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=num_classes, width_mult=width_mult)
    args = {"model": "mobilenet_v2", "width_mult": width_mult, "num_classes": num_classes}
    for epoch in range(1, n + 1):
        with torch.no_grad():
            model.classifier[1].bias.add_(1e-3)  # a new fingerprint per epoch, cheaply
        write_checkpoint(folder / f"model_{epoch}.pth", model=model, epoch=epoch, args=args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of checkpoints (default 300)")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    tmp = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        from clipprobe.backbones.checkpoints import read_checkpoint
        from clipprobe.tracking import registry, runs

        folder = tmp / "ck"
        start = time.perf_counter()
        write_checkpoints(folder, opts.n, opts.width_mult, opts.num_classes)
        t_write = time.perf_counter() - start
        files = sorted(folder.glob("model_*.pth"))
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 2**20

        start = time.perf_counter()
        for f in files:  # the disk I/O + unpickling every import pays: torch.load(weights_only=True)
            read_checkpoint(f)
        t_read = time.perf_counter() - start

        with runs.step_run("checkpoints"):  # a first, tiny import creates the tables and the model
            pass
        start = time.perf_counter()
        with runs.step_run("checkpoints"):
            summary = registry.import_checkpoints(files, name="mobilenet_v2", architecture="mobilenet_v2")
        t_import = time.perf_counter() - start
        assert len(summary.imported) == opts.n and not summary.skipped, summary.skipped

        start = time.perf_counter()
        with runs.step_run("checkpoints"):
            again = registry.import_checkpoints(files, name="mobilenet_v2", architecture="mobilenet_v2")
        t_again = time.perf_counter() - start
        assert len(again.already) == opts.n and not again.imported
    finally:
        os.chdir(Path(__file__).resolve().parent)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    n = opts.n
    rows = [
        ("read each file (torch.load weights_only=True)", t_read),
        ("import: read, check, fingerprint, log model, register, tag, alias", t_import),
        ("import beyond reading the file", t_import - t_read),
        ("re-import of the same folder (all already registered)", t_again),
    ]
    lines = [
        "# Importing MobileNetV2 checkpoints into the MLflow registry",
        "",
        f"{n} checkpoints, mobilenet_v2 width_mult={opts.width_mult} num_classes={opts.num_classes}, "
        f"{size_mb:.1f} MiB each (reference dict without optimizer state), written in {t_write:.1f} s; "
        "embedded sqlite store (WAL), local artifact store. Files are in the page cache for every pass.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"`python benchmarks/bench_import.py --n {n}`.",
        "",
        "| what | total s | s per checkpoint |",
        "|---|---:|---:|",
        *[f"| {what} | {t:.1f} | {t / n:.3f} |" for what, t in rows],
        "",
    ]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
