"""CLIP-Dissect's soft-WPMI (Oikarinen and Weng, ICLR 2023): a label for every unit from a concept vocabulary, from
the concept probabilities of the unit's top-activating images.

The probing set is the images the sweep cached activations for (the union of the concepts' splits), not the
whole pool: soft-WPMI reads p(concept | image) only for those images. See docs/neurons.md.
"""

from __future__ import annotations

import numpy as np
import torch

TOP_IMAGES = 100  # B_k: a unit's top-activating images
WEIGHT_FIRST, WEIGHT_LAST = 0.998, 0.97  # p_j of the image of rank j, linear in j
CLIP_SCALE = 10.0  # a: p(m | x) = softmax_m(a * cos(x, m))
LAMBDA = 1.0  # weight of the prior
EPSILON = 1e-7  # inside the log


def clip_probabilities(similarity: np.ndarray, scale: float = CLIP_SCALE) -> np.ndarray:
    """p(m | x) ``(images, concepts)``: softmax over concepts of ``scale`` times CLIP's cosine similarities."""
    s = torch.as_tensor(np.array(similarity, np.float64))
    return torch.softmax(scale * s, dim=1).numpy()


def truth_probabilities(labels: np.ndarray) -> np.ndarray:
    """p(m | x) from true labels ``(images, concepts)`` 0/1: uniform over an image's true concepts (over all
    concepts for an image with none, which then favours no concept)."""
    y = np.asarray(labels, np.float64)
    counts = y.sum(1, keepdims=True)
    return np.where(counts > 0, y / np.maximum(counts, 1), 1.0 / y.shape[1])


def rank_weights(top: int, first: float = WEIGHT_FIRST, last: float = WEIGHT_LAST) -> np.ndarray:
    """p_j for ranks 1 .. top: ``first - (j - 1) / top * (first - last)``, as CLIP-Dissect's ``soft_wpmi`` builds
    them (``p_start - arange(top) / top * (p_start - p_end)``), so rank 100 of 100 gets 0.97028, not 0.97."""
    return first - np.arange(top) / top * (first - last)


def soft_wpmi(activations: np.ndarray, probabilities: np.ndarray, *, top: int = TOP_IMAGES,
              lam: float = LAMBDA, first: float = WEIGHT_FIRST, last: float = WEIGHT_LAST) -> np.ndarray:
    """soft-WPMI ``(units, concepts)`` of a layer's units ``activations`` ``(images, units)`` against
    ``probabilities`` p(m | x) ``(images, concepts)``.

    log p(m | B_k) = sum_j log(1 - p_j + p_j p(m | x_j) + 1e-7) over unit k's top images x_j (by activation);
    log p(m) = logsumexp_k' log p(m | B_k') - log(#units); score = log p(m | B_k) - lam log p(m).
    The prior runs over the units given, so pass a whole layer. Fewer images than ``top``: all of them."""
    a = torch.as_tensor(np.asarray(activations, np.float32))
    P = torch.as_tensor(np.asarray(probabilities, np.float64))
    if a.ndim != 2 or P.ndim != 2 or a.shape[0] != P.shape[0]:
        raise ValueError(f"activations {tuple(a.shape)} and probabilities {tuple(P.shape)}: expected "
                         "(images, units) and (images, concepts) over the same images")
    k = min(top, a.shape[0])
    idx = torch.topk(a, k, dim=0).indices  # (k, units), rank order
    w = torch.as_tensor(rank_weights(k, first, last))[:, None, None]  # (k, 1, 1)
    picked = P[idx]  # (k, units, concepts)
    log_given = torch.log(1 - w + w * picked + EPSILON).sum(0)  # (units, concepts)
    prior = torch.logsumexp(log_given, dim=0) - np.log(log_given.shape[0])
    return (log_given - lam * prior).numpy()
