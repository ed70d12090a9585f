"""Metrics per class, on label maps. Definitions are in docs/metrics.md.

Voxel metrics (Dice, IoU, TP/FP/FN voxels) are here; surface metrics (HD95, NSD, in mm) in
``surface.py``; lesion-wise metrics (components matched by overlap) in ``lesions.py``.

Empty cases: when a class is absent from both reference and prediction, Dice and IoU are
NaN (undefined) and left out of means, as in nnU-Net; TP/FP/FN are still reported (all 0).
A class absent from the reference but predicted gets Dice 0, and vice versa.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autoseg.labels import Regions, class_mask
from autoseg.postprocess.lesions import lesion_metrics
from autoseg.postprocess.surface import DEFAULT_NSD_TOLERANCE_MM, surface_metrics


def confusion(ref: np.ndarray, pred: np.ndarray, label: int) -> tuple[int, int, int]:
    """(TP, FP, FN) voxel counts of ``label``."""
    r, p = ref == label, pred == label
    tp = int(np.count_nonzero(r & p))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """``2 TP / (2 TP + FP + FN)``; NaN when the class is in neither mask."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else math.nan


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    denom = tp + fp + fn
    return tp / denom if denom else math.nan


def class_metrics(ref: np.ndarray, pred: np.ndarray, label: int) -> dict[str, float]:
    """Voxel metrics of ``label``: dice, iou, tp, fp, fn, n_ref, n_pred."""
    return _voxel_metrics(ref == label, pred == label)


def _voxel_metrics(r: np.ndarray, p: np.ndarray) -> dict[str, float]:
    n_ref, n_pred = int(np.count_nonzero(r)), int(np.count_nonzero(p))
    tp = int(np.count_nonzero(r & p)) if n_ref and n_pred else 0
    fp, fn = n_pred - tp, n_ref - tp
    return {"dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn),
            "tp": tp, "fp": fp, "fn": fn, "n_ref": tp + fn, "n_pred": tp + fp}


def presence(ref_has: bool, pred_has: bool) -> str:
    """Case-level presence outcome of a class: "tp", "fp", "fn" or "tn"."""
    return ("t" if ref_has == pred_has else "f") + ("p" if pred_has else "n")


def case_metrics(ref: np.ndarray, pred: np.ndarray, labels: list[int], spacing: Sequence[float] | None = None,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, surface: bool = True,
                 lesions: bool = True, ignore_label: int | None = None,
                 regions: Regions | None = None) -> dict[int, dict[str, float]]:
    """Metrics of each class in ``labels`` for one case; where ``ref`` holds ``ignore_label``
    (unannotated voxels), the prediction is not scored: it counts as background there. With
    ``regions`` (``autoseg.labels``), ``labels`` name regions by their written values and each is
    scored on its mask (every voxel holding one of its values) in reference and prediction.

    ``ref``/``pred``: label maps of the same shape; ``spacing``: mm per voxel in array order
    (default 1 mm). Per class: the voxel metrics of ``class_metrics``, ``presence``, and unless
    switched off the lesion-wise metrics (``lesions.lesion_metrics``) and HD95/NSD
    (``surface.surface_metrics``). Selection switches the surface metrics off (they are slow and
    not used there).
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    voxel_mm3 = float(np.prod(spacing)) if spacing is not None else 1.0
    out = {}
    known = None if ignore_label is None else ref != ignore_label
    for label in labels:
        r, p = class_mask(ref, label, regions), class_mask(pred, label, regions)
        if known is not None:
            p &= known
        m = _voxel_metrics(r, p)
        m["presence"] = presence(m["n_ref"] > 0, m["n_pred"] > 0)
        if lesions:
            m.update(lesion_metrics(r, p, voxel_mm3))
        if surface:
            m.update(surface_metrics(r, p, spacing, nsd_tolerance_mm))
        out[label] = m
    return out


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
