"""The dataset fingerprint: what the planner needs to know about a raw dataset.

Written to ``preprocessed/<dataset>/fingerprint.json`` by ``autoseg fingerprint``.
Shapes and spacings are in array order (z, y, x); see :mod:`autoseg.imageio`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoseg.labels import LabelValue
from autoseg.plans import IntensityProperties
from autoseg.serialization import load_json_as, save_json

FINGERPRINT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    shape: tuple[int, ...]  # (z, y, x) before cropping
    spacing: tuple[float, ...]  # (z, y, x) in mm
    shape_after_crop: tuple[int, ...]  # after cropping to the nonzero region
    # per foreground class value (as str key for JSON): voxel count and component sizes (voxels)
    class_voxels: dict[str, int]
    class_component_sizes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ClassFingerprint:
    """Summary of one foreground class over the dataset."""

    label: int
    name: str
    presence_fraction: float  # fraction of cases containing the class
    mean_voxel_fraction: float  # mean over cases of (class voxels / case voxels)
    num_components_median: float  # over cases that contain the class
    component_volume_mm3_median: float  # over all components of all cases
    component_volume_mm3_p10: float
    component_volume_mm3_p90: float


@dataclass(frozen=True)
class Fingerprint:
    schema_version: int
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, LabelValue]  # as dataset.json gives them (a region: its values)
    file_ending: str
    is_2d: bool  # natural 2D images (png/tif/bmp) or 2D medical images
    cases: tuple[CaseFingerprint, ...]
    intensity: tuple[IntensityProperties, ...]  # per channel, over foreground voxels
    classes: tuple[ClassFingerprint, ...]
    crop_reduction_median: float  # median over cases of cropped volume / original volume
    source_signature: str = ""  # hash of the raw files it was computed from (up-to-date check)
    regions_class_order: Optional[tuple[int, ...]] = None  # region-based labels (dataset.json's)


def save_fingerprint(fp: Fingerprint, path: str | Path) -> None:
    save_json(fp, path)


def load_fingerprint(path: str | Path) -> Fingerprint:
    return load_json_as(Fingerprint, path)
