"""What-where-when heatmaps and accuracy lines: valid PNGs of the expected size."""

from __future__ import annotations

import pytest
from PIL import Image
from report_fakes import synthetic_results

from clipprobe.report.plots import (
    accuracy_over_epochs,
    check_modules,
    concept_order,
    default_modules,
    figure_pixels,
    what_where_when,
)


def test_what_where_when_png_has_the_expected_size(tmp_path):
    path = what_where_when(synthetic_results(), "linear_gap", tmp_path / "wwh.png")
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == figure_pixels(3) == (1120, 380)
        colours = img.convert("RGB").getcolors(maxcolors=100_000)
    assert len(colours) > 50  # a drawn heatmap, not a blank canvas


def test_panels_of_one_concept_group_sit_together():
    concepts = (("dotted", "patterns"), ("red", "colours"), ("striped", "patterns"), ("blue", "colours"))
    assert concept_order(synthetic_results(concepts=concepts)) == ["dotted", "striped", "red", "blue"]


def test_grid_wraps_after_four_concepts(tmp_path):
    concepts = tuple((c, "colour") for c in ("red", "blue", "green", "yellow", "orange"))
    path = what_where_when(synthetic_results(concepts=concepts), "non_linear_gap", tmp_path / "w.png")
    with Image.open(path) as img:
        assert img.size == figure_pixels(5) == (1460, 700)


def test_accuracy_lines_png_and_module_choice(tmp_path):
    results = synthetic_results()
    assert default_modules(results) == ["module:0", "module:1", "module:2", "module:10"]
    assert default_modules(results, k=2) == ["module:0", "module:10"]
    path = accuracy_over_epochs(results, "linear_gap", ["module:1", "module:10"], tmp_path / "l.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == figure_pixels(3)


def test_unknown_module_or_probe_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown module 'module:30': the sweep has module:0, module:1, module:2, module:10$"):
        check_modules(synthetic_results(), ["module:1", "module:30"])
    with pytest.raises(ValueError, match=r"^probe 'linear_non_gap' is not in the sweep"):
        what_where_when(synthetic_results(), "linear_non_gap", tmp_path / "x.png")


def _red_pixels(path) -> int:
    with Image.open(path) as img:
        return sum(n for n, (r, g, b) in img.convert("RGB").getcolors(maxcolors=1_000_000)
                   if r > 200 and g < 60 and b < 60)


def test_the_majority_baseline_is_marked_on_the_colour_scale(tmp_path):
    """A red line across the colour bar (viridis has no red) at the baseline, only when it is known."""
    results = synthetic_results()
    marked = what_where_when(results, "linear_gap", tmp_path / "marked.png")
    plain = what_where_when(results.assign(test_majority_acc=float("nan")), "linear_gap", tmp_path / "plain.png")
    assert _red_pixels(plain) == 0
    assert _red_pixels(marked) > 25  # a line about 3 px high across the bar
