"""One hooked forward pass that stops after the deepest probed module."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from clipprobe.activations.options import ExtractOptions
from clipprobe.backbones.architectures import probe_module

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module, keep: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm2d that directly follows a Conv2d in an
    ``nn.Sequential`` folded into that convolution and replaced by Identity. Block outputs change
    by float32 rounding only; modules named in ``keep`` (probed paths) stay as they are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    keep = set(keep)
    for path, seq in folded.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = [n for n, _ in seq.named_children()]
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            full = f"{path}.{b}" if path else b
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and full not in keep and f"{path}.{a}".lstrip(".") not in keep):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded


class _StopForward(Exception):
    """Raised by the last hook to fire: layers after the deepest probed module are never computed."""


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """fp32 means fp32 on a GPU too: cuDNN convolutions default to TF32 on compute capability 8.0+ (a 10-bit
    mantissa, as lossy as bf16 for deep features far from zero); switched off for the block, then restored."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def forward_activations(
    model: nn.Module,
    modules: Mapping[str, str],
    pixels: np.ndarray | torch.Tensor,
    sink: Callable[[str, int, torch.Tensor], None],
    *,
    options: ExtractOptions = ExtractOptions(),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> None:
    """One forward pass over ``pixels`` in batches; ``sink(module_path, first_row, output)`` per module
    and batch, ``output`` as the module computed it (bf16 under bf16 autocast, in its memory format).
    ``options.precision`` must be fp32 or bf16 (``auto`` is decided per module by ``ActivationCache.get``).
    Hooks on every module path in ``modules.values()``; the pass stops once all fired."""
    device = torch.device(device)
    if options.precision not in ("fp32", "bf16"):
        raise ValueError(f"forward_activations runs fp32 or bf16, got {options.precision!r}: "
                         "auto is decided per module by ActivationCache.get")
    targets = list(dict.fromkeys(modules.values()))
    missing = [p for p in targets if probe_module(model, p) is None]
    if missing:
        raise ValueError(f"unknown module {missing[0]!r}: not a path of model.named_modules() nor logits")
    captured: dict[str, torch.Tensor] = {}

    def make_hook(path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {path!r} returns {type(output).__name__}, expected a tensor")
            captured[path] = output
            if len(captured) == len(targets):
                raise _StopForward
        return hook

    model.eval()
    if options.fold_batchnorm:
        model = fold_batchnorm(model, keep=targets)
    elif options.channels_last:
        model = copy.deepcopy(model)  # the caller's model keeps its layout
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    handles = [probe_module(model, p).register_forward_hook(make_hook(p)) for p in targets]
    n = len(pixels)
    bf16 = options.precision == "bf16"
    try:
        with torch.inference_mode(), ieee_fp32(device):
            for start in tqdm(range(0, n, options.batch_size), desc="forward", unit="batch",
                              disable=not progress):
                batch = torch.from_numpy(np.array(pixels[start:start + options.batch_size], dtype=np.float32)).to(device)
                if options.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                captured.clear()
                try:
                    # autocast the model only: the sink computes in the dtypes it asks for
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        model(batch)
                except _StopForward:
                    pass
                if len(captured) != len(targets):
                    lost = [p for p in targets if p not in captured]
                    raise RuntimeError(f"modules {lost} never ran in the forward pass: probe other modules")
                for path in targets:
                    sink(path, start, captured[path])
    finally:
        for h in handles:
            h.remove()


def pooled(output: torch.Tensor) -> torch.Tensor:
    """A module output's pooled vectors ``(batch, channels)``: the mean over positions of a map ``(batch,
    channels, height, width)``; an output without positions (``logits``: ``(batch, classes)``) is itself."""
    if output.ndim == 2:
        return output
    if output.ndim != 4:
        raise ValueError(f"module output of shape {tuple(output.shape)}: expected (batch, channels, height, width) "
                         "or (batch, features)")
    return output.mean((2, 3))


def map_offset(first: torch.Tensor) -> torch.Tensor:
    """The per-feature offset full maps are stored against, from the first batch ``(batch, ...)``, float32.

    A feature's mean over the batch where it lies farther from zero than the batch's spread (std), else 0:
    bf16 rounding then costs 2^-9 of a value's distance from its offset, so a feature at 1e4 times its
    spread keeps its variation, and one near zero (a ReLU's exact zeros) keeps its own bits.
    """
    mean = first.mean(0, keepdim=True)
    spread = first.std(0, keepdim=True, correction=0) if len(first) > 1 else torch.zeros_like(mean)
    return torch.where(mean.abs() > spread, mean, torch.zeros_like(mean))


