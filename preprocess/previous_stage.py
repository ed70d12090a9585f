"""The cascade's extra inputs: a previous stage's segmentation on this configuration's grid.

``3d_cascade_fullres`` sees the image channels plus one channel per foreground label of the
``3d_lowres`` segmentation. That segmentation, in the original image geometry (as the lowres
stage writes it: validation files at training time, its prediction at predict time), goes
through exactly what a training label goes through in ``preprocess_case``: the case's crop
box, then ``resample_seg`` to the preprocessed shape. The same function serves training and
prediction, so the network sees the same kind of mask in both.

Example: a case of original shape (200, 256, 256) cropped to ((10, 190), (0, 256), (0, 256))
at 1 mm, planned at 1.25 mm: the lowres mask (200, 256, 256) is cropped to (180, 256, 256)
and resampled to (144, 205, 205), the shape of the case's preprocessed image.
"""
from __future__ import annotations

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.labels import all_values
from autoseg.plans import Plans
from autoseg.cropping import crop
from autoseg.preprocess.resampling import resample_seg
from autoseg.preprocess.storage import CaseProperties


def previous_stage_labels(plans: Plans) -> list[int]:
    """Foreground labels, in increasing order: one extra input channel each."""
    return list(plans.foreground_labels)


def num_input_channels(plans: Plans, configuration: str) -> int:
    """Image channels, plus one per foreground label when ``configuration`` is a cascade stage."""
    extra = len(previous_stage_labels(plans)) if plans.configuration(configuration).previous_stage else 0
    return len(plans.channel_names) + extra


def previous_stage_to_grid(segmentation: np.ndarray, properties: CaseProperties, plans: Plans,
                           configuration: str) -> np.ndarray:
    """A label map (Z, Y, X) in the original geometry -> (1, z, y, x) int8 on the preprocessed grid.

    ``properties`` are the case's from ``preprocess_case`` for ``configuration`` (crop box,
    shapes and spacings); the result has shape ``(1,) + properties.shape_after_resample``.
    """
    from autoseg.preprocess.preprocessor import _separate_axis

    seg = np.asarray(segmentation)
    expected = tuple(properties.geometry["shape"])
    if seg.shape != expected:
        raise UserFacingError(f"previous-stage segmentation of case '{properties.case_id}' has shape {seg.shape}, "
                              f"the image has {expected}; it must come from the same image (re-run the "
                              f"{plans.configuration(configuration).previous_stage} validation or prediction)")
    cfg = plans.configuration(configuration)
    cropped = crop(seg[None], properties.crop_bbox)
    sep = _separate_axis(plans, configuration, properties.spacing_after_crop, properties.spacing_after_resample)
    out = resample_seg(cropped, tuple(properties.shape_after_resample), list(all_values(plans.labels)),
                       cfg.resample_order_seg, sep)
    return out.astype(np.int8)


def one_hot(seg: np.ndarray, labels: list[int], axis: int = 0) -> np.ndarray:
    """Label map with a size-1 channel axis ``axis`` -> float32 with ``len(labels)`` channels there.

    ``one_hot(np.array([[0, 2, 1]]), [1, 2])`` is ``[[0, 0, 1], [0, 1, 0]]``.
    """
    return np.concatenate([(seg == lab) for lab in labels], axis=axis).astype(np.float32)
