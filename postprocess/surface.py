"""Surface metrics per class, in mm: HD95 and normalised surface Dice (NSD). See docs/metrics.md.

The surface of a mask is the set of its voxels with at least one face neighbour (6 in 3D, 4 in
2D) outside the mask; the image border counts as outside. Distances are Euclidean, in mm,
between voxel centres, from each surface voxel of one mask to the nearest surface voxel of the
other (exact nearest neighbours with a k-d tree on the surface voxels' coordinates in mm, so
the cost follows the surface area, not the image volume: scattered small lesions in a large
image stay cheap).

- ``HD95 = max(P95(d(S_pred -> S_ref)), P95(d(S_ref -> S_pred)))``, P95 the 95th percentile
  (numpy's linear interpolation) of the directed distances.
- ``NSD(tau) = (#{p in S_pred : d(p, S_ref) <= tau} + #{r in S_ref : d(r, S_pred) <= tau})
  / (|S_pred| + |S_ref|)``: the fraction of both surfaces within ``tau`` mm of the other,
  each surface voxel counting once (distances compared with 1e-6 mm of slack for rounding).

Empty cases: both masks empty -> HD95 and NSD are NaN (undefined, left out of means, like
Dice). Exactly one empty -> NSD 0 and HD95 = the image diagonal, the largest distance between
two voxel centres of the image, ``sqrt(sum(((n_i - 1) * s_i)^2))`` mm.

Axes of length 1 (2D images stored as one slice) are dropped before anything is computed, so
their spacing plays no part.

Worked example (tests/test_surface_metrics.py): a 4x4x4 cube and the same cube shifted by one
voxel along z, spacing (z, y, x) = (2, 1, 1) mm. Each surface has 56 voxels; 36 of them lie on
the other surface, 4 are 1 mm from it (the entering face's interior, 1 mm sideways from the
other cube's faces) and 16 are 2 mm away. HD95 = 2 mm; NSD(1 mm) = (40 + 40) / 112 = 5/7.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_NSD_TOLERANCE_MM = 1.0


def _squeeze(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop axes of length 1 and their spacing."""
    keep = [i for i, n in enumerate(mask.shape) if n > 1]
    if len(keep) == mask.ndim:
        return mask, tuple(float(s) for s in spacing)
    return mask.reshape([mask.shape[i] for i in keep]), tuple(float(spacing[i]) for i in keep)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest distance between two voxel centres of an image of ``shape`` and ``spacing`` (mm)."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the image border counts as outside)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)
    inner = mask.copy()
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for shift in (slice(0, -2), slice(2, None)):
            neighbour = list(centre)
            neighbour[axis] = shift
            inner &= padded[tuple(neighbour)]
    return mask & ~inner


def crop_to_union(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks (not both empty) cut to the bounding box of their union, plus ``margin`` voxels
    where the image allows.

    Exact for the distances here with ``margin=1``: every surface voxel lies in the box, and the
    extra voxel keeps the erosion at the box's edge the same as in the whole image.
    """
    union = a | b
    lo, hi = [], []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo.append(max(int(idx[0]) - margin, 0))
        hi.append(min(int(idx[-1]) + 1 + margin, union.shape[axis]))
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    return a[box], b[box]


def directed_surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(d(S_pred -> S_ref), d(S_ref -> S_pred)) in mm, one value per surface voxel; both masks non-empty."""
    from scipy.spatial import cKDTree  # here, not at the top: 0.1 s that predict does not need

    ref, sp = _squeeze(np.asarray(ref, bool), spacing)
    pred, _ = _squeeze(np.asarray(pred, bool), spacing)
    ref, pred = crop_to_union(ref, pred)
    scale = np.asarray(sp, float)
    pts_ref = np.argwhere(surface(ref)) * scale
    pts_pred = np.argwhere(surface(pred)) * scale
    to_ref, _ = cKDTree(pts_ref).query(pts_pred)
    to_pred, _ = cKDTree(pts_pred).query(pts_ref)
    return np.asarray(to_ref, float), np.asarray(to_pred, float)


def surface_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None,
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """HD95 (mm) and NSD at ``nsd_tolerance_mm`` of two boolean masks of the same shape.

    ``spacing`` is in mm in array order (default 1 mm on every axis). Returns ``{"hd95": ...,
    "nsd": ...}`` with the empty cases of the module docstring.
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ref.ndim
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {ref.ndim}D mask")
    if nsd_tolerance_mm < 0:
        raise ValueError(f"NSD tolerance must be >= 0 mm, got {nsd_tolerance_mm}")
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return {"hd95": math.nan, "nsd": math.nan}
    if not has_ref or not has_pred:
        return {"hd95": image_diagonal_mm(*_shape_spacing(ref.shape, spacing)), "nsd": 0.0}
    d_pred, d_ref = directed_surface_distances(ref, pred, spacing)
    hd95 = max(float(np.percentile(d_pred, 95)), float(np.percentile(d_ref, 95)))
    tol = nsd_tolerance_mm + 1e-6  # slack for rounding in the distance transform
    within = int(np.count_nonzero(d_pred <= tol)) + int(np.count_nonzero(d_ref <= tol))
    return {"hd95": hd95, "nsd": within / (d_pred.size + d_ref.size)}


def _shape_spacing(shape: Sequence[int], spacing: Sequence[float]) -> tuple[list[int], list[float]]:
    keep = [i for i, n in enumerate(shape) if n > 1]
    return [shape[i] for i in keep], [float(spacing[i]) for i in keep]
