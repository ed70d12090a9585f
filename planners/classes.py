"""Which classes are *small or rare*: flagged per configuration, from the fingerprint alone.

A foreground class is flagged for a configuration when either

- **small**: the median volume of its connected components (over all components of all cases,
  from the fingerprint) is far below the configuration's patch: its equivalent edge
  ``volume ** (1/3)`` (mm) is below ``small_edge_ratio(dim)`` times the patch's geometric-mean
  edge in mm, that is, the component's volume (3D) or cross-section (2D: the square of that edge)
  is below ``SMALL_SHARE`` = 0.5% of the patch's volume or area. For natural 2D images component
  sizes are areas and the edge is ``area ** (1/2)``;
- **rare**: it is present in fewer than ``RARE_PRESENCE`` of the training cases (but in at
  least one: a class no case contains cannot be sampled).

Worked example (Hippocampus, 3d_fullres, patch 40 x 56 x 40 at 1 mm = 89,600 mm3, edge 44.8 mm):
posterior hippocampus, median component 1590.5 mm3 (edge 11.7 mm, ratio 0.26 >= 0.171, 1.8% of
the patch) and present in every case: not flagged. The blobs of bench/data/implant_lesions.py, median
32 mm3 (edge 3.2 mm, ratio 0.071, 0.036% of the patch), in a third of the cases: small and rare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoseg.fingerprint_types import ClassFingerprint, Fingerprint
from autoseg.labels import ignore_value, is_region_based

SMALL_SHARE = 0.005  # of the patch's volume (3D) or area (2D)
SMALL_EDGE_RATIO = SMALL_SHARE ** (1 / 3)  # ~0.171: 0.5% of a 3D patch's volume


def small_edge_ratio(dim: int) -> float:
    """Component edge / patch edge below which a class is small: 0.171 in 3D, 0.0707 in 2D (0.5% of
    the patch area; a cine MRI's ventricles, 40 mm across in a 224 x 256 slice of 1.5 mm, are 1.2% of
    it and so not small, where comparing edges at the 3D ratio would flag them)."""
    return SMALL_SHARE ** (1 / dim)
RARE_PRESENCE = 0.5  # present in a minority of the cases


@dataclass(frozen=True)
class ClassSize:
    """How one class compares with one configuration's patch (for the rule and the log)."""

    label: int
    name: str
    edge_mm: float  # equivalent edge of the median component, mm
    patch_edge_mm: float  # geometric-mean edge of the patch, mm
    presence_fraction: float
    small: bool
    rare: bool
    threshold: float = SMALL_EDGE_RATIO  # the edge ratio below which it is small (small_edge_ratio)

    @property
    def flagged(self) -> bool:
        return self.small or self.rare

    def describe(self) -> str:
        ratio = self.edge_mm / self.patch_edge_mm if self.patch_edge_mm else 0.0
        why = [w for w, on in (("small", self.small), ("rare", self.rare)) if on]
        return (f"class {self.label} ({self.name}): median component edge {self.edge_mm:.1f} mm = "
                f"{ratio:.3f} of the patch edge {self.patch_edge_mm:.1f} mm (small below {self.threshold:.3f}), "
                f"present in {100 * self.presence_fraction:.0f}% of cases (rare below {100 * RARE_PRESENCE:.0f}%)"
                f"{' -> ' + ' and '.join(why) if why else ''}")


def _component_edge_mm(cls: ClassFingerprint, fp: Fingerprint) -> float:
    """Equivalent edge (mm) of the class' median component: cube root of its volume, or for
    natural 2D images (whose "volume" is area x the nominal slice spacing) the square root of its area."""
    v = cls.component_volume_mm3_median
    if fp.is_2d:
        slice_mm = float(np.median([c.spacing[0] for c in fp.cases])) if fp.cases else 1.0
        return math.sqrt(max(v, 0.0) / slice_mm)
    return max(v, 0.0) ** (1 / 3)


def patch_edge_mm(patch_size: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Geometric-mean edge of a patch in mm; ``spacing`` covers the patch's axes (its last entries)."""
    axes_spacing = spacing[len(spacing) - len(patch_size):]
    return math.prod(p * s for p, s in zip(patch_size, axes_spacing)) ** (1 / len(patch_size))


def class_sizes(fp: Fingerprint, patch_size: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[ClassSize, ...]:
    """Every foreground class of ``fp`` against a patch of ``patch_size`` voxels at ``spacing`` mm."""
    edge = patch_edge_mm(patch_size, spacing)
    threshold = small_edge_ratio(len(patch_size))
    out = []
    for cls in fp.classes:
        present = cls.presence_fraction > 0
        comp = _component_edge_mm(cls, fp)
        out.append(ClassSize(
            label=cls.label, name=cls.name, edge_mm=comp, patch_edge_mm=edge,
            presence_fraction=cls.presence_fraction,
            small=present and comp < threshold * edge,
            rare=present and cls.presence_fraction < RARE_PRESENCE, threshold=threshold,
        ))
    return tuple(out)


def flag_small_classes(fp: Fingerprint, patch_size: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Labels that are small or rare for a patch of ``patch_size`` at ``spacing`` (sorted); none for a
    sparsely annotated dataset (an ignore label), whose components are cut by where the annotation
    stops (a structure labelled on a few slices looks like many thin small ones), not by anatomy;
    none for region-based labels either (the small-class weights and oversampling act on softmax
    classes; sampling on regions already draws each member value's voxels, the innermost included)."""
    if ignore_value(fp.labels) is not None or is_region_based(fp.labels):
        return ()
    return tuple(c.label for c in class_sizes(fp, patch_size, spacing) if c.flagged)
