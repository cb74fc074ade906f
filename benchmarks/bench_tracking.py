"""Benchmark the tracking side of many workers: nested fit runs/s with 1, 2 and 4 writer processes on
sqlite, on PostgreSQL directly and through `mlflow server` (PostgreSQL behind it, served artifacts); and
the seed's scale (300 checkpoints x 513 fits = 153,900 fit runs, or a stated fraction of it) on sqlite:
wall time, store size, `clipprobe compare` time, and the MLflow UI's first runs page (the REST call the
UI makes: POST ajax-api/2.0/mlflow/runs/search, max_results 100) at that size.

Fits are synthetic rows with every column of a real fit (docs/architecture.md); writers use the same
fit writer the sweep uses (batches of up to 256 fits per transaction on SQL stores, MLflow's public calls
over REST). PostgreSQL is started by tests/servers.py (PostgreSQL 15 binaries and psycopg2 needed).

``sweep``: one `clipprobe probe` on the demo's store straight into sqlite and through `mlflow server`, alternating
(``--pin``: the server on a core of its own). ``client``: one writer's CPU per fit over REST against the server's.

``latency``: PostgreSQL directly against `mlflow server` with 1, 2 and 4 writers, with 0 and ``--delay-ms``
added per request by a loopback proxy (benchmarks/delay_proxy.py), with the server's CPU share.

Writes benchmarks/results/bench_tracking_writers.md, bench_tracking_scale_<N>.md, bench_tracking_latency.md.
Usage: python benchmarks/bench_tracking.py [writers] [scale] [latency] [sweep] [client] ... [--fits-sql 2000] [--fits-server 200]
       [--checkpoints 300] [--workdir .cache/bench_tracking]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests"))  # servers.py: the PostgreSQL and mlflow server the tests use

CONCEPTS = ("red", "blue", "green", "yellow", "dotted", "striped", "zigzagged", "female", "male")
PROBES = ("linear_gap", "non_linear_gap", "non_linear_non_gap")
MODULES = 19
FITS_PER_CHECKPOINT = len(CONCEPTS) * MODULES * len(PROBES)  # 513
FIT_THREADS = int(os.environ.get("MLFLOW_HTTP_POOL_MAXSIZE", "10"))  # FitWriter.requests_in_flight over REST


def fit_row(i: int, epoch: int) -> dict:
    """A fit row with every results column; ``i`` picks (concept, module, probe) within the checkpoint.
    Test accuracy rises over the first 150 epochs with a little noise, and the per-image results agree with it
    (k of 90 right: the cell's k easiest images, so consecutive epochs differ on a few images, as a sweep's do)."""
    concept, rest = CONCEPTS[i % len(CONCEPTS)], i // len(CONCEPTS)
    module, probe = rest % MODULES, PROBES[(rest // MODULES) % len(PROBES)]
    right = 54 + min(30, epoch // 5) + (i * 7919 + epoch * 104729) % 7
    acc = right / 90
    return {
        "concept": concept, "group": "colour" if i % len(CONCEPTS) < 4 else "other", "module": f"module:{module}",
        "module_index": module, "module_path": f"features.{module}", "probe": probe, "epoch": epoch,
        "model_name": "bench", "model_version": str(epoch + 1), "fingerprint": f"{epoch:064x}", "precision": "fp32",
        "hparams_source": "defaults", "hparams": '{"weight_decay": 0.005}',
        "test_acc": acc, "test_acc_ci_low": acc - 0.08, "test_acc_ci_high": min(1.0, acc + 0.06),
        "test_balanced_acc": acc, "test_auroc": acc, "train_acc": 1.0, "test_majority_acc": 0.667,
        "test_acc_resplit_mean": acc, "test_acc_resplit_ci_low": acc - 0.05, "test_acc_resplit_ci_high": acc + 0.05,
        "test_permutation_acc": 0.64, "test_permutation_p": 0.05, "test_control_acc": 0.6, "test_selectivity": 0.2,
        "n_train": 210, "n_test": 90, "n_test_pos": 30, "repeats": 3, "permutations": 0, "n_dropped_features": 0,
        "test_correct": ("1" * right + "0" * (90 - right))[i % 90:] + ("1" * right + "0" * (90 - right))[:i % 90],
        "test_images": "0123456789abcdef",
    }


def _writer(uri: str, sweep_id: str, writer: int, n: int, start, out) -> None:
    """One writer process: ``n`` distinct fits through FitWriter, timed after a common start. A checkpoint
    holds 513 fits, so writer w fills checkpoints w*k, w*k+1, ... (k = checkpoints per writer)."""
    import mlflow

    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.fits import CheckpointRuns

    mlflow.set_tracking_uri(uri)
    logger = FitWriter(sweep_id)
    per_writer = -(-n // FITS_PER_CHECKPOINT)
    epochs = [writer * per_writer + i // FITS_PER_CHECKPOINT for i in range(n)]
    checkpoints = CheckpointRuns(sweep_id)
    ckpts = {e: checkpoints.run_id(e, params={"epoch": e}) for e in sorted(set(epochs))}
    rows = [(ckpts[e], fit_row(i % FITS_PER_CHECKPOINT, e)) for i, e in enumerate(epochs)]
    start.wait()
    t = time.perf_counter()
    try:
        for ckpt, row in rows:
            logger.submit(ckpt, row, hparams={"weight_decay": 0.005})
        logger.close()
    except Exception as err:  # reported in the table, not hidden behind a traceback
        out.put(f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
        raise
    out.put(time.perf_counter() - t)


def writers_rate(uri: str, writers: int, fits_each: int) -> tuple[float, float]:
    """(fit runs per second over all writers, wall seconds) for ``writers`` processes on one sweep run."""
    import mlflow

    from clipprobe.tracking import runs

    mlflow.set_tracking_uri(uri)
    with runs.step_run("probe", run_name=f"bench {writers} writers") as run:
        ctx = mp.get_context("spawn")
        start, out = ctx.Barrier(writers + 1), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(uri, run.info.run_id, w, fits_each, start, out))
                 for w in range(writers)]
        for p in procs:
            p.start()
        start.wait()
        t = time.perf_counter()
        for p in procs:
            p.join()
        wall = time.perf_counter() - t
        if any(p.exitcode for p in procs):
            errors = {x for x in (out.get(timeout=10) for _ in procs) if isinstance(x, str)}
            raise RuntimeError(f"{sum(bool(p.exitcode) for p in procs)} of {writers} writers failed: "
                               + "; ".join(sorted(errors)))
        from clipprobe.tracking.sweep_fits import SweepFits

        n = len(SweepFits(run.info.run_id).finished())
        assert n == writers * fits_each, (n, writers * fits_each)
    return writers * fits_each / wall, wall


def bench_writers(args, work: Path) -> str:
    from servers import mlflow_server, postgres_server

    lines = ["| store | writers | fits per writer | fit runs/s (all writers) | wall s |", "|---|---|---|---|---|"]

    def row(store, w, n):
        t = time.perf_counter()
        try:
            rate, wall = writers_rate(store_uri[store], w, n)
            lines.append(f"| {store} | {w} | {n} | {rate:.0f} | {wall:.1f} |")
        except RuntimeError as err:  # a failed configuration is a result too
            lines.append(f"| {store} | {w} | {n} | failed: {err} | {time.perf_counter() - t:.1f} |")
        print(lines[-1], flush=True)

    if args.stores == "sqlite":  # no PostgreSQL needed
        store_uri = {}
        for w in (1, 2, 4):
            store_uri["sqlite (WAL, bulk)"] = f"sqlite:///{work / f'writers-{w}.db'}"
            row("sqlite (WAL, bulk)", w, args.fits_sql)
        return "\n".join(lines)
    with postgres_server() as pg:
        store_uri = {}
        for w in (1, 2, 4):
            db = work / f"writers-{w}.db"
            store_uri["sqlite (WAL, bulk)"] = f"sqlite:///{db}"
            row("sqlite (WAL, bulk)", w, args.fits_sql)
            store_uri["PostgreSQL 15 (bulk)"] = pg.new_database()
            row("PostgreSQL 15 (bulk)", w, args.fits_sql)
        artifacts = work / "served"
        artifacts.mkdir(exist_ok=True)
        with mlflow_server(pg.new_database(), artifacts) as url:
            store_uri["mlflow server (2 workers) -> PostgreSQL (REST, public calls)"] = url
            for w in (1, 2, 4):
                row("mlflow server (2 workers) -> PostgreSQL (REST, public calls)", w, args.fits_server)
    return "\n".join(lines)


def _session_processes(match: str) -> dict[int, int]:
    """pid -> CPU ticks (user + system) so far of the processes whose session leader's command line holds ``match``
    (``mlflow server`` runs in a session of its own: tests/servers.py), or of the children of such a process
    (PostgreSQL's backends below its postmaster)."""
    stats = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(proc.name)] = (int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]),
                                         (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    leaders = {pid for pid, (_ppid, _sid, _cpu, cmd) in stats.items() if match in cmd}
    return {pid: cpu for pid, (ppid, sid, cpu, _cmd) in stats.items()
            if pid in leaders or sid in leaders or ppid in leaders}


def _session_cpu_s(match: str) -> float:
    """CPU seconds so far of ``_session_processes(match)``."""
    return sum(_session_processes(match).values()) / os.sysconf("SC_CLK_TCK")


def bench_latency(args, work: Path) -> str:
    """Fit runs/s: PostgreSQL directly (the bulk writer) and through `mlflow server` (MLflow's public calls,
    ``FitWriter.requests_in_flight`` fits at once), 1, 2 and 4 writer processes, with 0 and ``--delay-ms``
    added to every request by a loopback proxy (benchmarks/delay_proxy.py); the server's and PostgreSQL's
    CPU share (of one core) over each row."""
    from delay_proxy import delay_proxy
    from servers import mlflow_server, postgres_server

    lines = ["| path | added delay per request | writers | fits per writer | fit runs/s (all writers) | wall s | "
             "mlflow server CPU (% of one core) | PostgreSQL CPU (% of one core) | load average (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def row(path: str, uri: str, delay_ms: int, writers: int, n: int, server_port: int | None) -> None:
        server = f"--port {server_port}" if server_port else None
        cpu0 = (_session_cpu_s(server) if server else 0.0, _session_cpu_s(str(pg.folder)))
        try:
            rate, wall = writers_rate(uri, writers, n)
        except RuntimeError as err:
            lines.append(f"| {path} | {delay_ms} ms | {writers} | {n} | failed: {err} | | | | |")
            print(lines[-1], flush=True)
            return
        cpu = ((_session_cpu_s(server) - cpu0[0]) / wall * 100 if server else None,
               (_session_cpu_s(str(pg.folder)) - cpu0[1]) / wall * 100)
        lines.append(f"| {path} | {delay_ms} ms | {writers} | {n} | {rate:.1f} | {wall:.1f} | "
                     f"{'' if cpu[0] is None else f'{cpu[0]:.0f}%'} | {cpu[1]:.0f}% | {os.getloadavg()[0]:.1f} |")
        print(lines[-1], flush=True)

    with postgres_server() as pg:
        artifacts = work / "served"
        artifacts.mkdir(exist_ok=True)
        with mlflow_server(pg.new_database(), artifacts) as url:
            port = int(url.rsplit(":", 1)[1])
            for delay_ms in [0, args.delay_ms] * args.latency_repeat:
                with delay_proxy("127.0.0.1", pg.port, delay_ms / 1000) as pg_proxy, \
                        delay_proxy("127.0.0.1", port, delay_ms / 1000) as http_proxy:
                    for writers in (int(w) for w in args.writer_counts.split(",")):
                        direct = pg.new_database()
                        if delay_ms:
                            direct = direct.replace(f":{pg.port}/", f":{pg_proxy}/")
                        row("PostgreSQL 15 direct (bulk SQL)", direct, delay_ms, writers, args.fits_sql, None)
                        served = f"http://127.0.0.1:{http_proxy}" if delay_ms else url
                        row(f"mlflow server (2 workers) -> PostgreSQL 15 (REST, {FIT_THREADS} fits in flight)", served,
                            delay_ms, writers, args.fits_server, port)
    return "\n".join(lines)


def bench_client(args, work: Path) -> str:
    """Where a fit's CPU goes over REST: one writer process (this one) logs ``--fits-server`` fits through the fit
    writer (10 in flight) to `mlflow server` on sqlite and on PostgreSQL; this process's CPU per fit against the
    server's."""
    import mlflow
    from servers import mlflow_server, postgres_server

    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_writer import FitWriter

    lines = ["| server's store | fits | wall s | fit runs/s | writer process CPU per fit | mlflow server CPU per fit |",
             "|---|---|---|---|---|---|"]
    with postgres_server() as pg:
        for name, backend in (("sqlite", f"sqlite:///{work / 'client.db'}"), ("PostgreSQL 15", pg.new_database())):
            (work / f"served-{name[:6]}").mkdir(exist_ok=True)
            with mlflow_server(backend, work / f"served-{name[:6]}") as url:
                server = f"--port {url.rsplit(':', 1)[1]}"
                time.sleep(args.settle_s)  # the server's own start-up (its job runners) out of the measurement
                mlflow.set_tracking_uri(url)
                with runs.step_run("probe", run_name="bench client") as run:
                    writer = FitWriter(run.info.run_id)
                    ckpt = fits.CheckpointRuns(run.info.run_id).run_id(0, params={"epoch": 0})
                    writer.log_fits([(ckpt, fit_row(0, 0), {})])  # connections opened, server warm
                    items = [(ckpt, fit_row(i, 0), {"hparams": {"weight_decay": 0.005}})
                             for i in range(1, args.fits_server + 1)]
                    cpu, server_cpu, t = time.process_time(), _session_cpu_s(server), time.perf_counter()
                    writer.log_fits(items)
                    wall = time.perf_counter() - t
                    cpu, server_cpu = time.process_time() - cpu, _session_cpu_s(server) - server_cpu
                    writer.close()
                n = len(items)
                lines.append(f"| {name} | {n} | {wall:.1f} | {n / wall:.1f} | {cpu / n * 1000:.1f} ms | "
                             f"{server_cpu / n * 1000:.1f} ms |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def ui_first_page(url: str, experiment_id: str, search_filter: str = "") -> float:
    """Seconds for the runs-table call the UI makes on opening an experiment (with ``search_filter``)."""
    body = json.dumps({"experiment_ids": [experiment_id], "filter": search_filter, "run_view_type": "ACTIVE_ONLY",
                       "max_results": 100, "order_by": ["attributes.start_time DESC"]}).encode()
    request = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/runs/search", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        found = json.loads(answer.read())
    assert found.get("runs"), f"no runs for filter {search_filter!r}"
    return time.perf_counter() - t


def write_scale_store(args, work: Path) -> tuple[str, str, float, float]:
    """A sweep of ``args.checkpoints`` x 513 fits written into ``work``/scale.db as the in-process sweep writes it:
    (sweep run id, experiment id, seconds writing the fits, seconds assembling + logging the results table)."""
    import mlflow

    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_records import results_frame
    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.sweep_fits import SweepFits

    db = work / "scale.db"
    for p in work.glob("scale.db*"):
        p.unlink()
    uri = f"sqlite:///{db}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    n_fits = args.checkpoints * FITS_PER_CHECKPOINT
    t = time.perf_counter()
    with runs.step_run("probe", run_name="bench scale", params={"model_name": "bench"}) as run:
        writer, checkpoints = FitWriter(run.info.run_id), fits.CheckpointRuns(run.info.run_id)
        for epoch in range(args.checkpoints):
            ckpt = checkpoints.run_id(epoch, params={"epoch": epoch, "model_name": "bench"})
            rows = [fit_row(i, epoch) for i in range(FITS_PER_CHECKPOINT)]
            for r in rows:
                writer.submit(ckpt, r, hparams={"weight_decay": 0.005})
            writer.flush()  # then the checkpoint's results part, as executors.local.probe_checkpoint writes it
            checkpoints.finish(epoch, rows, part=results_frame(writer.take_written(ckpt)))
            if (epoch + 1) % 10 == 0:
                print(f"{epoch + 1}/{args.checkpoints} checkpoints written, {time.perf_counter() - t:.0f} s, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        writer.close()
        write_s = time.perf_counter() - t
        t2 = time.perf_counter()
        table = SweepFits(run.info.run_id).results()  # assembled from the checkpoints' parts, as the sweep does
        fits.log_results(run.info.run_id, table)
        results_s = time.perf_counter() - t2
        assert len(table) == n_fits, (len(table), n_fits)
    return run.info.run_id, run.info.experiment_id, write_s, results_s


def fill_store(args, work: Path) -> str:
    """Grow a store that ``store`` left part-written in ``work`` to ``args.checkpoints`` checkpoints by copying its
    finished checkpoints (the checkpoint run and its 513 fit runs: runs, tags, params, metrics, latest metrics) in
    SQL under fresh run ids, each copy's fits tagged as children of its copied checkpoint run. The copies hold the
    values of the checkpoint they copy: a store of the seed's size for the UI's runs search, not a sweep's numbers
    (its results Parquet is not written). Minutes instead of hours on this machine."""
    import sqlite3
    import uuid

    db = sqlite3.connect(work / "scale.db")
    parent = dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = 'mlflow.parentRunId'"))
    level = dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = 'clipprobe.level'"))
    status = dict(db.execute("SELECT run_uuid, status FROM runs"))
    finished = [r for r, v in level.items() if v == "checkpoint" and status[r] == "FINISHED"]
    children: dict[str, list[str]] = {c: [] for c in finished}
    for run, up in parent.items():
        if up in children and level.get(run) == "fit":
            children[up].append(run)
    have = sum(v == "checkpoint" for v in level.values())
    span = db.execute("SELECT max(start_time) - min(start_time) + 1000 FROM runs").fetchone()[0]
    db.execute("CREATE TEMP TABLE copies (old TEXT, new TEXT, new_parent TEXT, shift BIGINT)")
    rows = []
    for k in range(max(0, args.checkpoints - have)):
        source = finished[k % len(finished)]
        new_ckpt, shift = uuid.uuid4().hex, span * (1 + k // len(finished))
        rows.append((source, new_ckpt, None, shift))
        rows += [(fit, uuid.uuid4().hex, new_ckpt, shift) for fit in children[source]]
    db.executemany("INSERT INTO copies VALUES (?, ?, ?, ?)", rows)
    t = time.perf_counter()
    with db:
        db.execute("INSERT INTO runs SELECT c.new, r.name, r.source_type, r.source_name, r.entry_point_name, r.user_id, "
                   "r.status, r.start_time + c.shift, r.end_time + c.shift, r.source_version, r.lifecycle_stage, "
                   "r.artifact_uri, r.experiment_id, r.deleted_time FROM runs r JOIN copies c ON r.run_uuid = c.old")
        db.execute("INSERT INTO tags SELECT t.key, CASE WHEN t.key = 'mlflow.parentRunId' AND c.new_parent IS NOT NULL "
                   "THEN c.new_parent ELSE t.value END, c.new FROM tags t JOIN copies c ON t.run_uuid = c.old")
        for table, cols in (("params", "key, value"), ("latest_metrics", "key, value, timestamp, step, is_nan"),
                            ("metrics", "key, value, timestamp, step, is_nan")):
            picked = ", ".join(f"x.{c.strip()}" for c in cols.split(","))
            db.execute(f"INSERT INTO {table} ({cols}, run_uuid) SELECT {picked}, c.new FROM {table} x "
                       "JOIN copies c ON x.run_uuid = c.old")
    n_runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    n_fits = db.execute("SELECT count(*) FROM tags WHERE key = 'clipprobe.level' AND value = 'fit'").fetchone()[0]
    line = (f"{have} checkpoints written ({len(finished)} finished), {len(rows):,} runs copied in "
            f"{time.perf_counter() - t:.0f} s: {n_runs:,} runs, {n_fits:,} fit runs")
    print(line, flush=True)
    return line


def bench_scale(args, work: Path) -> str:
    """The sweep's writing at ``args.checkpoints`` x 513 fits on sqlite, as the in-process sweep writes it, then
    `clipprobe compare` and the UI's first runs page on that store."""
    from servers import mlflow_server

    sweep_id, exp, write_s, results_s = write_scale_store(args, work)
    uri, n_fits = f"sqlite:///{work / 'scale.db'}", args.checkpoints * FITS_PER_CHECKPOINT
    size = sum(p.stat().st_size for p in work.glob("scale.db*")) / 2**20
    out = work / "compare"
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from clipprobe.cli import main; main()", "compare", sweep_id, "--out", str(out)],
                          capture_output=True, text=True, timeout=3600, cwd=work,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    compare_s = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    (work / "served-scale").mkdir(exist_ok=True)
    with mlflow_server(uri, work / "served-scale", timeout=600) as url:
        first = ui_first_page(url, exp)
        again = ui_first_page(url, exp)
    lines = ["| checkpoints | fit runs | write (the sweep's fit writer, in-process, with each checkpoint's results part) "
             "| fit runs/s | results table assembled from the parts + logged | "
             "store size (sqlite + WAL) | `clipprobe compare` | UI first runs page (1st / 2nd call) |",
             "|---|---|---|---|---|---|---|---|",
             f"| {args.checkpoints} | {n_fits:,} | {write_s:.0f} s | {n_fits / write_s:.0f} | {results_s:.0f} s | "
             f"{size:.0f} MiB | {compare_s:.0f} s | {first:.2f} s / {again:.2f} s |"]
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def bench_assemble(args, work: Path) -> str:
    """The sweep's results table assembled from its checkpoints' results parts (``SweepFits.results``, what the
    sweep does at its end) on the store ``scale`` left in ``work`` (finished or stopped part way), plus the
    Parquet written, ``--repeat`` times."""
    import tempfile

    from mlflow import MlflowClient

    from clipprobe.core.parquet import write_table
    from clipprobe.tracking.sweep_fits import SweepFits

    uri = f"sqlite:///{work / 'scale.db'}"
    if not (work / "scale.db").exists():
        raise SystemExit(f"{work / 'scale.db'}: no store; run the scale part first with the same --workdir")
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    sweep = client.search_runs(exps, "tags.`clipprobe.step` = 'probe'")[0].info.run_id
    lines = ["| finished checkpoints | fits | checkpoint runs found (one SQL query) | parts read + assembled | "
             "+ Parquet written | load average (1 min) at start |", "|---|---|---|---|---|---|"]
    for _ in range(args.repeat):
        load = os.getloadavg()[0]
        reader = SweepFits(sweep, client)
        t = time.perf_counter()
        found = reader.checkpoint_runs()
        t_found = time.perf_counter() - t
        table = reader.results()
        t_table = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            write_table(table, Path(tmp) / "results.parquet", {"kind": "probe_results"})
        lines.append(f"| {sum(r.status == 'FINISHED' for r in found)} | {len(table):,} | {t_found:.1f} s | "
                     f"{t_table:.1f} s | {time.perf_counter() - t:.1f} s | {load:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def bench_ui(args, work: Path) -> str:
    """The UI's first runs page on the store ``scale`` left in ``work``: all runs (the UI's default) and the
    steps-and-sweeps filter that ``make ui`` opens (one row per step and sweep)."""
    from mlflow import MlflowClient
    from servers import mlflow_server

    from clipprobe.tracking.runs import STEPS_AND_SWEEPS_FILTER

    uri = f"sqlite:///{work / 'scale.db'}"
    if not (work / "scale.db").exists():
        raise SystemExit(f"{work / 'scale.db'}: no store; run the scale part first with the same --workdir")
    exp = MlflowClient(uri).search_runs(experiment_ids=[e.experiment_id for e in MlflowClient(uri).search_experiments()],
                                        max_results=1)[0].info.experiment_id
    (work / "served-ui").mkdir(exist_ok=True)
    lines = ["| runs page | 1st call | 2nd call | 3rd call | 4th call |", "|---|---|---|---|---|"]
    with mlflow_server(uri, work / "served-ui", timeout=600) as url:
        for name, flt in (("all runs (the UI's default)", ""), ("make ui's filter (runs without a clipprobe.level tag)",
                                                                 STEPS_AND_SWEEPS_FILTER),
                          ("step runs by their tag (tags.`clipprobe.step` LIKE '%')", "tags.`clipprobe.step` LIKE '%'")):
            calls = [ui_first_page(url, exp, flt) for _ in range(4)]
            lines.append(f"| {name} | " + " | ".join(f"{c:.2f} s" for c in calls) + " |")
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def _pin(match: str, cpus: set[int]) -> None:
    """Bind ``_session_processes(match)`` to ``cpus``."""
    for pid in _session_processes(match):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def _sweep_once(uri: str, args, work: Path, server_port: int | None) -> dict:
    """One `clipprobe probe` on ``uri`` as a user runs it: process wall s, the sweep run's own s, its fits, the
    process's CPU s, and the mlflow server's CPU s over it (None without one). ``--pin``: the sweep on CPU 0 with
    one torch thread (the server has CPU 1 to itself, as on a machine of its own)."""
    import resource

    from mlflow import MlflowClient

    server = f"--port {server_port}" if server_port else None
    cpu0 = _session_cpu_s(server) if server else 0.0
    command = [sys.executable, "-c", "from clipprobe.cli import main; main()", "probe", "--model-name", args.model_name,
               "--epochs", args.epochs, "--probes", args.probes, "--cache-dir", str(Path(args.cache_dir).resolve()),
               *shlex.split(args.sweep_options)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if args.pin:
        command, env["OMP_NUM_THREADS"] = ["taskset", "-c", "0", *command], "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=work, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    sweep = client.search_runs(exps, "tags.`clipprobe.step` = 'probe'", order_by=["attributes.start_time DESC"],
                               max_results=1)[0]
    return {"wall": wall, "own": (sweep.info.end_time - sweep.info.start_time) / 1000,
            "fits": int(sweep.data.metrics.get("n_new_fits", -1)),
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "server_cpu": _session_cpu_s(server) - cpu0 if server else None}


def bench_sweep_http(args, work: Path) -> str:
    """The same sweep straight into sqlite and through `mlflow server` (sqlite behind it, served artifacts),
    alternating, ``--repeat`` times each, on copies of one store (``--from-store``: the demo's) with the
    activations already cached: the sweep's time through the server against the direct one. ``--pin``: the
    sweep on one core, the server on the other."""
    import statistics

    from servers import mlflow_server

    source = Path(args.from_store).resolve()
    if not source.exists():
        raise SystemExit(f"{source}: no store; run `make demo` first, or give --from-store")
    for name in ("direct.db", "served.db"):
        shutil.copy(source, work / name)
    direct, served = f"sqlite:///{work / 'direct.db'}", f"sqlite:///{work / 'served.db'}"
    _sweep_once(direct, args, work, None)  # warm-up: fills the activation cache where it lacks a checkpoint
    (work / "served").mkdir(exist_ok=True)
    rows, times = [], {"direct": [], "http": []}
    names = {"direct": "sqlite directly (bulk SQL)", "http": "mlflow server (2 workers) -> sqlite (REST)"}
    with mlflow_server(served, work / "served") as url:
        port = int(url.rsplit(":", 1)[1])
        if args.pin:
            _pin(f"--port {port}", {1})
        for k in range(args.repeat):
            for path, uri, p in (("direct", direct, None), ("http", url, port))[:: 1 if k % 2 == 0 else -1]:
                m = _sweep_once(uri, args, work, p)
                times[path].append(m["own"])
                server = "" if m["server_cpu"] is None else f"{m['server_cpu']:.1f} s ({m['server_cpu'] / m['own'] * 100:.0f}%)"
                rows.append(f"| {k + 1} | {names[path]} | {m['fits']} | {m['own']:.1f} s | {m['wall']:.1f} s | "
                            f"{m['cpu']:.1f} s | {server} | {os.getloadavg()[0]:.1f} |")
                print(rows[-1], flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    where = ("the sweep on CPU 0 with one torch thread (`taskset -c 0`, OMP_NUM_THREADS=1), the server's processes on "
             "CPU 1" if args.pin else "the sweep, the server and sqlite share the 2 cores")
    return "\n".join(
        [f"Placement: {where}.", "",
         "| repeat | path | fits | the sweep run (start to end) | `clipprobe probe` process | its CPU (user + sys) "
         "| mlflow server CPU over the sweep (% of one core) | load average (1 min) after |",
         "|---|---|---|---|---|---|---|---|", *rows, "",
         f"Median of {args.repeat}: direct {med['direct']:.1f} s, through the server {med['http']:.1f} s: "
         f"**{med['http'] / med['direct']:.2f}x**."])


def machine(note: str) -> str:
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
            f"{load[0]:.1f} at start" + (f" ({note})" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["writers", "scale"], choices=["writers", "scale", "store", "fill", "ui", "latency", "assemble", "sweep", "client"],
                        help="store: the scale part's store alone; fill: that store grown to --checkpoints by copying its "
                             "checkpoints in SQL; ui: the UI's first runs page on the store left in --workdir")
    parser.add_argument("--fits-sql", type=int, default=2000)
    parser.add_argument("--stores", default="all", choices=["all", "sqlite"],
                        help="writers: all three stores, or sqlite alone (written to bench_tracking_writers_sqlite.md)")
    parser.add_argument("--fits-server", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="assemble, sweep: how many times")
    parser.add_argument("--delay-ms", type=int, default=20, help="latency: the delay added per request")
    parser.add_argument("--latency-repeat", type=int, default=1, help="latency: rounds of (0 ms, the delay)")
    parser.add_argument("--writer-counts", default="1,2,4", help="latency: the writer processes of each row")
    parser.add_argument("--from-store", default="mlflow.db", help="sweep: the store whose model and concepts to probe "
                        "(copied; `make demo` leaves one)")
    parser.add_argument("--model-name", default="demo_mobilenet_v2", help="sweep: the registered model")
    parser.add_argument("--epochs", default="0,5,10", help="sweep: the epochs")
    parser.add_argument("--probes", default="linear_gap", help="sweep: the probe kinds")
    parser.add_argument("--sweep-options", default="--no-cka", help="sweep: more `clipprobe probe` options")
    parser.add_argument("--settle-s", type=float, default=0.0, help="client: seconds to wait after the server answers")
    parser.add_argument("--pin", action="store_true", help="sweep: the sweep on CPU 0, the server on CPU 1")
    parser.add_argument("--cache-dir", default=".cache/activations", help="sweep: the activation cache (`make demo`'s)")
    parser.add_argument("--workdir", default=".cache/bench_tracking")
    parser.add_argument("--note", default="", help="what else ran on the machine, written next to the load average")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    if not set(args.parts) <= {"ui", "assemble", "fill"}:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_tracking.py " + shlex.join(sys.argv[1:])
    head = f"Command: `{command}`; one run each; {machine(args.note)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
    RESULTS.mkdir(exist_ok=True)
    if "writers" in args.parts:
        table = bench_writers(args, work)
        name = "bench_tracking_writers_sqlite.md" if args.stores == "sqlite" else "bench_tracking_writers.md"
        (RESULTS / name).write_text(
            "# Nested fit runs/s with 1, 2 and 4 writer processes\n\n" + head + table + "\n")
    if "store" in args.parts:  # the store alone, for the ui and compare parts to measure on
        sweep_id, _, write_s, results_s = write_scale_store(args, work)
        print(f"sweep {sweep_id}: {args.checkpoints * FITS_PER_CHECKPOINT:,} fits written in {write_s:.0f} s, "
              f"results assembled + logged in {results_s:.0f} s", flush=True)
    if "fill" in args.parts:
        fill_store(args, work)
    if "scale" in args.parts:
        table = bench_scale(args, work)
        frac = "" if args.checkpoints == 300 else (
            f"\n\nA fraction of the seed's scale: {args.checkpoints} of 300 checkpoints "
            f"({args.checkpoints * FITS_PER_CHECKPOINT:,} of 153,900 fit runs); not extrapolated.")
        (RESULTS / f"bench_tracking_scale_{args.checkpoints}.md").write_text(
            "# The seed's scale on the tracking side (sqlite)\n\n" + head + table + frac + "\n")
    if "latency" in args.parts:
        table = bench_latency(args, work)
        (RESULTS / "bench_tracking_latency.md").write_text(
            f"# Fit runs/s over a network's latency: PostgreSQL directly and through `mlflow server`, 0 and "
            f"{args.delay_ms} ms added per request\n\n" + head + table + "\n")
    if "assemble" in args.parts:
        table = bench_assemble(args, work)
        (RESULTS / "bench_tracking_assemble.md").write_text(
            "# A sweep's results table assembled from its checkpoints' results parts (sqlite)\n\n" + head + table + "\n")
    if "client" in args.parts:
        table = bench_client(args, work)
        (RESULTS / "bench_tracking_client.md").write_text(
            "# Where a fit's CPU goes over REST: the writer process against `mlflow server`\n\n" + head + table + "\n")
    if "sweep" in args.parts:
        table = bench_sweep_http(args, work)
        name = "bench_tracking_sweep_pinned.md" if args.pin else "bench_tracking_sweep.md"
        (RESULTS / name).write_text(
            "# One sweep straight into sqlite and through `mlflow server`, no added delay\n\n" + head + table + "\n")
    if "ui" in args.parts:
        table = bench_ui(args, work)
        (RESULTS / "bench_tracking_ui.md").write_text(
            "# The MLflow UI's first runs page on the scale store\n\n" + head + table + "\n")


if __name__ == "__main__":
    main()
