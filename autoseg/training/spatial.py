"""Rotation and scaling of training patches with linear interpolation, in torch.

``LinearSpatialTransform`` does what batchgenerators' ``SpatialTransform`` does with
``order_data=1, order_seg=1``, no elastic deformation and the patch taken from the centre of the
larger sampled one (``random_crop=False``), and draws its random numbers from numpy's global
generator in the same order, so the same seed gives the same rotations and scales. It is built
for a CPU that trains the network on the same cores: batchgenerators interpolates with
``scipy.ndimage.map_coordinates``, one single-threaded call per image channel and one per label
of the segmentation; here the
image channels and the labels' indicator channels go through one ``torch.nn.functional.grid_sample``
call, which uses torch's threads (docs/experiments/cpu_augmentation.md).

Per sample (``p_rotation``, ``p_scaling`` as in ``AugmentationConfig``): with the rotation drawn,
angles uniform in the three ranges (one, ``angle_x``, in 2D); with the scaling drawn, one factor
for all axes, below 1 or above 1 with probability 1/2 each. Output voxel ``o`` (zero-centred
``c = o - (patch - 1) / 2``) reads the sampled patch at ``scale * (c^T R) + (sampled - 1) / 2``.
A sample that draws neither is a plain centre crop (no interpolation).

Where they differ from batchgenerators (both only at places training rarely sees): points within
one voxel outside the sampled patch are interpolated towards 0 (``grid_sample``'s zero padding)
where ``map_coordinates``' constant mode returns 0 as soon as a point leaves the patch, and a tie
between two labels' indicators (exactly 0.5 each) keeps the lower label instead of the nearest
neighbour's. Points wholly outside get segmentation -1, as batchgenerators' ``border_cval_seg``.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """The matrix R with which zero-centred coordinates (as rows) are rotated: ``coords @ R``.

    3D: ``angles`` (about axis 0, 1, 2), R = Rx @ Ry @ Rz; 2D: one angle.
    ``rotation_matrix([math.pi / 2]) == [[0, -1], [1, 0]]``: the row (1, 0) goes to (0, -1)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def centre_crop(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The centred ``size`` window of the trailing axes of ``array`` (batchgenerators' centre crop:
    lower corner ``(shape - size) // 2``)."""
    lead = array.ndim - len(size)
    index = [slice(None)] * lead
    for n, s in zip(array.shape[lead:], size):
        lo = (n - s) // 2
        index.append(slice(lo, lo + s))
    return array[tuple(index)]


@functools.lru_cache(maxsize=8)
def _centred(patch: tuple[int, ...]) -> torch.Tensor:
    """Zero-centred coordinates of every voxel of ``patch``, (voxels, dim) float32: ``o - (patch - 1) / 2``."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(patch))


def reach(patch: Sequence[int], sampled: Sequence[int], matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower (inclusive) and upper (exclusive) corner of the part of the sampled patch that the
    linear interpolation of ``patch`` through ``matrix`` reads: the box around the mapped corners
    of the patch, one voxel beyond, inside ``[0, sampled)``.

    ``reach((4,), (10,), [[1.0]])``: points 3 .. 6, read from voxels 3 .. 6 -> ``([3], [7])``."""
    half_patch = (np.asarray(patch, float) - 1) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half_patch]))) @ np.asarray(matrix, float)
    corners += (np.asarray(sampled, float) - 1) / 2
    size = np.asarray(sampled)
    lo = np.clip(np.floor(corners.min(0) + 1e-6).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(corners.max(0) - 1e-6).astype(int) + 1, lo + 1, size)
    return lo, hi


def sample_grid(patch: Sequence[int], sampled: Sequence[int], matrix: np.ndarray, lo: Sequence[int],
                hi: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` points (voxels, dim) float32, ``align_corners=True``, last axis first as
    ``grid_sample`` expects: output voxel ``o`` (centred: ``c``) reads the sampled patch at
    ``c @ matrix + (sampled - 1) / 2``, given relative to its window ``lo:hi`` (``reach``), so ``-1``
    and ``1`` are the window's first and last voxel."""
    lo = np.asarray(lo)
    n = np.asarray(hi) - lo
    factor = np.where(n > 1, 2.0 / np.maximum(n - 1, 1), 0.0)
    offset = ((np.asarray(sampled, float) - 1) / 2 - lo) * factor - 1
    # columns reversed: the last axis first
    weights = torch.from_numpy(np.ascontiguousarray((np.asarray(matrix, float) * factor[None, :])[:, ::-1], np.float32))
    return torch.addmm(torch.from_numpy(np.ascontiguousarray(offset[::-1], np.float32)), _centred(tuple(int(p) for p in patch)), weights)


def indicators(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels of one segmentation channel (ascending) and their indicator arrays (labels, *shape)
    float32. Labels are small integers here; any other value falls back to ``np.unique``."""
    as_int = seg.astype(np.int64)
    low = int(as_int.min())
    labels = (np.flatnonzero(np.bincount((as_int - low).ravel())) + low).astype(seg.dtype)
    onehot = seg[None] == labels.reshape((-1,) + (1,) * seg.ndim)
    if onehot.sum() != seg.size:  # values that are not integers
        labels = np.unique(seg)
        onehot = seg[None] == labels.reshape((-1,) + (1,) * seg.ndim)
    return labels, onehot.astype(np.float32)


def resample(data: np.ndarray, seg: np.ndarray | None, patch: Sequence[int],
             matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One sample's image (C, *sampled) and segmentation (S, *sampled) read through ``matrix``
    (``sample_grid``) into ``patch``: the image linearly, each segmentation channel by the largest
    linearly interpolated indicator of its labels (-1 where none reaches: wholly outside).

    Only the window the points reach is read (``reach``), and all channels and indicators go
    through one ``grid_sample`` call, its points split into one batch entry per torch thread
    (torch's 3D ``grid_sample`` on a CPU runs the batch entries in parallel, not the points)."""
    sampled = data.shape[1:]
    lo, hi = reach(patch, sampled, matrix)
    window = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
    channels = [np.ascontiguousarray(data[window], np.float32)]
    label_sets = []
    for s in ([] if seg is None else seg[window]):
        labels, onehot = indicators(s)
        label_sets.append(labels)
        channels.append(onehot)
    stacked = torch.from_numpy(np.concatenate(channels))
    points = sample_grid(patch, sampled, matrix, lo, hi)
    voxels, dim = points.shape
    parts = max(1, min(torch.get_num_threads(), 8))
    points = torch.cat([points, points[:(-voxels) % parts]]).reshape(parts, -1, *([1] * (dim - 1)), dim)
    out = F.grid_sample(stacked.expand(parts, *stacked.shape), points, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    out = out.movedim(1, 0).reshape(len(stacked), -1)[:, :voxels].reshape(len(stacked), *patch)
    image = out[:data.shape[0]].numpy()
    if seg is None:
        return image, None
    result = np.empty((len(label_sets), *patch), np.float32)
    start = data.shape[0]
    for k, labels in enumerate(label_sets):
        best, index = out[start:start + len(labels)].max(dim=0)
        result[k] = labels.astype(np.float32)[index.numpy()]
        result[k][best.numpy() <= 0] = -1
        start += len(labels)
    return image, result


class LinearSpatialTransform:
    """Random rotation/scaling with linear interpolation (module docstring); a batchgenerators
    transform: ``t(data=(B, C, *sampled) float32, seg=(B, 1, *sampled))`` returns the dict with
    both cut to ``patch_size``."""

    def __init__(self, patch_size: Sequence[int], angle_ranges: Sequence[tuple[float, float]],
                 scale_range: tuple[float, float], p_rotation: float, p_scaling: float):
        if len(angle_ranges) != (1 if len(patch_size) == 2 else 3):
            raise ValueError(f"{len(patch_size)}D patches take {1 if len(patch_size) == 2 else 3} angle ranges, "
                             f"found {len(angle_ranges)}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.angle_ranges = [tuple(r) for r in angle_ranges]
        self.scale_range = tuple(scale_range)
        self.p_rotation, self.p_scaling = p_rotation, p_scaling

    def draw(self) -> np.ndarray | None:
        """One sample's matrix (rotation times scale), or None for a plain crop; draws from
        ``np.random`` in batchgenerators' ``augment_spatial`` order."""
        matrix = None
        if self.p_rotation > 0 and np.random.uniform() < self.p_rotation:
            angles = []
            for lo, hi in self.angle_ranges:
                np.random.uniform()  # batchgenerators' per-axis draw (p_rot_per_axis = 1: always rotates)
                angles.append(np.random.uniform(lo, hi))
            matrix = rotation_matrix(angles)
        if self.p_scaling > 0 and np.random.uniform() < self.p_scaling:
            lo, hi = self.scale_range
            scale = np.random.uniform(lo, 1) if np.random.random() < 0.5 and lo < 1 else np.random.uniform(max(lo, 1), hi)
            matrix = (np.eye(len(self.patch_size)) if matrix is None else matrix) * scale
        return matrix

    def __call__(self, **batch):
        data, seg = batch["data"], batch.get("seg")
        out_data = np.empty(data.shape[:2] + self.patch_size, np.float32)
        out_seg = None if seg is None else np.empty(seg.shape[:2] + self.patch_size, np.float32)
        for sample in range(data.shape[0]):
            matrix = self.draw()
            if matrix is None:
                out_data[sample] = centre_crop(data[sample], self.patch_size)
                if seg is not None:
                    out_seg[sample] = centre_crop(seg[sample], self.patch_size)
                continue
            image, labels = resample(data[sample], None if seg is None else seg[sample], self.patch_size, matrix)
            out_data[sample] = image
            if seg is not None:
                out_seg[sample] = labels
        batch["data"] = out_data
        if seg is not None:
            batch["seg"] = out_seg
        return batch
