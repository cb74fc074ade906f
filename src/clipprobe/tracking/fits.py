"""Every probe fit as a nested MLflow run, fast: sweep -> one run per checkpoint -> one run per fit.

A fit run costs three store calls (``create_run`` with its tags, one ``log_batch``, ``set_terminated``)
instead of one per value. Fit runs carry the tag ``clipprobe.sweep_run_id`` so one search finds every
fit of a sweep, which is what resuming an interrupted sweep needs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.tracking import MlflowClient

from clipprobe.tracking.bulk import FinishedRun, insert_finished_runs, sql_store
from clipprobe.tracking.runs import LEVEL_TAG, enable_sqlite_wal, get_step_run, runs_table_url

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
SWEEP_TAG = "clipprobe.sweep_run_id"
EPOCH_TAG = "clipprobe.epoch"
RESUMES_TAG = "clipprobe.resumes"  # on a run `mlflow run` opened for a resume: the sweep it resumed
EPOCH_METRICS_TAG = "clipprobe.epoch_metrics_logged"  # on a checkpoint run once its parent metrics are logged
RESULTS_ARTIFACT = "probe/results.parquet"

# The results columns of docs/architecture.md, in order; also the fit runs' params and metrics.
IDENTITY_COLUMNS = ("concept", "group", "module", "module_index", "module_path", "probe", "epoch", "model_name",
                    "model_version", "fingerprint", "precision", "hparams_source", "hparams")
METRIC_COLUMNS = ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_balanced_acc", "test_auroc",
                  "train_acc", "test_majority_acc", "test_acc_resplit_mean", "test_acc_resplit_ci_low",
                  "test_acc_resplit_ci_high", "test_permutation_acc", "test_permutation_p", "test_control_acc",
                  "test_selectivity", "n_train", "n_test", "n_test_pos", "repeats", "permutations",
                  "n_dropped_features")
INT_COLUMNS = ("epoch", "module_index", "n_train", "n_test", "n_test_pos", "repeats", "permutations", "n_dropped_features")
# Per-image results for paired tests: strings, so Parquet columns and fit-run params, never metrics.
# `test_correct`: '0'/'1' per stored test image; `test_images`: hash of those images (same hash = same test set).
PREDICTION_COLUMNS = ("test_correct", "test_images")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value; longer per-image strings live in the Parquet only
FIT_KEY = ("concept", "module", "probe", "epoch")  # what makes two fits the same fit
SPLIT_SIZE_PARAMS = ("n_train", "n_test", "n_test_pos")
_PAGE = 10_000
_BATCH = 256  # fit runs per transaction at most
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


def fit_key(row: Mapping[str, Any]) -> tuple[str, str, str, int]:
    """(concept, module, probe, epoch) of a results row or a fit run's params."""
    return (str(row["concept"]), str(row["module"]), str(row["probe"]), int(row["epoch"]))


def epoch_metric_name(concept: str, module: str, probe: str, module_index: Any = None) -> str:
    """``test_acc_<concept>/<NN>_<module>/<probe>`` (``test_acc_red/07_module:7/linear_gap``): logged on the
    sweep run with step=epoch (the "when" chart) and on the checkpoint run.

    The MLflow UI makes one chart section per key prefix (before the first ``/``), so each concept gets
    its own section; the zero-padded module index sorts the charts in the backbone's order
    (``module:2`` before ``module:10``, ``conv1`` before ``layer1``). Without an index (fits logged
    before it existed) the module name stands alone.
    """
    index = None if module_index is None or pd.isna(module_index) else int(module_index)
    where = module if index is None else f"{index:02d}_{module}"
    return _BAD_NAME_CHARS.sub("_", f"test_acc_{concept}/{where}/{probe}")


def summary_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean test accuracy and selectivity per probe kind, over all concepts and per concept group:
    ``mean_test_acc/all/<probe>``, ``mean_test_acc/<group>/<probe>``, ``mean_test_selectivity/all/<probe>``;
    and ``fits_above_majority/<probe>``: the share of fits whose exact 95% interval lies above the
    majority baseline. What a checkpoint run shows when two checkpoints are compared in the UI."""
    frame = pd.DataFrame(list(rows))
    out: dict[str, float] = {}
    if frame.empty:
        return out
    for probe, sub in frame.groupby("probe", sort=True):
        acc = pd.to_numeric(sub["test_acc"], errors="coerce")
        out[f"mean_test_acc/all/{probe}"] = float(acc.mean())
        if "test_selectivity" in sub:
            sel = pd.to_numeric(sub["test_selectivity"], errors="coerce")
            if sel.notna().any():
                out[f"mean_test_selectivity/all/{probe}"] = float(sel.mean())
        if {"test_acc_ci_low", "test_majority_acc"} <= set(sub.columns):
            low = pd.to_numeric(sub["test_acc_ci_low"], errors="coerce")
            majority = pd.to_numeric(sub["test_majority_acc"], errors="coerce")
            out[f"fits_above_majority/{probe}"] = float((low > majority).mean())
        if "group" in sub:
            for group, part in sub.groupby("group", sort=True):
                key = _BAD_NAME_CHARS.sub("_", f"mean_test_acc/{group}/{probe}")
                out[key] = float(pd.to_numeric(part["test_acc"], errors="coerce").mean())
    return {k: v for k, v in out.items() if v == v}  # drop NaN means


def span(values: Iterable[int]) -> str:
    """``0,1,2,5`` -> ``0-2,5``: epochs as a person writes them."""
    items = sorted({int(v) for v in values})
    parts: list[str] = []
    start = prev = None
    for v in items:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)


def sweep_run_name(model_name: str, epochs: Iterable[int], splits_run: str | None) -> str:
    """``probe rn18 @0-2,5 · concepts 1a2b3c4d``: model, epochs and concepts run of a sweep."""
    epochs = list(epochs)
    what = f"epoch {span(epochs)}" if len(epochs) == 1 else f"epochs {span(epochs)}"
    concepts = f" · concepts {splits_run[:8]}" if splits_run else ""
    return f"probe {model_name} {what}{concepts}"


def checkpoint_run_name(model_name: str, version: str | None, epoch: int) -> str:
    """``rn18 v3 · epoch 7``: the checkpoint a run below a sweep holds."""
    v = f" v{version}" if version else ""
    return f"{model_name}{v} · epoch {int(epoch)}" if model_name else f"epoch {int(epoch)}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def relax_sqlite_sync(client: MlflowClient) -> bool:
    """``PRAGMA synchronous=NORMAL`` on every new connection of a local sqlite store in WAL mode.

    With WAL, NORMAL keeps the database consistent (a power cut may lose the last commits, which a
    resumed sweep redoes) and makes each commit about 1.7x cheaper. Returns True when applied.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite" or getattr(engine, "_clipprobe_sync", False):
        return bool(engine is not None and getattr(engine, "_clipprobe_sync", False))
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _normal_sync(dbapi_connection: Any, _record: Any) -> None:
        mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() == "wal":
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    engine._clipprobe_sync = True
    engine.dispose()  # pooled connections reopen with the pragma
    return True


class FitLogger:
    """Writes the nested runs of one sweep run (and reads them back for resuming and for the results).

    ``submit`` hands a fit to a background writer so logging overlaps the probes' computation;
    ``close`` waits for it (and re-raises its error, if any).
    """

    def __init__(self, sweep_run_id: str, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.sweep = self.client.get_run(sweep_run_id)
        self.sweep_run_id = sweep_run_id
        self.experiment_id = self.sweep.info.experiment_id
        self._checkpoint_runs: dict[int, str] = {}
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        if enable_sqlite_wal(self.client.tracking_uri):
            relax_sqlite_sync(self.client)
        self._sql = sql_store(self.client)  # fits go in batches, one transaction each, where the store is SQL

    # ---------------------------------------------------------------- background writing
    def submit(self, checkpoint_run_id: str, row: Mapping[str, Any], **kwargs: Any) -> None:
        """``log_fit`` in the background writer (started on first use)."""
        self._raise_error()
        if self._worker is None:
            self._queue = queue.Queue(maxsize=10_000)
            self._worker = threading.Thread(target=self._drain, name="clipprobe-fit-logger", daemon=True)
            self._worker.start()
        self._queue.put((checkpoint_run_id, dict(row), kwargs))

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < _BATCH:  # whatever else is waiting, in one go
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            fits = [item for item in batch if item is not None]
            try:
                if fits and self._error is None:  # after a failure, drop the rest: a resume redoes them
                    self.log_fits(fits)
            except BaseException as err:  # handed to the main thread by _raise_error
                self._error = err
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def flush(self) -> None:
        """Wait until every submitted fit is logged; re-raise the writer's error."""
        if self._queue is not None:
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Flush and stop the background writer."""
        if self._worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = self._queue = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # ---------------------------------------------------------------- searching
    def _search(self, filter_string: str) -> list[Run]:
        out: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           max_results=_PAGE, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def fit_runs(self, epoch: int | None = None) -> list[Run]:
        """Every fit run of this sweep (of one checkpoint's ``epoch`` when given), whatever its status."""
        only = "" if epoch is None else f" and params.epoch = '{int(epoch)}'"
        return self._search(f"tags.`{SWEEP_TAG}` = '{self.sweep_run_id}' and tags.`{LEVEL_TAG}` = 'fit'{only}")

    def finished_fits(self, *, delete_unfinished: bool = True, epoch: int | None = None) -> set[tuple[str, str, str, int]]:
        """Identities of the fits already logged (FINISHED). A fit run left RUNNING by a killed
        process is deleted (its fit is redone), so every fit ends with exactly one run. ``epoch``:
        only that checkpoint's fits (a worker owning one checkpoint leaves the others' runs alone)."""
        done: set[tuple[str, str, str, int]] = set()
        for run in self.fit_runs(epoch):
            if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
                key = fit_key(run.data.params)
                if key in done:  # two writers raced: keep the first, drop the copy
                    self.client.delete_run(run.info.run_id)
                    continue
                done.add(key)
            elif delete_unfinished:
                log.info("deleting unfinished fit run %s (%s)", run.info.run_id, run.info.run_name)
                self.client.delete_run(run.info.run_id)
        return done

    # ---------------------------------------------------------------- writing
    def checkpoint_run(self, epoch: int, *, params: Mapping[str, Any] | None = None,
                       tags: Mapping[str, Any] | None = None) -> str:
        """The run of one checkpoint below the sweep (created, or found again when resuming)."""
        epoch = int(epoch)
        if epoch in self._checkpoint_runs:
            return self._checkpoint_runs[epoch]
        found = self._search(f"tags.`{PARENT_TAG}` = '{self.sweep_run_id}' and tags.`{LEVEL_TAG}` = "
                             f"'checkpoint' and tags.`{EPOCH_TAG}` = '{epoch}'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {PARENT_TAG: self.sweep_run_id, LEVEL_TAG: "checkpoint", EPOCH_TAG: str(epoch),
                        RUN_NAME_TAG: checkpoint_run_name(str((params or {}).get("model_name") or ""),
                                                          (params or {}).get("model_version"), epoch),
                        SWEEP_TAG: self.sweep_run_id,
                        **{k: str(v) for k, v in (tags or {}).items()}}
            run = self.client.create_run(self.experiment_id, start_time=_now_ms(), tags=all_tags)
            run_id = run.info.run_id
            if params:
                self.client.log_batch(run_id, params=[Param(k, _param_text(v)) for k, v in params.items()])
        self._checkpoint_runs[epoch] = run_id
        return run_id

    def fit_record(self, checkpoint_run_id: str, row: Mapping[str, Any], *,
                   hparams: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> FinishedRun:
        """What a fit run holds: identity columns, hparams, split sizes and the per-image prediction
        strings (when short enough for a param) as params; metric columns as metrics (step = epoch);
        the tags that place it below its checkpoint run and the sweep."""
        now = _now_ms()
        name = f"{row['concept']} {row['module']} {row['probe']} @{row['epoch']}"
        all_tags = {PARENT_TAG: checkpoint_run_id, LEVEL_TAG: "fit", SWEEP_TAG: self.sweep_run_id,
                    RUN_NAME_TAG: name, **{k: str(v) for k, v in (tags or {}).items()}}
        params = {c: row[c] for c in IDENTITY_COLUMNS}
        params.update({c: row[c] for c in SPLIT_SIZE_PARAMS if c in row})
        params.update({c: row[c] for c in PREDICTION_COLUMNS
                       if isinstance(row.get(c), str) and 0 < len(row[c]) <= MAX_PARAM_CHARS})
        for k, v in (hparams or {}).items():
            params.setdefault(k, v)
        epoch = int(row["epoch"])
        metrics = [Metric(c, float(row[c]), now, epoch) for c in METRIC_COLUMNS if c in row and row[c] is not None]
        return FinishedRun(all_tags, {k: _param_text(v) for k, v in params.items()}, metrics, now, now)

    def log_fit(self, checkpoint_run_id: str, row: Mapping[str, Any], *,
                hparams: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> str:
        """One nested fit run through MLflow's public calls (three store calls). Returns its run id."""
        rec = self.fit_record(checkpoint_run_id, row, hparams=hparams, tags=tags)
        run = self.client.create_run(self.experiment_id, start_time=rec.start_time, tags=dict(rec.tags))
        run_id = run.info.run_id
        self.client.log_batch(run_id, metrics=list(rec.metrics),
                              params=[Param(k, v) for k, v in rec.params.items()])
        self.client.set_terminated(run_id, "FINISHED", end_time=_now_ms())
        return run_id

    def log_fits(self, items: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> list[str]:
        """Many fit runs, ``(checkpoint_run_id, row, log_fit keyword arguments)`` each: on a SQL store
        in one transaction (``bulk.insert_finished_runs``, whole or not at all), elsewhere one by one."""
        if self._sql is None:
            return [self.log_fit(ckpt, row, **kw) for ckpt, row, kw in items]
        records = [self.fit_record(ckpt, row, **kw) for ckpt, row, kw in items]
        return insert_finished_runs(self._sql, self.experiment_id, records)

    def finish_checkpoint(self, epoch: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log this epoch's ``test_acc_<concept>/<NN>_<module>/<probe>`` and ``summary_metrics`` (step=epoch)
        on the sweep run (the "when" charts) and on the checkpoint run (what comparing two checkpoints
        shows), once (a tag on the checkpoint run remembers it), and mark the checkpoint run FINISHED.
        Waits for the fits submitted so far."""
        self.flush()
        run_id = self.checkpoint_run(epoch)
        run = self.client.get_run(run_id)
        if run.data.tags.get(EPOCH_METRICS_TAG) != "true":
            now = _now_ms()
            mine = [r for r in rows if int(r["epoch"]) == int(epoch)]
            values = {epoch_metric_name(r["concept"], r["module"], r["probe"], r.get("module_index")):
                      float(r["test_acc"]) for r in mine}
            values.update(summary_metrics(mine))
            metrics = [Metric(k, v, now, int(epoch)) for k, v in values.items()]
            if metrics:
                self.client.log_batch(self.sweep_run_id, metrics=metrics)
                self.client.log_batch(run_id, metrics=metrics)
            self.client.set_tag(run_id, EPOCH_METRICS_TAG, "true")
        self.client.set_terminated(run_id, "FINISHED", end_time=_now_ms())

    # ---------------------------------------------------------------- reading back
    def results(self, epoch: int | None = None) -> pd.DataFrame:
        """One typed row per FINISHED fit run of the sweep (of one ``epoch`` when given), in the columns
        of docs/architecture.md."""
        self.flush()
        rows = []
        for run in self.fit_runs(epoch):
            if run.info.status != "FINISHED":
                continue
            p, m = run.data.params, run.data.metrics
            row: dict[str, Any] = {c: p.get(c) for c in IDENTITY_COLUMNS}
            row.update({c: m.get(c, float("nan")) for c in METRIC_COLUMNS})
            row.update({c: p.get(c, "") for c in PREDICTION_COLUMNS})
            row["fit_run_id"] = run.info.run_id
            rows.append(row)
        return results_frame(rows)

    def log_results(self, table: pd.DataFrame) -> None:
        """Write ``probe/results.parquet`` on the sweep run (replacing an earlier one)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.parquet"
            table.to_parquet(path, index=False)
            self.client.log_artifact(self.sweep_run_id, str(path), "probe")


def results_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> the results table: architecture columns first, ints as ints, per-image strings as
    strings ("" where unknown), sorted by fit identity."""
    frame = pd.DataFrame(list(rows))
    for c in (*IDENTITY_COLUMNS, *METRIC_COLUMNS, *PREDICTION_COLUMNS):
        if c not in frame.columns:
            frame[c] = pd.Series(dtype="float64" if c in METRIC_COLUMNS else "object")
    for c in PREDICTION_COLUMNS:
        frame[c] = frame[c].fillna("").astype(str)
    for c in INT_COLUMNS:
        values = pd.to_numeric(frame[c])
        frame[c] = values.round().astype("int64") if values.notna().all() else values.astype("float64")
    for c in METRIC_COLUMNS:
        if c not in INT_COLUMNS:
            frame[c] = pd.to_numeric(frame[c]).astype("float64")
    for c in IDENTITY_COLUMNS:
        if c not in INT_COLUMNS:
            frame[c] = frame[c].astype(str)
    known = (*IDENTITY_COLUMNS, *METRIC_COLUMNS, *PREDICTION_COLUMNS)
    frame = frame[[*known, *(c for c in frame.columns if c not in known)]]
    return frame.sort_values(["epoch", "module_index", "module", "concept", "probe"], kind="stable").reset_index(drop=True)


def reopen_sweep(run_id: str, *, step: str = "probe"):
    """Re-open an earlier sweep run as the active run (``--resume RUN_ID``); one clear error when the
    id names no run or another step's run."""
    get_step_run(run_id, step, source=f"--resume {run_id}", fix="pass the parent run id of `clipprobe probe`")
    made = os.environ.get("MLFLOW_RUN_ID")
    if made and made != run_id:  # `mlflow run -P resume=...` opened a run of its own: say where the work goes
        client = MlflowClient()
        client.set_tag(made, RUN_NAME_TAG, f"{step}: resumes {run_id}")
        client.set_tag(made, RESUMES_TAG, run_id)
        client.set_tag(made, "mlflow.note.content",
                       f"This `mlflow run` resumed the {step} sweep run {run_id}: its fits and results are logged there.")
    return mlflow.start_run(run_id=run_id)



NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (Markdown)
REPORT_MARK = "\n\n**Report:**"


def _link(experiment_id: str, run_id: str, label: str) -> str:
    return f"[{label}](#/experiments/{experiment_id}/runs/{run_id})"


def sweep_findings(table: pd.DataFrame, limit: int = 12) -> list[str]:
    """Markdown bullets: per concept, its best cell at the last epoch with its interval and the majority
    baseline, and how many fits there beat that baseline (exact 95% interval above it)."""
    if table.empty:
        return ["- no fit finished"]
    last = int(pd.to_numeric(table["epoch"]).max())
    at = table[pd.to_numeric(table["epoch"]) == last]
    lines = []
    for concept, sub in at.groupby("concept", sort=False):
        best = sub.loc[pd.to_numeric(sub["test_acc"]).idxmax()]
        lines.append(f"- **{concept}** ({best['group']}): best {best['probe']} at {best['module']}, test accuracy "
                     f"{best['test_acc']:.3f} [{best['test_acc_ci_low']:.3f}, {best['test_acc_ci_high']:.3f}] "
                     f"(majority baseline {best['test_majority_acc']:.3f})")
    more = len(lines) - limit
    lines = lines[:limit] + ([f"- ... and {more} more concepts (see the report)"] if more > 0 else [])
    above = int((at["test_acc_ci_low"] > at["test_majority_acc"]).sum())
    lines.append(f"- {above} of {len(at)} fits at epoch {last} have an exact 95% interval above the majority baseline")
    return lines


def fits_filter(sweep_run_id: str) -> str:
    """The runs-table filter that shows a sweep's checkpoint and fit runs."""
    return f"tags.`{SWEEP_TAG}` = '{sweep_run_id}'"


def describe_sweep(sweep_run_id: str, table: pd.DataFrame | None = None, *, client: MlflowClient | None = None) -> str:
    """Link the sweep with the model versions it probed (both ways: ``registry.link_sweep``) and write
    its description: what it probed, the findings at its last epoch, where the fits are and how to get
    the report. Returns the description."""
    from clipprobe.tracking import registry
    from clipprobe.tracking.results import load_sweep_results

    client = client or MlflowClient()
    run = client.get_run(sweep_run_id)
    table = load_sweep_results(sweep_run_id) if table is None else table
    exp = run.info.experiment_id
    versions = (table[["model_name", "model_version", "epoch"]].drop_duplicates()
                .sort_values("epoch") if not table.empty else pd.DataFrame())
    links = []
    for name, part in versions.groupby("model_name", sort=False) if not versions.empty else []:
        given = [str(v) for v in part["model_version"] if str(v)]
        linked = registry.link_sweep(sweep_run_id, str(name), given) if name and given else []
        links += [f"[{name} v{v}](#/models/{name}/versions/{v}) (epoch {int(e)})" if str(v) in linked
                  else f"{name} v{v} (epoch {int(e)}; not in the registry)"
                  for v, e in zip(part["model_version"], part["epoch"], strict=True) if str(v)]
    params = run.data.params
    splits = params.get("splits_run", "")
    probes = ", ".join(dict.fromkeys(table["probe"])) if not table.empty else ""
    lines = [f"**{run.info.run_name}**: what each module of `{params.get('model_name', '?')}` encodes (where) at "
             f"each epoch (when), probed with {probes}: {len(table)} fits.",
             "",
             "Model versions: " + (", ".join(links) if links else "none registered") + ".",
             f"Concepts run: {_link(exp, splits, splits[:8]) if splits else '?'}.",
             "",
             "**Findings** (test accuracy on the stored split; [95% exact interval]):",
             *sweep_findings(table),
             "",
             f"**Fits**: [open this sweep's checkpoint and fit runs]({runs_table_url(exp, fits_filter(sweep_run_id))}) "
             f"(nested runs below this run; filter `{fits_filter(sweep_run_id)}`). Charts: one "
             "`test_acc_<concept>` section per concept, step = epoch; `mean_test_acc` per probe kind."]
    text = "\n".join(lines) + REPORT_MARK + (f" `clipprobe compare {sweep_run_id}` (or `mlflow run . -e compare -P "
                                             f"run_ids={sweep_run_id}`) writes tables, plots and report.html.")
    client.set_tag(sweep_run_id, NOTE_TAG, text)
    return text


def link_report(sweep_run_id: str, compare_run_id: str, experiment_id: str, *, client: MlflowClient | None = None) -> None:
    """Point the sweep's description at a report made from it (``compare/report.html`` of that run)."""
    client = client or MlflowClient()
    note = client.get_run(sweep_run_id).data.tags.get(NOTE_TAG, "")
    head = note.split(REPORT_MARK)[0] if REPORT_MARK in note else note
    link = _link(experiment_id, compare_run_id, f"compare run {compare_run_id[:8]}")
    client.set_tag(sweep_run_id, NOTE_TAG, f"{head}{REPORT_MARK} {link}, artifact `compare/report.html` "
                   "(open it from the run's Artifacts tab).")
