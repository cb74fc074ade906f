"""`clipprobe compare`: the seed's tables and the what-where-when plot, built from probe sweeps."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.report.build import write_report
from clipprobe.report.labels import LabelSources
from clipprobe.report.reference import read_reference_csv
from clipprobe.tracking import fits, label_sources, neurons_tables
from clipprobe.tracking import results as sweep_results
from clipprobe.tracking import similarity as sweep_similarity
from clipprobe.tracking.runs import log_artifacts, set_tags, step_run

log = logging.getLogger(__name__)


@click.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--epoch", type=options.Epoch(), default="last", show_default=True,
              help="Checkpoint epoch the tables show; it must be in every sweep.")
@click.option("--modules", type=options.Names(), default="",
              help="Modules for the accuracy-over-epoch lines, comma-separated, as the sweep names them "
              "(module:1,module:10 for MobileNetV2, layer1,layer4 for a ResNet); default: all, or eight "
              "spread from first to last.")
@click.option("--reference", default="",
              help="CSV in the seed's table shape (group, concept, module, one column per probe) "
              "to print ours beside, e.g. tests/fixtures/seed_tables.csv.")
@click.option("--out", default="outputs/compare", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the report files.")
@click.option("--ui-url", default="",
              help="Address of the MLflow UI showing this store (e.g. http://127.0.0.1:5000), for links to the "
              "runs in the report. Default: the tracking URI when it is an http(s) server, else no links.")
@options.experiment_name
def compare(run_ids: tuple[str, ...], epoch: int | None, modules: tuple[str, ...] | None, reference: str, out: Path, ui_url: str,
            experiment_name: str | None) -> None:
    """Tables, plots and sanity flags for probe sweep RUN_IDS (default: the latest sweep).

    With several sweeps, each later one is also compared cell by cell with the first. A sweep with neurons tables
    (neurons/units.parquet) also gets its units: detectors per module over epochs, when units emerge, unit cards.
    Everything is written to --out and logged as artifacts of a `compare` run.
    """
    ids = [r.strip() for raw in run_ids for r in raw.replace(",", " ").split() if r.strip()]
    try:
        if not ids:
            ids = [sweep_results.find_latest_sweep(experiment_name).info.run_id]
            log.info("comparing the latest probe sweep %s", ids[0])
        sweeps = [(run_id[:8], sweep_results.load_sweep_results(run_id)) for run_id in ids]
        ui = ui_url.strip() or sweep_results.ui_address()
        provenance = [sweep_results.provenance(run_id, name, table, ui_url=ui) for (name, table), run_id
                      in zip(sweeps, ids, strict=True)]
        ref = read_reference_csv(reference) if reference.strip() else None
        truth, mined = label_sources.label_sources(ids, [name for name, _ in sweeps])  # CLIP vs true labels
        found = [(name, neurons_tables.load_unit_tables(run_id)) for (name, _), run_id in zip(sweeps, ids, strict=True)]
        units = {name: tables for name, tables in found if tables is not None}  # sweeps without them: no units part
        # Built in a fresh folder so the run logs this report only, never stale files in --out.
        with tempfile.TemporaryDirectory(prefix="clipprobe-compare-") as tmp:
            report = write_report(sweeps, tmp, epoch=epoch, modules=None if modules is None else list(modules),
                                  reference_table=ref, provenance=provenance,
                                  label_sources=LabelSources(truth, mined) if mined else None, units=units,
                                  cka={name: sweep_similarity.load_cka(run_id)
                                       for (name, _), run_id in zip(sweeps, ids, strict=True)},
                                  title=f"clipprobe: what, where and when ({', '.join(p.model for p in provenance)})")
            params = {"sweep_run_ids": ",".join(ids), "epoch": "last" if epoch is None else epoch,
                      "modules": ",".join(modules) if modules else "default",
                      "reference": reference or "none", "out": str(out)}
            name = "compare " + " vs ".join(f"{p.model} {p.name}" for p in provenance)
            with step_run("compare", experiment_name=experiment_name, params=params, run_name=name) as run:
                set_tags({"clipprobe.compare.sweeps": ",".join(ids)})
                for sweep_id in ids:  # each sweep's description points to this report
                    fits.link_report(sweep_id, run.info.run_id, run.info.experiment_id)
                log_artifacts(tmp, artifact_path="compare")
            shutil.copytree(tmp, out, dirs_exist_ok=True)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.text)
    click.echo(f"report: {out / report.html.name}  (compare run {run.info.run_id}, "
               "artifacts under compare/)")
