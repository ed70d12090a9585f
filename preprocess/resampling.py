"""Resampling images, label maps and probabilities to a new shape.

Voxels are treated as cells (``grid_mode``): a 4-voxel axis resampled to 2 voxels averages
pairs, as a physical image would. When the data are strongly anisotropic (spacing ratio above
the plan's threshold, typically 3) the coarse axis is resampled separately with order 0
(nearest), and only the in-plane axes with the high order: interpolating across 5 mm slices
with a cubic spline invents structures. ``keep_axis0`` (the 2d configuration) never touches
the slice axis.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def compute_new_shape(shape: tuple[int, ...], spacing: tuple[float, ...],
                      new_spacing: tuple[float, ...]) -> tuple[int, ...]:
    """``round(shape * spacing / new_spacing)`` per axis, at least 1.

    >>> compute_new_shape((10, 20, 30), (3.0, 1.0, 1.0), (1.5, 2.0, 1.0))
    (20, 10, 30)
    """
    return tuple(max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing))


def coarse_axis(spacing: tuple[float, ...], new_spacing: tuple[float, ...], threshold: float) -> int | None:
    """The axis to resample separately (order 0), or None when the data are not anisotropic."""
    for sp in (spacing, new_spacing):
        if max(sp) / min(sp) > threshold:
            return int(np.argmax(sp))
    return None


def _zoom(x: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(shape, x.shape)]
    if all(f == 1 for f in factors):
        return x
    out = ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    assert out.shape == tuple(shape), (out.shape, shape)
    return out


def resample_channel(x: np.ndarray, shape: tuple[int, ...], order: int, separate_axis: int | None) -> np.ndarray:
    """Resample one spatial array ``x`` to ``shape``.

    With ``separate_axis`` the other axes are resampled slice by slice with ``order`` and
    ``separate_axis`` afterwards with nearest neighbour.
    """
    if tuple(x.shape) == tuple(shape):
        return x
    if separate_axis is None:
        return _zoom(x, shape, order)
    moved = np.moveaxis(x, separate_axis, 0)
    inplane = tuple(s for a, s in enumerate(shape) if a != separate_axis)
    slices = np.stack([_zoom(s, inplane, order) for s in moved])
    if slices.shape[0] != shape[separate_axis]:
        slices = _zoom(slices, (shape[separate_axis],) + inplane, 0)
    return np.moveaxis(slices, 0, separate_axis)


def resample_data(data: np.ndarray, shape: tuple[int, ...], order: int = 3,
                  separate_axis: int | None = None) -> np.ndarray:
    """Resample every channel of ``data`` (C, *spatial) to ``shape`` (float32)."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    return np.stack([resample_channel(c.astype(np.float32), shape, order, separate_axis) for c in data])


def resample_seg(seg: np.ndarray, shape: tuple[int, ...], labels: list[int], order: int = 1,
                 separate_axis: int | None = None) -> np.ndarray:
    """Resample a label map (1, *spatial) to ``shape``.

    order 0: nearest neighbour. order >= 1: each class's one-hot mask is interpolated and
    every voxel takes the class whose interpolated mask is largest (smooth, no label bleed).
    """
    if tuple(seg.shape[1:]) == tuple(shape):
        return seg
    s = seg[0]
    if order == 0:
        return resample_channel(s, shape, 0, None)[None].astype(seg.dtype)
    best = np.zeros(shape, np.float32)
    out = np.zeros(shape, seg.dtype)
    for label in labels:
        if label == 0:
            continue
        m = resample_channel((s == label).astype(np.float32), shape, order, separate_axis)
        take = (m >= 0.5) & (m > best)
        out[take] = label
        best = np.maximum(best, m)
    return out[None]


def resample_probabilities(probs: np.ndarray, shape: tuple[int, ...], separate_axis: int | None = None,
                           dtype=np.float32) -> np.ndarray:
    """Resample class probabilities (K, *spatial) to ``shape`` with linear interpolation,
    one class at a time (bounded memory), renormalised to sum to 1."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs.astype(dtype, copy=False)
    out = np.empty((probs.shape[0],) + tuple(shape), dtype)
    for k in range(probs.shape[0]):
        out[k] = resample_channel(probs[k].astype(np.float32), shape, 1, separate_axis)
    total = out.sum(0, dtype=np.float32)
    out /= np.maximum(total, 1e-6)
    return out
