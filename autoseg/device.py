"""Choosing the torch device (``auto`` prefers CUDA, then Apple's MPS, then the CPU) and the
precision a run computes in.

torch is imported inside the functions, so the command line and ``TrainConfig`` can check a
precision name (``PRECISIONS``) without importing it."""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from autoseg.errors import UserFacingError

if TYPE_CHECKING:
    import torch


def pick_device(name: str | None) -> torch.device:
    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserFacingError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserFacingError("--device mps asked for, but MPS is not available; use --device cpu")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_MIN_SPEEDUP = 1.3


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic a run uses: ``fp32``, ``bf16`` (autocast, no loss scaling) or ``fp16``
    (autocast with a gradient scaler; CUDA only).

    ``auto``: fp16 on CUDA (as nnU-Net), bf16 on a CPU where it is measurably faster than fp32
    (``cpu_bf16_is_faster``: CPUs with AMX or AVX512-BF16 run bf16 convolutions 2x or more faster;
    elsewhere bf16 is emulated and slower), else fp32.
    """
    if precision not in PRECISIONS:
        raise UserFacingError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UserFacingError(f"precision fp16 needs a CUDA device, found {device.type}; use bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_is_faster():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether a 3D convolution (forward and backward, 16 channels, 20^3 voxels) runs at least
    ``BF16_MIN_SPEEDUP`` times faster under bf16 autocast than in fp32 on this CPU (best of 3
    timings each, about 0.3 s in all; measured once per process)."""
    import torch

    def best_seconds(dtype: torch.dtype | None) -> float:
        generator = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv3d(16, 16, 3, padding=1)
        x = torch.randn(2, 16, 20, 20, 20, generator=generator, requires_grad=True)
        best = float("inf")
        for k in range(4):  # the first call sets up kernels and is not timed
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = conv(x)
            out.float().sum().backward()
            if k:
                best = min(best, time.perf_counter() - started)
        return best

    try:
        return best_seconds(None) >= BF16_MIN_SPEEDUP * best_seconds(torch.bfloat16)
    except RuntimeError:  # no bf16 kernels for this CPU
        return False


def with_autocast(net, precision: str, device: torch.device):
    """``net`` as a callable that runs under autocast for a resolved ``precision`` (``net`` itself for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return net

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return net(x)

    return run
