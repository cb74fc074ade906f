"""What-where-when plots: per probe kind, one heatmap panel per concept (module x epoch, one colour
scale for every panel), and accuracy-over-epoch lines with 95% bands for chosen modules.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), at a fixed
size so a PNG is ``figure_pixels(n_concepts)`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clipprobe.report.tables import epochs_of, normalize_results

VMIN, VMAX = 0.5, 1.0
PANEL_INCHES = (3.4, 3.2)
MAX_COLUMNS = 4
DPI = 100
MAX_MARKED_EPOCHS = 30  # accuracy lines mark each epoch up to this many epochs; beyond, markers would clutter them
WHAT_WHERE_WHEN_METRICS = ("test_acc", "compression")
MAX_WRITTEN_CELLS = (20, 6)  # heatmap cells get their accuracy written when a panel has at most these modules, epochs


def grid_shape(n_panels: int) -> tuple[int, int]:
    cols = max(1, min(MAX_COLUMNS, n_panels))
    return math.ceil(n_panels / cols), cols


def figure_pixels(n_panels: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of a grid figure with ``n_panels`` panels."""
    rows, cols = grid_shape(n_panels)
    w, h = _figsize(rows, cols)
    return round(w * dpi), round(h * dpi)


def _figsize(rows: int, cols: int) -> tuple[float, float]:
    return PANEL_INCHES[0] * cols + 1.0, PANEL_INCHES[1] * rows + 0.6


# Fixed margins in inches (tick labels, titles, the colour bar) instead of a layout engine: matplotlib's
# constrained layout measured every tick label of every panel again and took 40% of the report's plotting time.
_LEFT, _RIGHT, _BAR, _TOP, _BOTTOM, _GAP_W, _GAP_H = 0.75, 0.15, 1.6, 0.6, 0.45, 0.2, 0.75


def _margins(rows: int, cols: int, *, colorbar: bool) -> dict[str, float]:
    """``gridspec_kw`` for a grid of panels with room for tick labels, titles and (``colorbar``) the colour bar."""
    width, height = _figsize(rows, cols)
    right = _RIGHT + (_BAR if colorbar else 0.0)
    panel_w = (width - _LEFT - right - (cols - 1) * _GAP_W) / cols
    panel_h = (height - _TOP - _BOTTOM - (rows - 1) * _GAP_H) / rows
    return {"left": _LEFT / width, "right": 1 - right / width, "top": 1 - _TOP / height, "bottom": _BOTTOM / height,
            "wspace": _GAP_W / panel_w, "hspace": _GAP_H / panel_h}


def concept_order(data: pd.DataFrame) -> list[str]:
    """Concepts grouped by concept group (groups and, within one, concepts in order of first appearance),
    so the panels of one group sit together as in the seed's tables."""
    first = data.drop_duplicates("concept")[["concept", "group"]]
    groups = list(dict.fromkeys(first["group"]))
    return [c for g in groups for c in first.loc[first["group"] == g, "concept"]]


def _check_probe(data: pd.DataFrame, probe: str) -> pd.DataFrame:
    rows = data[data["probe"] == probe]
    if rows.empty:
        raise ValueError(f"probe {probe!r} is not in the sweep: it has {', '.join(dict.fromkeys(data['probe']))}")
    return rows


def what_where_when(results: pd.DataFrame, probe: str, path: str | Path, *, vmin: float = VMIN,
                    vmax: float = VMAX, dpi: int = DPI, metric: str = "test_acc") -> Path:
    """Heatmaps of test accuracy (or ``metric="compression"``), module (rows) x epoch (columns), one panel per
    concept, saved to ``path``."""
    return _save(what_where_when_figure(results, probe, vmin=vmin, vmax=vmax, dpi=dpi, metric=metric), path)


def what_where_when_figure(results: pd.DataFrame, probe: str, *, vmin: float = VMIN, vmax: float = VMAX,
                           dpi: int = DPI, metric: str = "test_acc") -> Figure:
    """The figure of :func:`what_where_when`. Panels of at most ``MAX_WRITTEN_CELLS`` (modules, epochs) have
    each cell's accuracy written in it (a sweep of one epoch is a single column of colours otherwise).

    ``metric="compression"`` draws the MDL compression instead (uniform / online codelength, from 1 = nothing
    learnt to the sweep's largest; no majority line): it still ranks cells where accuracy saturates at 1.000."""
    if metric not in WHAT_WHERE_WHEN_METRICS:
        raise ValueError(f"unknown metric {metric!r}: the what-where-when plot draws {', '.join(WHAT_WHERE_WHEN_METRICS)}")
    data = _check_probe(normalize_results(results), probe)
    accuracy = metric == "test_acc"
    if not accuracy:
        values_of = pd.to_numeric(data[metric], errors="coerce") if metric in data else pd.Series(dtype=float)
        if values_of.dropna().empty:
            raise ValueError(f"the sweep has no {metric} for {probe}: probe with --mdl to draw it")
        vmin, vmax = 1.0, max(2.0, float(values_of.max()))
    concepts = concept_order(data)
    epochs = epochs_of(data)
    names = modules_in_order(data)
    first = data.drop_duplicates("module")
    index_of = dict(zip(first["module"], first["module_index"], strict=True))
    modules = [int(index_of[m]) for m in names]
    # every panel's grid from one groupby (a pivot table per panel took seconds at 300 epochs); the same means
    grids = data.groupby(["concept", "module_index", "epoch"])[metric].mean()
    rows, cols = grid_shape(len(concepts))
    fig = Figure(figsize=_figsize(rows, cols), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw=_margins(rows, cols, colorbar=True))
    image = None
    for k, (ax, concept) in enumerate(zip(axes.flat, concepts, strict=False)):
        sub = data[data["concept"] == concept]
        grid = grids.xs(concept, level="concept").unstack("epoch").reindex(index=modules, columns=epochs)
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis",
                          vmin=vmin, vmax=vmax, interpolation="nearest")
        if values.shape[0] <= MAX_WRITTEN_CELLS[0] and values.shape[1] <= MAX_WRITTEN_CELLS[1]:
            _write_cells(ax, values, vmin, vmax, ".3f" if accuracy else ".2f")
        ax.set_title(f"{concept} ({sub['group'].iloc[0]})", fontsize=10)
        ax.set_yticks(range(len(modules)), names, fontsize=7)
        ax.tick_params(axis="y", labelleft=k % cols == 0)  # every panel has the same modules: named once a row
        ticks = epoch_ticks(epochs)
        ax.set_xticks(ticks, [str(epochs[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("epoch (when)", fontsize=8)
    for ax in list(axes.flat)[len(concepts):]:
        ax.set_axis_off()
    label = "test accuracy" if accuracy else "MDL compression"
    fig.suptitle(f"what-where-when: {probe} {label} (module = where, epoch = when)", fontsize=11)
    if image is not None and not accuracy:
        fig.colorbar(image, cax=_bar_axes(fig), label=f"compression = uniform / online codelength ({vmin:g}..{vmax:.3g})")
    elif image is not None:
        bar = fig.colorbar(image, cax=_bar_axes(fig), label=f"test accuracy ({vmin:g}..{vmax:g})")
        majority = data["test_majority_acc"].dropna()
        if not majority.empty and vmin <= float(majority.mean()) <= vmax:
            base = float(majority.mean())
            bar.ax.axhline(base, color="red", lw=3)
            ticks = [t for t in bar.get_ticks() if vmin <= t <= vmax and abs(t - base) > 0.04]
            bar.set_ticks([*ticks, base], labels=[f"{t:g}" for t in ticks] + [f"majority {base:.3f}"])
    return fig


def epoch_ticks(epochs: Sequence[int], most: int = 8) -> list[int]:
    """Positions (column indices) of the epochs to label under a heatmap: all of up to ``most`` + 1 epochs, else the
    multiples of the smallest round step (1, 2, 5, 10, 20, 25, 50, ..) that gives about ``most`` labels (0, 50, ..,
    250 at 300 epochs), else (epochs with too few multiples of it) every n-th column."""
    if len(epochs) <= most + 1:
        return list(range(len(epochs)))
    span = max(epochs) - min(epochs)
    step = next(s * 10**k for k in range(12) for s in (1, 2, 5, 10, 25) if s * 10**k * most >= span)
    ticks = [i for i, e in enumerate(epochs) if e % step == 0]
    return ticks if len(ticks) >= 2 else list(range(0, len(epochs), max(1, len(epochs) // most)))


def _bar_axes(fig: Figure):
    """The colour bar's axes in the right margin ``_margins`` keeps for it, 80% of the panels' height."""
    width, height = fig.get_size_inches()
    bottom, top = _BOTTOM / height, 1 - _TOP / height
    pad = 0.1 * (top - bottom)
    return fig.add_axes((1 - (_RIGHT + _BAR - 0.2) / width, bottom + pad, 0.18 / width, top - bottom - 2 * pad))


def _write_cells(ax, values: np.ndarray, vmin: float, vmax: float, fmt: str = ".3f") -> None:
    """Each known cell's value in its centre, dark on viridis' bright end, white elsewhere."""
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            bright = (value - vmin) / (vmax - vmin) > 0.6
            ax.text(col, row, f"{value:{fmt}}", ha="center", va="center", fontsize=6,
                    color="black" if bright else "white")


def modules_in_order(results: pd.DataFrame) -> list[str]:
    """The sweep's module names in the backbone's order (the results' ``module_index``)."""
    data = normalize_results(results)
    first = data.drop_duplicates("module").sort_values(["module_index", "module"])
    return list(first["module"])


def default_modules(results: pd.DataFrame, k: int = 8) -> list[str]:
    """Up to ``k`` modules spread evenly from the first to the last."""
    names = modules_in_order(results)
    picks = np.unique(np.linspace(0, len(names) - 1, min(k, len(names))).round().astype(int))
    return [names[i] for i in picks]


def check_modules(results: pd.DataFrame, modules: Sequence[str]) -> list[str]:
    """The modules asked for, each checked against the sweep."""
    have = modules_in_order(results)
    out = []
    for name in modules:
        if name not in have:
            raise ValueError(f"unknown module {name!r}: the sweep has {_span(have)}")
        out.append(name)
    return out


def _span(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 8 else f"{names[0]}, {names[1]} .. {names[-1]} ({len(names)} modules)"


def accuracy_over_epochs(results: pd.DataFrame, probe: str, modules: Sequence[str], path: str | Path,
                         *, ylim: tuple[float, float] = (VMIN, VMAX), dpi: int = DPI) -> Path:
    """Lines of test accuracy over epochs for ``modules``, 95% interval bands, majority dashed; saved to ``path``."""
    return _save(accuracy_figure(results, probe, modules, ylim=ylim, dpi=dpi), path)


def accuracy_figure(results: pd.DataFrame, probe: str, modules: Sequence[str], *,
                    ylim: tuple[float, float] = (VMIN, VMAX), dpi: int = DPI) -> Figure:
    """The figure of :func:`accuracy_over_epochs`: a marker on each epoch up to ``MAX_MARKED_EPOCHS``
    epochs, plain lines beyond (300 epochs of markers hide the lines)."""
    data = _check_probe(normalize_results(results), probe)
    modules = check_modules(data, modules)
    concepts = concept_order(data)
    rows, cols = grid_shape(len(concepts))
    fig = Figure(figsize=_figsize(rows, cols), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True, gridspec_kw=_margins(rows, cols, colorbar=False))
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]  # "C0", "C1", ..: resolving "CN" reads the cycle each time
    colours = [cycle[i % len(cycle)] for i in range(len(modules))]
    means = data[data["module"].isin(modules)].groupby(["concept", "module", "epoch"])[
        ["test_acc", "test_acc_ci_low", "test_acc_ci_high"]].mean()  # every line's points from one groupby
    lines = {key: frame.droplevel(["concept", "module"]) for key, frame in means.groupby(level=["concept", "module"])}
    for ax, concept in zip(axes.flat, concepts, strict=False):
        sub = data[data["concept"] == concept]
        for module, colour in zip(modules, colours, strict=True):
            line = lines.get((concept, module))
            if line is None or line.empty:
                continue
            x = line.index.to_numpy()
            ax.plot(x, line["test_acc"], marker="o" if len(x) <= MAX_MARKED_EPOCHS else "", ms=3, color=colour,
                    label=module)
            ax.fill_between(x, line["test_acc_ci_low"], line["test_acc_ci_high"], color=colour, alpha=0.2)
        majority = sub["test_majority_acc"].dropna()
        if not majority.empty:
            ax.axhline(float(majority.mean()), color="grey", ls="--", lw=1, label="majority")
        ax.set_ylim(*ylim)
        ax.set_title(f"{concept} ({sub['group'].iloc[0]})", fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test accuracy", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(concepts):]:
        ax.set_axis_off()
    fig.suptitle(f"{probe}: test accuracy over epochs with 95% intervals", fontsize=11)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
