"""Linear CKA: identities, invariances, the debiased estimate at small n, and agreement with HSIC by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from clipprobe.similarity.cka import cka_matrix, linear_cka


def _hsic_biased(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al.'s feature-space form on column-centred X and Y (float64)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return float(np.linalg.norm(Yc.T @ Xc) ** 2)


def _cka_biased_by_hand(X: np.ndarray, Y: np.ndarray) -> float:
    return _hsic_biased(X, Y) / np.sqrt(_hsic_biased(X, X) * _hsic_biased(Y, Y))


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (JMLR 2012), eq. 5, on raw (uncentred) linear kernels, in float64."""
    n = K.shape[0]
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return float((np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * (one @ K @ L @ one)) / (n * (n - 3)))


def _cka_debiased_by_hand(X: np.ndarray, Y: np.ndarray) -> float:
    K, L = X @ X.T, Y @ Y.T
    return _hsic_unbiased(K, L) / np.sqrt(_hsic_unbiased(K, K) * _hsic_unbiased(L, L))


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)) + 3.0  # an offset, as activations after a ReLU have
    Y = np.tanh(X @ rng.normal(size=(12, 20))) + 0.3 * rng.normal(size=(60, 20))
    return X, Y


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_of_a_representation_with_itself_is_one(pair, debiased: bool) -> None:
    X, Y = pair
    assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.diag(cka_matrix([X, Y, X.astype(np.float32)], debiased=debiased)), 1.0, atol=1e-12)


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(pair, debiased: bool) -> None:
    X, Y = pair
    base = linear_cka(X, Y, debiased=debiased)
    Q = ortho_group.rvs(X.shape[1], random_state=1)
    assert linear_cka(X @ Q, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * X, 0.01 * Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(X @ Q * 3.0, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    anisotropic = X * np.r_[10.0, np.ones(X.shape[1] - 1)]  # not invariant to a non-isotropic scaling
    assert abs(linear_cka(anisotropic, Y, debiased=debiased) - base) > 1e-3


def test_debiased_cka_is_near_zero_for_independent_features_at_small_n_where_the_biased_is_not() -> None:
    rng = np.random.default_rng(2)
    biased, debiased = [], []
    for _ in range(20):
        X, Y = rng.normal(size=(20, 100)), rng.normal(size=(20, 100))  # n = 20 images, 100 features each
        biased.append(linear_cka(X, Y, debiased=False))
        debiased.append(linear_cka(X, Y, debiased=True))
    assert np.mean(biased) > 0.75  # the biased estimate's pull towards 1 at n << p
    assert abs(np.mean(debiased)) < 0.05 and np.max(np.abs(debiased)) < 0.2


def test_cka_agrees_with_a_direct_float64_hsic_computation(pair) -> None:
    X, Y = pair
    assert linear_cka(X, Y, debiased=False) == pytest.approx(_cka_biased_by_hand(X, Y), abs=1e-6)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(_cka_debiased_by_hand(X, Y), abs=1e-6)
    rng = np.random.default_rng(3)
    reps = [X, Y, rng.normal(size=(60, 5)), X[:, :3] ** 2]
    for debiased, by_hand in ((True, _cka_debiased_by_hand), (False, _cka_biased_by_hand)):
        expected = np.array([[by_hand(a, b) for b in reps] for a in reps])
        np.testing.assert_allclose(cka_matrix(reps, debiased=debiased), expected, atol=1e-6)


def test_cka_refuses_representations_of_different_images() -> None:
    with pytest.raises(ValueError, match=r"representations have \[5, 6\] images: CKA compares the same images"):
        cka_matrix([np.ones((5, 2)), np.ones((6, 2))])
    with pytest.raises(ValueError, match="debiased CKA needs at least 4 images, got 3"):
        linear_cka(np.eye(3), np.eye(3))
