"""The compare step: a ``CompareConfig`` resolved into the sweeps' results (every check before a run exists),
then the report built and logged under one `compare` run."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass

import pandas as pd

from clipprobe.report.build import Report, write_report
from clipprobe.report.config import CompareConfig
from clipprobe.report.intro import Provenance
from clipprobe.report.labels import LabelSources
from clipprobe.report.reference import read_reference_csv
from clipprobe.report.units import UnitTables
from clipprobe.tracking import configs, fits, label_sources, neurons_tables
from clipprobe.tracking import results as sweep_results
from clipprobe.tracking import similarity as sweep_similarity
from clipprobe.tracking.runs import log_artifacts, set_tags, step_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareInputs:
    """A resolved compare: its config (the sweeps' run ids filled in), each sweep's results by short name, where
    they come from, the reference table, which sweeps have CLIP-mined labels, and the neurons tables of the
    sweeps that have them (by short name), and each sweep's CKA table (``probe/cka.parquet``, None without one)."""

    config: CompareConfig
    sweeps: list[tuple[str, pd.DataFrame]]
    provenance: list[Provenance]
    reference: pd.DataFrame | None
    labels: LabelSources | None
    units: dict[str, UnitTables]
    cka: dict[str, pd.DataFrame | None]


@dataclass(frozen=True)
class CompareOutput:
    """What a compare run made: its report (text, files) and the run's id."""

    report: Report
    run_id: str


def resolve(config: CompareConfig, *, experiment_name: str | None = None) -> CompareInputs:
    """``config`` with its sweeps chosen (the latest one when none is named) and read. ``LookupError`` or
    ``ValueError`` (a run that is not a sweep, an unreadable reference) before any run exists."""
    ids = config.run_ids
    if not ids:
        ids = (sweep_results.find_latest_sweep(experiment_name).info.run_id,)
        log.info("comparing the latest probe sweep %s", ids[0])
    sweeps = [(run_id[:8], sweep_results.load_sweep_results(run_id)) for run_id in ids]
    ui = config.ui_url or sweep_results.ui_address()
    provenance = [sweep_results.provenance(run_id, name, table, ui_url=ui)
                  for (name, table), run_id in zip(sweeps, ids, strict=True)]
    reference = read_reference_csv(config.reference) if config.reference else None
    truth, mined = label_sources.label_sources(ids, [name for name, _ in sweeps])  # CLIP vs true labels
    found = [(name, neurons_tables.load_unit_tables(run_id)) for (name, _), run_id in zip(sweeps, ids, strict=True)]
    units = {name: tables for name, tables in found if tables is not None}  # sweeps without them: no units part
    cka = {name: sweep_similarity.load_cka(run_id) for (name, _), run_id in zip(sweeps, ids, strict=True)}
    return CompareInputs(config.replace(run_ids=ids), sweeps, provenance, reference,
                         LabelSources(truth, mined) if mined else None, units, cka)


def run(inputs: CompareInputs, *, experiment_name: str | None = None) -> CompareOutput:
    """Build the report in a fresh folder (a ``ValueError`` there, e.g. an epoch missing from a sweep, leaves
    no run), then open the compare run, log the config, params and files, and copy them to ``config.out``."""
    config = inputs.config
    # Built in a fresh folder so the run logs this report only, never stale files in --out.
    with tempfile.TemporaryDirectory(prefix="clipprobe-compare-") as tmp:
        report = write_report(inputs.sweeps, tmp, epoch=config.epoch,
                              modules=None if config.modules is None else list(config.modules),
                              reference_table=inputs.reference, provenance=inputs.provenance,
                              label_sources=inputs.labels, units=inputs.units, cka=inputs.cka,
                              title=f"clipprobe: what, where and when ({', '.join(p.model for p in inputs.provenance)})")
        name = "compare " + " vs ".join(f"{p.model} {p.name}" for p in inputs.provenance)
        with step_run("compare", experiment_name=experiment_name, params=config.params(), run_name=name) as made:
            configs.log_config(config)
            set_tags({"clipprobe.compare.sweeps": ",".join(config.run_ids)})
            for sweep_id in config.run_ids:  # each sweep's description points to this report
                fits.link_report(sweep_id, made.info.run_id, made.info.experiment_id)
            log_artifacts(tmp, artifact_path="compare")
        shutil.copytree(tmp, config.out, dirs_exist_ok=True)
    return CompareOutput(report, made.info.run_id)
