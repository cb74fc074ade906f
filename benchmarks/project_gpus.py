"""Project the seed's full sweep (300 checkpoints x 513 fits = 153,900 fits) onto N GPUs.

Each GPU worker probes whole checkpoints, so compute time is ``checkpoints x s / N`` plus one image
decoding per worker, where ``s`` is one GPU's seconds per checkpoint (``bench_sweep_gpu.py``'s JSON,
measured on a GPU). Every fit is also a nested run in the tracking store, and the N workers write at
once, so the sweep takes at least ``fits / rate(N)``, with ``rate`` the store's measured fit runs/s at
that many writers (``bench_tracking.py writers`` tables). Beyond the largest measured writer count the
rate is held at that count's: no more is assumed than was measured.

The projection is the larger of the two (the store and the GPUs overlap: workers write while they
compute). It leaves out Ray's scheduling per checkpoint (``bench_ray.md``'s one-worker Ray run took
0.9 s per checkpoint more than the in-process one, on fewer threads; not measured apart) and
checkpoint loading (0.34 s beyond reading the file, ``bench_import.md``).

Usage: python benchmarks/project_gpus.py [--gpu benchmarks/results/bench_sweep_gpu.json]
       [--writers benchmarks/results/bench_tracking_writers.md ...] [--checkpoints 300]
Writes benchmarks/results/bench_gpu_projection.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GPUS = (1, 2, 4, 8, 16, 32, 64)
STORE_NAMES = {"sqlite": "sqlite", "postgresql": "PostgreSQL", "mlflow server": "mlflow server"}


def read_rates(paths: list[Path]) -> dict[str, dict[int, float]]:
    """Fit runs/s per store and writer count from bench_tracking.py's writers tables; a later file's row
    replaces an earlier one's, and rows that failed are left out."""
    rates: dict[str, dict[int, float]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 5 or not cells[1].isdigit() or not re.fullmatch(r"[\d.]+", cells[3]):
                continue
            store = next((name for key, name in STORE_NAMES.items() if cells[0].lower().startswith(key)), None)
            if store is None:
                raise ValueError(f"{path}: unknown store {cells[0]!r} (known: {', '.join(STORE_NAMES)})")
            rates.setdefault(store, {})[int(cells[1])] = float(cells[3])
    if not rates:
        raise ValueError(f"no writer rates in {', '.join(map(str, paths))}: run `python benchmarks/bench_tracking.py "
                         "writers` first")
    return rates


def rate_at(rates: dict[int, float], writers: int) -> float:
    """The measured rate at the largest measured writer count not above ``writers``."""
    measured = [n for n in rates if n <= writers] or [min(rates)]
    return rates[max(measured)]


def project(gpu: dict, rates: dict[str, dict[int, float]], checkpoints: int) -> list[dict]:
    """One row per GPU count: the compute time and, per store, the projected wall time and its limit."""
    fits = checkpoints * gpu["fits_per_checkpoint"]
    rows = []
    for n in GPUS:
        per_worker = -(-checkpoints // n)  # whole checkpoints per worker
        compute = per_worker * gpu["seconds_per_checkpoint"] + gpu["decoding_seconds_per_worker"]
        row = {"gpus": n, "compute_s": compute, "stores": {}}
        for store, by_writers in rates.items():
            floor = fits / rate_at(by_writers, n)
            row["stores"][store] = (max(compute, floor), "GPUs" if compute >= floor else "store")
        rows.append(row)
    return rows


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def table(gpu: dict, rates: dict[str, dict[int, float]], checkpoints: int) -> str:
    stores = list(rates)
    lines = ["| GPUs | compute alone | " + " | ".join(f"with {s}" for s in stores) + " |",
             "|---:|---:|" + "---:|" * len(stores)]
    for row in project(gpu, rates, checkpoints):
        cells = [f"{hours(t)} ({limit})" for t, limit in (row["stores"][s] for s in stores)]
        lines.append(f"| {row['gpus']} | {hours(row['compute_s'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=Path, default=RESULTS / "bench_sweep_gpu.json")
    parser.add_argument("--writers", type=Path, nargs="+",
                        default=[RESULTS / "bench_tracking_writers.md", RESULTS / "bench_tracking_writers_sqlite.md"])
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_gpu_projection.md")
    args = parser.parse_args()
    if not args.gpu.is_file():
        parser.error(f"{args.gpu} is missing: measure one GPU first with "
                     "`python benchmarks/bench_sweep_gpu.py --device cuda --repeats 3` on a machine with a GPU")
    gpu = json.loads(args.gpu.read_text())
    warning = ""
    if gpu.get("device") != "cuda" or gpu.get("small"):
        warning = (f"**Not a GPU projection**: {args.gpu.name} was measured with --device {gpu.get('device')}"
                   f"{' --small' if gpu.get('small') else ''}, not on a GPU at the seed's sizes.\n")
        print("warning: " + warning.replace("**", ""), end="")
    rates = read_rates(args.writers)
    fits = args.checkpoints * gpu["fits_per_checkpoint"]
    text = "\n".join([
        f"# The seed's sweep on N GPUs: {args.checkpoints} checkpoints x {gpu['fits_per_checkpoint']} fits = "
        f"{fits:,} fits", "", *([warning] if warning else []),
        "Command: `python benchmarks/project_gpus.py`: arithmetic on the measurements below, none of its own. "
        "Wall time = max(compute, store): compute = ceil(checkpoints / N) x one GPU's seconds per checkpoint + one "
        "decoding per worker; store = fits / the store's fit runs/s with N writers.",
        "",
        f"- One GPU: **{gpu['seconds_per_checkpoint']:.1f} s per checkpoint** on {gpu['device_name']} "
        f"(`{gpu['command']}`, commit {gpu['commit']}, {gpu['measured_at']}, torch {gpu['torch']}; "
        f"{gpu['modules']} modules, {gpu['concepts']} concepts, {gpu['images']} images at {gpu['image_size']}, "
        f"1 + {gpu['repeats']} splits, {gpu['permutations']} permutations), plus "
        f"{gpu['decoding_seconds_per_worker']:.1f} s decoding the pool once per worker.",
        "- Store rates, fit runs/s by writers (" + ", ".join(f"`{p.name}`" for p in args.writers) + "): "
        + "; ".join(f"{s} " + ", ".join(f"{r:g} at {n}" for n, r in sorted(by.items())) for s, by in rates.items())
        + ". Held at the largest measured count beyond it.",
        "- Each cell: projected wall time (what limits it). Left out: Ray's scheduling per checkpoint (not measured "
        "apart) and checkpoint loading (0.34 s per checkpoint, `bench_import.md`).", "",
        table(gpu, rates, args.checkpoints), ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
