"""The in-process executor, and the unit of work every executor runs: one checkpoint's fits, logged."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from clipprobe.activations.options import ExtractOptions
from clipprobe.concepts.splits import ConceptSplits
from clipprobe.sweep.plan import CheckpointRef, FitKey, Sweep, SweepPlan, rows_by_epoch


@dataclass(frozen=True)
class SweepJob:
    """Everything needed to run a sweep's checkpoints under its run; picklable, so Ray ships it to workers.
    Its checkpoints were checked to hold different weights when it was made (``steps.probe.resolve``).

    ``device`` is the option as given (``auto`` is resolved where the work runs)."""

    sweep_run_id: str
    tracking_uri: str
    registry_uri: str
    splits: ConceptSplits = field(repr=False)
    plan: SweepPlan
    refs: tuple[CheckpointRef, ...]
    cache_dir: str
    extract: ExtractOptions
    device: str
    keep_cache: bool = True
    progress: bool = True

    def sweep(self, *, progress: bool | None = None) -> Sweep:
        from clipprobe.core.devices import resolve_device

        return Sweep(self.splits, self.plan, cache_dir=self.cache_dir, extract=self.extract,
                     device=resolve_device(self.device), keep_cache=self.keep_cache,
                     progress=self.progress if progress is None else progress)

    def ref(self, epoch: int) -> CheckpointRef:
        return next(r for r in self.refs if r.epoch == epoch)


def checkpoint_params(ref: CheckpointRef) -> dict[str, Any]:
    return {"epoch": ref.epoch, "model_name": ref.name or "", "model_version": ref.version or "",
            "fingerprint": ref.fingerprint}


def probe_checkpoint(sweep: Sweep, writer: Any, checkpoints: Any, ref: CheckpointRef, *, done: Collection[FitKey],
                     before: Sequence[Mapping[str, Any]] = (), tags: Mapping[str, str] | None = None
                     ) -> list[dict[str, Any]]:
    """The fits of ``ref`` not in ``done``, each handed to ``writer`` (a ``tracking.fit_writer.FitWriter``) as
    a nested run of its checkpoint run as soon as it exists; then, once they are written, the checkpoint's
    epoch metrics and its results part over ``before`` (its fits already logged, as read back) and the new
    ones (``checkpoints``: the sweep's ``tracking.fits.CheckpointRuns``). Returns the new rows. ``tags`` go on
    the checkpoint run (which worker ran it)."""
    from clipprobe.tracking.fit_records import results_frame

    ckpt = checkpoints.run_id(ref.epoch, params=checkpoint_params(ref))
    for key, value in (tags or {}).items():
        checkpoints.client.set_tag(ckpt, key, value)

    def on_fit(row: dict[str, Any]) -> None:
        writer.submit(ckpt, row, hparams=json.loads(row["hparams"]))

    rows = sweep.run_checkpoint(ref, done=done, on_fit=on_fit)
    writer.flush()

    part = results_frame([*before, *writer.take_written(ckpt)])  # what its fit runs hold, without reading them
    checkpoints.finish(ref.epoch, [*before, *rows], part=part)
    return rows


class LocalExecutor:
    """Checkpoint after checkpoint in this process, with one background fit writer."""

    name = "local"

    def parallelism(self) -> tuple[int, str]:
        """Checkpoints processed at once, and how that is known: one, here."""
        return 1, "local: one checkpoint after another"

    def run(self, job: SweepJob, done: Collection[FitKey]) -> Counter[str]:
        """Every fit of ``job`` not in ``done``; returns how many new fits ran in each forward precision (not
        the rows: at the seed's scale those would grow by ~1 MB a checkpoint, and they are in the store)."""
        from clipprobe.tracking.fit_writer import FitWriter
        from clipprobe.tracking.fits import CheckpointRuns
        from clipprobe.tracking.sweep_fits import SweepFits

        reader = SweepFits(job.sweep_run_id)  # only the checkpoints this job resumes are read back
        resumed = sorted({int(key[3]) for key in done} & {r.epoch for r in job.refs})
        before = rows_by_epoch([row for e in resumed for row in reader.table(e).to_dict("records")])
        sweep = job.sweep()
        writer, checkpoints = FitWriter(job.sweep_run_id, progress=job.progress), CheckpointRuns(job.sweep_run_id)
        done = set(done)
        out: Counter[str] = Counter()
        try:
            # the whole sweep's progress and ETA, over the per-checkpoint bars (decode, forward, probes)
            for ref in tqdm(sorted(job.refs, key=lambda c: c.epoch), desc="checkpoints", unit="checkpoint",
                            disable=not job.progress):
                rows = probe_checkpoint(sweep, writer, checkpoints, ref, done=done, before=before.get(ref.epoch, []))
                out.update(row["precision"] for row in rows)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()  # what was submitted before the failure still gets logged
            raise
        writer.close()
        return out

    def tune_study(self, run_id: str, kind: Any, tasks: Sequence[Any], *, storage: Any, study_name: str | None,
                   n_trials: int | None, timeout: float | None, seed: int, folds: int, device: str) -> Any:
        """One probe kind's study (a kind name or ``ProbeKind``) in this process, every trial a nested run of
        ``run_id``."""
        from clipprobe.tracking.trials import TrialLogger
        from clipprobe.tuning import studies as tuning

        logger = TrialLogger(run_id, tuning.check_kind(kind).name)
        storage = tuning.with_stale_callback(storage, logger)  # RDB heartbeats: a stale trial's run ends FAILED
        return tuning.tune(kind, tasks, storage=storage, name=study_name, n_trials=n_trials, timeout=timeout,
                           seed=seed, folds=folds, on_start=logger.start, on_trial=logger, share=f"{run_id}:0",
                           device=device)
