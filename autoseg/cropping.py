"""Cropping to the nonzero region (the part of the image that holds data).

In the core because two stages use it: the fingerprint measures shapes after this crop, and
preprocessing applies it (``preprocess/preprocessor.py``).
"""
from __future__ import annotations

import numpy as np

Box = tuple[tuple[int, int], ...]


def nonzero_bbox(image: np.ndarray) -> Box:
    """Bounding box ((lo, hi) per spatial axis, hi exclusive) of voxels nonzero in any channel.

    ``image`` is (C, Z, Y, X). An all-zero image gives the full extent. Example: a 1x4x4x4
    image whose only nonzero voxel is at (1, 2, 3) gives ((1, 2), (2, 3), (3, 4)).
    """
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other)) if mask.any() else np.array([])
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[axis]))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the spatial axes (all but the first) of ``array`` to ``box``."""
    return array[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)]


def uncrop(array: np.ndarray, box: Box, shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """Place ``array`` (C, *cropped) back into a (C, *shape) array filled with ``fill``."""
    out = np.full((array.shape[0],) + tuple(shape), fill, dtype=array.dtype)
    out[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)] = array
    return out
