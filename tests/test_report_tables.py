"""Seed-shaped tables, two-sweep diffs and sanity flags on a synthetic results table."""

from __future__ import annotations

import pandas as pd
import pytest
from report_fakes import MODULES, PROBES, synthetic_results

from clipprobe.report.diff import diff_sweeps, diff_text
from clipprobe.report.reference import read_reference_csv
from clipprobe.report.sanity import (
    at_majority,
    emergence_text,
    emergences,
    identical_epochs,
    missing_fits,
    sanity_flags,
    uniform_high_modules,
)
from clipprobe.report.tables import (
    build_tables,
    normalize_results,
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


def test_missing_columns_are_refused():
    with pytest.raises(ValueError, match=r"lacks column\(s\) test_acc_ci_low, test_acc_ci_high"):
        build_tables(synthetic_results().drop(columns=["test_acc_ci_low", "test_acc_ci_high"]))


def test_modules_follow_the_module_index_column_whatever_their_names():
    """ResNet-style names (no module:N to parse): rows follow module_index, not the alphabet."""
    renamed = {"module:0": "conv1", "module:1": "layer1", "module:2": "layer2", "module:10": "layer10"}
    results = synthetic_results().assign(module=lambda d: d["module"].map(renamed))
    assert build_tables(results)[0].modules == ("conv1", "layer1", "layer2", "layer10")
    backwards = results.assign(module_index=lambda d: 20 - d["module_index"])
    assert build_tables(backwards)[0].modules == ("layer10", "layer2", "layer1", "conv1")
    # results made before the column: natural order of the names (layer2 before layer10)
    old = synthetic_results().drop(columns="module_index")
    assert build_tables(old)[0].modules == ("module:0", "module:1", "module:2", "module:10")
    assert normalize_results(old)["module_index"].max() == 3


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


def test_selectivity_reads_undefined_where_the_concept_is_a_class_and_says_how_much_where_partly():
    results = synthetic_results()
    results["class_alignment"] = results["concept"].map({"red": 1.0, "blue": 0.4, "striped": 0.0})
    tables = build_tables(results)
    red, blue, striped = tables
    text, md, html = to_text(tables), to_markdown(tables), to_html(tables)
    for rendered in (text, md, html):
        assert rendered.count("n/a (concept = class)") == len(MODULES) * len(PROBES) + 1  # red's cells + legend
    assert "selectivity n/a" in red.test_size() and "class-aligned" not in red.test_size()
    assert "class-aligned: 40% of positives are in wholly positive classes" in blue.test_size()
    assert "class" not in striped.test_size()
    sel = results[(results["concept"] == "blue") & (results["epoch"] == 3)]["test_selectivity"]
    assert all(f"{v:+.3f}" in md for v in sel)  # a partly aligned concept keeps its numbers
    wide = tables_wide(tables)
    assert wide.loc[wide["concept"] == "red", "linear_gap_selectivity"].isna().all()
    assert wide.loc[wide["concept"] == "blue", "linear_gap_selectivity"].notna().all()
    assert list(wide.groupby("concept", sort=False)["class_alignment"].first()) == [1.0, 0.4, 0.0]


def test_compression_sits_beside_accuracy_when_the_sweep_has_mdl(tmp_path):
    results = synthetic_results()
    assert "compr." not in to_markdown(build_tables(results))  # sweeps without MDL keep their shape
    results["compression"] = 1.0 + results["module_index"] + 0.5 * results["epoch"]
    tables = build_tables(results)
    md, text = to_markdown(tables), to_text(tables)
    assert "| module | linear_gap [95% CI] | sel. | compr. | non_linear_gap [95% CI] | sel. | compr. | majority |" in md
    red10 = results[(results["concept"] == "red") & (results["module"] == "module:10") & (results["epoch"] == 3)]
    assert f"{red10['compression'].iloc[0]:.2f}" in text and "compr. = MDL compression" in text
    wide = tables_wide(tables)
    assert (wide.loc[wide["module"] == "module:10", "linear_gap_compression"] == 1.0 + 10 + 1.5).all()


def _set(frame, hit, k: int, correct: str | None = None):
    """Cells ``hit`` get k of 90 right (the first k images of their concept's order unless ``correct``)."""
    from clipprobe.probes.evaluation import exact_interval

    lo, hi = exact_interval(k, 90)
    frame.loc[hit, ["test_acc", "test_acc_ci_low", "test_acc_ci_high"]] = [k / 90, lo, hi]
    frame.loc[hit, "test_correct"] = correct if correct is not None else "1" * k + "0" * (90 - k)


def test_diff_marks_only_differences_significant_by_the_paired_test_after_correction():
    a = synthetic_results(0)
    b = a.copy()
    red0 = (b["concept"] == "red") & (b["module"] == "module:0") & (b["probe"] == "linear_gap")
    blue0 = (b["concept"] == "blue") & (b["module"] == "module:0") & (b["probe"] == "linear_gap")
    _set(a, red0, 70)
    _set(b, red0, 89)  # 19 images gained, none lost
    _set(a, blue0, 80)
    _set(b, blue0, 85)  # 5 gained: raw p = 0.0625, not significant
    b.loc[~(red0 | blue0), "test_acc"] += 0.01  # same per-image results: p = 1
    striped = b["concept"] == "striped"
    b.loc[striped & (b["module"] == "module:2"), "test_images"] = "other-test-images"  # not comparable
    d = diff_sweeps(a, b)
    assert len(d) == 3 * len(MODULES) * len(PROBES)
    row = d[(d["concept"] == "red") & (d["module"] == "module:0") & (d["probe"] == "linear_gap")].iloc[0]
    assert row["difference"] == pytest.approx(19 / 90)
    assert (row["n_a_only"], row["n_b_only"]) == (0, 19)
    assert row["p_value"] == pytest.approx(2 * 0.5 ** 19)
    assert row["p_adjusted"] == pytest.approx(22 * 2 * 0.5 ** 19)  # Holm: smallest of 22 tested p-values
    assert bool(row["significant"])
    blue = d[(d["concept"] == "blue") & (d["module"] == "module:0") & (d["probe"] == "linear_gap")].iloc[0]
    assert blue["p_value"] == pytest.approx(0.0625) and not bool(blue["significant"])
    assert int(d["significant"].sum()) == 1 and int(d["p_value"].isna().sum()) == 2
    assert diff_text(d).endswith(f"1 of 22 tested differences are significant after correction; 2 of {len(d)} "
                                 "cells not tested (different test images or no per-image predictions)")
    old = a.drop(columns=["test_correct", "test_images"])  # a sweep from before per-image predictions
    assert int(diff_sweeps(old, b)["p_value"].notna().sum()) == 0


def test_table_marks_a_change_since_the_previous_epoch_only_when_significant():
    results = synthetic_results()
    cell = (results["concept"] == "red") & (results["module"] == "module:0") & (results["probe"] == "linear_gap")
    _set(results, cell & (results["epoch"] == 2), 70)
    _set(results, cell & (results["epoch"] == 3), 90)
    tables = build_tables(results)
    red = tables[0].cell("module:0", "linear_gap")
    assert red["change"] == "↑" and red["change_from"] == 2 and red["change_p"] < 0.05
    marks = tables_long(tables)["change"]
    assert (marks != "").sum() == 1
    text = to_text(tables)
    assert "1.000 [0.960, 1.000] ↑" in text
    assert "↑/↓ = changed since epoch 2 (McNemar exact test on the same test images, Holm-corrected" in text
    assert (tables_long(build_tables(results, epoch=1))["change"] == "").all()  # nothing before epoch 1


def test_legend_counts_the_family_the_correction_ran_over():
    results = synthetic_results()  # 3 concepts x 4 modules x 2 probes = 24 cells at epoch 3
    # the striped cells at epoch 2 carry no per-image results (a sweep resumed from an older one):
    # 8 cells are shown untested, and Holm ran over the other 16
    old = (results["concept"] == "striped") & (results["epoch"] == 2)
    results.loc[old, "test_correct"] = ""
    tables = build_tables(results)
    cells = tables_long(tables)
    assert cells["change_from"].notna().sum() == 24 and cells["change_p"].notna().sum() == 16
    assert "Holm-corrected, alpha 0.05, over 16 tested cells; 8 cells without per-image predictions" in to_text(tables)
    everything = build_tables(synthetic_results())
    assert "Holm-corrected, alpha 0.05, over 24 tested cells)" in to_text(everything)


def test_two_sweeps_with_no_fit_in_common_is_one_clear_line():
    a = synthetic_results(concepts=(("red", "colour"),))
    b = synthetic_results(concepts=(("male", "gender"),))
    with pytest.raises(ValueError, match=r"^the two sweeps have no fit in common .*A has concepts red .*B has concepts male"):
        diff_sweeps(a, b)


def test_identical_epochs_are_flagged_by_their_per_image_predictions():
    results = synthetic_results()
    e1 = results[results["epoch"] == 1]
    copy = e1.assign(epoch=2, fingerprint="fp0002")
    dup = pd.concat([e1, copy, results[results["epoch"] == 3]], ignore_index=True)
    (flag,) = identical_epochs(dup)
    assert flag.message.startswith("epochs 1, 2 give identical per-image test predictions (0 discordant "
                                   "images) for all 24 fits although")
    same_weights = dup.assign(fingerprint="fp0001")
    assert "and the same weight fingerprint" in identical_epochs(same_weights)[0].message
    assert identical_epochs(results) == []
    # same accuracies, different images right: not the same predictions
    shuffled = copy.assign(test_correct=copy["test_correct"].map(lambda t: t[::-1]))
    assert identical_epochs(pd.concat([e1, shuffled], ignore_index=True)) == []
    # a sweep from before per-image predictions: equal accuracies are all there is
    old = dup.drop(columns=["test_correct", "test_images"])
    assert "identical test accuracy for all 24 fits" in identical_epochs(old)[0].message


def test_uniform_high_module_is_flagged_but_not_the_last_module():
    flags = uniform_high_modules(synthetic_results())
    assert [f.message.split()[0] for f in flags] == ["module:1"]
    assert "6 of 6 cells beat both neighbours (McNemar exact test" in flags[0].message
    assert {f.kind for f in sanity_flags(synthetic_results())} == {"uniform_high_module"}


def test_uniform_high_module_needs_the_paired_tests_to_back_it():
    results = synthetic_results()
    at3 = results["epoch"] == 3
    # module:1 at 84 of 90 for every cell, its neighbours at 78: 0.067 ahead on the point estimates,
    # but 6 images gained per cell (raw p = 0.031, Holm over 12 tests: 0.375) is no evidence
    _set(results, at3 & (results["module"] == "module:1"), 84)
    _set(results, at3 & results["module"].isin(["module:0", "module:2"]), 78)
    assert uniform_high_modules(results) == []
    untested = synthetic_results().drop(columns=["test_correct", "test_images"])
    assert ("(not tested against both neighbours: no per-image predictions on the same test images)"
            in uniform_high_modules(untested)[0].message)


def test_uniform_high_module_beats_both_neighbours_only_when_tested_against_both():
    results = synthetic_results()
    # module:2's last epoch has no per-image results: module:1's cells are tested against module:0 only,
    # which cannot show that they beat both neighbours
    results.loc[(results["module"] == "module:2") & (results["epoch"] == 3), "test_correct"] = ""
    (flag,) = uniform_high_modules(results)
    assert "6 of 6 cells beat both" not in flag.message
    assert "(not tested against both neighbours: no per-image predictions on the same test images)" in flag.message
    # only red has module:2 cells: its 2 cells are tested against both neighbours, the other 4 against one
    results = synthetic_results()
    results = results[(results["concept"] == "red") | (results["module"] != "module:2")]
    (flag,) = uniform_high_modules(results)
    assert "; 2 of 2 cells beat both neighbours" in flag.message and "4 cells not tested against both" in flag.message


def test_at_majority_uses_the_exact_interval():
    results = synthetic_results()
    cell = ((results["concept"] == "red") & (results["module"] == "module:2") & (results["probe"] == "linear_gap")
            & (results["epoch"] == 3))
    _set(results, cell, 66)  # 0.733 > 0.667, but its interval [0.630, 0.821] includes the baseline
    (flag,) = at_majority(results)
    assert flag.message.startswith("1 of 24 fits have a 95% interval that includes (or lies below) the majority "
                                   "baseline (red/module:2/linear_gap)")
    assert at_majority(synthetic_results()) == []


def test_emergence_is_the_first_significant_rise_above_the_baseline():
    results = synthetic_results()
    cell = (results["concept"] == "blue") & (results["module"] == "module:2") & (results["probe"] == "non_linear_gap")
    _set(results, cell & (results["epoch"] == 1), 60)
    _set(results, cell & (results["epoch"] == 2), 88)
    _set(results, cell & (results["epoch"] == 3), 90)
    found = emergences(results)
    assert found[["concept", "module", "probe", "epoch", "n_gained", "n_lost"]].values.tolist() == [
        ["blue", "module:2", "non_linear_gap", 2, 28, 0]]
    assert found["p_adjusted"].iloc[0] == pytest.approx(48 * 2 * 0.5 ** 28)  # Holm over 48 epoch steps
    assert "blue / module:2 / non_linear_gap emerges at epoch 2: 0.667 -> 0.978" in emergence_text(found)
    assert emergences(synthetic_results()).empty


def test_a_fit_missing_from_the_grid_is_flagged_naming_it():
    """A failed fit (or a sweep that stopped) leaves a "-" in the tables: the flags say so, naming the cell."""
    results = synthetic_results()
    assert missing_fits(results) == []
    gone = (results["concept"] == results["concept"].iloc[0]) & (results["module"] == "module:1") & (
        results["probe"] == PROBES[0]) & (results["epoch"] == 3)
    assert gone.sum() == 1
    [flag] = missing_fits(results[~gone])
    concept = results["concept"].iloc[0]
    assert flag.kind == "missing_fits"
    assert flag.message.startswith(f"1 of {len(results)} fits of the sweep's grid (concepts x modules x probes x "
                                   f"epochs) are missing ({concept}/module:1/{PROBES[0]} at epoch 3)")
    assert "missing_fits" in {f.kind for f in sanity_flags(results[~gone])}


def test_every_file_a_report_writes_equals_what_it_is_written_from(tmp_path):
    """Two sweeps and a reference: each file under --out read back and compared with the frame or text it is
    made from (the plots: PNGs of the frame, tested in test_report_plots.py); a new file fails this test until
    it is compared here."""
    from pathlib import Path

    from PIL import Image

    from clipprobe.report import build, reference, sanity, tables

    sweeps = [("aaaa1111", synthetic_results(0)), ("bbbb2222", synthetic_results(1))]
    ref = read_reference_csv(Path(__file__).parent / "fixtures" / "seed_tables.csv")
    report = build.write_report(sweeps, tmp_path, epoch=2, reference_table=ref)
    written = {p.relative_to(tmp_path).as_posix() for p in report.files}
    assert written == {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}

    checked = set()
    for name, results in sweeps:
        data = normalize_results(results)
        built = build_tables(data, 2)
        folder = tmp_path / name
        pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), data)
        pd.testing.assert_frame_equal(pd.read_csv(folder / "tables.csv"), pd.read_csv(
            tables.write_csv(built, tmp_path.parent / f"{name}-tables.csv")))
        assert pd.read_csv(folder / "tables.csv").shape[0] == len(tables.tables_wide(built))
        assert (folder / "tables.md").read_text() == tables.to_markdown(built)
        assert (folder / "tables.txt").read_text() == tables.to_text(built)
        assert (folder / "sanity.txt").read_text() == build._flags_text(sanity.sanity_flags(data, 2))
        emerged = pd.read_csv(folder / "emergences.csv")
        expected = sanity.emergences(data)
        assert emerged.shape == expected.shape and list(emerged.columns) == list(expected.columns)
        pd.testing.assert_frame_equal(emerged, pd.read_csv(_as_csv(expected, tmp_path.parent / f"{name}-em.csv")))
        for png in sorted((folder / "plots").glob("*.png")):
            assert Image.open(png).size[0] > 100  # drawn; what they show: test_report_plots.py
            checked.add(png.relative_to(tmp_path).as_posix())
        checked |= {f"{name}/{f}" for f in ("results.parquet", "tables.csv", "tables.md", "tables.txt", "sanity.txt",
                                            "emergences.csv")}
    first, second = (normalize_results(r) for _, r in sweeps)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "diff_aaaa1111_vs_bbbb2222.csv"), pd.read_csv(
        _as_csv(diff_sweeps(first, second, epoch_a=2, epoch_b=2), tmp_path.parent / "diff.csv")))
    beside = reference.beside_reference(tables.tables_long(build_tables(first, 2)), ref)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "reference.csv"),
                                  pd.read_csv(_as_csv(beside, tmp_path.parent / "reference.csv")))
    assert (tmp_path / "report.txt").read_text() == report.text
    html = (tmp_path / "report.html").read_text()
    assert report.html == tmp_path / "report.html" and tables.to_html(build_tables(first, 2)) in html
    checked |= {"diff_aaaa1111_vs_bbbb2222.csv", "reference.csv", "report.txt", "report.html"}
    assert written == checked, f"files the report writes that this test does not compare: {written - checked}"


def _as_csv(frame: pd.DataFrame, path) -> object:
    frame.to_csv(path, index=False)
    return path
