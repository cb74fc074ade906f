"""Pick a torch device from the user's word ("auto", "cpu", "cuda"); say what it computes natively."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # what --device takes
DEFAULT_DEVICE = "auto"  # the one default of every step's --device; inner layers take the device as a required argument


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """``auto`` means CUDA when a GPU is visible, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is visible: use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def _cpu_flags() -> set[str] | None:
    """The x86 CPU feature flags Linux reports, or None where /proc/cpuinfo does not list them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CPU with AVX512-BF16 or AMX that oneDNN runs bf16
    kernels on (plain AVX512 only emulates them, slower than fp32), or a CUDA GPU of compute capability 8.0
    or later (older GPUs only emulate bf16)."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        flags = _cpu_flags()
        return flags is None or bool(flags & {"avx512_bf16", "amx_bf16"})
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return False
