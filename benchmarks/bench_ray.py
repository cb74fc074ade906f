"""Benchmark `clipprobe probe --executor ray`: 8 small checkpoints (MobileNetV2 0.25, random init,
32x32 coloured-square images, 2 concepts, 4 modules, 2 probe kinds) probed in-process, then by Ray with
1 and with 2 workers (a local cluster of 1 or 2 CPUs; Ray gives each task 1 CPU and 1 torch thread).
Every run starts from an empty activation cache and a new sweep run on a sqlite store.

The projection for N GPUs is benchmarks/project_gpus.py's, from a one-GPU number that
bench_sweep_gpu.py measures without Ray or MLflow: neither is on the lent GPU machines, and Ray's wheel
(75.6 MiB for Python 3.12) is larger than what may travel there (64 MiB).

Writes benchmarks/results/bench_ray.md.
Usage: python benchmarks/bench_ray.py [--checkpoints 8] [--workdir .cache/bench_ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny world: sweep_fakes
OPTS = ["--modules", "module:0,module:3,module:6,module:9", "--probes", "linear_gap,non_linear_gap",
        "--repeats", "1", "--permutations", "0"]
META = {"architecture": "mobilenet_v2", "width_mult": 0.25, "num_classes": 4, "val_resize_size": 32,
        "val_crop_size": 32}


def setup(work: Path, checkpoints: int) -> None:
    import mlflow
    from sweep_fakes import make_splits, mobilenet

    from clipprobe.concepts.splits import write_splits
    from clipprobe.tracking import registry, runs

    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with runs.step_run("checkpoints", tags={registry.MODEL_NAME_TAG: "bench"}):
        for epoch in range(checkpoints):
            registry.log_checkpoint(mobilenet(epoch), name="bench", epoch=epoch, source=f"model_{epoch}.pth",
                                    metadata=META)
    splits = make_splits(work / "pool", per_colour=48, negatives=96)
    path = write_splits(splits.table, work / "splits.parquet", splits.metadata)
    with runs.step_run("concepts"):
        runs.log_artifact(path, "concepts")


def sweep(work: Path, label: str, extra: list[str]) -> float:
    from click.testing import CliRunner

    from clipprobe.cli import main

    t = time.perf_counter()
    out = CliRunner().invoke(main, ["probe", *OPTS, "--cache-dir", str(work / f"cache-{label}"), *extra])
    seconds = time.perf_counter() - t
    if out.exit_code != 0:
        raise RuntimeError(f"{label}: {out.output[-3000:]}") from out.exception
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds


def ray_sweep(work: Path, label: str, cpus: int, extra: list[str]) -> float:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        return sweep(work, label, ["--executor", "ray", *extra])
    finally:
        ray.shutdown()


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.1f} at start (5 engineers share "
            "these 2 cores: contended, not quiet)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--workdir", default=".cache/bench_ray")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chdir(work)
    setup(work, args.checkpoints)
    fits = args.checkpoints * 4 * 2 * 2
    head = (f"Command: `python benchmarks/bench_ray.py {' '.join(sys.argv[1:])}`; one run each; {machine()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.checkpoints} checkpoints x 4 modules x "
            f"2 concepts x 2 probe kinds = {fits} fits.\n\n")
    RESULTS.mkdir(exist_ok=True)
    local = sweep(work, "local (in-process)", ["--executor", "local", "--device", "cpu"])
    one = ray_sweep(work, "ray, 1 worker", 1, ["--device", "cpu"])
    two = ray_sweep(work, "ray, 2 workers", 2, ["--device", "cpu"])
    table = "\n".join([
        "| executor | wall s | vs ray 1 worker |", "|---|---|---|",
        f"| local (in-process, 2 torch threads) | {local:.1f} | {one / local:.2f}x |",
        f"| ray, 1 worker (1 CPU) | {one:.1f} | 1.00x |",
        f"| ray, 2 workers (2 CPUs) | {two:.1f} | {one / two:.2f}x |"])
    (RESULTS / "bench_ray.md").write_text("# 8 small checkpoints: 1 vs 2 Ray workers\n\n" + head + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
