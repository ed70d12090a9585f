"""Training-time augmentation, built from batchgenerators transforms.

Every probability and range is a field of ``AugmentationConfig`` (defaults as nnU-Net v2),
so a variant changes augmentation with ``--set augmentation.p_rotation=0`` and no code.
Rotation and scaling are applied only to the samples that draw them; the others are plain
crops, which keeps the 2-core CPU case cheap (about two thirds of samples need no
interpolation at the default probabilities).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from autoseg.serialization import check_choices

Backend = Literal["auto", "batchgenerators"]


@dataclass(frozen=True)
class AugmentationConfig:
    enabled: bool = True
    p_rotation: float = 0.2
    rotation_degrees: float = 30.0
    p_scaling: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True  # each axis flipped with probability 0.5 (batchgenerators' MirrorTransform)
    # Spline order of the image in rotation/scaling. None: chosen for the device the network trains
    # on (resolve_order_data): 1 on a CPU, where the augmentation worker shares the cores with the
    # network and order 3 costs twice as much per batch (docs/experiments/cpu_augmentation.md);
    # nnU-Net's 3 elsewhere.
    order_data: Optional[int] = None
    low_resolution_order_upsample: int = 3  # the upsampling back in the low-resolution simulation
    # "auto": rotation/scaling with linear image interpolation and the simulated low resolution run in
    # autoseg's faster versions (autoseg/training/spatial.py, low_resolution.py: the same random draws
    # and the same patches as batchgenerators'); "batchgenerators": its own transforms
    backend: Backend = "auto"
    # Cascade only (3d_cascade_fullres): the previous stage's one-hot mask channels are imperfect
    # at test time, so each sample's are perturbed (autoseg.training.cascade.augment_previous_stage).
    p_previous_stage_morphology: float = 0.4  # per sample: each label's mask dilated/eroded/opened/closed
    previous_stage_radius: tuple[float, float] = (1.0, 8.0)  # ball radius, voxels along the finest axis
    p_previous_stage_remove_component: float = 0.2  # per sample: each label loses one random component
    previous_stage_max_component_fraction: float = 0.15  # only components under this fraction of the patch

    def __post_init__(self):
        check_choices(self, "augmentation.")
        for name, order in (("order_data", 3 if self.order_data is None else self.order_data),
                            ("low_resolution_order_upsample", self.low_resolution_order_upsample)):
            if order not in range(6):
                raise ValueError(f"augmentation.{name} must be a spline order 0-5, found {order!r}")


def resolve_order_data(cfg: AugmentationConfig, device_type: str) -> AugmentationConfig:
    """``cfg`` with ``order_data`` chosen for training on ``device_type`` if it is None (auto)."""
    if cfg.order_data is not None:
        return cfg
    return dataclasses.replace(cfg, order_data=1 if device_type == "cpu" else 3)


def rotation_in_plane_only(patch_size: tuple[int, ...]) -> bool:
    """3D patches much flatter along axis 0 (anisotropic data) rotate in-plane only."""
    return len(patch_size) == 3 and max(patch_size[1:]) / patch_size[0] > 3


def sampling_patch_size(patch_size: tuple[int, ...], cfg: AugmentationConfig) -> tuple[int, ...]:
    """A patch large enough that rotating/scaling then cropping ``patch_size`` needs no padding.

    Rotation by up to ``rotation_degrees`` about any axis grows the bounding box of the patch;
    we take the rotated extent (in-plane only for flat patches) and, if scaling can shrink the
    image, divide by the smallest scale factor.
    """
    if not cfg.enabled or (cfg.p_rotation == 0 and cfg.p_scaling == 0):
        return tuple(patch_size)
    p = np.array(patch_size, float)
    a = math.radians(min(cfg.rotation_degrees, 90)) if cfg.p_rotation > 0 else 0.0
    c, s = abs(math.cos(a)), abs(math.sin(a))
    out = p.copy()
    axes = range(1, len(p)) if (len(p) == 2 or rotation_in_plane_only(patch_size)) else range(len(p))
    axes = list(axes) if len(p) == 3 else [0, 1]
    for i in axes:
        others = [j for j in axes if j != i]
        out[i] = max(out[i], max(p[i] * c + p[j] * s for j in others))
    if cfg.p_scaling > 0:
        out = out / min(1.0, cfg.scale_range[0])
    return tuple(int(math.ceil(v)) for v in np.minimum(out, p * 2.5))


def build_transforms(cfg: AugmentationConfig, patch_size: tuple[int, ...]):
    """A batchgenerators ``Compose`` turning a larger sampled patch into an augmented ``patch_size`` one.

    Input dict: ``data`` (B, C, *sampling_patch_size) float32, ``seg`` (B, 1, ...) int.
    ``cfg.backend`` "auto": two transforms run in autoseg's faster versions, which draw the same random
    numbers and give the same patches: rotation/scaling in torch when the image is interpolated
    linearly (``spatial.LinearSpatialTransform``; other orders in batchgenerators) and the simulated
    low resolution as matrix products (``low_resolution.LowResolutionTransform``);
    "batchgenerators": batchgenerators' own (bench/augmentation.py compares the two).
    """
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    from autoseg.training.low_resolution import LowResolutionTransform
    from autoseg.training.spatial import LinearSpatialTransform

    backend = cfg.backend
    dim = len(patch_size)
    angle = math.radians(cfg.rotation_degrees)
    in_plane = dim == 2 or rotation_in_plane_only(patch_size)
    rot_x = (-angle, angle)
    rot_other = (0.0, 0.0) if in_plane else (-angle, angle)
    order = 3 if cfg.order_data is None else cfg.order_data  # unresolved: nnU-Net's
    if order == 1 and backend == "auto":  # the same transform, interpolated by torch (autoseg/training/spatial.py)
        rotate_scale = LinearSpatialTransform(
            patch_size, [rot_x] if dim == 2 else [rot_x, rot_other, rot_other], cfg.scale_range,
            p_rotation=cfg.p_rotation if cfg.enabled else 0.0, p_scaling=cfg.p_scaling if cfg.enabled else 0.0)
    else:
        rotate_scale = SpatialTransform(
            patch_size, patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=cfg.enabled and cfg.p_rotation > 0, angle_x=rot_x, angle_y=rot_other, angle_z=rot_other,
            do_scale=cfg.enabled and cfg.p_scaling > 0, scale=cfg.scale_range,
            border_mode_data="constant", border_cval_data=0, order_data=order,
            border_mode_seg="constant", border_cval_seg=-1, order_seg=1,
            random_crop=False, p_rot_per_sample=cfg.p_rotation, p_scale_per_sample=cfg.p_scaling,
        )
    transforms = [rotate_scale]
    low_resolution = LowResolutionTransform if backend == "auto" else functools.partial(
        SimulateLowResolutionTransform, per_channel=True)
    if cfg.enabled:
        transforms += [
            GaussianNoiseTransform(cfg.noise_variance, p_per_sample=cfg.p_noise),
            GaussianBlurTransform(cfg.blur_sigma, different_sigma_per_channel=True, p_per_sample=cfg.p_blur,
                                  p_per_channel=cfg.p_blur_per_channel),
            BrightnessMultiplicativeTransform(cfg.brightness_range, p_per_sample=cfg.p_brightness),
            ContrastAugmentationTransform(cfg.contrast_range, p_per_sample=cfg.p_contrast),
            low_resolution(cfg.low_resolution_zoom, p_per_channel=0.5, order_downsample=0,
                           order_upsample=cfg.low_resolution_order_upsample, p_per_sample=cfg.p_low_resolution,
                           ignore_axes=(0,) if in_plane and dim == 3 else None),
            GammaTransform(cfg.gamma_range, invert_image=True, per_channel=True, retain_stats=True,
                           p_per_sample=cfg.p_gamma_inverted),
            GammaTransform(cfg.gamma_range, invert_image=False, per_channel=True, retain_stats=True,
                           p_per_sample=cfg.p_gamma),
        ]
        if cfg.mirror:
            transforms.append(MirrorTransform(tuple(range(dim)), p_per_sample=1))
    return Compose(transforms)
