"""Units over training: detectors, a unit's tested emergence, whether it stays, counts per module and epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from units_fakes import UNITS, units_frame

from clipprobe.neurons.emergence import (
    UNIT_WHEN_COLUMNS,
    auroc_variance,
    detector_counts,
    epoch_steps,
    is_detector,
    module_emergence,
    unit_emergence,
    when_lines,
)


@pytest.fixture(scope="module")
def units():
    return units_frame()


def _row(frame, module, unit, concept):
    found = frame[(frame["module"] == module) & (frame["unit"] == unit) & (frame["concept"] == concept)]
    assert len(found) == 1, (module, unit, concept)
    return found.iloc[0]


def test_hanley_mcneil_variance_matches_its_formula_and_the_chance_value():
    # at AUROC 0.5 with equal groups of n: Q1 = 1/3, Q2 = 1/3, var = (0.25 + 2 (n-1)(1/3 - 1/4)) / n^2
    n = 40
    assert auroc_variance(np.array([0.5]), np.array([n]), np.array([n]))[0] == pytest.approx(
        (0.25 + 2 * (n - 1) / 12) / n**2)
    assert auroc_variance(np.array([1.0]), np.array([5]), np.array([9]))[0] == pytest.approx(0.0)


def test_a_detector_needs_auroc_q_and_iou_where_masks_exist(units):
    at = units.assign(det=is_detector(units))
    circle = at[(at["module"] == "module:7") & (at["unit"] == 1) & (at["concept"] == "circle")].set_index("epoch")
    assert circle["det"].tolist() == [False, False, True, True]  # AUROC passes at 2, IoU 0.01 there
    red = at[(at["module"] == "module:3") & (at["unit"] == 1) & (at["concept"] == "red")].set_index("epoch")
    assert red["det"].tolist() == [False, True, True, True]  # no masks for red: AUROC alone


def test_each_planted_unit_gets_its_known_when(units):
    when = unit_emergence(units)
    assert list(when.columns) == list(UNIT_WHEN_COLUMNS)
    emerges = _row(when, "module:3", 1, "red")
    assert (emerges["first_epoch"], emerges["emerged_epoch"], emerges["epoch_from"]) == (2, 2, 0)
    assert emerges["stays"] and emerges["auroc_to"] == 0.97 and emerges["p_adjusted"] < 0.05
    creeps = _row(when, "module:3", 2, "red")
    assert creeps["first_epoch"] == 5 and pd.isna(creeps["emerged_epoch"])  # a crossing, not a tested rise
    assert creeps["stays"]
    born = _row(when, "module:3", 3, "red")
    assert born["first_epoch"] == 0 and pd.isna(born["emerged_epoch"]) and born["stays"]
    fleeting = _row(when, "module:7", 0, "red")
    assert fleeting["emerged_epoch"] == 5 and not fleeting["stays"] and fleeting["last_auroc"] == 0.5
    circle = _row(when, "module:7", 1, "circle")
    assert circle["emerged_epoch"] == 5 and circle["group"] == "shapes"  # when its IoU passes too
    assert len(when) == 5  # chance units never pass


def test_categorical_columns_as_the_scorer_writes_them_give_the_same_answers(units):
    categorical = units.astype({c: "category" for c in ("module", "module_path", "concept", "group")})
    plain = unit_emergence(units)
    pd.testing.assert_frame_equal(unit_emergence(categorical).astype({"module": str, "concept": str, "group": str}),
                                  plain.astype({"module": str, "concept": str, "group": str}))
    assert module_emergence(categorical)["emerged_epoch"].tolist() == module_emergence(units)["emerged_epoch"].tolist()
    assert detector_counts(categorical)["n_detectors"].sum() == detector_counts(units)["n_detectors"].sum()


def test_the_test_corrects_over_every_step_and_is_conservative(units):
    steps = epoch_steps(units)
    n_series = sum(UNITS.values()) * 2
    assert len(steps) == n_series * 3  # three steps between four epochs, per unit and concept
    assert (steps["p_adjusted"] >= steps["p_value"]).all()
    step = steps[(steps["module"] == "module:3") & (steps["unit"] == 1) & (steps["concept"] == "red")
                 & (steps["epoch_to"] == 2)].iloc[0]
    var = auroc_variance(np.array([0.5, 0.97]), np.array([50, 50]), np.array([100, 100])).sum()
    assert step["z"] == pytest.approx((0.97 - 0.5) / np.sqrt(var))
    with pytest.raises(ValueError, match="unknown correction 'sidak'"):
        epoch_steps(units, method="sidak")


def test_module_when_follows_the_best_unit_and_the_modules_detectors(units):
    table = module_emergence(units).set_index(["module", "concept"])
    red3 = table.loc[("module:3", "red")]
    assert red3["best_unit"] == 1 and red3["best_auroc"] == 0.99
    assert (red3["best_first_epoch"], red3["best_emerged_epoch"], red3["best_stays"]) == (2, 2, True)
    assert red3["first_epoch"] == 0 and red3["stays"]  # unit 3 is a detector from the start
    assert red3["emerged_epoch"] == 2 and red3["n_emerged"] == 1 and red3["n_detectors_last"] == 3
    red7 = table.loc[("module:7", "red")]
    assert red7["first_epoch"] == 5 and not red7["stays"] and red7["n_detectors_last"] == 0
    assert pd.isna(table.loc[("module:3", "circle"), "first_epoch"]) and table.loc[("module:3", "circle"), "n_units"] == 5


def test_detector_counts_count_each_unit_once_per_group(units):
    counts = detector_counts(units).set_index(["epoch", "module", "group"])
    assert counts.loc[(2, "module:3", "colours"), "n_detectors"] == 2  # units 1 and 3
    assert counts.loc[(5, "module:3", "colours"), "n_detectors"] == 3
    assert counts.loc[(10, "module:7", "shapes"), "n_detectors"] == 1
    assert counts.loc[(0, "module:7", "shapes"), "n_detectors"] == 0 and counts.loc[(0, "module:7", "shapes"), "n_units"] == 4
    by_concept = detector_counts(units, by="concept")
    assert set(by_concept.columns) == {"epoch", "module", "concept", "n_detectors", "n_units"}


def test_the_when_in_words(units):
    unit_when = unit_emergence(units)
    lines = when_lines(module_emergence(units, unit_when=unit_when), unit_when)
    assert lines[0].startswith("red / module:3: unit module:3/1 emerges at epoch 2 (AUROC 0.500 -> 0.970, adjusted p")
    assert "stays; 1 unit(s) emerged, 3 detector(s) at the last epoch; best unit module:3/1 (AUROC 0.990)" in lines[0]
    assert any(line.startswith("red / module:7: unit module:7/0 emerges at epoch 5") and "does not stay" in line
               for line in lines)
    assert "Holm-corrected over every epoch-to-epoch step" in lines[-1]
    chance = units.assign(auroc=0.5, q_value=1.0)
    empty = unit_emergence(chance)
    assert empty.empty and when_lines(module_emergence(chance, unit_when=empty), empty)[0].startswith(
        "no unit rises significantly")
    with pytest.raises(ValueError, match="units table lacks column.s. q_value"):
        unit_emergence(units.drop(columns="q_value"))


def test_top_activating_images_per_unit():
    from clipprobe.neurons.cards import TOP_IMAGE_COLUMNS, top_activating

    pooled = np.array([[0.1, 5.0], [0.9, 1.0], [0.5, 3.0], [0.9, 0.0]])
    top = top_activating(pooled, ["a.png", "b.png", "c.png", "d.png"], k=3, epoch=5, module="module:3")
    assert list(top.columns) == list(TOP_IMAGE_COLUMNS)
    assert top[top["unit"] == 0]["path"].tolist() == ["b.png", "d.png", "c.png"]  # a tie keeps image order
    assert top[top["unit"] == 1]["path"].tolist() == ["a.png", "c.png", "b.png"]
    assert top[top["unit"] == 1]["activation"].tolist() == [5.0, 3.0, 1.0]
    assert set(top["epoch"]) == {5} and top["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert top_activating(pooled, list("abcd"), units=[1], k=2)["path"].tolist() == ["a", "c"]
    with pytest.raises(ValueError, match=r"expected \(images, units\) with one row per path \(3 paths\)"):
        top_activating(pooled, ["a", "b", "c"])
