"""Benchmark `compare`'s report at the seed's scale: ``report.build.write_report`` on a synthetic results table of
300 epochs x 19 modules x 9 concepts x 3 probe kinds (153,900 fits, every results column; rows from
``bench_tracking.fit_row``, the rows the scale store holds), its wall time, the HTML report's size and, with
``--profile``, the functions that dominate (cProfile, cumulative).

``--store DIR``: instead, `clipprobe compare` end to end on the store ``bench_tracking.py store --workdir DIR``
left, or (``--make-store``) on a store holding one sweep run with the synthetic table as its results Parquet
and no fit runs (the sweep's results Parquet read from the store, the report built, the compare run logged).

Writes benchmarks/results/bench_compare.md (``--write``). Usage:
  python benchmarks/bench_compare.py [--epochs 300] [--repeat 1] [--profile] [--store DIR [--make-store]] [--write]
                                     [--note TEXT]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tracking import FITS_PER_CHECKPOINT, fit_row  # noqa: E402


def synthetic_sweep(epochs: int) -> pd.DataFrame:
    """The results table of a sweep of ``epochs`` checkpoints x 513 fits, as the scale store holds it."""
    return pd.DataFrame([fit_row(i, e) for e in range(epochs) for i in range(FITS_PER_CHECKPOINT)])


def time_report(table: pd.DataFrame, profile: bool) -> tuple[float, int, str]:
    """(seconds, report.html bytes, cProfile's top functions or "") for one ``write_report`` into a fresh folder."""
    from clipprobe.report.build import write_report

    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile() if profile else None
        t = time.perf_counter()
        if profiler:
            profiler.enable()
        report = write_report([("bench", table)], out)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - t
        size = report.html.stat().st_size
    top = ""
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(70)
        top = buf.getvalue()
    return seconds, size, top


def results_store(store: Path, epochs: int) -> None:
    """A sqlite store in ``store`` holding one finished probe sweep run with the synthetic results table as its
    ``probe/results.parquet`` (what `compare` reads), and no fit runs (writing 153,900 of them takes an hour
    here: ``bench_tracking.py store``)."""
    import mlflow

    from clipprobe.tracking import fits, runs

    store.mkdir(parents=True, exist_ok=True)
    for old in store.glob("scale.db*"):
        old.unlink()
    uri = f"sqlite:///{store / 'scale.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    table = synthetic_sweep(epochs)
    with runs.step_run("probe", run_name="bench compare", params={"model_name": "bench"}) as run:
        fits.log_results(run.info.run_id, table)
    print(f"sweep {run.info.run_id}: {len(table):,} fits in its results table, {uri}", flush=True)


def time_store(store: Path) -> tuple[float, int]:
    """(seconds, report.html bytes) of `clipprobe compare` on the scale store in ``store``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'scale.db'}"
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    sweep = client.search_runs(exps, "tags.`clipprobe.step` = 'probe'")[0].info.run_id
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from clipprobe.cli import main; main()", "compare", sweep,
                               "--out", out], capture_output=True, text=True, timeout=3600, cwd=store,
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        seconds = time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        size = (Path(out) / "report.html").stat().st_size
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the first run, print the top functions")
    parser.add_argument("--store", type=Path, help="`clipprobe compare` on the scale store in this folder")
    parser.add_argument("--make-store", action="store_true",
                        help="first write --store: a sweep run holding the synthetic results table, no fit runs")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/bench_compare[_store].md")
    parser.add_argument("--note", default="", help="what else ran on the machine, written next to the load average")
    args = parser.parse_args()
    command = "python benchmarks/bench_compare.py " + shlex.join(sys.argv[1:])
    threads = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    head = (f"Command: `{command}` ({threads}); {platform.node()}: {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}" + (f"; {args.note}" if args.note else "")
            + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n")
    if args.store and args.make_store:
        results_store(args.store.resolve(), args.epochs)
    if args.store:
        lines = ["| run | `clipprobe compare` on the store (read + report + logged) | report.html | "
                 "load average (1 min) at start |", "|---|---|---|---|"]
        for k in range(args.repeat):
            load = os.getloadavg()[0]
            seconds, size = time_store(args.store.resolve())
            lines.append(f"| {k + 1} | {seconds:.1f} s | {size / 2**20:.2f} MiB | {load:.1f} |")
            print(lines[-1], flush=True)
        name, title = "bench_compare_store.md", "`clipprobe compare` on the 153,900-fit scale store (sqlite)"
    else:
        t = time.perf_counter()
        table = synthetic_sweep(args.epochs)
        print(f"{len(table):,} rows made in {time.perf_counter() - t:.1f} s", flush=True)
        lines = ["| run | fits | `write_report` | report.html | load average (1 min) at start |", "|---|---|---|---|---|"]
        for k in range(args.repeat):
            load = os.getloadavg()[0]
            seconds, size, top = time_report(table, args.profile and k == 0)
            lines.append(f"| {k + 1}{' (cProfile)' if top else ''} | {len(table):,} | {seconds:.1f} s | "
                         f"{size / 2**20:.2f} MiB | {load:.1f} |")
            print(top + lines[-1], flush=True)
        name, title = "bench_compare.md", f"`compare`'s report on a synthetic {args.epochs}-epoch sweep"
    if args.write:
        (RESULTS / name).write_text(f"# {title}\n\n" + head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
