"""How long `probe --resume` takes to decide what is done, on a sweep of the seed's shape (513 fits per
checkpoint: 9 concepts x 19 modules x 3 probe kinds) killed in its last checkpoint.

It writes ``--checkpoints`` checkpoints of synthetic fit rows (every results column; bench_tracking's
``fit_row``) with the sweep's own fit writer into a fresh sqlite store, finishes all but the last (left
RUNNING with half its fits), then times what a resume reads before its first new fit:
- before (clipprobe up to this benchmark): every fit run of the sweep, twice (``SweepFits.finished`` to
  decide, ``SweepFits.table`` for the executor's epoch metrics);
- now: the checkpoint runs (one search), then the open checkpoint's fit runs (``steps.probe._missing``)
  and its rows (``SweepFits.table(epoch)``).

Writes benchmarks/results/bench_resume.md.
Usage: python benchmarks/bench_resume.py [--checkpoints 6] [--workdir .cache/bench_resume]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tracking import FITS_PER_CHECKPOINT, fit_row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--workdir", default=".cache/bench_resume")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for p in work.glob("resume.db*"):
        p.unlink()
    uri = f"sqlite:///{work / 'resume.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri

    import mlflow

    from clipprobe.steps.probe import _missing
    from clipprobe.sweep.plan import CheckpointRef
    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.sweep_fits import SweepFits

    mlflow.set_tracking_uri(uri)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    last = args.checkpoints - 1
    with runs.step_run("probe", run_name="bench resume") as run:
        sweep_id = run.info.run_id
        writer, checkpoints = FitWriter(sweep_id), fits.CheckpointRuns(sweep_id)
        for epoch in range(args.checkpoints):
            ckpt = checkpoints.run_id(epoch, params={"epoch": epoch, "model_name": "bench"})
            n = FITS_PER_CHECKPOINT if epoch < last else FITS_PER_CHECKPOINT // 2
            rows = [fit_row(i, epoch) for i in range(n)]
            for r in rows:
                writer.submit(ckpt, r, hparams={"weight_decay": 0.005})
            writer.flush()
            if epoch < last:
                checkpoints.finish(epoch, rows)
        writer.close()
    write_s = time.perf_counter() - t
    n_runs = last * FITS_PER_CHECKPOINT + FITS_PER_CHECKPOINT // 2

    t = time.perf_counter()
    reader = SweepFits(sweep_id)
    old_done = reader.finished(delete_unfinished=True)
    reader.table()
    before_s = time.perf_counter() - t

    refs = [CheckpointRef(e, f"{e:064x}", load=lambda: None) for e in range(args.checkpoints)]
    t = time.perf_counter()
    reader = SweepFits(sweep_id)
    todo, done = _missing(reader, fits.CheckpointRuns(sweep_id), refs, say=lambda _text: None)
    [reader.table(r.epoch) for r in todo]
    now_s = time.perf_counter() - t
    assert [r.epoch for r in todo] == [last] and len(done) == FITS_PER_CHECKPOINT // 2
    assert len(old_done) == n_runs

    per_run_ms = 1000 * before_s / n_runs / 2
    text = f"""# Deciding what a resumed sweep has done

Command: `python benchmarks/bench_resume.py --checkpoints {args.checkpoints}`; one run; {platform.machine()},
{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load:.1f} at start (the 2 cores are
shared with other engineers' jobs: contended, not quiet); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.
Sweep: {args.checkpoints} checkpoints x {FITS_PER_CHECKPOINT} fits, the last killed after {FITS_PER_CHECKPOINT // 2}
fits: {n_runs:,} fit runs in a fresh sqlite store (written in {write_s:.0f} s).

| what a resume reads before its first new fit | seconds |
|---|---:|
| before: every fit run of the sweep, twice (`finished` + `table`) | {before_s:.2f} |
| now: the checkpoint runs, then the open checkpoint's fit runs and rows | {now_s:.2f} |

Before, reading one fit run cost {per_run_ms:.2f} ms here, so a 300-checkpoint sweep killed halfway (about
77,000 fit runs) spent about {2 * 77000 * per_run_ms / 1000 / 60:.0f} minutes of reading before its first new fit
(extrapolated linearly from this run, not measured); now it reads one checkpoint's fits and searches the
checkpoint runs (one per checkpoint): how those tag-filtered searches slow down in a store of 150,000 runs was
not measured. The results table at the end of a sweep
still reads every fit run once (bench_tracking_scale_300.md: 437 s at 153,900).
"""
    out = REPO / "benchmarks" / "results" / "bench_resume.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
