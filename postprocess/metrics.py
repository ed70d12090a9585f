"""Voxel metrics per class, on label maps. Definitions are in docs/metrics.md.

Empty cases: when a class is absent from both reference and prediction, Dice and IoU are
NaN (undefined) and left out of means, as in nnU-Net; TP/FP/FN are still reported (all 0).
A class absent from the reference but predicted gets Dice 0, and vice versa.
"""
from __future__ import annotations

import math

import numpy as np


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
    tp, fp, fn = confusion(ref, pred, label)
    return {"dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn),
            "tp": tp, "fp": fp, "fn": fn, "n_ref": tp + fn, "n_pred": tp + fp}


def case_metrics(ref: np.ndarray, pred: np.ndarray, labels: list[int]) -> dict[int, dict[str, float]]:
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    return {label: class_metrics(ref, pred, label) for label in labels}


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
