"""Write the whole comparison report for one or more sweeps into a folder (no MLflow, no CLI).

The report opens with an introduction (what/where/when, the probe kinds, how to read intervals,
baselines and selectivity) and the sweeps' provenance, then the plots, then the tables.
Layout of ``out``: ``report.html`` (self-contained) and ``report.txt`` (what the terminal shows);
per sweep (at the root for one sweep, in ``<name>/`` for several) ``tables.md``, ``tables.csv``,
``tables.txt``, ``sanity.txt``, ``emergences.csv``, ``results.parquet`` and ``plots/*.png``;
``diff_<a>_vs_<b>.csv`` for each later sweep against the first; ``reference.csv`` (ours beside the
reference); for a sweep with neurons tables, ``unit_when.csv``, ``module_when.csv``, ``detectors.csv``,
``plots/detectors_over_epochs.png`` and the unit cards (``report.units``). Every automatic statement (sanity flags, "emerges at epoch E", marked changes and
differences) rests on an exact interval or a paired test (``report.significance``).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clipprobe.report import diff, intro, labels, page, plots, reference, sanity, tables
from clipprobe.report.units import UnitTables, units_part

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What was written: the terminal text, the HTML page and every file."""

    text: str
    html: Path
    files: list[Path] = field(default_factory=list)


def _prepare(sweeps: Sequence[tuple[str, pd.DataFrame]], epoch: int | None,
             modules: Sequence[str] | None) -> list[tuple[str, pd.DataFrame, list[tables.ConceptTable], list[str]]]:
    """Validate every input before writing anything (epoch, modules, shape)."""
    if not sweeps:
        raise ValueError("no sweep to compare")
    prepared = []
    for name, results in sweeps:
        data = tables.normalize_results(results)
        built = tables.build_tables(data, epoch)
        chosen = plots.check_modules(data, modules) if modules else plots.default_modules(data)
        prepared.append((name, data, built, chosen))
    return prepared


def _baseline(data: pd.DataFrame) -> float | None:
    majority = data["test_majority_acc"].dropna()
    return float(majority.mean()) if not majority.empty else None


def write_report(sweeps: Sequence[tuple[str, pd.DataFrame]], out: str | Path, *,
                 epoch: int | None = None, modules: Sequence[str] | None = None,
                 reference_table: pd.DataFrame | None = None, title: str = "clipprobe comparison",
                 provenance: Sequence[intro.Provenance] = (),
                 label_sources: labels.LabelSources | None = None,
                 units: Mapping[str, UnitTables] | None = None) -> Report:
    """Introduction and provenance, then per sweep the what-where-when plots, accuracy over epochs,
    emergences, sanity flags, the units (``units``: neurons tables by sweep name; a sweep without them has no
    units part) and tables; then diffs (later sweeps vs the first), mined vs true labels
    (``label_sources``: ``labels.csv`` per mined sweep) and the reference."""
    prepared = _prepare(sweeps, epoch, modules)
    diffs = [(name, diff.diff_sweeps(prepared[0][1], data, epoch_a=epoch, epoch_b=epoch))
             for name, data, _, _ in prepared[1:]]
    beside = (reference.beside_reference(tables.tables_long(prepared[0][2]), reference_table)
              if reference_table is not None else None)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    all_probes = list(dict.fromkeys(p for _, data, _, _ in prepared for p in tables.probes_in(data)))
    baseline = _baseline(prepared[0][1])
    text: list[str] = ["\n\n".join(intro.intro_lines(all_probes, baseline)), ""]
    if provenance:
        text += ["where the numbers come from:", *intro.provenance_lines(provenance), ""]
    sections: list[tuple[str, str]] = [("What this report shows and how to read it", intro.intro_html(all_probes, baseline)),
                                       ("Where the numbers come from", intro.provenance_html(provenance))]
    several = len(prepared) > 1
    for name, data, built, chosen in prepared:
        folder = out / name if several else out
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        flags = sanity.sanity_flags(data, built[0].epoch)
        emerged = sanity.emergences(data)
        emerged.to_csv(folder / "emergences.csv", index=False)
        files.append(folder / "emergences.csv")
        files += [tables.write_csv(built, folder / "tables.csv"),
                  _write(folder / "tables.md", tables.to_markdown(built)),
                  _write(folder / "tables.txt", tables.to_text(built)),
                  _write(folder / "sanity.txt", _flags_text(flags))]
        data.to_parquet(folder / "results.parquet", index=False)
        files.append(folder / "results.parquet")
        heatmaps, lines = [], []
        for probe in tables.probes_in(data):
            files.append(plots.what_where_when(data, probe, folder / "plots" / f"what_where_when_{probe}.png"))
            heatmaps.append((f"what-where-when {probe}", files[-1]))
            files.append(plots.accuracy_over_epochs(data, probe, chosen,
                                                    folder / "plots" / f"accuracy_over_epochs_{probe}.png"))
            lines.append((f"accuracy over epochs {probe}", files[-1]))
        heading = f"sweep {name}"
        all_modules = plots.modules_in_order(data)
        shown = ("all modules" if len(chosen) == len(all_modules) else
                 f"{len(chosen)} of {len(all_modules)} modules ({', '.join(chosen)}); pick others with --modules")
        text += [f"#### {heading}: {len(data)} fits, epoch {built[0].epoch}", tables.to_text(built), "",
                 "sanity flags:", _flags_text(flags), "",
                 "when (paired tests between consecutive epochs):", sanity.emergence_text(emerged), ""]
        sections += [(f"{heading}: what-where-when (test accuracy, module x epoch)",
                      "<p>Each panel is one concept: rows are modules from the input (bottom) to the head (top), "
                      "columns are epochs. The line on the colour scale marks the majority baseline.</p>"
                      + "\n".join(page.embed_png(p, alt) for alt, p in heatmaps)),
                     (f"{heading}: accuracy over epochs",
                      f"<p>Lines for {html.escape(shown)}; bands are 95% intervals, the dashed line the majority "
                      "baseline.</p>" + "\n".join(page.embed_png(p, alt) for alt, p in lines)),
                     (f"{heading}: when concepts emerge",
                      f"<pre>{html.escape(sanity.emergence_text(emerged))}</pre>")]
        if units and name in units:
            part = units_part(units[name], folder, heading)
            text += part.text
            sections += part.sections
            files += part.files
        sections += [(f"{heading}: sanity flags", page.flags_html(flags)),
                     (f"{heading}: tables at epoch {built[0].epoch}", tables.to_html(built))]
    first = prepared[0][0]
    for name, d in diffs:
        path = out / f"diff_{first}_vs_{name}.csv"
        d.to_csv(path, index=False)
        files.append(path)
        text += [diff.diff_text(d, first, name), ""]
        sections.append((f"{first} vs {name}", diff.diff_html(d, first, name)))
    if label_sources is not None:
        by_name = {name: data for name, data, _, _ in prepared}
        for name, table, text_part, html_part in labels.label_sections(by_name, label_sources, epoch):
            path = out / (f"{name}/labels.csv" if several else "labels.csv")
            table.to_csv(path, index=False)
            files.append(path)
            text += [text_part, ""]
            sections.append((f"CLIP-mined labels ({name}) beside true labels", html_part))
    if beside is not None:
        path = out / "reference.csv"
        beside.to_csv(path, index=False)
        files.append(path)
        text += [reference.render_beside(beside), ""]
        sections.append(("ours beside the reference", f"<pre>{html.escape(reference.render_beside(beside))}</pre>"))
    html_path = _write(out / "report.html", page.render_page(title, sections))
    report_text = "\n".join(text).rstrip() + "\n"
    files += [html_path, _write(out / "report.txt", report_text)]
    log.debug("report written to %s (%d files)", out, len(files))
    return Report(report_text, html_path, files)


def _flags_text(flags: Sequence[sanity.SanityFlag]) -> str:
    return "\n".join(f"[{f.kind}] {f.message}" for f in flags) if flags else "none"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
