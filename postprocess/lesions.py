"""Lesion-wise metrics: connected components of reference and prediction, matched by overlap.

Definitions (docs/metrics.md has them in full, with examples):

- A *lesion* is a connected component of one class's mask, full connectivity (26 neighbours in
  3D, 8 in 2D), the same ``label_components`` the postprocessing in ``components.py`` uses.
- A reference lesion is *detected* when at least one voxel of it is predicted as the class,
  i.e. when some predicted component overlaps it by >= 1 voxel. A predicted component is
  *true* when it overlaps some reference lesion by >= 1 voxel, otherwise a *false positive*.
- Matching is by overlap, not one-to-one. A reference lesion covered by two predicted pieces
  (*split*) is one detected lesion, and both pieces are true; one predicted component covering
  two reference lesions (*merged*) detects both. Splits and merges are counted
  (``split_lesions``, ``merged_lesions``) and show in the per-lesion Dice, not in the counts.
- ``recall = detected / n_ref``, ``precision = true_pred / n_pred``,
  ``F1 = 2 P R / (P + R)``; with no reference and no predicted lesion all three are NaN; with
  lesions on one side only, F1 is 0 (and the side with lesions scores 0).
- Per-lesion Dice of reference lesion ``R_i``: Dice between ``R_i`` and the union of the
  predicted components that overlap it; 0 for a missed lesion. ``lesion_dice`` is the mean
  over the reference lesions (NaN without any).
- ``fp_volume_ml``: total volume of the false-positive components; ``fn_volume_ml``: total
  volume of the missed reference lesions; ml = voxels * voxel volume (mm^3) / 1000.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from autoseg.postprocess.surface import crop_to_union

LESION_COUNT_KEYS = ("n_ref_lesions", "n_pred_lesions", "detected_lesions", "true_pred_lesions")


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a boolean mask, full connectivity (26 neighbours in 3D).

    Returns ``(labels, sizes)``: an int array numbering the components 1..n (0 outside the mask)
    and ``sizes[k]``, the number of voxels of component k (``sizes[0]`` counts the background).
    """
    comp, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    sizes = np.bincount(comp[comp > 0], minlength=n + 1)  # counting only the mask is much faster
    sizes[0] = comp.size - int(sizes.sum())
    return comp, sizes


def detection_scores(n_ref: int, detected: int, n_pred: int, true_pred: int) -> dict[str, float]:
    """Lesion recall, precision and F1 from counts (the same rule per case and summed over cases)."""
    recall = detected / n_ref if n_ref else math.nan
    precision = true_pred / n_pred if n_pred else math.nan
    if not n_ref and not n_pred:
        f1 = math.nan
    elif not n_ref or not n_pred or recall + precision == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"lesion_recall": recall, "lesion_precision": precision, "lesion_f1": f1}


def _overlapping_pairs(ref_ids: np.ndarray, pred_ids: np.ndarray, n_pred: int) -> np.ndarray:
    """Distinct (reference component, predicted component) pairs among co-located voxels, (2, n)."""
    keys = ref_ids.astype(np.int64) * (n_pred + 1) + pred_ids
    if keys.size and int(keys.max()) < 20_000_000:  # counting is linear; sorting millions of keys is not
        keys = np.flatnonzero(np.bincount(keys))
    else:
        keys = np.unique(keys)
    return np.stack([keys // (n_pred + 1), keys % (n_pred + 1)])


def lesion_metrics(ref: np.ndarray, pred: np.ndarray, voxel_volume_mm3: float = 1.0) -> dict[str, float]:
    """Lesion-wise metrics of two boolean masks of one class (module docstring for definitions).

    ``voxel_volume_mm3``: the volume of one voxel in mm^3, for the ml volumes.
    """
    ref, pred = np.asarray(ref, bool), np.asarray(pred, bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    if not ref.any() and not pred.any():
        return {"n_ref_lesions": 0, "n_pred_lesions": 0, "detected_lesions": 0, "true_pred_lesions": 0,
                "split_lesions": 0, "merged_lesions": 0, **detection_scores(0, 0, 0, 0),
                "lesion_dice": math.nan, "fp_volume_ml": 0.0, "fn_volume_ml": 0.0}
    ref, pred = crop_to_union(ref, pred, margin=0)  # components do not change; labelling is faster
    ref_lab, ref_sizes = label_components(ref)
    pred_lab, pred_sizes = label_components(pred)
    n_ref, n_pred = len(ref_sizes) - 1, len(pred_sizes) - 1
    both = ref & pred
    pairs = _overlapping_pairs(ref_lab[both], pred_lab[both], n_pred)  # (2, overlapping pairs)
    links_per_ref = np.bincount(pairs[0], minlength=n_ref + 1)[1:]
    links_per_pred = np.bincount(pairs[1], minlength=n_pred + 1)[1:]
    detected, true_pred = links_per_ref > 0, links_per_pred > 0
    # per-lesion Dice: every predicted voxel inside R_i belongs to a component overlapping R_i
    inside = np.bincount(ref_lab[both], minlength=n_ref + 1)[1:]
    union_size = np.bincount(pairs[0], weights=pred_sizes[pairs[1]], minlength=n_ref + 1)[1:]
    per_lesion = 2 * inside / (ref_sizes[1:] + union_size) if n_ref else np.zeros(0)
    ml = voxel_volume_mm3 / 1000.0
    return {"n_ref_lesions": n_ref, "n_pred_lesions": n_pred,
            "detected_lesions": int(detected.sum()), "true_pred_lesions": int(true_pred.sum()),
            "split_lesions": int((links_per_ref >= 2).sum()), "merged_lesions": int((links_per_pred >= 2).sum()),
            **detection_scores(n_ref, int(detected.sum()), n_pred, int(true_pred.sum())),
            "lesion_dice": float(per_lesion.mean()) if n_ref else math.nan,
            "fp_volume_ml": float(pred_sizes[1:][~true_pred].sum() * ml),
            "fn_volume_ml": float(ref_sizes[1:][~detected].sum() * ml)}
