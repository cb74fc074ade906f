"""Reference tables in the seed's shape: parse the seed's text, render it back, compare ours to it.

A reference CSV has one row per (concept, module) with columns ``group``, ``concept``, ``module``
and one column per probe kind (test accuracy). Extra columns are ignored, so the ``tables.csv``
that ``compare`` writes is itself a valid reference for a later sweep.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from clipprobe.probes.kinds import PROBE_KINDS, SEED_PROBE_KINDS

SEED_PROBES = SEED_PROBE_KINDS
SEED_COLUMNS = ("group", "concept", "module", *SEED_PROBES)
_TABLES_HEADING = "Tables (Test Acc)"
_HEADER = re.compile(r"^layer( \w+)+$")
_ROW = re.compile(r"^(module:\d+)((?: \d\.\d+)+)$")


def parse_seed_tables(text: str) -> pd.DataFrame:
    """The seed's "Tables (Test Acc)" section as a table (values kept as written, e.g. ``"0.990"``).

    Groups are lines ending in ``Concepts`` ("Color Concepts"), each table is a concept title
    line, a header ``layer <probe> ...`` and ``module:N`` rows.
    """
    start = text.find(_TABLES_HEADING)
    if start < 0:
        raise ValueError(f"no {_TABLES_HEADING!r} section in the text")
    rows: list[dict[str, str]] = []
    group = concept = None
    probes: list[str] = []
    for raw in text[start + len(_TABLES_HEADING):].splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "Conclusion":
            break
        if line.endswith(" Concepts"):
            group, concept, probes = line, None, []
        elif _HEADER.match(line):
            probes = line.split()[1:]
        elif m := _ROW.match(line):
            if group is None or concept is None or not probes:
                raise ValueError(f"table row before its group, concept or header: {line!r}")
            values = m.group(2).split()
            if len(values) != len(probes):
                raise ValueError(f"row {line!r} has {len(values)} values for {len(probes)} probes")
            rows.append({"group": group, "concept": concept, "module": m.group(1),
                         **dict(zip(probes, values, strict=True))})
        else:
            concept, probes = line, []
    if not rows:
        raise ValueError(f"no tables found after {_TABLES_HEADING!r}")
    return pd.DataFrame(rows, dtype=str)


def render_seed_tables(reference: pd.DataFrame) -> str:
    """Render reference tables as the seed prints them (group, concept, ``layer`` header, rows)."""
    probes = probe_columns(reference)
    blocks: list[str] = []
    for group, by_group in reference.groupby("group", sort=False):
        blocks.append(str(group))
        for concept, table in by_group.groupby("concept", sort=False):
            lines = [" ".join(["layer", *probes])]
            for _, row in table.iterrows():
                lines.append(" ".join([row["module"], *(_seed_value(row[p]) for p in probes)]))
            blocks.extend([str(concept), "\n".join(lines)])
    return "\n\n".join(blocks)


def _seed_value(value: object) -> str:
    return value if isinstance(value, str) else f"{float(value):.3f}"


def probe_columns(reference: pd.DataFrame) -> list[str]:
    """The probe-kind columns of a reference table, in the order they appear."""
    known = tuple(PROBE_KINDS)
    found = [c for c in reference.columns if c in known]
    if not found:
        raise ValueError(
            f"reference table has no probe columns: expected some of {', '.join(known)}, "
            f"got {', '.join(map(str, reference.columns))}"
        )
    return found


def read_reference_csv(path: str | Path) -> pd.DataFrame:
    """Read a reference CSV (strings kept as written); one clear error when its shape is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference table {path} does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("group", "concept", "module") if c not in table.columns]
    if missing:
        raise ValueError(
            f"reference table {path} lacks column(s) {', '.join(missing)}: expected "
            f"{', '.join(SEED_COLUMNS)}"
        )
    probe_columns(table)
    return table


def write_reference_csv(reference: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    reference.to_csv(path, index=False)
    return path


def beside_reference(ours: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Our long table (``concept``, ``module``, ``probe``, ``test_acc``, ``test_acc_ci_low/high``)
    joined to a reference: one row per cell both have, with the difference and whether the
    reference value lies inside our 95% interval. Concepts match case-insensitively."""
    probes = probe_columns(reference)
    ref = reference.melt(id_vars=["group", "concept", "module"], value_vars=probes,
                         var_name="probe", value_name="reference")
    ref = ref[ref["reference"].astype(str).str.strip() != ""]
    ref["reference"] = ref["reference"].astype(float)
    ref["key"] = ref["concept"].str.lower()
    mine = ours.assign(key=ours["concept"].str.lower())
    cols = ["key", "module", "probe", "concept", "test_acc", "test_acc_ci_low", "test_acc_ci_high"]
    joined = mine[cols].merge(ref[["key", "module", "probe", "reference"]],
                              on=["key", "module", "probe"], how="inner")
    if joined.empty:
        raise ValueError(
            "no cell in common with the reference table: ours has concepts "
            f"{_names(ours['concept'])}, the reference has {_names(reference['concept'])}"
        )
    joined["difference"] = joined["test_acc"] - joined["reference"]
    joined["reference_in_interval"] = (joined["reference"] >= joined["test_acc_ci_low"]) & (
        joined["reference"] <= joined["test_acc_ci_high"]
    )
    return joined.drop(columns="key").reset_index(drop=True)


def render_beside(joined: pd.DataFrame) -> str:
    """Terminal text: per concept, ours [interval] beside the reference and the difference."""
    lines: list[str] = []
    for concept, table in joined.groupby("concept", sort=False):
        lines.append(f"{concept} (ours vs reference; * = reference outside our 95% interval)")
        lines.append(f"{'module':<10} {'probe':<20} {'ours':>6} {'interval':>15} {'ref':>6} {'diff':>7}")
        for _, r in table.iterrows():
            mark = "" if r["reference_in_interval"] else " *"
            lines.append(
                f"{r['module']:<10} {r['probe']:<20} {r['test_acc']:6.3f} "
                f"[{r['test_acc_ci_low']:.3f}, {r['test_acc_ci_high']:.3f}] "
                f"{r['reference']:6.3f} {r['difference']:+7.3f}{mark}"
            )
        lines.append("")
    outside = int((~joined["reference_in_interval"]).sum())
    lines.append(f"{outside} of {len(joined)} reference values lie outside our 95% interval")
    return "\n".join(lines)


def _names(values: Sequence[str] | pd.Series) -> str:
    unique = list(dict.fromkeys(map(str, values)))
    return ", ".join(unique) if unique else "none"
