"""Typed, versioned plans: what the planner decided and every later stage obeys.

Axes follow the array convention of :mod:`autoseg.imageio` (z, y, x). A 2D configuration
has 2-entry ``patch_size``/kernels/strides over (y, x) and a 3-entry ``spacing`` whose
first entry is the slice axis' spacing (kept as is: 2D never resamples across slices).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoseg.labels import LabelValue, Regions, foreground_values, ignore_value, num_outputs, regions_of, scored_classes
from autoseg.errors import MissingFileError, UnknownNameError
from autoseg.serialization import SchemaError, load_json_as, save_json

PLANS_SCHEMA_VERSION = 1
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
ENCODERS = ("plain", "residual")
NORMALIZATION_SCHEMES = ("ct", "zscore", "noNorm", "rescale_to_0_1", "rgb_to_0_1")


@dataclass(frozen=True)
class IntensityProperties:
    """Foreground intensity statistics of one channel (from the fingerprint)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class NetworkPlan:
    """A U-Net topology. Stage 0 has stride 1; ``strides[i]`` downsamples into stage i."""

    dim: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: int = 2
    n_conv_per_stage_decoder: int = 2
    # "plain": n_conv_per_stage convolutions per encoder stage; "residual": a residual encoder (nnU-Net's
    # ResEnc), blocks_per_stage residual blocks of two convolutions each (training/network.py)
    encoder: str = "plain"
    blocks_per_stage: tuple[int, ...] = ()

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"network encoder must be one of {ENCODERS}, found {self.encoder!r}")
        if self.encoder == "residual" and (len(self.blocks_per_stage) != len(self.features_per_stage)
                                           or min(self.blocks_per_stage, default=0) < 1):
            raise ValueError(f"a residual encoder needs >= 1 block for each of its {len(self.features_per_stage)} "
                             f"stages, found blocks_per_stage {self.blocks_per_stage}")
        n = len(self.features_per_stage)
        if len(self.kernel_sizes) != n or len(self.strides) != n:
            raise ValueError(
                f"network: {n} stages but {len(self.kernel_sizes)} kernel sizes and {len(self.strides)} strides"
            )
        for k in self.kernel_sizes + self.strides:
            if len(k) != self.dim:
                raise ValueError(f"network: entry {k} does not have dim={self.dim} axes")

    @property
    def total_stride(self) -> tuple[int, ...]:
        out = [1] * self.dim
        for s in self.strides:
            out = [a * b for a, b in zip(out, s)]
        return tuple(out)


@dataclass(frozen=True)
class ConfigurationPlan:
    name: str
    spacing: tuple[float, ...]  # target spacing (z, y, x) in mm
    patch_size: tuple[int, ...]  # 2 (2d) or 3 entries
    batch_size: int
    median_shape: tuple[int, ...]  # median case shape (z, y, x) at the target spacing
    network: NetworkPlan
    normalization: tuple[str, ...]  # scheme per channel
    use_mask_for_norm: tuple[bool, ...]  # per channel: normalise inside the nonzero mask only
    batch_dice: bool
    preprocessed_name: str  # folder under preprocessed/<dataset>/ holding this data
    previous_stage: Optional[str] = None  # cascade: the configuration whose predictions feed this one
    next_stage: Optional[str] = None
    resample_order_data: int = 3
    resample_order_seg: int = 1  # 1: per-class linear interpolation of one-hot maps
    anisotropy_threshold: float = 3.0  # coarse-axis handling above this spacing ratio
    # foreground labels the planner marked small or rare for this patch (planners/classes.py):
    # training oversamples their components and weights them in the loss. Plans written before
    # this field existed load with none.
    small_classes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.name not in CONFIGURATIONS:
            raise ValueError(f"unknown configuration '{self.name}'; expected one of {CONFIGURATIONS}")
        if len(self.patch_size) != self.network.dim:
            raise ValueError(f"patch {self.patch_size} does not match network dim {self.network.dim}")
        for p, s in zip(self.patch_size, self.network.total_stride):
            if p % s:
                raise ValueError(f"patch {self.patch_size} not divisible by total stride {self.network.total_stride}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {self.batch_size}")
        for scheme in self.normalization:
            if scheme not in NORMALIZATION_SCHEMES:
                raise ValueError(f"unknown normalization '{scheme}'; available: {', '.join(NORMALIZATION_SCHEMES)}")
        if len(self.use_mask_for_norm) != len(self.normalization):
            raise ValueError("use_mask_for_norm needs one entry per channel")
        if any(c < 1 for c in self.small_classes) or len(set(self.small_classes)) != len(self.small_classes):
            raise ValueError(f"small_classes must be distinct foreground labels (>= 1), found {self.small_classes}")


@dataclass(frozen=True)
class Plans:
    schema_version: int
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, LabelValue]  # as dataset.json gives them (a region: its values)
    file_ending: str
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[int, ...]
    intensity_properties: tuple[IntensityProperties, ...]  # per channel
    configurations: dict[str, ConfigurationPlan]
    device_profile: str = "gpu-8gb"
    budget_gb: float = 8.0
    regions_class_order: Optional[tuple[int, ...]] = None  # region-based labels (dataset.json's)

    def __post_init__(self):
        if self.schema_version != PLANS_SCHEMA_VERSION:
            raise ValueError(
                f"plans schema_version {self.schema_version} is not supported (expected "
                f"{PLANS_SCHEMA_VERSION}); re-run 'autoseg plan' to regenerate them"
            )
        for key, cfg in self.configurations.items():
            if key != cfg.name:
                raise ValueError(f"configuration stored under '{key}' is named '{cfg.name}'")
            unknown = set(cfg.small_classes) - set(foreground_values(self.labels))
            if unknown:
                raise ValueError(f"configuration '{key}': small_classes {sorted(unknown)} are not labels of the dataset")

    @property
    def num_classes(self) -> int:
        """Number of output channels of the network: background and classes (the ignore label
        not), or one sigmoid output per region."""
        return num_outputs(self.labels)

    @property
    def regions(self) -> Optional[Regions]:
        """Each region's written value and members when the dataset is region-based, else None:
        the network then has sigmoid outputs, one per region (``autoseg.labels``)."""
        return regions_of(self.labels, self.regions_class_order)

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """The label values other than background (not the ignore label; with regions, every
        region member), ascending: what patch sampling and the cascade's input work on."""
        return foreground_values(self.labels)

    @property
    def scored_classes(self) -> tuple[int, ...]:
        """What metrics and postprocessing score, by value: the foreground labels, or each region
        by the value written for it (``autoseg.labels.scored_classes``)."""
        return scored_classes(self.labels, self.regions)

    @property
    def ignore_label(self) -> Optional[int]:
        """The value of the label named ``ignore`` (voxels without annotation), or None."""
        return ignore_value(self.labels)

    @property
    def small_classes(self) -> tuple[int, ...]:
        """Labels marked small/rare in any planned configuration, sorted."""
        return tuple(sorted({c for cfg in self.configurations.values() for c in cfg.small_classes}))

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise UnknownNameError(
                f"configuration '{name}' is not in the plans of {self.dataset_name}; "
                f"planned: {', '.join(self.configurations)}. Use one of those, or plan it (3d_lowres and "
                f"3d_cascade_fullres: autoseg plan_and_preprocess --force-lowres)"
            )
        return self.configurations[name]

    def replace_configuration(self, cfg: ConfigurationPlan) -> "Plans":
        return dataclasses.replace(self, configurations={**self.configurations, cfg.name: cfg})


def save_plans(plans: Plans, path: str | Path) -> None:
    save_json(plans, path)


def load_plans(path: str | Path) -> Plans:
    """The plans in ``path``; a missing file names the command that writes it (a dataset's plans:
    ``autoseg plan_and_preprocess``; a fold's copy: ``autoseg train``)."""
    try:
        return load_json_as(Plans, path)
    except MissingFileError as exc:
        parent = Path(path).parent
        writer = ("autoseg train, which copies them into the fold" if parent.name.startswith("fold_")
                  else f"autoseg plan_and_preprocess -d {parent.name}")
        raise MissingFileError(f"{exc}; the plans are written by {writer}: run it first") from None
    except SchemaError as exc:
        raise SchemaError(f"{exc}\nRe-run 'autoseg plan' to regenerate the plans.") from None
