"""Seed-shaped result tables: one per concept, rows ``module:0..N``, columns the probe kinds.

Each cell is the stored split's test accuracy at one epoch with its exact 95% interval, a mark when
it changed significantly since the sweep's previous epoch (McNemar exact test on the same test
images, Holm-corrected over the cells of the tables: ``report.significance``), and the selectivity
(accuracy minus the control-task accuracy, '-' where the images carry no class); the majority
baseline sits beside it and the test size under each table. Where the concept is a class or a union of
classes (``class_alignment`` = 1) selectivity reads "n/a (concept = class)"; a partly aligned concept says how
much under its table. Sweeps with MDL add each cell's compression (``compr.``). Renders as terminal text, Markdown,
CSV and HTML fragments.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from clipprobe.probes.kinds import PROBE_KINDS
from clipprobe.report.significance import change_mark, describe_test, epoch_changes

PROBE_ORDER = tuple(PROBE_KINDS)  # display order
REQUIRED = ("concept", "group", "module", "probe", "epoch", "test_acc", "test_acc_ci_low",
            "test_acc_ci_high")
OPTIONAL_METRICS = ("test_majority_acc", "test_control_acc", "test_selectivity", "n_test",
                    "n_test_pos", "repeats", "test_balanced_acc", "test_auroc", "train_acc",
                    "test_acc_resplit_mean", "test_acc_resplit_ci_low", "test_acc_resplit_ci_high",
                    "test_permutation_acc", "test_permutation_p", "permutations", "class_alignment", "compression")
PREDICTIONS = ("test_correct", "test_images")  # per-image results; "" for sweeps made before them
COUNTS = ("n_test", "n_test_pos", "repeats")
CELL = ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_control_acc", "test_selectivity",
        "test_majority_acc", "test_permutation_p", "n_test", "n_test_pos", "repeats", "class_alignment",
        "compression")
CHANGE = ("change_from", "change_p", "change")  # vs the previous epoch: its epoch, adjusted p, mark
_DIGITS = re.compile(r"(\d+)")
CONCEPT_IS_CLASS = "n/a (concept = class)"  # selectivity where the control task can draw the concept itself


def natural_key(name: str) -> tuple:
    """Sort key that reads digit runs as numbers (``module:2`` before ``module:10``, ``layer2`` before
    ``layer10``); only for results without a ``module_index`` column (sweeps made before it)."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(str(name)))


def module_order(results: pd.DataFrame) -> dict[str, int]:
    """Module name -> its place in the backbone's probe-module order.

    Read from the results' ``module_index`` column (written by the sweep from the backbone's module
    order, so it is right for any architecture: ``conv1 .. layer4`` as well as ``module:0 .. module:18``);
    for results without it, the names in natural order. Module names are never parsed otherwise.
    """
    modules = results["module"].astype(str)
    names = list(modules.unique())  # first-seen order; one pass in C, not a Python loop over 150,000 rows
    if "module_index" in results.columns:
        index = pd.to_numeric(results["module_index"], errors="coerce")
        if index.notna().all():
            last = pd.DataFrame({"m": modules, "i": index.astype(int)}).drop_duplicates("m", keep="last")
            pairs = dict(zip(last["m"], last["i"], strict=True))  # as dict(zip(...)) over every row: the last wins
            ranked = sorted(names, key=lambda m: (pairs[m], natural_key(m)))
            return {m: pairs[m] for m in ranked}
    return {m: i for i, m in enumerate(sorted(names, key=natural_key))}


def normalize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Check a sweep's results table and give its columns one dtype (epoch int, metrics float)."""
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(
            f"results table lacks column(s) {', '.join(missing)}: see 'Results of a probe sweep' "
            "in docs/architecture.md"
        )
    if results.empty:
        raise ValueError("results table is empty: the sweep logged no fit")
    if is_normalized(results):  # the report passes its one normalised table around: nothing would change
        return results.copy(deep=False)
    out = results.copy()
    for col in OPTIONAL_METRICS:
        if col not in out.columns:
            out[col] = math.nan
    out["epoch"] = pd.to_numeric(out["epoch"], errors="raise").astype(int)
    for col in ("test_acc", "test_acc_ci_low", "test_acc_ci_high", *OPTIONAL_METRICS):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("concept", "group", "module", "probe"):
        out[col] = out[col].astype(str)
    for col in PREDICTIONS:
        out[col] = out[col].fillna("").astype(str) if col in out.columns else ""
    out["module_index"] = out["module"].map(module_order(out)).astype(int)
    return out


_STRING = pd.Series(["x"]).astype(str).dtype  # what ``astype(str)`` gives (pandas' string dtype)


def is_normalized(results: pd.DataFrame) -> bool:
    """True when ``normalize_results`` would return ``results`` unchanged: every column it makes is there with the
    dtype it gives (epoch int, metrics float, names and per-image results strings without a missing value) and each
    module has one ``module_index``. A normalised table, and any rows of it, passes; a sweep's raw table does not."""
    columns = ("epoch", "test_acc", "test_acc_ci_low", "test_acc_ci_high", *OPTIONAL_METRICS,
               "concept", "group", "module", "probe", *PREDICTIONS, "module_index")
    if not all(c in results.columns for c in columns):
        return False
    dtypes = results.dtypes
    if dtypes["epoch"] != "int64" or dtypes["module_index"] != "int64":
        return False
    if any(dtypes[c] != "float64" for c in ("test_acc", "test_acc_ci_low", "test_acc_ci_high", *OPTIONAL_METRICS)):
        return False
    strings = ("concept", "group", "module", "probe", *PREDICTIONS)
    if any(dtypes[c] != _STRING or results[c].isna().any() for c in strings):
        return False
    return bool(results.groupby("module", sort=False)["module_index"].nunique().le(1).all())


def epochs_of(results: pd.DataFrame) -> list[int]:
    return sorted(int(e) for e in pd.unique(results["epoch"]))


def select_epoch(results: pd.DataFrame, epoch: int | None = None) -> int:
    """The epoch to tabulate: the one asked for (it must be in the sweep) or the last one."""
    epochs = epochs_of(results)
    if epoch is None:
        return epochs[-1]
    if int(epoch) not in epochs:
        raise ValueError(f"epoch {epoch} is not in the sweep: it has epoch(s) {_span(epochs)}")
    return int(epoch)


def _span(values: Sequence[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 12 else f"{values[0]} .. {values[-1]} ({len(values)} epochs)"


def probes_in(results: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(results["probe"]))
    return sorted(found, key=lambda p: (PROBE_ORDER.index(p) if p in PROBE_ORDER else 99, p))


@dataclass(frozen=True)
class ConceptTable:
    """One concept's table at one epoch: ``cells`` is long (one row per module x probe)."""

    group: str
    concept: str
    epoch: int
    probes: tuple[str, ...]
    modules: tuple[str, ...]
    cells: pd.DataFrame

    def cell(self, module: str, probe: str) -> pd.Series:
        row = self._rows.get((module, probe))
        if row is None:
            raise KeyError(f"{self.concept}: no fit for {module} / {probe}")
        return self.cells.iloc[row]

    @cached_property
    def majority(self) -> dict[str, float]:
        """Module -> its first known majority baseline (NaN-free; a module without one is absent)."""
        known = self.cells[self.cells["test_majority_acc"].notna()].drop_duplicates("module")
        return dict(zip(known["module"], known["test_majority_acc"], strict=True))

    @cached_property
    def _rows(self) -> dict[tuple[str, str], int]:
        """(module, probe) -> the position of its first row in ``cells`` (every renderer looks cells up)."""
        rows: dict[tuple[str, str], int] = {}
        for i, key in enumerate(zip(self.cells["module"], self.cells["probe"], strict=True)):
            rows.setdefault(key, i)
        return rows

    def test_size(self) -> str:
        """The line under the table: test images, positives, repeated splits, majority baseline."""
        parts = [f"test set: {_range(self.cells['n_test'])} images"]
        if self.cells["n_test_pos"].notna().any():
            parts[0] += f" ({_range(self.cells['n_test_pos'])} positive)"
        if self.cells["repeats"].notna().any():
            parts.append(f"{_range(self.cells['repeats'])} repeated split(s)")
        if self.cells["test_majority_acc"].notna().any():
            parts.append(f"majority baseline {_range(self.cells['test_majority_acc'], '.3f')}")
        parts.append(f"epoch {self.epoch}")
        alignment = self.alignment()
        if alignment >= 1.0:
            parts.append("selectivity n/a: every positive's class is wholly positive (the concept is a class or a "
                         "union of classes, so the control task cannot tell them apart)")
        elif alignment > 0.0:
            parts.append(f"class-aligned: {alignment:.0%} of positives are in wholly positive classes "
                         "(selectivity partly measures class)")
        return "; ".join(parts)

    def alignment(self) -> float:
        """The concept's class alignment (share of positives in wholly positive classes); NaN when unknown."""
        values = self.cells["class_alignment"].dropna()
        return float(values.iloc[0]) if not values.empty else math.nan


def _range(values: pd.Series, fmt: str = ".0f") -> str:
    v = values.dropna()
    if v.empty:
        return "?"
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def build_tables(results: pd.DataFrame, epoch: int | None = None) -> list[ConceptTable]:
    """One table per concept (groups and concepts in sweep order, modules sorted numerically)."""
    data = normalize_results(results)
    chosen = select_epoch(data, epoch)
    at = data[data["epoch"] == chosen]
    dup = at.duplicated(["concept", "module", "probe"], keep=False)
    if dup.any():
        first = at[dup].iloc[0]
        raise ValueError(
            f"the sweep has {int(dup.sum())} fits sharing concept/module/probe at epoch {chosen} "
            f"(e.g. {first['concept']} / {first['module']} / {first['probe']}): compare one "
            "backbone per sweep"
        )
    probes = tuple(probes_in(at))
    at = _with_changes(data, at, chosen)
    tables = []
    for group in dict.fromkeys(at["group"]):
        for concept in dict.fromkeys(at.loc[at["group"] == group, "concept"]):
            rows = at[(at["group"] == group) & (at["concept"] == concept)]
            rows = rows.sort_values(["module_index", "probe"])
            modules = tuple(dict.fromkeys(rows["module"]))
            cells = rows[["module", "probe", *CELL, *CHANGE]].reset_index(drop=True)
            tables.append(ConceptTable(group, concept, chosen, probes, modules, cells))
    return tables


def _with_changes(data: pd.DataFrame, at: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """``at`` plus the change of every cell since the sweep's previous epoch (one family)."""
    out = at.assign(change_from=math.nan, change_p=math.nan, change="")
    earlier = [e for e in epochs_of(data) if e < epoch]
    if not earlier:
        return out
    changes = epoch_changes(data, epochs=[earlier[-1], epoch])  # one row per cell: the epoch's cells are unique
    keyed = {(c, m, p): (q, change_mark(bool(s), float(d))) for c, m, p, q, s, d in zip(
        changes["concept"], changes["module"], changes["probe"], changes["p_adjusted"], changes["significant"],
        changes["difference"], strict=True)}
    found = [keyed.get(key) for key in zip(out["concept"], out["module"], out["probe"], strict=True)]
    has = [f is not None for f in found]
    out.loc[has, "change_from"] = earlier[-1]
    out.loc[has, "change_p"] = [f[0] for f in found if f is not None]
    out.loc[has, "change"] = [f[1] for f in found if f is not None]
    return out


def tables_long(tables: Sequence[ConceptTable]) -> pd.DataFrame:
    """All cells of all tables in one long frame (``group``, ``concept``, ``epoch`` added)."""
    frames = [t.cells.assign(group=t.group, concept=t.concept, epoch=t.epoch) for t in tables]
    return pd.concat(frames, ignore_index=True)


def tables_wide(tables: Sequence[ConceptTable]) -> pd.DataFrame:
    """Seed-shaped wide frame: ``group, concept, module, epoch``, then per probe its accuracy,
    interval, control and selectivity, then the majority baseline and test sizes."""
    rows = []
    for t in tables:
        for module in t.modules:
            row: dict[str, object] = {"group": t.group, "concept": t.concept, "module": module,
                                      "epoch": t.epoch}
            shared = t.cells[t.cells["module"] == module].iloc[0]
            for probe in t.probes:
                try:
                    c = t.cell(module, probe)
                except KeyError:
                    c = pd.Series(dtype=float)
                row[probe] = c.get("test_acc", math.nan)
                row[f"{probe}_ci_low"] = c.get("test_acc_ci_low", math.nan)
                row[f"{probe}_ci_high"] = c.get("test_acc_ci_high", math.nan)
                row[f"{probe}_control"] = c.get("test_control_acc", math.nan)
                row[f"{probe}_selectivity"] = (math.nan if _concept_is_class(c)
                                               else c.get("test_selectivity", math.nan))
                row[f"{probe}_permutation_p"] = c.get("test_permutation_p", math.nan)
                row[f"{probe}_change_p"] = c.get("change_p", math.nan)
                row[f"{probe}_compression"] = c.get("compression", math.nan)
            row["majority"] = shared["test_majority_acc"]
            row["class_alignment"] = t.alignment()
            for col in COUNTS:
                row[col] = shared[col]
            rows.append(row)
    return pd.DataFrame(rows)


def write_csv(tables: Sequence[ConceptTable], path: str | Path) -> Path:
    """The wide table as CSV, floats at full precision (also readable as a reference table)."""
    path = Path(path)
    tables_wide(tables).to_csv(path, index=False)
    return path


def _acc(c: pd.Series | None) -> str:
    if c is None or pd.isna(c["test_acc"]):
        return "-"
    mark = f" {c['change']}" if c.get("change") else ""
    return f"{c['test_acc']:.3f} [{c['test_acc_ci_low']:.3f}, {c['test_acc_ci_high']:.3f}]{mark}"


def _concept_is_class(c: pd.Series) -> bool:
    return bool(c.get("class_alignment", math.nan) >= 1.0)


def _sel(c: pd.Series | None) -> str:
    if c is not None and _concept_is_class(c):
        return CONCEPT_IS_CLASS
    return "-" if c is None or pd.isna(c["test_selectivity"]) else f"{c['test_selectivity']:+.3f}"


def _maj(t: ConceptTable, module: str) -> str:
    v = t.majority.get(module, math.nan)
    return "-" if pd.isna(v) else f"{v:.3f}"


def _compr(c: pd.Series | None) -> str:
    return "-" if c is None or pd.isna(c.get("compression", math.nan)) else f"{c['compression']:.2f}"


def _grid(t: ConceptTable) -> tuple[list[str], list[list[str]]]:
    """Header and string rows shared by every renderer (a compression column per probe when the sweep has MDL)."""
    mdl = t.cells["compression"].notna().any()
    header = ["module"]
    for p in t.probes:
        header += [f"{p} [95% CI]", "sel."] + (["compr."] if mdl else [])
    header.append("majority")
    rows = []
    for m in t.modules:
        row = [m]
        for p in t.probes:
            try:
                c = t.cell(m, p)
            except KeyError:
                c = None
            row += [_acc(c), _sel(c)] + ([_compr(c)] if mdl else [])
        row.append(_maj(t, m))
        rows.append(row)
    return header, rows


def _groups(tables: Sequence[ConceptTable]) -> list[tuple[str, list[ConceptTable]]]:
    order = list(dict.fromkeys(t.group for t in tables))
    return [(g, [t for t in tables if t.group == g]) for g in order]


def to_text(tables: Sequence[ConceptTable]) -> str:
    """Fixed-width terminal text, grouped by concept group."""
    out: list[str] = []
    for group, members in _groups(tables):
        out += [f"== {group} ==", ""]
        for t in members:
            header, rows = _grid(t)
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
            out.append(f"{t.concept}")
            out.append(fmt.format(*header))
            out += [fmt.format(*r) for r in rows]
            out += [t.test_size(), ""]
    out.append(legend(tables))
    return "\n".join(out)


def legend(tables: Sequence[ConceptTable]) -> str:
    """What the marks and columns mean (the line under every rendering)."""
    text = ("[95% CI] = exact (Clopper-Pearson) interval over the stored split's test images; "
            "sel. = test accuracy minus the control-task accuracy (- where the images carry no class; "
            f"{CONCEPT_IS_CLASS} where every positive's class is wholly positive: docs/statistics.md)")
    if any(t.cells["compression"].notna().any() for t in tables):
        text += ("; compr. = MDL compression on the training part: uniform / online codelength (Voita and Titov), "
                 "1 = nothing learnt, higher = fewer examples needed; it ranks cells whose accuracy ties")
    changed = [t for t in tables if t.cells["change_from"].notna().any()]
    if changed:
        since = int(changed[0].cells["change_from"].dropna().iloc[0])
        tested = sum(int(t.cells["change_p"].notna().sum()) for t in tables)  # the correction's family
        untested = sum(int(t.cells["change_from"].notna().sum()) for t in tables) - tested
        text += f"; ↑/↓ = changed since epoch {since} ({describe_test()}, over {tested} tested cells"
        text += (f"; {untested} cells without per-image predictions on the same test images are not tested)"
                 if untested else ")")
    return text


def to_markdown(tables: Sequence[ConceptTable]) -> str:
    """Markdown: a heading per group and per concept, a pipe table, the test size below."""
    out: list[str] = []
    for group, members in _groups(tables):
        out += [f"## {group}", ""]
        for t in members:
            header, rows = _grid(t)
            out += [f"### {t.concept}", "", "| " + " | ".join(header) + " |",
                    "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out += ["", f"*{t.test_size()}*", ""]
    out.append(f"*{legend(tables)}*")
    return "\n".join(out) + "\n"


def to_html(tables: Sequence[ConceptTable]) -> str:
    """HTML fragment (no page): ``<section>`` per group, ``<table>`` per concept, caption below."""
    esc = html.escape
    out: list[str] = []
    for group, members in _groups(tables):
        out.append(f'<section class="group"><h3>{esc(group)}</h3><div class="concepts">')
        for t in members:
            header, rows = _grid(t)
            out.append(f'<div class="concept"><h4>{esc(t.concept)}</h4>'
                       f'<table data-concept="{esc(t.concept)}">')
            out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + f"<th>{esc(r[0])}</th>" + "".join(f"<td>{esc(v)}</td>" for v in r[1:]) + "</tr>")
            out.append(f'</tbody></table><p class="size">{esc(t.test_size())}</p></div>')
        out.append("</div></section>")
    if tables:
        out.append(f'<p class="size">{esc(legend(tables))}</p>')
    return "\n".join(out)
