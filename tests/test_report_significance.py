"""McNemar's exact test and the multiple-comparison corrections, against hand numbers and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from clipprobe.report.significance import adjust, correctness, mcnemar_exact, pairable


def test_mcnemar_exact_matches_the_binomial_on_discordant_pairs_by_hand():
    # 1 image only A gets right, 9 only B: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    a = "1" + "0" * 9 + "1" * 50 + "0" * 30
    b = "0" + "1" * 9 + "1" * 50 + "0" * 30
    assert mcnemar_exact(a, b) == (1, 9, pytest.approx(22 / 1024))
    assert mcnemar_exact(a, b)[2] == pytest.approx(stats.binomtest(1, 10, 0.5).pvalue)
    assert mcnemar_exact(b, a) == (9, 1, pytest.approx(22 / 1024))
    assert mcnemar_exact(a, a) == (0, 0, 1.0)  # nothing differs
    assert mcnemar_exact("10", "01")[2] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.random(90) < 0.8, rng.random(90) < 0.7
        n_a, n_b, p = mcnemar_exact(x, y)
        assert p == pytest.approx(stats.binomtest(min(n_a, n_b), n_a + n_b, 0.5).pvalue)
    with pytest.raises(ValueError, match="same test images in the same order"):
        mcnemar_exact("101", "10")


def test_holm_and_benjamini_hochberg_by_hand_and_nan_outside_the_family():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005x4, 0.01x3, 0.03x2, 0.04x1, made monotone -> 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005x4/1, 0.01x4/2, 0.03x4/3, 0.04x4/4, minimum from the top -> 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(adjust(p, "fdr_bh"), [0.02, 0.04, 0.04, 0.02])
    out = adjust([0.01, math.nan, 0.04], "holm")
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert all(math.isnan(v) for v in adjust([math.nan], "holm"))
    with pytest.raises(ValueError, match="unknown correction 'sidak'"):
        adjust(p, "sidak")


def test_cells_pair_only_on_the_same_test_images():
    assert pairable("101", "110", "h1", "h1")
    assert not pairable("101", "110", "h1", "h2")
    assert not pairable("101", "", "h1", "h1")
    assert not pairable("101", "1101", "h1", "h1")
    assert not pairable(float("nan"), "110", "h1", "h1")
    assert correctness("0110").tolist() == [False, True, True, False]
