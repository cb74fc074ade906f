"""How the forward pass computes (``ExtractOptions``), and the precisions it knows."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
FORWARD_PRECISIONS = ("fp32", "bf16", "auto")
FORMAT_VERSION = 2  # 2: per-module precision in file names, maps stored centred on a float32 offset
CALIBRATION_QUANTILE = 0.99  # auto: the share of a module's features whose bf16 error must be within calibration_rtol




@dataclass(frozen=True)
class ExtractOptions:
    """How the forward pass computes.

    ``precision``: ``fp32`` (the default, on every device) computes exactly. ``bf16`` runs the pass
    under bf16 autocast: about 3 significant digits, which erases deep features of a trained network
    (their spread is 1e-5 to 1e-7 of their mean; tests/test_activations_precision.py shows probe
    accuracies collapsing). ``auto`` proves bf16 per module on each checkpoint: on a device that
    computes bf16 natively (``devices.native_bf16``: a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute
    capability 8.0+) the first ``calibration_images`` images go through the probed modules in fp32 and
    under bf16 autocast; a module keeps bf16 only if, for its pooled and its full-map features alike,
    the ``CALIBRATION_QUANTILE`` (99th percentile) over features of the centred relative error
    ``||bf16_j - fp32_j|| / ||fp32_j - mean_j(fp32)||`` (over the calibration images) is at most
    ``calibration_rtol`` (see ``calibrate``). Other modules run in fp32, in a second pass: auto costs the
    calibration plus, where modules fall back, an fp32 pass to the deepest of them, so on a trained
    network (deep modules fail) it is slower than fp32. Elsewhere ``auto`` is fp32 with no calibration.
    The precision each module ran in is in the cache (``CheckpointActivations.precision_of``).

    Folding BatchNorm into the convolutions and the channels_last layout change activations by
    float32 rounding only.
    """

    batch_size: int = 32
    precision: str = "fp32"
    channels_last: bool = True
    fold_batchnorm: bool = True
    calibration_images: int = 64
    calibration_rtol: float = 0.1

    def __post_init__(self) -> None:
        if self.precision not in FORWARD_PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of {', '.join(FORWARD_PRECISIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.calibration_images < 2:
            raise ValueError(f"calibration_images must be at least 2 (features are centred over them), "
                             f"got {self.calibration_images}")
        if not self.calibration_rtol > 0:
            raise ValueError(f"calibration_rtol must be positive, got {self.calibration_rtol}")

    def resolve(self, device: str | torch.device, native_bf16: bool | None = None) -> ExtractOptions:
        """These options with ``auto`` replaced by ``fp32`` where ``device`` has no native bf16; ``auto``
        stays (calibrated per module) where it has. ``native_bf16`` overrides ``devices.native_bf16(device)``."""
        if self.precision != "auto":
            return self
        if native_bf16 is None:
            from clipprobe.core.devices import native_bf16 as device_bf16

            native_bf16 = device_bf16(device)
        return self if native_bf16 else dataclasses.replace(self, precision="fp32")

    def key(self) -> str:
        """The part of the cache folder's key that changes values (not the batch size, nor the precision:
        each module's files carry the precision they were computed in)."""
        return f"v{FORMAT_VERSION}{'-cl' if self.channels_last else ''}{'-fold' if self.fold_batchnorm else ''}"

    def calibration_key(self) -> str:
        """What an ``auto`` decision depends on besides the weights and images."""
        return f"{self.calibration_images}img-q{CALIBRATION_QUANTILE:g}-rtol{self.calibration_rtol:g}"


