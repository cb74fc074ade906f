"""Unit scores against their references: AUROC and Mann-Whitney p (scipy, scikit-learn), BH q, soft-WPMI, IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from clipprobe.neurons.auroc import bh_q, exact_null_cdf, pool_maps, unit_auroc
from clipprobe.neurons.iou import unit_iou, unit_thresholds
from clipprobe.neurons.wpmi import clip_probabilities, soft_wpmi, truth_probabilities


def _data(n1: int, n0: int, units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n1 + n0, units))
    x[:n1, : units // 3] += np.linspace(0.2, 1.5, units // 3)
    y = np.r_[np.ones(n1, int), np.zeros(n0, int)]
    perm = rng.permutation(n1 + n0)
    return x[perm], y[perm]


@pytest.mark.parametrize(("n1", "n0"), [(4, 9), (30, 45), (100, 200)])
def test_auroc_and_exact_p_match_scipy_and_sklearn(n1: int, n0: int) -> None:
    x, y = _data(n1, n0, 24)
    r = unit_auroc(x, y)
    assert r.n_pos == n1 and r.n_neg == n0 and set(r.p_method) == {"exact"}
    np.testing.assert_allclose(r.auroc, [roc_auc_score(y, x[:, j]) for j in range(x.shape[1])], rtol=1e-12)
    ref = stats.mannwhitneyu(x[y == 1], x[y == 0], method="exact", axis=0)
    np.testing.assert_allclose(r.u_statistic, ref.statistic)
    np.testing.assert_allclose(r.p_value, ref.pvalue, rtol=1e-9, atol=1e-300)


def test_exact_null_is_a_distribution_symmetric_about_its_mean() -> None:
    cdf = exact_null_cdf(7, 11)
    pmf = np.diff(np.r_[0.0, cdf])
    assert cdf[-1] == pytest.approx(1.0) and pmf.min() >= 0
    np.testing.assert_allclose(pmf, pmf[::-1], atol=1e-15)
    assert cdf[0] == pytest.approx(1 / math.comb(18, 7))  # only one arrangement has U = 0


def test_ties_use_the_tie_corrected_normal_approximation() -> None:
    x, y = _data(20, 30, 12, seed=1)
    x = np.maximum(x, 0.0)  # ReLU: many units tie at 0
    x[:, 0] = 0.0  # a dead unit: every value tied
    r = unit_auroc(x, y)
    ref = stats.mannwhitneyu(x[y == 1], x[y == 0], method="asymptotic", axis=0)
    tied = r.p_method == "asymptotic"
    assert tied.all()
    np.testing.assert_allclose(r.p_value[1:], ref.pvalue[1:], rtol=1e-12)
    assert r.p_value[0] == 1.0 and r.auroc[0] == 0.5
    np.testing.assert_allclose(r.auroc, [roc_auc_score(y, x[:, j]) for j in range(x.shape[1])], rtol=1e-12)


def test_bh_q_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    p = np.r_[rng.uniform(size=40), rng.uniform(0, 1e-3, size=10), [0.5, 0.5]]
    np.testing.assert_allclose(bh_q(p), stats.false_discovery_control(p), rtol=1e-12)


def test_pool_maps_mean_and_max() -> None:
    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 12)
    np.testing.assert_array_equal(pool_maps(maps, 3, "max"), maps.reshape(2, 3, 4).max(2))
    np.testing.assert_allclose(pool_maps(maps, 3, "mean"), maps.reshape(2, 3, 4).mean(2))
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pool_maps(maps, 3, "median")


def _wpmi_by_hand(a: np.ndarray, P: np.ndarray, top: int) -> np.ndarray:
    units, concepts = a.shape[1], P.shape[1]
    w = 0.998 - np.arange(top) / top * (0.998 - 0.97)  # CLIP-Dissect's similarity.soft_wpmi
    given = np.zeros((units, concepts))
    for k in range(units):
        order = np.argsort(-a[:, k], kind="stable")[:top]
        for m in range(concepts):
            given[k, m] = sum(math.log(1 - w[j] + w[j] * P[i, m] + 1e-7) for j, i in enumerate(order))
    prior = np.log(np.exp(given).sum(0)) - math.log(units)
    return given - prior


def test_soft_wpmi_by_hand_and_its_labels() -> None:
    rng = np.random.default_rng(4)
    n, units = 12, 3
    truth = np.zeros((n, 3), int)
    truth[np.arange(n), np.arange(n) % 3] = 1
    a = rng.uniform(size=(n, units))
    a[np.arange(n) % 3 == 0, 0] += 5  # unit 0 fires on concept 0
    a[np.arange(n) % 3 == 2, 1] += 5  # unit 1 on concept 2
    a[np.arange(n) % 3 == 1, 2] += 5  # unit 2 on concept 1
    P = truth_probabilities(truth)
    score = soft_wpmi(a, P, top=4)
    np.testing.assert_allclose(score, _wpmi_by_hand(a, P, 4), rtol=1e-6, atol=1e-6)
    assert score.argmax(1).tolist() == [0, 2, 1]
    sim = np.where(truth == 1, 0.3, 0.2) + rng.normal(0, 0.005, size=truth.shape)  # CLIP-like cosines
    assert soft_wpmi(a, clip_probabilities(sim), top=4).argmax(1).tolist() == [0, 2, 1]
    np.testing.assert_allclose(clip_probabilities(sim).sum(1), 1.0)


def test_truth_probabilities_uniform_over_true_concepts() -> None:
    P = truth_probabilities(np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]))
    np.testing.assert_allclose(P, [[0.5, 0.5, 0, 0], [0.25] * 4, [0, 0, 1, 0]])


def test_iou_on_constructed_maps() -> None:
    n, H = 3, 4
    masks = np.zeros((n, 2, H, H), bool)
    masks[:, 0, :2, :2] = True  # concept 0: the top-left quadrant
    masks[:, 1, :, 2:] = True  # concept 1: the right half
    maps = np.zeros((n, 3, H, H), np.float32)
    maps[:, 0] = masks[:, 0]  # unit 0 is concept 0's mask
    maps[:, 1, :, :2] = 1.0  # unit 1: the left half
    maps[:, 2, 0, :] = 1.0  # unit 2: the top row
    iou = unit_iou(maps, masks, thresholds=np.full(3, 0.5))
    np.testing.assert_allclose(iou, [[1.0, 0.0], [0.5, 0.0], [2 / 6, 2 / 10]])
    small = np.zeros((n, 1, 2, 2), np.float32)
    small[:, 0, 0, 0] = 1.0  # bilinear to 4x4: values > 0.5 exactly in the top-left quadrant
    np.testing.assert_allclose(unit_iou(small, masks, thresholds=np.array([0.5])), [[1.0, 0.0]])


def test_iou_threshold_is_the_top_half_percent() -> None:
    maps = np.arange(2 * 1 * 20 * 20, dtype=np.float32).reshape(2, 1, 20, 20)  # 800 distinct values
    T = unit_thresholds(maps)
    assert np.sum(maps > T[0]) == 4  # 0.5% of 800


def test_rank_weights_follow_clip_dissects_code() -> None:
    from clipprobe.neurons.wpmi import rank_weights

    w = rank_weights(100)
    assert w[0] == 0.998 and w[-1] == pytest.approx(0.97028) and len(w) == 100
    assert np.allclose(np.diff(w), -0.028 / 100)


def _dense_iou(maps: np.ndarray, masks: np.ndarray, T: np.ndarray) -> np.ndarray:
    """NetDissect's IoU the plain way: every map upsampled, thresholded and compared with every mask."""
    import torch
    import torch.nn.functional as F

    H, W = masks.shape[2:]
    up = F.interpolate(torch.as_tensor(maps), size=(H, W), mode="bilinear", align_corners=False).numpy()
    M = up > T[None, :, None, None]  # (images, units, H, W)
    inter = np.einsum("nkhw,nchw->kc", M.astype(np.float64), masks.astype(np.float64))
    union = M.sum((0, 2, 3))[:, None] + masks.sum((0, 2, 3))[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@pytest.mark.parametrize("hw", [(2, 2), (5, 7), (16, 16)])
def test_iou_upsamples_only_maps_reaching_the_threshold_and_equals_the_dense_form(hw) -> None:
    rng = np.random.default_rng(sum(hw))
    n, units = 40, 12
    maps = np.maximum(rng.normal(size=(n, units, *hw)), 0).astype(np.float32)  # ReLU zeros tie, as real maps do
    maps[:, 3] = 0.0  # a dead unit
    maps[:, 4] *= 1e4  # a unit far from the others' scale
    masks = rng.random((n, 3, 32, 24)) < np.array([0.05, 0.3, 0.0])[None, :, None, None]
    T = unit_thresholds(maps)
    # Equal but for pixels interpolated to T itself (T is one of the map's values), which float32 rounding puts
    # either side of it depending on the batch shape torch interpolates: at most a few pixels of a unit's region.
    np.testing.assert_allclose(unit_iou(maps, masks, thresholds=T, batch=7), _dense_iou(maps, masks, T), atol=1e-3)
