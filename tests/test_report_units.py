"""The units part of the report, on a planted units table: the detectors plot's lines, the unit cards' cells and
images, and the report with and without neurons tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_fakes import synthetic_results
from units_fakes import EPOCHS, units_frame

from clipprobe.neurons.cards import top_activating
from clipprobe.neurons.emergence import detector_counts, module_emergence, unit_emergence
from clipprobe.report.build import write_report
from clipprobe.report.units import (
    UnitTables,
    card_units,
    detectors_figure,
    modules_in_order,
    unit_card,
)


@pytest.fixture(scope="module")
def units():
    return units_frame()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    paths = []
    for i in range(8):
        path = f"img_{i}.png"
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(root / path)
        paths.append(path)
    return root, paths


def test_modules_run_from_input_to_head_with_logits_last():
    assert modules_in_order(["logits", "module:10", "module:2", "module:2"]) == ["module:2", "module:10", "logits"]


def test_detectors_plot_has_a_panel_per_group_and_a_line_per_module_with_the_counts(units):
    fig = detectors_figure(detector_counts(units))
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["colours", "shapes"]
    colours = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(colours) == {"module:3", "module:7"}
    np.testing.assert_array_equal(colours["module:3"].get_xdata(), EPOCHS)
    np.testing.assert_array_equal(colours["module:3"].get_ydata(), [1, 2, 3, 3])  # unit 3; +1; +2; (1, 2, 3)
    np.testing.assert_array_equal(colours["module:7"].get_ydata(), [0, 0, 1, 0])
    shapes = {line.get_label(): line for line in axes[1].get_lines()}
    np.testing.assert_array_equal(shapes["module:7"].get_ydata(), [0, 0, 1, 1])
    assert "q < 0.05" in fig._suptitle.get_text() and "IoU > 0.04" in fig._suptitle.get_text()


def test_cards_go_to_the_best_units_of_pairs_with_detectors(units):
    module_when = module_emergence(units)
    assert card_units(module_when) == [("module:3", 1, "red"), ("module:7", 1, "circle")]
    assert card_units(module_when, limit=1) == [("module:3", 1, "red")]  # AUROC 0.99 both: the first listed


def test_a_unit_card_shows_labels_scores_when_and_top_images(units, pool, tmp_path):
    root, paths = pool
    pooled = np.random.default_rng(0).normal(size=(len(paths), 5))
    pooled[:, 1] = np.arange(len(paths))  # unit 1 fires most on the reddest images
    top = top_activating(pooled, paths, k=4, epoch=10, module="module:3")
    html, files = unit_card(units, "module:3", 1, "red", tmp_path, top_images=top, pool_root=root,
                            unit_when=unit_emergence(units))
    assert "<h3>module:3/1: red</h3>" in html
    assert "<th>epoch 10</th><th>AUROC label</th><th>soft-WPMI label</th><th>IoU label</th>" in html
    assert "<tr><th>labels</th><td>red</td><td>red</td><td>circle</td></tr>" in html
    assert "<tr><th>2</th><td>0.970</td>" in html and "<tr><th>10</th><td>0.990</td>" in html
    assert "module:3/1 emerges as a red detector at epoch 2 (AUROC 0.500 -&gt; 0.970, adjusted p" in html
    assert "and stays." in html
    assert html.count("data:image/png;base64,") == 2 and [f.name for f in files] == [
        "unit_module3_1_red_scores.png", "unit_module3_1_red_top.png"]
    sheet = Image.open(files[1])
    assert sheet.size[0] == 5 * 80  # a contact sheet of the concepts step, tiles of 80 px
    assert np.asarray(sheet.convert("RGB"))[18 + 2 + 5, 2 + 5].tolist() == [210, 0, 0]  # rank 1 = img_7
    born_html, born_files = unit_card(units, "module:3", 3, "red", tmp_path, unit_when=unit_emergence(units))
    assert "with no significant rise into it (it is one from the first epoch); it stays." in born_html
    assert len(born_files) == 1  # no top images given: no sheet


def test_the_report_has_a_units_part_only_for_sweeps_with_neurons_tables(units, pool, tmp_path):
    results = synthetic_results()
    with_units = write_report([("abc12345", results), ("def67890", results)], tmp_path / "with",
                              units={"abc12345": UnitTables(units)})
    page = with_units.html.read_text()
    assert "sweep abc12345: detectors per module over epochs" in page
    assert "sweep abc12345: unit cards" in page and "sweep def67890: unit cards" not in page
    assert "red / module:3: unit module:3/1 emerges at epoch 2" in with_units.text
    when = pd.read_csv(tmp_path / "with" / "abc12345" / "module_when.csv")
    assert when.set_index(["module", "concept"]).loc[("module:3", "red"), "emerged_epoch"] == 2
    assert (tmp_path / "with" / "abc12345" / "plots" / "detectors_over_epochs.png").is_file()
    assert not (tmp_path / "with" / "def67890" / "unit_when.csv").exists()
    without = write_report([("abc12345", results)], tmp_path / "without")
    assert "unit cards" not in without.html.read_text() and "units (" not in without.text


def test_compare_reads_a_sweeps_neurons_tables_and_skips_a_sweep_without(tracking_store, units, pool, tmp_path):
    import mlflow
    from click.testing import CliRunner
    from report_fakes import log_fake_sweep

    from clipprobe.cli import main
    from clipprobe.core.parquet import provenance, write_table

    root, paths = pool
    with_units = log_fake_sweep(synthetic_results(), tmp_path, nested=False)
    without = log_fake_sweep(synthetic_results(seed=1), tmp_path, nested=False)
    pooled = np.tile(np.arange(len(paths), dtype=float)[:, None], (1, 5))
    folder = tmp_path / "neurons"
    folder.mkdir()
    units.to_parquet(folder / "units.parquet", index=False)
    write_table(top_activating(pooled, paths, k=4, epoch=10, module="module:3"), folder / "top_images.parquet",
                provenance("unit_top_images", pool_root=str(root)))
    with mlflow.start_run(run_id=with_units):
        mlflow.log_artifacts(str(folder), artifact_path="neurons")
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["compare", with_units, without, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "red / module:3: unit module:3/1 emerges at epoch 2" in res.output
    first, second = with_units[:8], without[:8]
    assert (out / first / "unit_when.csv").is_file() and not (out / second / "unit_when.csv").exists()
    page = (out / "report.html").read_text()
    assert f"sweep {first}: unit cards" in page and f"sweep {second}: unit cards" not in page
    assert "module:3/1 top images at epoch 10" in page  # the card's contact sheet, from the pool's files
