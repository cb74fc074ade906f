"""Representation similarity plots from a sweep's CKA table (``similarity.checkpoints.CKA_COLUMNS``).

Module x module heatmaps per epoch, epoch x epoch heatmaps per module, and "CKA to the final epoch" over
epochs, one line per module: when each module's representation settles. Debiased linear CKA throughout
(the biased one is in the table). Also "settles at": the first epoch from which a module's CKA to the final
epoch stays at or above ``SETTLED``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clipprobe.report.plots import DPI, _figsize, _save, grid_shape

SETTLED = 0.9  # CKA to the final epoch from which on a module counts as settled
MAX_EPOCH_PANELS = 12  # module x module panels drawn at most (epochs spread from first to last beyond)
VALUE = "cka_debiased"


def _modules(table: pd.DataFrame) -> list[str]:
    first = table.drop_duplicates("module_a").sort_values(["module_index_a", "module_a"])
    return list(first["module_a"])


def _epochs(table: pd.DataFrame) -> list[int]:
    return sorted(int(e) for e in pd.unique(table["epoch_a"]))


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """The CKA table, checked: one clear line when a column is missing or it is empty."""
    need = ("comparison", "epoch_a", "epoch_b", "module_a", "module_b", "module_index_a", VALUE)
    missing = [c for c in need if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"CKA table lacks column(s) {', '.join(missing)}" if missing else "CKA table is empty"
                         + ": expected probe/cka.parquet of a sweep made with --cka")
    return table


def to_final(table: pd.DataFrame) -> pd.DataFrame:
    """CKA of each module at each epoch to the same module at the sweep's last epoch: ``module, epoch, cka``."""
    table = check_table(table)
    last = max(_epochs(table))
    rows = table[(table["comparison"] == "epochs") & (table["epoch_b"] == last)]
    out = rows[["module_a", "module_index_a", "epoch_a", VALUE]].rename(
        columns={"module_a": "module", "module_index_a": "module_index", "epoch_a": "epoch", VALUE: "cka"})
    return out.sort_values(["module_index", "epoch"]).reset_index(drop=True)


def settled_epochs(table: pd.DataFrame, threshold: float = SETTLED) -> pd.DataFrame:
    """Per module the first epoch from which its CKA to the final epoch stays >= ``threshold``: ``module,
    settled_epoch, cka_first_epoch`` (its CKA to the final epoch at the sweep's first epoch)."""
    rows = []
    for module, line in to_final(table).groupby("module", sort=False):
        line = line.sort_values("epoch")
        below = line[~(line["cka"] >= threshold)]  # NaN (constant features: CKA undefined) is not settled
        after = line[line["epoch"] > below["epoch"].max()] if not below.empty else line
        rows.append({"module": module, "settled_epoch": int(after["epoch"].min()),
                     "cka_first_epoch": float(line["cka"].iloc[0])})
    return pd.DataFrame(rows, columns=["module", "settled_epoch", "cka_first_epoch"])


def settled_text(table: pd.DataFrame, threshold: float = SETTLED) -> str:
    """One line per module: from which epoch on its debiased CKA to the final epoch stays >= ``threshold``."""
    settled = settled_epochs(table, threshold)
    epochs = _epochs(table)
    lines = [f"representation settles (debiased linear CKA to epoch {epochs[-1]} >= {threshold:g} from then on; "
             f"CKA at epoch {epochs[0]} in brackets):"]
    lines += [f"  {r.module}: epoch {r.settled_epoch} ({r.cka_first_epoch:.2f})" for r in settled.itertuples()]
    return "\n".join(lines)


def _heatmaps(panels: Sequence[tuple[str, np.ndarray]], ticks: Sequence[str], title: str, axis: str,
              dpi: int) -> Figure:
    rows, cols = grid_shape(len(panels))
    fig = Figure(figsize=_figsize(rows, cols), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    step = max(1, len(ticks) // 10)
    for ax, (name, values) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(values, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        positions = list(range(0, len(ticks), step))
        ax.set_xticks(positions, [ticks[i] for i in positions], fontsize=6, rotation=90)
        ax.set_yticks(positions, [ticks[i] for i in positions], fontsize=6)
        ax.set_xlabel(axis, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="debiased linear CKA")
    return fig


def module_similarity_figure(table: pd.DataFrame, *, dpi: int = DPI) -> Figure:
    """Module x module CKA, one panel per epoch (at most ``MAX_EPOCH_PANELS``, spread from first to last)."""
    table = check_table(table)
    modules, epochs = _modules(table), _epochs(table)
    picks = np.unique(np.linspace(0, len(epochs) - 1, min(MAX_EPOCH_PANELS, len(epochs))).round().astype(int))
    data = table[table["comparison"] == "modules"]
    panels = []
    for e in (epochs[i] for i in picks):
        sub = data[data["epoch_a"] == e]
        grid = sub.pivot_table(index="module_a", columns="module_b", values=VALUE).reindex(index=modules, columns=modules)
        panels.append((f"epoch {e}", grid.to_numpy(dtype=float)))
    return _heatmaps(panels, modules, "which modules resemble which (module x module, per epoch)", "module", dpi)


def epoch_similarity_figure(table: pd.DataFrame, *, dpi: int = DPI) -> Figure:
    """Epoch x epoch CKA, one panel per module."""
    table = check_table(table)
    modules, epochs = _modules(table), _epochs(table)
    data = table[table["comparison"] == "epochs"]
    panels = []
    for m in modules:
        sub = data[data["module_a"] == m]
        grid = sub.pivot_table(index="epoch_a", columns="epoch_b", values=VALUE).reindex(index=epochs, columns=epochs)
        panels.append((m, grid.to_numpy(dtype=float)))
    return _heatmaps(panels, [str(e) for e in epochs], "how much each module still changes (epoch x epoch)",
                     "epoch", dpi)


def to_final_figure(table: pd.DataFrame, *, dpi: int = DPI) -> Figure:
    """CKA to the final epoch over epochs, one line per module (input side dark, head side bright)."""
    line = to_final(table)
    modules = _modules(table)
    fig = Figure(figsize=(7.5, 4.2), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    for i, m in enumerate(modules):
        sub = line[line["module"] == m]
        ax.plot(sub["epoch"], sub["cka"], marker="o", ms=3, color=cmap(i / max(1, len(modules) - 1)), label=m)
    ax.axhline(SETTLED, color="grey", ls="--", lw=1, label=f"settled ({SETTLED:g})")
    ax.set_ylim(min(0.0, float(line["cka"].min())), 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"debiased CKA to epoch {max(_epochs(table))}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncols=2 if len(modules) > 10 else 1, loc="lower right")
    fig.suptitle("CKA to the final epoch: when each module settles", fontsize=11)
    return fig


def write_plots(table: pd.DataFrame, folder: str | Path) -> list[tuple[str, Path]]:
    """The three figures as PNGs in ``folder``: (caption, path) each."""
    folder = Path(folder)
    return [("CKA to the final epoch", _save(to_final_figure(table), folder / "cka_to_final_epoch.png")),
            ("CKA module x module", _save(module_similarity_figure(table), folder / "cka_modules.png")),
            ("CKA epoch x epoch", _save(epoch_similarity_figure(table), folder / "cka_epochs.png"))]


def section_html(plots: Sequence[tuple[str, Path]], text: str, embed) -> str:
    """The report section: what CKA is, the "settles at" lines and the figures (``embed``: page.embed_png)."""
    return ("<p>Debiased linear CKA (Kornblith et al. 2019) between the modules' pooled activations on the sweep's "
            "images: 1 = the same representation up to rotation and scale, 0 = unrelated. No concept is involved: "
            "it shows how much a module still changes between epochs and which modules resemble which.</p>"
            f"<pre>{html.escape(text)}</pre>" + "\n".join(embed(p, alt) for alt, p in plots))
