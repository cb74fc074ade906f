"""A sweep's runs and what they show: sweep -> one run per checkpoint -> one run per fit.

The fit runs themselves are written by ``fit_writer.FitWriter`` and read back by
``sweep_fits.SweepFits``; here: the runs' names, the checkpoint runs with the epoch metrics they and the
sweep run show (each logged exactly once, even across a kill and a resume), the results artifact and
the sweep's description.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from clipprobe.core.parquet import provenance, write_table
from clipprobe.tracking.fit_records import (  # noqa: F401 - the names a sweep's runs are read by
    BAD_NAME_CHARS,
    IDENTITY_COLUMNS,
    MAX_PARAM_CHARS,
    METRIC_COLUMNS,
    PARENT_TAG,
    PREDICTION_COLUMNS,
    RESULTS_ARTIFACT,
    RESULTS_PART_ARTIFACT,
    RUN_NAME_TAG,
    SWEEP_TAG,
    fit_key,
    now_ms,
    param_text,
)
from clipprobe.tracking.runs import (
    EPOCH_TAG,
    INTERRUPTED_TAG,
    LEVEL_TAG,
    end_run_quietly,
    ended_killed_on_interrupt,
    get_step_run,
    runs_table_url,
    search_all_runs,
)
from clipprobe.tracking.sweep_fits import fits_filter

log = logging.getLogger(__name__)

RESUMES_TAG = "clipprobe.resumes"  # on a run `mlflow run` opened for a resume: the sweep it resumed
# ``clipprobe.epoch_metrics/<epoch>`` = "<chunks logged>/<chunks>": on the sweep run and on the checkpoint
# run, set in the same log_batch (one transaction) as the metrics of that chunk, so a resume after a kill
# at any point logs each epoch metric exactly once.
EPOCH_METRICS_TAG = "clipprobe.epoch_metrics"
_METRICS_PER_CHUNK = 999  # MLflow's 1000 entities per log_batch, less the tag

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
    return BAD_NAME_CHARS.sub("_", f"test_acc_{concept}/{where}/{probe}")


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
            if "class_alignment" in sub:  # undefined where the concept is a class (docs/statistics.md)
                sel = sel.where(~(pd.to_numeric(sub["class_alignment"], errors="coerce") >= 1.0))
            if sel.notna().any():
                out[f"mean_test_selectivity/all/{probe}"] = float(sel.mean())
        if {"test_acc_ci_low", "test_majority_acc"} <= set(sub.columns):
            low = pd.to_numeric(sub["test_acc_ci_low"], errors="coerce")
            majority = pd.to_numeric(sub["test_majority_acc"], errors="coerce")
            out[f"fits_above_majority/{probe}"] = float((low > majority).mean())
        if "group" in sub:
            for group, part in sub.groupby("group", sort=True):
                key = BAD_NAME_CHARS.sub("_", f"mean_test_acc/{group}/{probe}")
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


class CheckpointRuns:
    """The runs of a sweep's checkpoints (one per epoch, below the sweep run), found again on a resume."""

    def __init__(self, sweep_run_id: str, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.sweep_run_id = sweep_run_id
        self.experiment_id = self.client.get_run(sweep_run_id).info.experiment_id
        self._ids: dict[int, str] = {}

    def run_id(self, epoch: int, *, params: Mapping[str, Any] | None = None,
               tags: Mapping[str, Any] | None = None) -> str:
        """The run of one checkpoint below the sweep (created, or found again and set RUNNING when resuming)."""
        epoch = int(epoch)
        if epoch in self._ids:
            return self._ids[epoch]
        found = search_all_runs(self.client, [self.experiment_id],
                                f"tags.`{PARENT_TAG}` = '{self.sweep_run_id}' and tags.`{LEVEL_TAG}` = "
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
            run_id = self.client.create_run(self.experiment_id, start_time=now_ms(), tags=all_tags).info.run_id
            if params:
                self.client.log_batch(run_id, params=[Param(k, param_text(v)) for k, v in params.items()])
        self._ids[epoch] = run_id
        return run_id

    def finish(self, epoch: int, rows: Iterable[Mapping[str, Any]], *, part: pd.DataFrame | None = None) -> None:
        """Log the epoch's ``test_acc_<concept>/<NN>_<module>/<probe>`` and ``summary_metrics`` (step=epoch) on
        the sweep run (the "when" charts) and on the checkpoint run (what comparing two checkpoints shows),
        each exactly once, and mark the checkpoint run FINISHED. ``rows``: every fit of the epoch (the
        resumed ones too); the fits must be written before (``FitWriter.flush``). ``part``: the checkpoint's
        results part (``results_frame`` of what its fit runs hold), logged before the run ends FINISHED,
        so a FINISHED checkpoint run always has one (``SweepFits.results`` assembles them)."""
        epoch = int(epoch)
        run_id = self.run_id(epoch)
        if part is not None:
            log_table(run_id, RESULTS_PART_ARTIFACT, part, kind="probe_results_part", client=self.client,
                      sweep_run_id=self.sweep_run_id, epoch=epoch)
        now = now_ms()
        mine = [r for r in rows if int(r["epoch"]) == epoch]
        values = {epoch_metric_name(r["concept"], r["module"], r["probe"], r.get("module_index")):
                  float(r["test_acc"]) for r in mine}
        values.update(summary_metrics(mine))
        metrics = [Metric(k, values[k], now, epoch) for k in sorted(values)]
        for target in (self.sweep_run_id, run_id):
            log_once(self.client, target, f"{EPOCH_METRICS_TAG}/{epoch}", metrics)
        end_run_quietly(self.client, run_id, "FINISHED")

    def statuses(self) -> dict[int, tuple[str, str]]:
        """Epoch -> (run id, status) of each checkpoint run of the sweep: one search over one run per checkpoint."""
        found = search_all_runs(self.client, [self.experiment_id],
                                f"tags.`{PARENT_TAG}` = '{self.sweep_run_id}' and tags.`{LEVEL_TAG}` = 'checkpoint'")
        return {int(r.data.tags[EPOCH_TAG]): (r.info.run_id, r.info.status)
                for r in found if r.data.tags.get(EPOCH_TAG, "").isdigit()}

    def open_runs(self) -> list[str]:
        """Ids of this sweep's checkpoint runs still RUNNING."""
        return [r.info.run_id for r in search_all_runs(
            self.client, [self.experiment_id],
            f"tags.`{PARENT_TAG}` = '{self.sweep_run_id}' and tags.`{LEVEL_TAG}` = 'checkpoint' "
            "and attributes.status = 'RUNNING'")]

    def end_open(self, status: str) -> None:
        """End every checkpoint run of the sweep still RUNNING with ``status`` (KILLED on an interrupt)."""
        for run_id in self.open_runs():
            end_run_quietly(self.client, run_id, status)


def log_once(client: MlflowClient, run_id: str, tag: str, metrics: list[Metric]) -> None:
    """Log ``metrics`` (a fixed order) on a run in chunks, each chunk in one log_batch together with the tag
    ``tag`` = "<chunks done>/<chunks>"; chunks the tag already counts are skipped, so calling this again
    after a kill at any point logs every metric exactly once."""
    chunks = [metrics[i:i + _METRICS_PER_CHUNK] for i in range(0, len(metrics), _METRICS_PER_CHUNK)] or [[]]
    done_text = client.get_run(run_id).data.tags.get(tag, "0/")
    done = int(done_text.split("/")[0]) if done_text.split("/")[0].isdigit() else 0
    for i, chunk in enumerate(chunks[done:], start=done):
        client.log_batch(run_id, metrics=chunk, tags=[RunTag(tag, f"{i + 1}/{len(chunks)}")])


def log_results(sweep_run_id: str, table: pd.DataFrame, *, client: MlflowClient | None = None) -> None:
    """Write ``probe/results.parquet`` on the sweep run (replacing an earlier one)."""
    client = client or MlflowClient()
    log_table(sweep_run_id, RESULTS_ARTIFACT, table, kind="probe_results", client=client, sweep_run_id=sweep_run_id,
              params=client.get_run(sweep_run_id).data.params)


def log_table(run_id: str, artifact: str, table: pd.DataFrame, *, kind: str, client: MlflowClient,
              **fields: Any) -> None:
    """Write ``table`` as the Parquet artifact ``artifact`` of ``run_id`` (replacing an earlier one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact).name
        write_table(table, path, provenance(kind, **fields))
        client.log_artifact(run_id, str(path), str(Path(artifact).parent))


def reopen_sweep(run_id: str, *, step: str = "probe"):
    """Re-open an earlier sweep run as the active run (``--resume RUN_ID``); one clear error when the
    id names no run or another step's run."""
    run = get_step_run(run_id, step, source=f"--resume {run_id}", fix="pass the parent run id of `clipprobe probe`")
    if INTERRUPTED_TAG in run.data.tags:  # it runs again: an interrupt now is told by a new tag, the last by attempts
        MlflowClient().delete_tag(run_id, INTERRUPTED_TAG)
    made = os.environ.get("MLFLOW_RUN_ID")
    if made and made != run_id:  # `mlflow run -P resume=...` opened a run of its own: say where the work goes
        client = MlflowClient()
        client.set_tag(made, RUN_NAME_TAG, f"{step}: resumes {run_id}")
        client.set_tag(made, RESUMES_TAG, run_id)
        client.set_tag(made, "mlflow.note.content",
                       f"This `mlflow run` resumed the {step} sweep run {run_id}: its fits and results are logged there.")
    return ended_killed_on_interrupt(mlflow.start_run(run_id=run_id), step=step)



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


ATTEMPT_TAG = "clipprobe.attempts"  # on a sweep run: how many times it was started (1 + resumes)


def start_attempt(sweep_run_id: str, *, client: MlflowClient | None = None) -> int:
    """Count one more start of the sweep (tag ``clipprobe.attempts``, set before any fit, so a killed start
    counts too) and return its number: 1 for the first run, 2 for the first resume, ..."""
    client = client or MlflowClient()
    before = client.get_run(sweep_run_id).data.tags.get(ATTEMPT_TAG, "0")
    attempt = (int(before) if before.isdigit() else 0) + 1
    client.set_tag(sweep_run_id, ATTEMPT_TAG, str(attempt))
    return attempt


def attempt_metric_names(attempt: int) -> tuple[str, str]:
    """``(sweep_seconds, n_new_fits)`` for the first start; ``resume_<k>/sweep_seconds`` and
    ``resume_<k>/n_new_fits`` for the k-th resume, so a resume never overwrites the first run's numbers."""
    prefix = "" if attempt <= 1 else f"resume_{attempt - 1}/"
    return f"{prefix}sweep_seconds", f"{prefix}n_new_fits"


def log_attempt(sweep_run_id: str, attempt: int, *, n_new_fits: int, seconds: float,
                client: MlflowClient | None = None) -> None:
    """Log one start's wall time and new fits on the sweep run under ``attempt_metric_names(attempt)``."""
    client = client or MlflowClient()
    seconds_key, fits_key_ = attempt_metric_names(attempt)
    now = now_ms()
    client.log_batch(sweep_run_id, metrics=[Metric(seconds_key, float(seconds), now, 0),
                                            Metric(fits_key_, float(n_new_fits), now, 0)])
