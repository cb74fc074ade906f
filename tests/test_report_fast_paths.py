"""The report's fast paths against their plain forms (tests/report_plain_forms.py) on a sweep shaped like a real
one: McNemar's exact p for every pair at once equals statsmodels' one call per pair, bit for bit; the epoch
changes from one merge equal one merge per epoch pair; identical epochs found column-wise equal the pairwise
search; a normalised table is normalised again at no cost and unchanged; Holm without statsmodels' gc.collect;
the tables' change marks from one dict; heatmap grids and accuracy lines from one groupby each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_plain_forms import (
    plain_epoch_changes,
    plain_heatmap,
    plain_identical_groups,
    plain_line,
    plain_mcnemar,
    plain_paired_tests,
    plain_with_changes,
    sweep_like,
)
from statsmodels.stats.multitest import multipletests

from clipprobe.report import tables
from clipprobe.report.plots import accuracy_figure, concept_order, what_where_when_figure
from clipprobe.report.sanity import identical_epochs
from clipprobe.report.significance import (
    epoch_changes,
    holm,
    mcnemar_exact,
    mcnemar_exact_p,
    paired_tests,
)


def test_vectorised_exact_p_equals_statsmodels_on_every_table_up_to_120_discordant_images():
    b, c = np.meshgrid(np.arange(121), np.arange(121), indexing="ij")
    b, c = b.ravel(), c.ravel()
    fast = mcnemar_exact_p(b, c)
    for x, y, p in zip(b, c, fast, strict=True):
        a_text = "1" * x + "0" * y + "1" * 3
        b_text = "0" * x + "1" * y + "1" * 3
        assert plain_mcnemar(a_text, b_text) == (x, y, p)  # exact equality, not approx
    assert mcnemar_exact("1" * 9 + "0", "0" * 9 + "1") == plain_mcnemar("1" * 9 + "0", "0" * 9 + "1")


def test_paired_tests_equal_one_statsmodels_call_per_pair():
    data = tables.normalize_results(sweep_like())
    keys = ["concept", "module", "probe"]
    a, b = data[data["epoch"] == 3], data[data["epoch"] == 4]
    joined = a.merge(b, on=keys, suffixes=("_a", "_b"))
    joined.loc[0, "test_correct_b"] = joined.loc[0, "test_correct_b"][:-1]  # another length: not pairable
    joined.loc[1, "test_images_b"] = "another-test-set"  # other images: not pairable
    joined.loc[2, "test_correct_a"] = ""  # no per-image results: not pairable
    fast, plain = paired_tests(joined), plain_paired_tests(joined)
    pd.testing.assert_frame_equal(fast, plain)
    assert fast["p_value"].isna().tolist()[:4] == [True, True, True, False]
    assert fast["n_a_only"].isna().sum() == 3 and (fast["n_a_only"] + fast["n_b_only"]).max() > 5


@pytest.mark.parametrize("epochs", [None, [6, 7], [0, 5, 12, 23]])
def test_epoch_changes_from_one_merge_equal_one_merge_per_epoch_pair(epochs):
    data = tables.normalize_results(sweep_like())
    fast, plain = epoch_changes(data, epochs=epochs), plain_epoch_changes(data, epochs=epochs)
    pd.testing.assert_frame_equal(fast, plain)
    if epochs is None:
        assert len(fast) > 800 and fast["significant"].any() and fast["p_value"].isna().any()


def test_identical_epochs_found_column_wise_equal_the_pairwise_search():
    data = sweep_like()
    flags = identical_epochs(data)
    assert plain_identical_groups(data) == [[6, 7]]
    assert [f.message.split(" give ")[0] for f in flags] == ["epochs 6, 7"]
    # the same epoch saved three times, and accuracies alone (a sweep before per-image predictions)
    again = pd.concat([data, data[data["epoch"] == 6].assign(epoch=30)], ignore_index=True)
    old = again.assign(test_correct="")
    for table in (again, old):
        groups = plain_identical_groups(table)
        assert [f.message.split(" give ")[0] for f in identical_epochs(table)] == [
            "epochs " + ", ".join(map(str, g)) for g in groups]
    assert plain_identical_groups(again) == [[6, 7, 30]]


def test_a_normalised_table_passes_through_unchanged_and_a_raw_one_does_not():
    raw = sweep_like()
    once = tables.normalize_results(raw)
    assert not tables.is_normalized(raw) and tables.is_normalized(once)
    pd.testing.assert_frame_equal(tables.normalize_results(once), once)
    rows = once[once["probe"] == "linear_gap"]  # rows of a normalised table stay normalised
    assert tables.is_normalized(rows)
    pd.testing.assert_frame_equal(tables.normalize_results(rows), rows)
    # what the fast path would miss is normalised the long way
    for broken in (once.assign(epoch=once["epoch"].astype(float)), once.assign(test_acc=once["test_acc"].astype(object)),
                   once.assign(test_images=once["test_images"].where(once.index > 3)),
                   once.assign(module_index=once["module_index"].where(once.index > 3, 99))):
        assert not tables.is_normalized(broken)
        pd.testing.assert_frame_equal(tables.normalize_results(broken), tables.normalize_results(broken.copy()))


def test_holm_equals_statsmodels_on_a_sweeps_p_values_with_ties():
    changes = epoch_changes(tables.normalize_results(sweep_like()))
    p = changes["p_value"].dropna().to_numpy()
    assert len(np.unique(p)) < len(p)  # ties, as McNemar's p-values have
    rng = np.random.default_rng(1)
    for values in (p, rng.random(5000) ** 4, np.array([0.01]), np.array([1.0, 1.0, 0.5])):
        np.testing.assert_array_equal(holm(values), multipletests(values, method="holm")[1])


def test_the_tables_change_marks_equal_one_lookup_per_cell():
    data = tables.normalize_results(sweep_like())
    for epoch, earlier in ((13, 12), (12, 11), (7, 6)):
        built = tables.build_tables(data, epoch)
        fast = tables.tables_long(built).set_index(["concept", "module", "probe"]).sort_index()
        plain = plain_with_changes(data, epoch, earlier).set_index(["concept", "module", "probe"]).sort_index()
        pd.testing.assert_frame_equal(fast[["change_from", "change_p", "change"]],
                                      plain[["change_from", "change_p", "change"]])
    assert (fast["change"] != "").sum() == 0 and (tables.tables_long(tables.build_tables(data, 12))["change"] == "↓").sum() > 5


def test_heatmaps_and_lines_from_one_groupby_equal_one_per_panel_and_line():
    data = tables.normalize_results(sweep_like())
    data.loc[data.index[::7], "test_acc"] = np.nan  # cells without a value are drawn empty, as before
    probe = "linear_gap"
    fig = what_where_when_figure(data, probe)
    for ax, concept in zip(fig.axes, concept_order(data[data["probe"] == probe]), strict=False):
        np.testing.assert_array_equal(np.ma.filled(ax.images[0].get_array(), np.nan),
                                      plain_heatmap(data, probe, concept))
    modules = ["module:0", "module:3", "module:5"]
    fig = accuracy_figure(data, probe, modules)
    for ax, concept in zip(fig.axes, concept_order(data[data["probe"] == probe]), strict=False):
        drawn = {line.get_label(): line for line in ax.get_lines()}
        for module in modules:
            plain = plain_line(data, probe, concept, module)
            np.testing.assert_array_equal(drawn[module].get_xdata(), plain.index.to_numpy())
            np.testing.assert_array_equal(drawn[module].get_ydata(), plain["test_acc"].to_numpy())
