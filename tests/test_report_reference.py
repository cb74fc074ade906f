"""The seed's published tables: parsed into the fixture, rendered back identically, compared."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clipprobe.probes.evaluation import exact_interval
from clipprobe.report.reference import (
    beside_reference,
    parse_seed_tables,
    probe_columns,
    read_reference_csv,
    render_beside,
    render_seed_tables,
)
from clipprobe.report.sanity import at_majority, sanity_flags

FIXTURES = Path(__file__).parent / "fixtures"
SEED_TEXT = (FIXTURES / "seed_text.txt").read_text(encoding="utf-8")


def _seed_section() -> str:
    start = SEED_TEXT.index("Tables (Test Acc)") + len("Tables (Test Acc)")
    return SEED_TEXT[start:SEED_TEXT.index("\nConclusion")].strip()


def test_parsing_the_seed_text_gives_the_fixture():
    parsed = parse_seed_tables(SEED_TEXT)
    fixture = read_reference_csv(FIXTURES / "seed_tables.csv")
    pd.testing.assert_frame_equal(parsed, fixture)
    assert len(parsed) == 9 * 19
    assert list(dict.fromkeys(parsed["concept"])) == [
        "Red", "Blue", "Green", "Yellow", "Striped", "Zigzagged", "Dotted", "Male", "female"]
    red1 = parsed[(parsed["concept"] == "Red") & (parsed["module"] == "module:1")].iloc[0]
    assert (red1["linear_gap"], red1["non_linear_gap"], red1["non_linear_non_gap"]) == ("0.990", "0.990", "0.986")


def test_renderer_prints_the_seed_tables_back_identically():
    fixture = read_reference_csv(FIXTURES / "seed_tables.csv")
    assert render_seed_tables(fixture) == _seed_section()


def test_renderer_formats_floats_like_the_seed():
    fixture = read_reference_csv(FIXTURES / "seed_tables.csv")
    as_floats = fixture.astype({p: float for p in probe_columns(fixture)})
    assert render_seed_tables(as_floats) == _seed_section()


def _seed_as_results(majority: float = 0.667) -> pd.DataFrame:
    ref = read_reference_csv(FIXTURES / "seed_tables.csv")
    long = ref.melt(id_vars=["group", "concept", "module"], value_vars=probe_columns(ref),
                    var_name="probe", value_name="test_acc")
    long["test_acc"] = long["test_acc"].astype(float)
    ci = [exact_interval(round(a * 90), 90) for a in long["test_acc"]]  # the seed tested 90 images
    return long.assign(test_acc_ci_low=[c[0] for c in ci], test_acc_ci_high=[c[1] for c in ci],
                       epoch=300, test_majority_acc=majority)


def test_sanity_flags_the_seeds_module_1_and_nothing_else_uniform():
    flags = [f for f in sanity_flags(_seed_as_results()) if f.kind == "uniform_high_module"]
    assert len(flags) == 1
    assert flags[0].message.startswith("module:1 scores 0.938-1.000 for every concept and probe (27 fits)")


def test_sanity_flags_the_seeds_accuracies_at_the_majority_baseline():
    (flag,) = at_majority(_seed_as_results())
    # 4 at or below 0.667 by their point estimates, and more whose exact interval still reaches it
    assert flag.message.startswith("38 of 513 fits have a 95% interval that includes (or lies below) the "
                                   "majority baseline (Blue/module:0/linear_gap")
    for concept in ("Striped", "Zigzagged"):
        assert f"{concept}/module:0/linear_gap" in flag.message


def test_ours_beside_the_reference_with_differences():
    ours = _seed_as_results()
    ours["concept"] = ours["concept"].str.lower()  # concepts match case-insensitively
    ours.loc[(ours["concept"] == "red") & (ours["module"] == "module:0") & (ours["probe"] == "linear_gap"),
             ["test_acc", "test_acc_ci_low", "test_acc_ci_high"]] = [0.9, 0.88, 0.92]
    joined = beside_reference(ours, read_reference_csv(FIXTURES / "seed_tables.csv"))
    assert len(joined) == 513  # 171 rows x 3 probes
    row = joined[(joined["concept"] == "red") & (joined["module"] == "module:0")
                 & (joined["probe"] == "linear_gap")].iloc[0]
    assert row["reference"] == 0.862
    assert row["difference"] == pytest.approx(0.9 - 0.862)
    assert not row["reference_in_interval"]
    assert int((~joined["reference_in_interval"]).sum()) == 1
    text = render_beside(joined)
    assert "module:0   linear_gap            0.900 [0.880, 0.920]  0.862  +0.038 *" in text
    assert text.endswith("1 of 513 reference values lie outside our 95% interval")


def test_reference_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"reference table .*missing.csv does not exist"):
        read_reference_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("concept,module,acc\nred,module:0,0.9\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) group"):
        read_reference_csv(bad)
    other = _seed_as_results().assign(concept="purple")
    with pytest.raises(ValueError, match="no cell in common with the reference table"):
        beside_reference(other, read_reference_csv(FIXTURES / "seed_tables.csv"))
