"""``auto`` precision: bf16 kept per module only where a calibration proves it against fp32."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from clipprobe.activations.hooks import forward_activations, pooled
from clipprobe.activations.options import CALIBRATION_QUANTILE, ExtractOptions

log = logging.getLogger(__name__)




def _quantile_error(exact: torch.Tensor, fast: torch.Tensor) -> float:
    """``CALIBRATION_QUANTILE`` over features of ``||fast_j - exact_j|| / ||exact_j - mean(exact_j)||``.

    ``(rows, features)`` float32. A feature constant in fp32 scores 0 when bf16 keeps it exactly, else inf.
    """
    num = (fast.double() - exact.double()).norm(dim=0)
    den = (exact.double() - exact.double().mean(0)).norm(dim=0)
    err = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, float("inf"), 0.0))
    return float(np.quantile(err.cpu().numpy(), CALIBRATION_QUANTILE, method="higher"))


def calibrate(
    model: nn.Module,
    paths: Sequence[str],
    pixels: np.ndarray | torch.Tensor,
    *,
    options: ExtractOptions = ExtractOptions(precision="auto"),
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """Per module path: ``{"precision": "bf16" or "fp32", "gap_error", "map_error", "images"}``.

    Runs the first ``options.calibration_images`` of ``pixels`` through the modules in fp32 and under
    bf16 autocast (same layout and folding) and scores each module's pooled and full-map features by
    ``_quantile_error`` (the 99th percentile over features of the centred relative error). bf16 is
    accepted when both errors are at most ``options.calibration_rtol``. Centring matters: a deep feature
    at 1e4 times its spread from zero has a small error relative to its size and none of its variation.
    """
    m = min(len(pixels), options.calibration_images)
    batch = pixels[:m]
    outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for precision in ("fp32", "bf16"):
        got: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
        run = dataclasses.replace(options, precision=precision)
        forward_activations(model, {p: p for p in paths}, batch, lambda p, _s, out, got=got: got[p].append(out.float()),
                            options=run, device=device, progress=False)
        outputs[precision] = got
    result = {}
    for path in paths:
        exact, fast = (torch.cat(outputs[p][path]) for p in ("fp32", "bf16"))
        gap_error = _quantile_error(pooled(exact), pooled(fast))
        map_error = _quantile_error(exact.flatten(1), fast.flatten(1))
        ok = max(gap_error, map_error) <= options.calibration_rtol
        result[path] = {"precision": "bf16" if ok else "fp32", "gap_error": gap_error, "map_error": map_error,
                        "images": m}
        log.info("calibration %s: bf16 centred error gap %.3g, map %.3g (limit %g): %s", path, gap_error,
                 map_error, options.calibration_rtol, result[path]["precision"])
    return result


