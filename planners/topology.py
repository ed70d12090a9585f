"""U-Net topology for a patch size and spacing.

Rules (see docs/planning.md):
- an axis is pooled (stride 2) at a stage while its feature map stays at least
  ``MIN_FEATURE_MAP`` voxels after pooling and its current spacing is at most twice the
  finest current spacing (coarse axes of anisotropic data wait until the others catch up);
- kernels are 3 on an axis, except 1 while the axis' current spacing is more than twice the
  finest (giving (1, 3, 3) kernels on the coarse axis of anisotropic data); once 3, always 3;
- features start at ``base_features`` and double per stage up to a cap.

Example: spacing (1, 1, 1) and patch (36, 50, 35) give four stages, strides (1,1,1) then
three times (2,2,2), total stride 8, so the patch is rounded up to (40, 56, 40).
"""
from __future__ import annotations

import math

from autoseg.plans import NetworkPlan

MIN_FEATURE_MAP = 4
ANISO_FACTOR = 2.0


def plan_topology(patch_size: tuple[int, ...], spacing: tuple[float, ...], base_features: int = 32,
                  max_features: int = 320, max_stages: int = 6) -> NetworkPlan:
    """Return the network for ``patch_size`` (not yet divisible) at ``spacing`` (same axes)."""
    dim = len(patch_size)
    size = [float(p) for p in patch_size]
    sp = [float(s) for s in spacing]
    kernel = [3 if s <= ANISO_FACTOR * min(sp) else 1 for s in sp]
    kernels, strides = [tuple(kernel)], [(1,) * dim]
    while len(strides) < max_stages:
        finest = min(sp)
        stride = tuple(
            2 if size[a] / 2 >= MIN_FEATURE_MAP and sp[a] <= ANISO_FACTOR * finest else 1
            for a in range(dim)
        )
        if all(s == 1 for s in stride):
            break
        for a in range(dim):
            if stride[a] == 2:
                size[a] = math.floor(size[a] / 2)
                sp[a] *= 2
        finest = min(sp)
        kernel = [3 if (kernel[a] == 3 or sp[a] <= ANISO_FACTOR * finest) else 1 for a in range(dim)]
        kernels.append(tuple(kernel))
        strides.append(stride)
    features = tuple(min(max_features, base_features * 2 ** i) for i in range(len(strides)))
    return NetworkPlan(dim=dim, features_per_stage=features, kernel_sizes=tuple(kernels), strides=tuple(strides))


def round_up_to_stride(patch_size: tuple[int, ...], total_stride: tuple[int, ...]) -> tuple[int, ...]:
    """Smallest patch >= ``patch_size`` divisible by ``total_stride`` per axis."""
    return tuple(int(math.ceil(p / s) * s) for p, s in zip(patch_size, total_stride))


def fit_topology(patch_size: tuple[int, ...], spacing: tuple[float, ...], base_features: int,
                 max_features: int, max_stages: int) -> tuple[tuple[int, ...], NetworkPlan]:
    """Topology for ``patch_size`` with the patch rounded up to the network's total stride."""
    net = plan_topology(patch_size, spacing, base_features, max_features, max_stages)
    for _ in range(4):  # rounding up can allow one more pooling; settle on a fixed point
        patch = round_up_to_stride(patch_size, net.total_stride)
        again = plan_topology(patch, spacing, base_features, max_features, max_stages)
        if again == net:
            return patch, net
        net = again
    return round_up_to_stride(patch_size, net.total_stride), net


def estimate_memory_bytes(patch_size: tuple[int, ...], net: NetworkPlan, batch_size: int) -> float:
    """A rough training-memory estimate in bytes (activations kept for backward).

    Each stage keeps about ``BYTES_PER_FEATURE_VOXEL`` bytes per voxel and feature for its
    encoder and decoder convolutions, norms, activations, skip and upsampling (mixed
    precision). Calibrated so the default 8 GB profile gives nnU-Net-like 3D plans
    (a 128^3 patch with 32-320 features needs about 2.4 GB per sample).
    """
    total = 0.0
    voxels = float(math.prod(patch_size))
    for feats, stride in zip(net.features_per_stage, net.strides):
        voxels /= math.prod(stride)
        total += voxels * feats
    return BYTES_PER_FEATURE_VOXEL * total * batch_size + PARAMETER_OVERHEAD_BYTES


BYTES_PER_FEATURE_VOXEL = 30.0
PARAMETER_OVERHEAD_BYTES = 0.25e9
