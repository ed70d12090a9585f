"""Copy-paste of small-class components into training samples (``TrainConfig.small_classes.paste``).

A component of a small class (a lesion) is cut from a training case with a one-voxel shell around
it and pasted into another sample at a random position whose surroundings look like the ones it
was cut from: every voxel under the cut piece has the label that surrounds the component in its own
case (its *host*: background for a blob in the background, the organ for a lesion inside an organ),
and the mean intensity of the first channel on the shell differs from the source shell's by at most
``tolerance`` (in the preprocessed, normalised units). The component's voxels take the source's
values and the class's label; the shell is blended (weight from the component's mask smoothed with a
Gaussian of sigma 0.7 voxel: partial volume), so the piece carries no hard edge. The other labels are
never overwritten: the host label stays outside the component. Where no place in the sample
matches (e.g. a structure with no room of its host in the patch), the batch source draws instead a
patch that holds the component in its own case, as the sampler does, so the class is not shown
less for it.

Why: the sampler (``small_classes.oversample``) shows the network lesions by drawing the cases that
hold them more often, which also shifts how often each case's anatomy is seen (on the implanted
Hippocampus data the anatomy cost fell on the cases without lesions,
docs/experiments/small_class_sampler_cost.md). A pasted
lesion goes into a sample drawn as in plain training, so every case's anatomy keeps its plain share.
Object-level copy-paste is the augmentation used for tumours in this role (TumorCP, Yang et al.,
MICCAI 2021; CarveMix, Zhang et al., MICCAI 2021).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHELL_SIGMA = 0.7


@dataclass(frozen=True)
class Piece:
    """A component cut from a case with a one-voxel shell; arrays over its padded bounding box."""

    cls: int
    data: np.ndarray  # (C, *box) image values
    mask: np.ndarray  # (*box) bool: the component's voxels
    alpha: np.ndarray  # (*box) blend weight: 1 on the component, smoothed mask on the shell, 0 elsewhere
    host: int  # label of most of the shell in the source case
    context: float  # mean of channel 0 on the shell in the source case (nan: no shell inside the image)

    def section(self, k: int) -> "Piece":
        """The piece's 2D section ``k`` along its first spatial axis (for 2D configurations)."""
        return Piece(self.cls, self.data[:, k], self.mask[k], self.alpha[k], self.host, self.context)


def cut_pieces(data: np.ndarray, seg: np.ndarray, cls: int) -> list[Piece]:
    """Every connected component (full connectivity) of ``cls`` in a case, ``data`` (C, *spatial),
    ``seg`` (*spatial). The shell is the component's one-voxel dilation inside the image less the
    component; its host label is the most frequent label on the shell other than ``cls``.

    Example: a 1-voxel lesion of class 3 in the middle of background -> one piece, box 3x3x3, mask
    only the centre, alpha 1 at the centre and ~0.1-0.3 on the 26 neighbours, host 0.
    """
    from scipy import ndimage

    full = np.ones((3,) * seg.ndim, bool)
    labels, _ = ndimage.label(seg == cls, structure=full)
    pieces = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        lo = [max(s.start - 1, 0) for s in box]
        hi = [min(s.stop + 1, n) for s, n in zip(box, seg.shape)]
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask = labels[window] == k
        shell = ndimage.binary_dilation(mask, full) & ~mask
        around = seg[window][shell]
        around = around[around != cls]
        host = int(np.bincount(around.astype(np.int64).clip(0)).argmax()) if around.size else 0
        smooth = ndimage.gaussian_filter(mask.astype(np.float32), SHELL_SIGMA, mode="constant")
        alpha = np.where(mask, 1.0, np.where(shell, smooth, 0.0)).astype(np.float32)
        shell_values = data[(0,) + window][shell]
        context = float(shell_values.mean()) if shell_values.size else float("nan")
        pieces.append(Piece(cls, np.array(data[(slice(None),) + window]), mask, alpha, host, context))
    return pieces


def paste_piece(data: np.ndarray, seg: np.ndarray, piece: Piece, lower: np.ndarray, upper: np.ndarray,
                rng: np.random.Generator, tolerance: float = 1.0, attempts: int = 20) -> bool:
    """Paste ``piece`` into a sample (``data`` (C, *spatial), ``seg`` (*spatial), both changed in
    place) with its whole box inside ``[lower, upper)``, at the first of ``attempts`` uniformly drawn
    positions whose voxels under the piece's shell and component all carry ``piece.host`` and whose
    shell's mean intensity (channel 0) is within ``tolerance`` of ``piece.context``. Returns whether
    it was pasted (False: no such position found; the sample is unchanged)."""
    box = np.array(piece.mask.shape)
    lower, upper = np.asarray(lower, int), np.asarray(upper, int)
    room = upper - lower - box
    if (room < 0).any():
        return False
    footprint = piece.alpha > 0
    shell = footprint & ~piece.mask
    for _ in range(attempts):
        at = lower + np.array([rng.integers(0, r + 1) for r in room])
        window = tuple(slice(a, a + b) for a, b in zip(at, box))
        if not (seg[window][footprint] == piece.host).all():
            continue
        if shell.any() and np.isfinite(piece.context):
            if abs(float(data[(0,) + window][shell].mean()) - piece.context) > tolerance:
                continue
        region = data[(slice(None),) + window]
        region[:] = np.where(footprint, piece.alpha * piece.data + (1 - piece.alpha) * region, region)
        seg[window][piece.mask] = piece.cls
        return True
    return False
