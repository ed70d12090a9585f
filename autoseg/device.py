"""Choosing the torch device: ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import torch

from autoseg.errors import UserFacingError


def pick_device(name: str | None) -> torch.device:
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
