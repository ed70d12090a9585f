"""One case through preprocessing, and a prediction back to the original geometry.

``preprocess_case`` is the only preprocessing code: training data and images to predict go
through it alike. Order: crop to the nonzero region -> normalise -> resample to the
configuration's spacing. ``export_to_original`` inverts the geometry: resample the class
probabilities to the cropped shape, take the argmax, and undo the crop.
"""
from __future__ import annotations

import numpy as np

from autoseg.imageio import ImageGeometry
from autoseg.labels import all_values, probabilities_to_labels
from autoseg.plans import Plans
from autoseg.cropping import crop, nonzero_bbox
from autoseg.preprocess.normalization import normalize
from autoseg.preprocess.resampling import (
    coarse_axis,
    compute_new_shape,
    resample_data,
    resample_probabilities,
    resample_seg,
)
from autoseg.preprocess.storage import CaseProperties


def configuration_spacing(plans: Plans, configuration: str, case_spacing: tuple[float, ...]) -> tuple[float, ...]:
    """Target spacing for a case: the plan's, except that 2D keeps the case's slice spacing."""
    cfg = plans.configuration(configuration)
    if cfg.network.dim == 2:
        return (float(case_spacing[0]),) + tuple(cfg.spacing[1:])
    return tuple(cfg.spacing)


def _separate_axis(plans: Plans, configuration: str, spacing, new_spacing) -> int | None:
    cfg = plans.configuration(configuration)
    if cfg.network.dim == 2:
        return 0  # in-plane only; the slice axis keeps its size
    return coarse_axis(tuple(spacing), tuple(new_spacing), cfg.anisotropy_threshold)


def preprocess_case(image: np.ndarray, geometry: ImageGeometry, plans: Plans, configuration: str,
                    seg: np.ndarray | None = None, case_id: str = "") -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Preprocess ``image`` (C, Z, Y, X) and optionally its label map ``seg`` (1, Z, Y, X).

    Returns float32 data, int8 seg (or None) at the configuration's spacing, and the
    properties needed to map a prediction back.
    """
    cfg = plans.configuration(configuration)
    box = nonzero_bbox(image)
    image_c = crop(image, box)
    mask = np.any(image_c != 0, axis=0)
    data = normalize(image_c, cfg.normalization, cfg.use_mask_for_norm, plans.intensity_properties, mask)
    spacing = tuple(float(s) for s in geometry.spacing)
    new_spacing = configuration_spacing(plans, configuration, spacing)
    new_shape = compute_new_shape(data.shape[1:], spacing, new_spacing)
    sep = _separate_axis(plans, configuration, spacing, new_spacing)
    data = resample_data(data, new_shape, cfg.resample_order_data, sep)
    seg_out = None
    if seg is not None:
        seg_c = crop(seg, box)
        seg_out = resample_seg(seg_c, new_shape, list(all_values(plans.labels)), cfg.resample_order_seg, sep)
        seg_out = seg_out.astype(np.int8)
    props = CaseProperties(
        case_id=case_id,
        geometry=geometry.to_json(),
        crop_bbox=box,
        shape_after_crop=tuple(int(s) for s in image_c.shape[1:]),
        spacing_after_crop=spacing,
        shape_after_resample=tuple(int(s) for s in new_shape),
        spacing_after_resample=new_spacing,
    )
    return data.astype(np.float32, copy=False), seg_out, props


def export_to_original(probabilities: np.ndarray, properties: CaseProperties, plans: Plans, configuration: str,
                       return_probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Map class probabilities (K, z, y, x) at the preprocessed spacing back to the original image.

    Returns the label map (Z, Y, X) uint8 in the original shape and, if asked, the
    probabilities (K, Z, Y, X) float32 there (outside the crop: background 1 for softmax outputs,
    every region 0 for region outputs). Classes are resampled one at a time, so memory stays near
    one extra class-sized array.
    """
    sep = _separate_axis(plans, configuration, properties.spacing_after_resample, properties.spacing_after_crop)
    probs = resample_probabilities(probabilities, properties.shape_after_crop, sep)
    geometry = ImageGeometry.from_json(properties.geometry)
    region = tuple(slice(lo, hi) for lo, hi in properties.crop_bbox)
    seg = np.zeros(geometry.shape, np.uint8)
    seg[region] = probabilities_to_labels(probs, plans.regions_class_order)
    full = None
    if return_probabilities:
        full = np.zeros((probs.shape[0],) + tuple(geometry.shape), np.float32)
        if plans.regions is None:
            full[0] = 1.0
        full[(slice(None),) + region] = probs
    return seg, full
