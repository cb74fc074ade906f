"""What-where-when heatmaps and accuracy lines: what the pictures show."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from report_fakes import synthetic_results

from clipprobe.report.plots import (
    MAX_MARKED_EPOCHS,
    VMAX,
    VMIN,
    accuracy_figure,
    accuracy_over_epochs,
    check_modules,
    concept_order,
    default_modules,
    what_where_when,
    what_where_when_figure,
)


def _where(path, accuracy: float, vmin: float = VMIN, vmax: float = VMAX) -> tuple[int, float, float]:
    """(pixels, median x, median y) of the heatmap colour of ``accuracy`` in the PNG (y grows downwards)."""
    rgb = np.array(colormaps["viridis"]((accuracy - vmin) / (vmax - vmin))[:3]) * 255
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    ys, xs = np.nonzero(np.abs(pixels - rgb).max(-1) <= 2)
    return len(xs), float(np.median(xs)) if len(xs) else np.nan, float(np.median(ys)) if len(ys) else np.nan


def test_what_where_when_cells_show_their_accuracy_in_place(tmp_path):
    """One concept, modules 0 and 10 x epochs 1 and 2: each cell in the colour of its accuracy, module
    rising upwards, epoch rising to the right; a missing cell is not painted."""
    results = synthetic_results(concepts=(("red", "colour"),), modules=(0, 10), probes=("linear_gap",),
                                epochs=(1, 2))
    acc = {(0, 1): 0.5, (0, 2): 0.75, (10, 1): 1.0, (10, 2): 0.875}
    results["test_acc"] = [acc[(m, e)] for m, e in zip(results["module_index"], results["epoch"], strict=True)]
    path = what_where_when(results, "linear_gap", tmp_path / "wwh.png")
    cells = {key: _where(path, value) for key, value in acc.items()}
    assert all(n > 3000 for n, _, _ in cells.values()), cells  # each a block, not a colour-bar row
    (_, x01, y01), (_, x02, y02), (_, x11, y11), (_, x12, y12) = (cells[k] for k in sorted(cells))
    assert y11 < y01 - 50 and y12 < y02 - 50  # module:10 drawn above module:0
    assert x02 > x01 + 50 and x12 > x11 + 50  # epoch 2 right of epoch 1
    assert abs(x01 - x11) < 5 and abs(y01 - y02) < 5  # one grid
    # the same sweep without the (module:10, epoch 2) fit: that cell's colour is gone
    holed = results[~((results["module_index"] == 10) & (results["epoch"] == 2))]
    assert _where(what_where_when(holed, "linear_gap", tmp_path / "holed.png"), 0.875)[0] < 100


def test_panels_of_one_concept_group_sit_together():
    concepts = (("dotted", "patterns"), ("red", "colours"), ("striped", "patterns"), ("blue", "colours"))
    assert concept_order(synthetic_results(concepts=concepts)) == ["dotted", "striped", "red", "blue"]


def test_grid_wraps_after_four_concepts(tmp_path):
    """Four panels sit in one row; a fifth starts a second row below them."""
    concepts = tuple((c, "colour") for c in ("red", "blue", "green", "yellow", "orange"))
    four = what_where_when(synthetic_results(concepts=concepts[:4]), "non_linear_gap", tmp_path / "4.png")
    five = what_where_when(synthetic_results(concepts=concepts), "non_linear_gap", tmp_path / "5.png")
    with Image.open(four) as a, Image.open(five) as b:
        (w4, h4), (w5, h5) = a.size, b.size
    assert w5 == w4 and h5 > 1.6 * h4


def test_accuracy_lines_png_and_module_choice(tmp_path):
    results = synthetic_results()
    assert default_modules(results) == ["module:0", "module:1", "module:2", "module:10"]
    assert default_modules(results, k=2) == ["module:0", "module:10"]
    path = accuracy_over_epochs(results, "linear_gap", ["module:1", "module:10"], tmp_path / "l.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1]  # three panels side by side


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


def _module_lines(fig, modules):
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_label() in modules]


def test_accuracy_lines_mark_each_epoch_only_while_few_epochs():
    """Up to 30 epochs every point has a marker; 300 epochs of markers would bury the lines, so they go."""
    modules = ["module:1", "module:10"]
    few = synthetic_results(epochs=tuple(range(MAX_MARKED_EPOCHS)), concepts=(("red", "colour"),))
    lines = _module_lines(accuracy_figure(few, "linear_gap", modules), modules)
    assert len(lines) == 2 and {line.get_marker() for line in lines} == {"o"}
    assert len(lines[0].get_xdata()) == 30
    many = synthetic_results(epochs=tuple(range(300)), concepts=(("red", "colour"), ("blue", "colour")))
    lines = _module_lines(accuracy_figure(many, "linear_gap", modules), modules)
    assert len(lines) == 4 and {line.get_marker() for line in lines} <= {"", "None", None}
    assert len(lines[0].get_xdata()) == 300  # every epoch still on the line


def test_small_heatmaps_write_each_cells_accuracy_in_it():
    """One epoch makes each panel a single column of colours: every cell gets its accuracy written, at its
    (epoch, module) place; a wide sweep's panels stay unwritten."""
    results = synthetic_results(concepts=(("red", "colour"), ("blue", "colour")), modules=(0, 10),
                                probes=("linear_gap",), epochs=(5,))
    acc = {("red", 0): 0.5, ("red", 10): 0.875, ("blue", 0): 0.625, ("blue", 10): 1.0}
    results["test_acc"] = [acc[(c, m)] for c, m in zip(results["concept"], results["module_index"], strict=True)]
    fig = what_where_when_figure(results, "linear_gap")
    red, blue = fig.axes[:2]
    written = {ax.get_title().split()[0]: {(t.get_position(), t.get_text()) for t in ax.texts} for ax in (red, blue)}
    assert written == {"red": {((0, 0), "0.500"), ((0, 1), "0.875")}, "blue": {((0, 0), "0.625"), ((0, 1), "1.000")}}
    wide = synthetic_results(concepts=(("red", "colour"),), epochs=tuple(range(7)))
    assert not what_where_when_figure(wide, "linear_gap").axes[0].texts
    # a missing fit's cell stays blank
    holed = results[~((results["concept"] == "red") & (results["module_index"] == 10))]
    assert [t.get_text() for t in what_where_when_figure(holed, "linear_gap").axes[0].texts] == ["0.500"]


def test_the_what_where_when_plot_draws_mdl_compression(tmp_path):
    results = synthetic_results()
    with pytest.raises(ValueError, match="the sweep has no compression for linear_gap: probe with --mdl"):
        what_where_when_figure(results, "linear_gap", metric="compression")
    with pytest.raises(ValueError, match="unknown metric 'auroc'"):
        what_where_when_figure(results, "linear_gap", metric="auroc")
    results["compression"] = 1.0 + results["module_index"] + 0.5 * results["epoch"]
    fig = what_where_when_figure(results[results["concept"] == "red"], "linear_gap", metric="compression")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (1.0, float(results["compression"].max()))
    np.testing.assert_allclose(image.get_array()[3], [11.5, 12.0, 12.5])  # module:10 (module_index 10) over epochs 1-3
    assert "MDL compression" in fig.get_suptitle()
    assert what_where_when(results, "linear_gap", tmp_path / "c.png", metric="compression").exists()


def test_the_report_draws_compression_heatmaps_only_for_sweeps_with_mdl(tmp_path):
    from clipprobe.report.build import write_report

    plain = write_report([("plain", synthetic_results())], tmp_path / "plain")
    assert not [f for f in plain.files if "compression" in f.name]
    results = synthetic_results().assign(compression=2.0)
    report = write_report([("mdl", results)], tmp_path / "mdl")
    drawn = sorted(f.name for f in report.files if "compression" in f.name)
    assert drawn == ["what_where_when_compression_linear_gap.png", "what_where_when_compression_non_linear_gap.png"]
    assert "The MDL compression heatmaps" in report.html.read_text()
