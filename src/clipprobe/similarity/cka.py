"""Linear CKA (Kornblith et al., ICML 2019), biased and debiased, between every pair of representations at once.

A representation is an (images x features) matrix of one module at one epoch, rows = the same images in the
same order for all of them. With K = X X^T and L = Y Y^T (linear kernels):

- biased: CKA = <HKH, HLH>_F / (||HKH||_F ||HLH||_F), H the centring matrix; equal to
  ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c, Y_c;
- debiased: HSIC replaced by its unbiased estimator (Song et al., JMLR 2012), which at small n removes the
  biased form's pull towards 1 between unrelated features. That estimator equals <U(K), U(L)>_F / (n (n - 3))
  with U the U-centring of Szekely and Rizzo (2014): zero diagonal, and off the diagonal
  K_ij - r_i / (n - 2) - r_j / (n - 2) + s / ((n - 1)(n - 2)) (r: row sums, s: total, of K with zero diagonal).
  So debiased CKA = <U(K), U(L)> / (||U(K)|| ||U(L)||): one cosine between U-centred Gram matrices, never the
  square root of a negative self-similarity.

``cka_matrix`` turns every representation into its normalised centred Gram matrix once (float64) and takes
all pairwise inner products as one matrix product. Cost: n^2 p per representation, R^2 n^2 for R of them;
memory R n^2 doubles (n = 1,000 images: 8 MB a representation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipprobe.probes.solvers import threads_for

MIN_IMAGES_DEBIASED = 4  # the unbiased HSIC divides by n - 3


def _gram(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X).to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"a representation has shape {tuple(x.shape)}: expected (images, features)")
    x = x - x.mean(0, keepdim=True)  # no change to the result; keeps the float64 products well conditioned
    return x @ x.T


def centred_gram(X: np.ndarray | torch.Tensor, *, debiased: bool = True) -> torch.Tensor:
    """The centred linear Gram matrix of X (n x n, float64): U-centred (``debiased``) or H-centred."""
    K = _gram(X)
    n = K.shape[0]
    if not debiased:
        K = K - K.mean(0, keepdim=True)
        return K - K.mean(1, keepdim=True)
    if n < MIN_IMAGES_DEBIASED:
        raise ValueError(f"debiased CKA needs at least {MIN_IMAGES_DEBIASED} images, got {n}")
    K = K.clone()
    K.fill_diagonal_(0.0)
    rows = K.sum(1)
    U = K - rows[:, None] / (n - 2) - rows[None, :] / (n - 2) + rows.sum() / ((n - 1) * (n - 2))
    U.fill_diagonal_(0.0)
    return U


def _normalised(X: np.ndarray | torch.Tensor, debiased: bool) -> torch.Tensor:
    G = centred_gram(X, debiased=debiased)
    norm = torch.linalg.matrix_norm(G)
    return G / norm if norm > 0 else torch.full_like(G, float("nan"))  # constant features: CKA undefined


def linear_cka(X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor, *, debiased: bool = True) -> float:
    """Linear CKA between two representations of the same images (rows), in float64."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} images and Y {Y.shape[0]}: CKA compares the same images")
    return float((_normalised(X, debiased) * _normalised(Y, debiased)).sum())


def cka_matrix(representations: Sequence[np.ndarray | torch.Tensor], *, debiased: bool = True) -> np.ndarray:
    """CKA between every pair of ``representations`` (R x R, float64, symmetric, 1 on the diagonal)."""
    if not representations:
        return np.zeros((0, 0))
    n = {int(r.shape[0]) for r in representations}
    if len(n) != 1:
        raise ValueError(f"representations have {sorted(n)} images: CKA compares the same images")
    n_images = n.pop()
    width = max(int(r.shape[1]) for r in representations)
    # small programs run faster on one thread (probes.solvers.threads_for; benchmarks/results/code_timings.md)
    with threads_for(len(representations) * n_images * n_images * max(width, len(representations))):
        flat = torch.stack([_normalised(r, debiased).flatten() for r in representations])
        return (flat @ flat.T).clamp(-1.0, 1.0).numpy()
