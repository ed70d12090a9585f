"""Choosing the torch device (``auto`` prefers CUDA, then Apple's MPS, then the CPU) and the
precision a run computes in.

torch is imported inside the functions, so the command line and ``TrainConfig`` can check a
precision name (``PRECISIONS``) without importing it."""
from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING, Literal, get_args

from autoseg.errors import UserFacingError

if TYPE_CHECKING:
    import torch


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one (``taskset``, a
    Slurm job's cores, a container's cpuset), else every CPU of the machine. ``os.cpu_count()``
    counts the machine's CPUs, so two runs pinned to one core each would each start two threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def pool_size(requested: int | None, tasks: int) -> int:
    """Worker processes for ``tasks`` independent jobs: ``requested`` (``-np``), else one per usable
    CPU, never more than the jobs and never fewer than one."""
    return max(1, min(requested or usable_cpus(), tasks))


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


Precision = Literal["auto", "fp32", "bf16", "fp16"]  # the type of TrainConfig.runtime.precision
PRECISIONS: tuple[str, ...] = get_args(Precision)
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


def cpu_identity() -> str:
    """This CPU as the OS names it, to tell whether timings were taken on the same kind of CPU:
    Linux's ``/proc/cpuinfo`` model name (e.g. "AMD EPYC 9R14 96-Core Processor"), else
    ``platform.processor()``; "" where neither says."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor().strip()


MemoryFormat = Literal["auto", "contiguous", "channels_last"]  # the type of TrainConfig.runtime.memory_format
MEMORY_FORMATS: tuple[str, ...] = get_args(MemoryFormat)


def torch_memory_format(memory_format: str, dim: int) -> torch.memory_format:
    """The torch layout of a resolved ``memory_format`` for a ``dim``-D network (2: NCHW / NHWC
    tensors, 3: NCDHW / NDHWC): ``contiguous`` or ``channels_last``."""
    import torch

    if memory_format == "contiguous":
        return torch.contiguous_format
    if memory_format == "channels_last":
        return torch.channels_last_3d if dim == 3 else torch.channels_last
    raise ValueError(f"memory_format must be 'contiguous' or 'channels_last', found {memory_format!r}")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _cpu_flag(name: str) -> bool | None:
    """A CPU feature as torch reports it (``torch.cpu._is_amx_tile_supported`` etc.; private API,
    present since torch 2.1 on x86), or None where torch cannot say."""
    import torch

    probe = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(probe()) if probe is not None else None
    except RuntimeError:
        return None


def bf16_verdict(amx: bool | None, avx512_bf16: bool | None) -> bool | None:
    """The one rule, from a CPU's flags, for whether it computes faster in bf16 than in fp32: True
    with AMX tiles (oneDNN's bf16 convolutions run on them at several times the fp32 rate); False
    with neither AMX nor AVX512-BF16 (bf16 would be emulated, and slower); None where only a timing
    probe can tell (AVX512-BF16 without AMX, or flags unknown: None for a flag nobody could read)."""
    if amx:
        return True
    if amx is False and avx512_bf16 is False:
        return False
    return None


def torch_bf16_flags() -> tuple[bool | None, bool | None]:
    """(AMX tiles, AVX512-BF16) as torch reports them; imports torch."""
    return _cpu_flag("_is_amx_tile_supported"), _cpu_flag("_is_avx512_bf16_supported")


def cpuinfo_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool | None, bool | None]:
    """(AMX tiles, AVX512-BF16) from the kernel's CPU flags, without importing torch (for the ONNX
    backend); (None, None) where they cannot be read (not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "amx_tile" in flags, "avx512_bf16" in flags
    except OSError:
        pass
    return None, None


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether this CPU runs bf16 convolutions clearly faster than fp32 (answered once per process).

    ``bf16_verdict`` of torch's flags; where it cannot tell (AVX512-BF16 without AMX, or a CPU torch
    cannot describe), a timing probe (``_bf16_speedup``, ~0.4 s) must show ``BF16_MIN_SPEEDUP``.
    The flags come first because the probe's few milliseconds of work
    are noisy: on this project's AMX machine single probes ranged 1.3x-2.0x, and one that ran as
    another process finished read below 1.3x and trained a whole fold in fp32, 3x slower."""
    verdict = bf16_verdict(*torch_bf16_flags())
    if verdict is not None:
        return verdict
    try:
        return _bf16_speedup() >= BF16_MIN_SPEEDUP
    except RuntimeError:  # no bf16 kernels for this CPU
        return False


def _bf16_speedup(rounds: int = 5) -> float:
    """fp32 time / bf16-autocast time of a 3D convolution's forward and backward (32 channels,
    24^3 voxels, batch 2), medians over ``rounds`` interleaved timings after one untimed call each."""
    import torch

    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, 3, padding=1)
    x = torch.randn(2, 32, 24, 24, 24, generator=generator, requires_grad=True)

    def seconds(dtype: torch.dtype | None) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = conv(x)
        out.float().sum().backward()
        return time.perf_counter() - started

    seconds(None), seconds(torch.bfloat16)
    fp32, bf16 = [], []
    for _ in range(rounds):
        fp32.append(seconds(None))
        bf16.append(seconds(torch.bfloat16))
    return sorted(fp32)[rounds // 2] / sorted(bf16)[rounds // 2]


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
