"""Contact sheets: a concept's positives at ranks 1, 6, 11, ... 96 in one picture, as the seed shows them.

When the splits carry the truth (a ``truth`` column, see :mod:`clipprobe.concepts.label_quality`), a
positive the truth says lacks the concept gets a red frame, and the legend counts them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from clipprobe.concepts.pool import open_rgb

SHEET_RANKS = tuple(range(1, 101, 5))
WRONG_COLOUR = (220, 20, 20)
WRONG_FRAME = 4  # pixels


def contact_sheet(
    rows: pd.DataFrame,
    pool_root: str | Path,
    *,
    ranks: Sequence[int] = SHEET_RANKS,
    columns: int = 5,
    tile: int = 112,
    title: str = "",
    value_column: str = "probability",
    value_label: str = "p",
) -> Image.Image:
    """A grid of the positives of one concept at ``ranks`` (those the selection holds), labelled by rank and
    ``value_label=<value_column>`` (a unit card shows its top images with ``activation``)."""
    positives = rows[rows["label"] == 1].set_index("rank")
    shown = [r for r in ranks if r in positives.index]
    n_rows = max(1, -(-len(shown) // columns))
    marked = "truth" in positives.columns
    legend = ""
    if marked:
        wrong = [r for r in shown if not bool(positives.loc[r, "truth"])]
        all_right = float(positives["truth"].astype(bool).mean())
        legend = (f"red frame: wrong by the truth ({len(wrong)} of {len(shown)} shown); "
                  f"precision of all {len(positives)} positives {all_right:.2f}")
    header, caption = (18 if title else 0) + (14 if legend else 0), 14
    sheet = Image.new("RGB", (columns * tile, header + n_rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill="black")
    if legend:
        draw.text((4, header - 14), legend, fill=WRONG_COLOUR)
    for i, rank in enumerate(shown):
        x, y = (i % columns) * tile, header + (i // columns) * (tile + caption)
        row = positives.loc[rank]
        try:
            thumb = open_rgb(Path(pool_root) / row["path"])
            thumb.thumbnail((tile - 4, tile - 4))
        except OSError:
            thumb = Image.new("RGB", (tile - 4, tile - 4), "grey")
        sheet.paste(thumb, (x + 2, y + 2))
        wrong = marked and not bool(row["truth"])
        if wrong:
            draw.rectangle((x + 1, y + 1, x + tile - 2, y + tile - 2), outline=WRONG_COLOUR, width=WRONG_FRAME)
        draw.text((x + 2, y + tile), f"#{rank}  {value_label}={row[value_column]:.2f}" + ("  wrong" if wrong else ""),
                  fill=WRONG_COLOUR if wrong else "black")
    return sheet


def write_contact_sheets(splits: pd.DataFrame, pool_root: str | Path, out_dir: str | Path) -> list[Path]:
    """One ``<concept>.png`` per concept in ``out_dir``; wrong positives framed when ``splits`` has ``truth``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for concept, rows in splits.groupby("concept", sort=False):
        path = out_dir / f"{concept}.png"
        contact_sheet(rows, pool_root, title=f"{concept}: positives, ranks 1..100 step 5").save(path)
        written.append(path)
    return written
