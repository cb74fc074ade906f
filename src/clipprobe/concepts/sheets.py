"""Contact sheets: a concept's positives at ranks 1, 6, 11, ... 96 in one picture, as the seed shows them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

SHEET_RANKS = tuple(range(1, 101, 5))


def contact_sheet(
    rows: pd.DataFrame,
    pool_root: str | Path,
    *,
    ranks: Sequence[int] = SHEET_RANKS,
    columns: int = 5,
    tile: int = 112,
    title: str = "",
) -> Image.Image:
    """A grid of the positives of one concept at ``ranks`` (those the selection holds), labelled by rank."""
    positives = rows[rows["label"] == 1].set_index("rank")
    shown = [r for r in ranks if r in positives.index]
    n_rows = max(1, -(-len(shown) // columns))
    header, caption = (18 if title else 0), 14
    sheet = Image.new("RGB", (columns * tile, header + n_rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill="black")
    for i, rank in enumerate(shown):
        x, y = (i % columns) * tile, header + (i // columns) * (tile + caption)
        row = positives.loc[rank]
        try:
            with Image.open(Path(pool_root) / row["path"]) as image:
                thumb = image.convert("RGB")
                thumb.thumbnail((tile - 4, tile - 4))
        except OSError:
            thumb = Image.new("RGB", (tile - 4, tile - 4), "grey")
        sheet.paste(thumb, (x + 2, y + 2))
        draw.text((x + 2, y + tile), f"#{rank}  p={row['probability']:.2f}", fill="black")
    return sheet


def write_contact_sheets(splits: pd.DataFrame, pool_root: str | Path, out_dir: str | Path) -> list[Path]:
    """One ``<concept>.png`` per concept in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for concept, rows in splits.groupby("concept", sort=False):
        path = out_dir / f"{concept}.png"
        contact_sheet(rows, pool_root, title=f"{concept}: positives, ranks 1..100 step 5").save(path)
        written.append(path)
    return written
