"""The units part of a report, from a sweep's neurons tables (frames, never MLflow): detectors per module over
epochs (NetDissect's training-dynamics figure), the unit-level "when" (``neurons.emergence``: tested), and unit
cards (a unit's top pool images as a contact sheet, its scores over epochs, its three labels side by side)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clipprobe.backbones.names import LOGITS
from clipprobe.concepts.sheets import contact_sheet
from clipprobe.neurons import emergence
from clipprobe.neurons.schema import DETECTOR_IOU, DETECTOR_Q
from clipprobe.report.page import embed_png
from clipprobe.report.tables import natural_key

DPI = 100
MAX_CARDS = 24  # unit cards in one report: the best units of the (module, concept) pairs with detectors
LABEL_COLUMNS = ("auroc_label", "wpmi_label", "iou_label")
LABEL_NAMES = ("AUROC", "soft-WPMI", "IoU")


@dataclass
class UnitTables:
    """A sweep's neurons tables as the report reads them (``neurons.schema``'s columns); ``top_images`` has
    ``neurons.cards.TOP_IMAGE_COLUMNS`` (paths relative to ``pool_root``)."""

    units: pd.DataFrame
    summary: pd.DataFrame | None = None
    top_images: pd.DataFrame | None = None
    pool_root: Path | None = None


@dataclass
class UnitsPart:
    """What the units part made: its terminal lines, its HTML sections and its files."""

    text: list[str]
    sections: list[tuple[str, str]]
    files: list[Path] = field(default_factory=list)
    module_when: pd.DataFrame | None = None
    unit_when: pd.DataFrame | None = None


def modules_in_order(names: Sequence[str]) -> list[str]:
    """Module names from the input to the head: natural order (``module:2`` before ``module:10``), ``logits`` last."""
    unique = list(dict.fromkeys(str(n) for n in names))
    return sorted(unique, key=lambda m: (m == LOGITS, natural_key(m)))


def detectors_figure(counts: pd.DataFrame, *, dpi: int = DPI) -> Figure:
    """One panel per concept group, one line per module (``n_detectors`` over epochs), from
    ``neurons.emergence.detector_counts(units, by="group")``."""
    groups = list(dict.fromkeys(counts["group"].astype(str)))
    modules = modules_in_order(counts["module"])
    fig = Figure(figsize=(3.6 * len(groups) + 1.4, 3.4), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    colours = [f"C{i % 10}" for i in range(len(modules))]
    for ax, group in zip(axes, groups, strict=True):
        sub = counts[counts["group"].astype(str) == group]
        for module, colour in zip(modules, colours, strict=True):
            line = sub[sub["module"].astype(str) == module].groupby("epoch")["n_detectors"].sum().sort_index()
            if line.empty:
                continue
            ax.plot(line.index.to_numpy(), line.to_numpy(), marker="o" if len(line) <= 30 else "", ms=3,
                    color=colour, label=module)
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("detector units", fontsize=8)
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"detectors per module over epochs (AUROC > 0.5 at q < {DETECTOR_Q:g}; IoU > {DETECTOR_IOU:g} "
                 "where masks exist)", fontsize=10)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def detectors_over_epochs(counts: pd.DataFrame, path: str | Path, *, dpi: int = DPI) -> Path:
    """:func:`detectors_figure` saved as a PNG at ``path``."""
    return _save(detectors_figure(counts, dpi=dpi), Path(path))


def unit_rows(units: pd.DataFrame, module: str, unit: int, concept: str) -> pd.DataFrame:
    """One unit's rows for one concept, by epoch."""
    rows = units[(units["module"].astype(str) == module) & (units["unit"] == unit)
                 & (units["concept"].astype(str) == concept)]
    return rows.sort_values("epoch", kind="stable")


def score_figure(rows: pd.DataFrame, title: str, *, dpi: int = DPI) -> Figure:
    """A unit's AUROC (and IoU where masks exist) for its concept over epochs, chance and IoU threshold dashed."""
    fig = Figure(figsize=(3.6, 2.4), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    epochs = rows["epoch"].to_numpy()
    ax.plot(epochs, rows["auroc"].to_numpy(float), marker="o", ms=3, color="C0", label="AUROC")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    iou = pd.to_numeric(rows["iou"], errors="coerce") if "iou" in rows.columns else None
    if iou is not None and iou.notna().any():
        ax.plot(epochs, iou.to_numpy(float), marker="s", ms=3, color="C1", label="IoU")
        ax.axhline(DETECTOR_IOU, color="C1", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return fig


def card_units(module_when: pd.DataFrame, *, limit: int = MAX_CARDS) -> list[tuple[str, int, str]]:
    """(module, unit, concept) of the cards: the best unit of each (module, concept) that has detectors at the last
    epoch, the highest AUROCs first when there are more than ``limit``; shown by concept, then module order."""
    with_detectors = module_when[(module_when["n_detectors_last"] > 0) & module_when["best_unit"].notna()]
    chosen = with_detectors.sort_values("best_auroc", ascending=False, kind="stable").head(limit)
    order = {m: i for i, m in enumerate(modules_in_order(module_when["module"]))}
    concepts = list(dict.fromkeys(module_when["concept"].astype(str)))
    chosen = chosen.assign(_m=chosen["module"].astype(str).map(order),
                           _c=chosen["concept"].astype(str).map(concepts.index))
    return [(str(r.module), int(r.best_unit), str(r.concept)) for r in chosen.sort_values(["_c", "_m"]).itertuples()]


def _cell(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def unit_card(units: pd.DataFrame, module: str, unit: int, concept: str, folder: Path, *,
              top_images: pd.DataFrame | None = None, pool_root: Path | None = None,
              unit_when: pd.DataFrame | None = None) -> tuple[str, list[Path]]:
    """One unit's card as an HTML fragment, and the PNGs it embeds (written under ``folder``)."""
    rows = unit_rows(units, module, unit, concept)
    if rows.empty:
        raise ValueError(f"unit {emergence.unit_name(module, unit)} has no rows for concept {concept!r}")
    name = emergence.unit_name(module, unit)
    slug = f"{module.replace(':', '')}_{unit}_{concept}"
    files = [_save(score_figure(rows, f"{name}: {concept}"), folder / f"unit_{slug}_scores.png")]
    last = rows.iloc[-1]
    labels = "".join(f"<td>{_cell(last.get(c))}</td>" for c in LABEL_COLUMNS)
    parts = [f'<div class="unit-card"><h3>{html.escape(name)}: {html.escape(concept)}</h3>',
             f'<table class="labels"><thead><tr><th>epoch {int(last["epoch"])}</th>'
             + "".join(f"<th>{n} label</th>" for n in LABEL_NAMES)
             + f"</tr></thead><tbody><tr><th>labels</th>{labels}</tr></tbody></table>"]
    when = None
    if unit_when is not None and not unit_when.empty:
        found = unit_when[(unit_when["module"].astype(str) == module) & (unit_when["unit"] == unit)
                          & (unit_when["concept"].astype(str) == concept)]
        when = found.iloc[0] if len(found) else None
    parts.append(f'<p class="when">{html.escape(_when_sentence(name, concept, when))}</p>')
    head = ("<tr><th>epoch</th><th>AUROC</th><th>q</th><th>IoU</th><th>soft-WPMI</th>"
            + "".join(f"<th>{n} label</th>" for n in LABEL_NAMES) + "</tr>")
    body = "".join(
        f"<tr><th>{int(r['epoch'])}</th><td>{_cell(float(r['auroc']))}</td><td>{_cell(float(r['q_value']), 3)}</td>"
        f"<td>{_cell(_float(r.get('iou')))}</td><td>{_cell(_float(r.get('soft_wpmi')))}</td>"
        + "".join(f"<td>{_cell(r.get(c))}</td>" for c in LABEL_COLUMNS) + "</tr>"
        for _, r in rows.iterrows())
    parts.append(f'<table class="scores"><thead>{head}</thead><tbody>{body}</tbody></table>')
    parts.append(embed_png(files[0], f"{name} scores over epochs"))
    if top_images is not None and pool_root is not None:
        mine = top_images[(top_images["module"].astype(str) == module) & (top_images["unit"] == unit)]
        if not mine.empty:
            epoch = int(mine["epoch"].max())
            shown = mine[mine["epoch"] == epoch].assign(label=1)
            sheet = contact_sheet(shown, pool_root, ranks=sorted(shown["rank"].astype(int)), tile=80,
                                  value_column="activation", value_label="act",
                                  title=f"{name}: top pool images at epoch {epoch}")
            path = folder / f"unit_{slug}_top.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(path)
            files.append(path)
            parts.append(embed_png(path, f"{name} top images at epoch {epoch}"))
    parts.append("</div>")
    return "\n".join(parts), files


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if pd.isna(out) else out


def _when_sentence(name: str, concept: str, when: pd.Series | None) -> str:
    if when is None:
        return f"{name} is never a {concept} detector at the sweep's epochs."
    if pd.notna(when["emerged_epoch"]):
        return (f"{name} emerges as a {concept} detector at epoch {int(when['emerged_epoch'])} (AUROC "
                f"{when['auroc_from']:.3f} -> {when['auroc_to']:.3f}, adjusted p {when['p_adjusted']:.3g})"
                + (" and stays." if when["stays"] else "; it does not stay."))
    return (f"{name} first passes the {concept} detector thresholds at epoch {int(when['first_epoch'])}, with no "
            "significant rise into it" + (" (it is one from the first epoch)" if when["first_epoch"] == 0 else "")
            + ("; it stays." if when["stays"] else "; it does not stay."))


def units_part(tables: UnitTables, folder: str | Path, heading: str, *, limit: int = MAX_CARDS) -> UnitsPart:
    """The units part of one sweep's report: ``unit_when.csv``, ``module_when.csv``, ``detectors.csv``,
    ``plots/detectors_over_epochs.png`` and the unit cards' PNGs in ``folder``; its text lines and HTML sections."""
    folder = Path(folder)
    units = tables.units
    unit_when = emergence.unit_emergence(units)
    module_when = emergence.module_emergence(units, unit_when=unit_when)
    counts = emergence.detector_counts(units)
    files = []
    for name, frame in (("unit_when.csv", unit_when), ("module_when.csv", module_when), ("detectors.csv", counts)):
        frame.to_csv(folder / name, index=False)
        files.append(folder / name)
    plot = detectors_over_epochs(counts, folder / "plots" / "detectors_over_epochs.png")
    files.append(plot)
    lines = emergence.when_lines(module_when, unit_when)
    cards = []
    for module, unit, concept in card_units(module_when, limit=limit):
        fragment, made = unit_card(units, module, unit, concept, folder / "plots" / "units", top_images=tables.top_images,
                                   pool_root=tables.pool_root, unit_when=unit_when)
        cards.append(fragment)
        files += made
    epochs = sorted(int(e) for e in pd.unique(units["epoch"]))
    text = [f"units ({len(pd.unique(units['module']))} modules, epochs {', '.join(map(str, epochs))}): when "
            "(tested, per unit):", *lines, ""]
    sections = [
        (f"{heading}: detectors per module over epochs",
         "<p>Units that detect at least one concept of the group, each counted once, per module and epoch "
         "(NetDissect's training-dynamics figure).</p>" + embed_png(plot, "detectors per module over epochs")),
        (f"{heading}: when units emerge", f"<pre>{html.escape(chr(10).join(lines))}</pre>"),
        (f"{heading}: unit cards",
         "<p>The best unit (highest AUROC at the last epoch) of each module and concept with detectors: its labels "
         "by the three scores side by side, its scores over epochs, its top pool images.</p>"
         + ("\n".join(cards) if cards else "<p>No module has a detector at the last epoch.</p>")),
    ]
    return UnitsPart(text, sections, files, module_when, unit_when)
