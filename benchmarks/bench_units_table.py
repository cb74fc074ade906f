"""The neurons tables at the seed's scale: ~10 million unit rows joined from 300 checkpoint parts and read back.

Issue 22 asks that `neurons/units.parquet` and its reads be sized for MobileNetV2's ~2,800 channels + 1,000 logits
x 9 concepts x 300 checkpoints. This writes 300 synthetic parts (random scores, the real schema and provenance,
19 modules of MobileNetV2's widths + logits) straight onto a sweep run of a temporary sqlite store, then times what
`clipprobe neurons` does after the last checkpoint (`tracking.units.log_tables`: every part streamed into the three
tables) and what the report does (`read_table` of a few columns), with the process's peak memory.

Usage: python benchmarks/bench_units_table.py [--checkpoints 300] [--out benchmarks/results/bench_units_table.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
# MobileNetV2's 19 probe modules (features.0 .. features.18) by channel count, then its 1,000 logits.
WIDTHS = (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280)
CONCEPTS = ("red", "blue", "green", "yellow", "dotted", "striped", "circle", "triangle", "star")


def part(epoch: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """One checkpoint's tables with the real columns and types, random scores."""
    from clipprobe.neurons.cards import TOP_IMAGE_COLUMNS
    from clipprobe.neurons.schema import SPARSE_COLUMNS, SUMMARY_COLUMNS

    modules = [(f"module:{i}", f"features.{i}", w) for i, w in enumerate(WIDTHS)] + [("logits", "logits", 1000)]
    units = []
    for name, path, width in modules:
        n = width * len(CONCEPTS)
        units.append(pd.DataFrame({
            "epoch": epoch, "module": name, "module_path": path, "unit": np.repeat(np.arange(width), len(CONCEPTS)),
            "concept": np.tile(CONCEPTS, width), "group": "g", "auroc": rng.random(n), "p_value": rng.random(n),
            "q_value": rng.random(n), "soft_wpmi": rng.normal(size=n), "iou": rng.random(n) * 0.1,
            "auroc_label": "red", "wpmi_label": "blue", "iou_label": "star", "pooling": "mean", "p_method": "exact",
            "label_source": "truth", "n_pos": 100, "n_neg": 200}))
    summary = pd.DataFrame([{"epoch": epoch, "module": m, "concept": c, "group": "g", "n_units": w,
                             "n_detectors_auroc": 3, "n_detectors_iou": 1, "best_unit": 0, "best_auroc": 0.9,
                             "full_test_acc": 0.9, "full_test_acc_ci_low": 0.8, "full_test_acc_ci_high": 0.95,
                             "smallest_k": 4} for m, _, w in modules for c in CONCEPTS])
    sparse = pd.DataFrame([{"epoch": epoch, "module": m, "concept": c, "group": "g", "k": k, "units": "[0]",
                            "test_acc": 0.8, "test_acc_ci_low": 0.7, "test_acc_ci_high": 0.9, "n_test": 90}
                           for m, _, _ in modules for c in CONCEPTS for k in (1, 2, 4, 8, 16, 32)])
    top = pd.DataFrame([{"epoch": epoch, "module": m, "unit": 0, "rank": r, "path": f"img{r}.png", "activation": 1.0}
                        for m, _, _ in modules for r in range(20)])
    return {"units": pd.concat(units, ignore_index=True), "sparse": sparse[list(SPARSE_COLUMNS)],
            "summary": summary[list(SUMMARY_COLUMNS)], "top_images": top[list(TOP_IMAGE_COLUMNS)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--out", default=str(RESULTS / "bench_units_table.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipprobe-units-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        import mlflow
        from mlflow.tracking import MlflowClient

        from clipprobe.core.parquet import provenance
        from clipprobe.tracking import units

        exp = mlflow.create_experiment("units", artifact_location=f"{tmp}/artifacts")
        client = MlflowClient()
        sweep = client.create_run(exp).info.run_id
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for epoch in range(args.checkpoints):  # the parts `log_checkpoint` writes, without its per-checkpoint runs
            tables = part(epoch, rng)
            with tempfile.TemporaryDirectory() as ptmp:
                folder = Path(ptmp) / "all"
                for name in units.TABLES:
                    units._write(name, tables[name], folder / f"{name}.parquet",
                                 provenance(f"neurons_{name}", epoch=epoch))
                client.log_artifacts(sweep, str(folder), f"{units.PARTS_DIR}/epoch_{epoch:04d}/all")
        t_parts = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = units.log_tables(sweep, {"sweep_run_id": sweep})
        t_join = time.perf_counter() - t0
        peak_join = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = Path(f"{tmp}/artifacts/{sweep}/artifacts/neurons/units.parquet").stat().st_size
        t0 = time.perf_counter()
        cols = units.read_table(sweep, "units", columns=["epoch", "module", "unit", "concept", "auroc", "q_value"])
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = units.read_table(sweep, "summary")
        t_summary = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lines = [
        "# The neurons tables at the seed's scale",
        "",
        f"{args.checkpoints} checkpoint parts of MobileNetV2's 19 modules ({sum(WIDTHS):,} channels) + 1,000 logits x "
        f"{len(CONCEPTS)} concepts (random scores, the real schema), written onto one sweep run of a temporary sqlite "
        "store, joined as `clipprobe neurons` joins them after its last checkpoint, then read as the report reads them.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; load average "
        f"{os.getloadavg()[0]:.1f} at the end; one run. Command: `python benchmarks/bench_units_table.py"
        f"{'' if args.checkpoints == 300 else f' --checkpoints {args.checkpoints}'}`.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| unit rows (`neurons/units.parquet`) | {counts['units']:,} |",
        f"| its size on disk | {size / 2**20:.1f} MiB |",
        f"| writing the {args.checkpoints} parts (synthesis + `log_artifacts`) | {t_parts:.1f} s |",
        f"| joining every part into the three tables (`log_tables`, streamed row groups) | {t_join:.1f} s |",
        f"| reading 6 columns of every unit row (`read_table(..., columns=[...])`) | {t_read:.1f} s "
        f"({len(cols):,} rows) |",
        f"| reading the summary table | {t_summary:.2f} s ({len(summary):,} rows) |",
        f"| peak memory of the process after the join (ru_maxrss) | {peak_join:,.0f} MiB |",
        f"| peak memory after the reads (6 columns of every row as a DataFrame) | {peak:,.0f} MiB |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
