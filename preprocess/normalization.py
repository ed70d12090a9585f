"""Intensity normalisation schemes, one per channel, chosen by the planner.

- ``ct``: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the
  dataset's foreground mean and std (CT values are absolute, so dataset statistics apply).
- ``zscore``: per image; with ``use_mask`` the statistics come from the nonzero region only
  and everything outside it is set to 0.
- ``noNorm``: unchanged. ``rescale_to_0_1``: per image min-max. ``rgb_to_0_1``: divide by 255.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autoseg.plans import IntensityProperties
from autoseg.registry import Registry

Normalizer = Callable[[np.ndarray, np.ndarray | None, IntensityProperties], np.ndarray]
NORMALIZERS: Registry[Normalizer] = Registry("normalization")


@NORMALIZERS.register("ct")
def normalize_ct(x: np.ndarray, mask: np.ndarray | None, props: IntensityProperties) -> np.ndarray:
    x = np.clip(x, props.percentile_00_5, props.percentile_99_5)
    return (x - props.mean) / max(props.std, 1e-8)


@NORMALIZERS.register("zscore")
def normalize_zscore(x: np.ndarray, mask: np.ndarray | None, props: IntensityProperties) -> np.ndarray:
    if mask is None:
        return (x - x.mean()) / max(float(x.std()), 1e-8)
    values = x[mask]
    out = np.zeros_like(x)
    if values.size:
        out[mask] = (values - values.mean()) / max(float(values.std()), 1e-8)
    return out


@NORMALIZERS.register("noNorm")
def normalize_none(x: np.ndarray, mask: np.ndarray | None, props: IntensityProperties) -> np.ndarray:
    return x


@NORMALIZERS.register("rescale_to_0_1")
def normalize_rescale(x: np.ndarray, mask: np.ndarray | None, props: IntensityProperties) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-8)


@NORMALIZERS.register("rgb_to_0_1")
def normalize_rgb(x: np.ndarray, mask: np.ndarray | None, props: IntensityProperties) -> np.ndarray:
    return x / 255.0


def normalize(image: np.ndarray, schemes: tuple[str, ...], use_mask: tuple[bool, ...],
              props: tuple[IntensityProperties, ...], mask: np.ndarray) -> np.ndarray:
    """Normalise each channel of ``image`` (C, ...) in float32; ``mask`` is the nonzero region."""
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        fn = NORMALIZERS.get(schemes[c])
        out[c] = fn(image[c].astype(np.float32, copy=False), mask if use_mask[c] else None, props[c])
    return out
