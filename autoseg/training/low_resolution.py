"""Simulated low resolution (nnU-Net's augmentation) as small matrix products along each axis.

batchgenerators' ``SimulateLowResolutionTransform`` shrinks a channel by a random factor with
nearest-neighbour sampling and enlarges it back with cubic splines (``skimage.transform.resize``,
that is ``scipy.ndimage.zoom`` with ``grid_mode=True`` and edge extension), then clips to the
shrunken image's range. Both resizes are linear and act on each axis separately, so each is one
small matrix per axis, applied as a matrix product along that axis. The matrices are built once per
(size, new size, order) by resizing the columns of an identity matrix with the same scipy call, so
the result is batchgenerators' to rounding (float64 throughout), while the work drops from a spline
prefilter and a cubic interpolation of every voxel in scipy (about 10 ms per batch of the
Hippocampus cpu plan on the AVX2 machine) to six small matrix products.

``LowResolutionTransform`` draws from numpy's global generator in the order batchgenerators does
(per sample: applied with ``p_per_sample``; per channel: with ``p_per_channel``, then its zoom
factor), so the same seed gives the same batches.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=512)
def resize_matrix(size: int, out: int, order: int) -> np.ndarray:
    """(out, size) float64: one axis of ``size`` voxels resized to ``out`` with spline ``order``, as
    ``skimage.transform.resize(mode="edge", anti_aliasing=False)`` does it (``scipy.ndimage.zoom``,
    ``grid_mode=True``), built by resizing the columns of the identity.
    ``resize_matrix(4, 2, 0)`` keeps voxels 1 and 3: ``[[0, 1, 0, 0], [0, 0, 0, 1]]``."""
    eye = np.eye(size)
    return np.stack([ndimage.zoom(col, out / size, order=order, mode="nearest", grid_mode=True) for col in eye], axis=1)


def apply_per_axis(array: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
    """``array`` with ``matrices[d]`` applied along axis ``d`` (None: left alone)."""
    for axis, m in enumerate(matrices):
        if m is not None:
            array = np.moveaxis(np.tensordot(m, array, axes=([1], [axis])), 0, axis)
    return array


def simulate_low_resolution(channel: np.ndarray, shrunk: Sequence[int], order_down: int = 0,
                            order_up: int = 3) -> np.ndarray:
    """One channel (spatial axes only) shrunk to ``shrunk`` voxels with spline ``order_down``,
    enlarged back with ``order_up`` and clipped to the shrunken image's range; float64."""
    shape = channel.shape
    small = apply_per_axis(np.asarray(channel, np.float64),
                           [None if n == t else resize_matrix(n, int(t), order_down) for n, t in zip(shape, shrunk)])
    out = apply_per_axis(small, [None if n == t else resize_matrix(int(t), n, order_up) for n, t in zip(shape, shrunk)])
    return np.clip(out, small.min(), small.max())


class LowResolutionTransform:
    """batchgenerators' ``SimulateLowResolutionTransform(zoom_range, per_channel=True, p_per_channel,
    order_downsample, order_upsample, p_per_sample, ignore_axes)`` (module docstring); a transform
    on ``data`` (B, C, *spatial) float32."""

    def __init__(self, zoom_range: tuple[float, float], p_per_channel: float, order_downsample: int,
                 order_upsample: int, p_per_sample: float, ignore_axes: Sequence[int] | None = None):
        self.zoom_range = tuple(zoom_range)
        self.p_per_channel, self.p_per_sample = p_per_channel, p_per_sample
        self.order_downsample, self.order_upsample = order_downsample, order_upsample
        self.ignore_axes = tuple(ignore_axes or ())

    def __call__(self, **batch):
        data = batch["data"]
        for b in range(len(data)):
            if not np.random.uniform() < self.p_per_sample:
                continue
            shape = np.array(data.shape[2:])
            for c in range(data.shape[1]):
                if not np.random.uniform() < self.p_per_channel:
                    continue
                lo, hi = self.zoom_range
                zoom = lo if lo == hi else np.random.uniform(lo, hi)
                shrunk = np.round(shape * zoom).astype(int)
                for axis in self.ignore_axes:
                    shrunk[axis] = shape[axis]
                data[b, c] = simulate_low_resolution(data[b, c], tuple(shrunk), self.order_downsample,
                                                     self.order_upsample)
        return batch
