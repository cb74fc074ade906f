"""Seed-shaped tables, two-sweep diffs and sanity flags on a synthetic results table."""

from __future__ import annotations

import pandas as pd
import pytest
from report_fakes import MODULES, PROBES, synthetic_results

from clipprobe.report.diff import diff_sweeps, diff_text
from clipprobe.report.reference import read_reference_csv
from clipprobe.report.sanity import identical_epochs, sanity_flags, uniform_high_modules
from clipprobe.report.tables import (
    build_tables,
    tables_long,
    tables_wide,
    to_html,
    to_markdown,
    to_text,
    write_csv,
)


def test_tables_per_concept_grouped_rows_numeric_columns_probes():
    results = synthetic_results()
    tables = build_tables(results)
    assert [(t.group, t.concept) for t in tables] == [("colour", "red"), ("colour", "blue"),
                                                      ("pattern", "striped")]
    assert tables[0].modules == ("module:0", "module:1", "module:2", "module:10")  # not 0, 1, 10, 2
    assert tables[0].probes == PROBES
    assert {t.epoch for t in tables} == {3}  # default: the last epoch


def test_cells_equal_the_results_exactly_at_the_chosen_epoch():
    results = synthetic_results()
    long = tables_long(build_tables(results, epoch=2))
    assert len(long) == 3 * len(MODULES) * len(PROBES)
    merged = long.merge(results[results["epoch"] == 2], on=["concept", "module", "probe"],
                        suffixes=("", "_src"))
    for col in ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_selectivity",
                "test_control_acc", "test_majority_acc", "n_test"):
        assert (merged[col] == merged[f"{col}_src"]).all(), col


def test_epoch_not_in_the_sweep_is_one_clear_line():
    with pytest.raises(ValueError, match=r"^epoch 7 is not in the sweep: it has epoch\(s\) 1, 2, 3$"):
        build_tables(synthetic_results(), epoch=7)


def test_missing_columns_and_bad_module_names_are_refused():
    with pytest.raises(ValueError, match=r"lacks column\(s\) test_acc_ci_low, test_acc_ci_high"):
        build_tables(synthetic_results().drop(columns=["test_acc_ci_low", "test_acc_ci_high"]))
    with pytest.raises(ValueError, match="bad module name 'features.3'"):
        build_tables(synthetic_results().assign(module="features.3"))


def test_text_markdown_html_show_intervals_selectivity_majority_and_test_size():
    results = synthetic_results()
    tables = build_tables(results)
    red0 = results[(results["concept"] == "red") & (results["module"] == "module:0")
                   & (results["probe"] == "linear_gap") & (results["epoch"] == 3)].iloc[0]
    cell = f"{red0['test_acc']:.3f} [{red0['test_acc_ci_low']:.3f}, {red0['test_acc_ci_high']:.3f}]"
    size = "test set: 90 images (30 positive); 3 repeated split(s); majority baseline 0.667; epoch 3"
    text, md, html = to_text(tables), to_markdown(tables), to_html(tables)
    for rendered in (text, md, html):
        assert cell in rendered
        assert rendered.count(size) == 3
        assert f"{red0['test_selectivity']:+.3f}" in rendered
    assert text.startswith("== colour ==")
    assert "| module | linear_gap [95% CI] | sel. | non_linear_gap [95% CI] | sel. | majority |" in md
    assert '<table data-concept="striped">' in html


def test_csv_is_seed_shaped_at_full_precision_and_readable_as_a_reference(tmp_path):
    results = synthetic_results()
    path = write_csv(build_tables(results), tmp_path / "tables.csv")
    back = pd.read_csv(path)
    assert list(back.columns[:6]) == ["group", "concept", "module", "epoch", "linear_gap", "linear_gap_ci_low"]
    wide = tables_wide(build_tables(results))
    pd.testing.assert_frame_equal(back, wide, check_dtype=False)
    ref = read_reference_csv(path)
    assert list(ref["module"][:4]) == ["module:0", "module:1", "module:2", "module:10"]


def test_diff_per_cell_and_whether_it_exceeds_the_intervals():
    a = synthetic_results(0)
    b = a.copy()
    hit = (b["concept"] == "red") & (b["module"] == "module:0") & (b["probe"] == "linear_gap")
    b.loc[hit, ["test_acc", "test_acc_ci_low", "test_acc_ci_high"]] = [0.99, 0.95, 1.0]
    b.loc[~hit, "test_acc"] += 0.01  # small shifts stay inside the intervals
    d = diff_sweeps(a, b)
    assert len(d) == 3 * len(MODULES) * len(PROBES)
    row = d[(d["concept"] == "red") & (d["module"] == "module:0") & (d["probe"] == "linear_gap")].iloc[0]
    a3 = a[hit & (a["epoch"] == 3)].iloc[0]
    assert row["difference"] == 0.99 - a3["test_acc"]
    assert bool(row["exceeds_intervals"])
    assert int(d["exceeds_intervals"].sum()) == 1
    assert diff_text(d).endswith(f"1 of {len(d)} differences exceed the 95% intervals")


def test_two_sweeps_with_no_fit_in_common_is_one_clear_line():
    a = synthetic_results(concepts=(("red", "colour"),))
    b = synthetic_results(concepts=(("male", "gender"),))
    with pytest.raises(ValueError, match=r"^the two sweeps have no fit in common .*A has concepts red .*B has concepts male"):
        diff_sweeps(a, b)


def test_identical_epochs_are_flagged_with_their_fingerprints():
    results = synthetic_results()
    e1 = results[results["epoch"] == 1]
    copy = e1.assign(epoch=2, fingerprint="fp0002")
    dup = pd.concat([e1, copy, results[results["epoch"] == 3]], ignore_index=True)
    (flag,) = identical_epochs(dup)
    assert flag.message.startswith("epochs 1, 2 give identical test accuracy for all 24 fits although")
    same_weights = dup.assign(fingerprint="fp0001")
    assert "and the same weight fingerprint" in identical_epochs(same_weights)[0].message
    assert identical_epochs(results) == []


def test_uniform_high_module_is_flagged_but_not_the_last_module():
    flags = uniform_high_modules(synthetic_results())
    assert [f.message.split()[0] for f in flags] == ["module:1"]
    assert {f.kind for f in sanity_flags(synthetic_results())} == {"uniform_high_module"}
