"""From a fingerprint to plans (``autoseg plan``): pure functions plus one CLI handler.

``plan_experiment(fingerprint, profile)`` decides, for each configuration, the target
spacing, patch and batch size, network topology and normalisation. See docs/planning.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from autoseg.fingerprint_types import Fingerprint
from autoseg.imageio import NATURAL_2D_ENDINGS
from autoseg.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, NetworkPlan, Plans
from autoseg.registry import Registry
from autoseg.planners.classes import class_sizes, flag_small_classes
from autoseg.planners.step_probe import CappedStepTimer
from autoseg.planners.throughput import (DEFAULT_FOLD_BUDGET_S, QUIET_PARALLEL_SHARE, adapt_to_throughput,
                                         detect_profile, precisions_to_time, step_cap_seconds)
from autoseg.planners.topology import estimate_memory_bytes, fit_topology
from autoseg.units import parse_duration

log = logging.getLogger(__name__)

ANISOTROPY_RATIO = 3.0
MAX_DATASET_FRACTION_PER_BATCH = 0.05
# a patch keeps the whole of a shallow axis (a stack of at most this many slices at the target
# spacing) while its other axes have more than MIN_SHRUNK_VOXELS to give (axis_to_shrink)
SHALLOW_VOXELS = 16
MIN_SHRUNK_VOXELS = 48
LOWRES_TRIGGER = 0.25  # plan 3d_lowres when the fullres patch covers less than this of the median image
LOWRES_REFERENCE_PROFILE = "gpu-8gb"  # ... and so would the patch of this profile (is_large_image)
LOWRES_TARGET = 0.5  # coarsen the lowres spacing until the patch covers this much


@dataclass(frozen=True)
class DeviceProfile:
    """What the plans are sized for: a memory budget and the network width."""

    name: str
    memory_gb: float
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    max_stages_3d: int = 6
    max_stages_2d: int = 7
    max_patch_voxels_3d: int = 256 ** 3
    # a cap on the 3D batch (None: as many samples as the memory holds, nnU-Net's rule); on a CPU an
    # iteration costs in proportion to the batch, and iterations are what a short budget buys
    max_batch_3d: Optional[int] = None


PROFILES: Registry[DeviceProfile] = Registry("device profile")
PROFILES.add("gpu-8gb", DeviceProfile("gpu-8gb", 8.0))
PROFILES.add("gpu-24gb", DeviceProfile("gpu-24gb", 24.0))
PROFILES.add("gpu-40gb", DeviceProfile("gpu-40gb", 40.0))
# The CPU profile sizes the patch for the narrowest network the width timing considers (8 base
# features) in 0.5 GB: context first, then the widest network that trains enough iterations in the
# budget (planners/throughput.py). Why context first: docs/experiments/cpu_patch_size.md.
PROFILES.add("cpu", DeviceProfile("cpu", 0.5, base_features=8, max_features_3d=80, max_features_2d=128,
                                  max_batch_3d=2))


def target_spacing(spacings: np.ndarray) -> tuple[float, ...]:
    """Median spacing per axis; for strongly anisotropic data the coarse axis uses the
    10th percentile of its spacings (so a few very thick-sliced cases don't coarsen all).

    ``spacings``: (n_cases, n_axes) in mm.
    """
    target = np.median(spacings, 0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    if others and target[coarse] / max(target[others].max(), 1e-8) > ANISOTROPY_RATIO:
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), target[others].max())
    return tuple(float(s) for s in target)


def _median_shape(fp: Fingerprint, spacing: tuple[float, ...], axes: slice = slice(None)) -> tuple[int, ...]:
    shapes = np.array([c.shape_after_crop for c in fp.cases], float)
    sp = np.array([c.spacing for c in fp.cases], float)
    new = shapes * sp / np.array(spacing)
    return tuple(int(round(v)) for v in np.median(new, 0)[axes])


def _dataset_voxels(fp: Fingerprint, spacing: tuple[float, ...], axes: slice = slice(None)) -> float:
    total = 0.0
    for c in fp.cases:
        shape = np.array(c.shape_after_crop, float) * np.array(c.spacing) / np.array(spacing)
        total += float(np.prod(shape))
    return total


def axis_to_shrink(patch: Sequence[int], median_shape: Sequence[int], spacing: Sequence[float]) -> int:
    """The axis a patch that does not fit gives up first: the one reaching furthest in mm (``patch x
    spacing``), ties (within 1%) going to the one covering the largest share of the median image; but
    a shallow axis (a median of at most ``SHALLOW_VOXELS``) that the patch covers whole is kept while
    another axis still has more than ``MIN_SHRUNK_VOXELS``.

    A U-Net's context is physical. Shrinking the axis that is largest relative to the image (nnU-Net's
    rule) takes slices from a shallow stack first: a 10-slice cine MRI at 10 x 1.5 x 1.5 mm starts as
    a 10 x 224 x 256 patch (100 x 336 x 384 mm), and the memory of the cpu profile then leaves 5 of its
    10 slices, so every patch sees half the heart's long axis and the sliding window cuts the stack
    into overlapping tiles. Here the in-plane axes give way and the whole stack stays; an isotropic
    patch shrinks as nnU-Net's does.

    ``axis_to_shrink((10, 224, 256), (10, 215, 235), (10, 1.5, 1.5)) == 2`` (384 mm);
    ``axis_to_shrink((10, 64, 72), (10, 215, 235), (10, 1.5, 1.5)) == 2`` (the stack is kept);
    ``axis_to_shrink((40, 56, 40), (36, 50, 35), (1, 1, 1)) == 1``."""
    extent = np.array(patch, float) * np.array(spacing, float)
    share = np.array(patch, float) / np.maximum(np.array(median_shape, float), 1)
    axes = np.arange(len(patch))
    kept = (np.array(median_shape) <= SHALLOW_VOXELS) & (share >= 1)
    if kept.any() and (~kept & (np.array(patch) > MIN_SHRUNK_VOXELS)).any():
        axes = axes[~kept & (np.array(patch) > MIN_SHRUNK_VOXELS)]
    near = extent[axes] >= extent[axes].max() * 0.99
    return int(axes[np.argmax(np.where(near, share[axes], -np.inf))])


def plan_patch_and_network(median_shape: tuple[int, ...], spacing: tuple[float, ...], profile: DeviceProfile,
                           dataset_voxels: float) -> tuple[tuple[int, ...], NetworkPlan, int]:
    """Largest patch (up to the median shape) whose batch of 2 fits the budget; then the batch.

    ``spacing`` and ``median_shape`` cover the network's axes only (2 for 2D, 3 for 3D).
    """
    dim = len(median_shape)
    max_feat = profile.max_features_3d if dim == 3 else profile.max_features_2d
    max_stages = profile.max_stages_3d if dim == 3 else profile.max_stages_2d
    budget = profile.memory_gb * 1e9
    aspect = 1.0 / np.array(spacing)
    cap_voxels = profile.max_patch_voxels_3d if dim == 3 else 2048 ** 2
    patch = aspect * (cap_voxels / np.prod(aspect)) ** (1.0 / dim)
    patch = np.minimum(patch, median_shape).round().astype(int)
    patch = np.maximum(patch, 4)
    while True:
        rounded, net = fit_topology(tuple(int(p) for p in patch), spacing, profile.base_features, max_feat, max_stages)
        if estimate_memory_bytes(rounded, net, 2) <= budget or np.prod(patch) <= 4 ** dim:
            break
        axis = axis_to_shrink(rounded, median_shape, spacing)
        step = max(1, net.total_stride[axis])
        patch[axis] = max(4, min(patch[axis], rounded[axis] - step))
    per_sample = estimate_memory_bytes(rounded, net, 1) - estimate_memory_bytes(rounded, net, 0)
    fixed = estimate_memory_bytes(rounded, net, 0)
    batch = int((budget - fixed) // max(per_sample, 1.0))
    cap = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / np.prod(rounded))
    batch = max(2, min(batch, cap))
    if dim == 3 and profile.max_batch_3d:
        batch = min(batch, profile.max_batch_3d)
    return rounded, net, batch


def _normalization(fp: Fingerprint) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Scheme and nonzero-mask flag per channel, from the channel names (see docs/planning.md).

    Natural 2D images (PNG/TIFF/BMP, e.g. the R, G, B channels of a photo or an OCT B-scan)
    get a per-image z-score per channel over the whole image, never inside the nonzero mask:
    a black pixel is image content there, not the outside of a body.
    """
    natural_2d = fp.file_ending in NATURAL_2D_ENDINGS
    schemes, masks = [], []
    for name in fp.channel_names:
        low = name.lower()
        if low == "ct":
            scheme = "ct"
        elif low == "nonorm":
            scheme = "noNorm"
        elif low in ("rescale_to_0_1", "rgb_to_0_1"):
            scheme = low
        else:
            scheme = "zscore"
        schemes.append(scheme)
        masks.append(scheme == "zscore" and fp.crop_reduction_median < 0.75 and not natural_2d)
    return tuple(schemes), tuple(masks)


def _configuration(name: str, fp: Fingerprint, spacing: tuple[float, ...], profile: DeviceProfile,
                   dim: int, **extra) -> ConfigurationPlan:
    axes = slice(1, None) if dim == 2 else slice(None)
    median = _median_shape(fp, spacing)
    patch, net, batch = plan_patch_and_network(median[axes], spacing[axes], profile,
                                               _dataset_voxels(fp, spacing))
    schemes, masks = _normalization(fp)
    return ConfigurationPlan(
        name=name, spacing=spacing, patch_size=patch, batch_size=batch, median_shape=median,
        network=net, normalization=schemes, use_mask_for_norm=masks, batch_dice=dim == 2,
        preprocessed_name=extra.pop("preprocessed_name", name),
        small_classes=flag_small_classes(fp, patch, spacing), **extra,
    )


def _coarser(spacing: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """Scale spacing by ``factor``, anisotropy-aware: the fine axes coarsen first, none past the
    coarsest, until all are equal; from there all together. Spacing that is nearly isotropic (under
    2x) scales as a whole.

    ``_coarser((5, 1, 1), 2) == (5, 2, 2)``; ``_coarser((5, 1, 1), 10) == (10, 10, 10)`` (the fine
    axes reach 5 mm at 5x, and the rest scales all three)."""
    sp = np.array(spacing, float)
    if sp.max() / sp.min() < 2:
        return tuple(float(s) for s in sp * factor)
    coarse = sp.max()
    together = coarse * factor / (coarse / sp.min())  # the finest axis' spacing: every axis once past it
    return tuple(float(max(min(s * factor, coarse), together)) for s in sp)


def is_large_image(fp: Fingerprint, spacing: tuple[float, ...], full: ConfigurationPlan) -> bool:
    """Whether the median image is large enough for a low-resolution stage: neither ``full``'s patch
    nor the 3d_fullres patch of the ``LOWRES_REFERENCE_PROFILE`` (nnU-Net's 8 GB GPU plan) covers
    ``LOWRES_TRIGGER`` of it.

    The cpu profile's memory rule gives small patches, which cover little of any but the smallest
    images; a lowres stage (and a cascade to train after it) is only worth its cost where the image
    is large in itself. A 10 x 215 x 235 cine MRI at 10 x 1.5 x 1.5 mm: the cpu patch 10 x 80 x 80
    covers 13%, the 8 GB patch 10 x 224 x 256 all of it, so no lowres stage; a 300 x 512 x 512 CT at
    2.5 x 0.8 x 0.8 mm: 3% with either, so a lowres stage."""
    own = math.prod(full.patch_size) / math.prod(full.median_shape)
    if own >= LOWRES_TRIGGER:
        return False
    reference = _configuration("3d_fullres", fp, spacing, PROFILES.get(LOWRES_REFERENCE_PROFILE), dim=3)
    return math.prod(reference.patch_size) / math.prod(reference.median_shape) < LOWRES_TRIGGER


# nnU-Net's residual-encoder presets: residual blocks per encoder stage, one convolution per decoder stage
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)
NETWORKS = ("plain", "resenc")


def with_residual_encoder(cfg: ConfigurationPlan) -> ConfigurationPlan:
    """``cfg`` with nnU-Net's residual encoder (``RESENC_BLOCKS``) in place of the plain one; patch,
    batch, width and strides unchanged."""
    n = len(cfg.network.features_per_stage)
    blocks = RESENC_BLOCKS[:n] + (RESENC_BLOCKS[-1],) * max(0, n - len(RESENC_BLOCKS))
    return dataclasses.replace(cfg, network=dataclasses.replace(
        cfg.network, encoder="residual", blocks_per_stage=blocks, n_conv_per_stage_decoder=1))


def plan_experiment(fingerprint: Fingerprint, profile: str = "gpu-8gb", force_lowres: bool = False,
                    network: str = "plain") -> Plans:
    """Plans for every configuration that makes sense for ``fingerprint``; ``network`` "resenc":
    every configuration with a residual encoder (``with_residual_encoder``)."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, found {network!r}")
    prof = PROFILES.get(profile)
    spacings = np.array([c.spacing for c in fingerprint.cases], float)
    spacing = target_spacing(spacings)
    configs: dict[str, ConfigurationPlan] = {}
    # 2d: the slice axis keeps the case spacing (never resampled across slices)
    configs["2d"] = _configuration("2d", fingerprint, spacing, prof, dim=2)
    if not fingerprint.is_2d:
        full = _configuration("3d_fullres", fingerprint, spacing, prof, dim=3)
        configs["3d_fullres"] = full
        large = is_large_image(fingerprint, spacing, full)
        if large or force_lowres:
            low = _plan_lowres(fingerprint, spacing, prof, force=not large)
            configs["3d_lowres"] = dataclasses.replace(low, next_stage="3d_cascade_fullres")
            configs["3d_cascade_fullres"] = dataclasses.replace(
                full, name="3d_cascade_fullres", previous_stage="3d_lowres", preprocessed_name="3d_fullres")
    if network == "resenc":
        configs = {k: with_residual_encoder(c) for k, c in configs.items()}
    return Plans(
        schema_version=PLANS_SCHEMA_VERSION,
        dataset_name=fingerprint.dataset_name,
        channel_names=fingerprint.channel_names,
        labels=dict(fingerprint.labels),
        file_ending=fingerprint.file_ending,
        original_median_spacing=tuple(float(v) for v in np.median(spacings, 0)),
        original_median_shape=tuple(int(v) for v in np.median([c.shape for c in fingerprint.cases], 0)),
        intensity_properties=fingerprint.intensity,
        configurations=configs,
        device_profile=prof.name,
        budget_gb=prof.memory_gb,
        regions_class_order=fingerprint.regions_class_order,
    )


def _plan_lowres(fp: Fingerprint, spacing: tuple[float, ...], prof: DeviceProfile, force: bool) -> ConfigurationPlan:
    """Coarsen the spacing in 3% steps until the patch covers ``LOWRES_TARGET`` of the median image.

    When forced on data whose fullres patch already covers the image, halve the resolution.
    """
    if force:
        return _configuration("3d_lowres", fp, _coarser(spacing, 2.0), prof, dim=3)
    factor = 1.0
    while True:
        factor *= 1.03
        low = _configuration("3d_lowres", fp, _coarser(spacing, factor), prof, dim=3)
        if math.prod(low.patch_size) >= LOWRES_TARGET * math.prod(low.median_shape) or factor > 8:
            return low


def cli_plan(args: argparse.Namespace) -> int:
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.paths import Workspace
    from autoseg.plans import save_plans

    ws = Workspace.resolve(args.root)
    folder = ws.preprocessed_dataset(args.dataset)
    fp_path = folder / "fingerprint.json"
    if not fp_path.is_file():
        from autoseg.errors import UserFacingError

        raise UserFacingError(f"{fp_path} not found; run 'autoseg fingerprint -d {args.dataset}' first")
    fingerprint = load_fingerprint(fp_path)
    profile = args.device_profile or detect_profile()
    plans = plan_experiment(fingerprint, profile, args.force_lowres, getattr(args, "network", "plain") or "plain")
    if profile == "cpu":  # width and precision from the speed measured on this machine (planners/throughput.py)
        plans = _time_on_this_cpu(plans, folder, args)
    save_plans(plans, folder / "plans.json")
    for cfg in plans.configurations.values():
        log.info("%-18s spacing %s patch %s batch %d features %s", cfg.name,
                 tuple(round(s, 3) for s in cfg.spacing), cfg.patch_size, cfg.batch_size,
                 cfg.network.features_per_stage)
        for size in class_sizes(fingerprint, cfg.patch_size, cfg.spacing):
            (log.info if size.flagged else log.debug)("%-18s %s", "", size.describe())
    log.info("wrote %s", folder / "plans.json")
    return 0


def _time_on_this_cpu(plans: Plans, folder, args: argparse.Namespace) -> Plans:
    """``plans`` with each configuration's width and precision chosen from steps timed here (in a
    probe process, every step under a cap); the timings go to ``folder/throughput.json``."""
    import time

    from autoseg.device import cpu_identity, usable_cpus
    from autoseg.serialization import save_json

    budget = parse_duration(args.time_budget) if getattr(args, "time_budget", None) else DEFAULT_FOLD_BUDGET_S
    precisions = precisions_to_time()
    timer = CappedStepTimer(len(plans.channel_names), plans.num_classes, step_cap_seconds(budget), usable_cpus())
    started = time.perf_counter()
    try:
        plans, report = adapt_to_throughput(plans, timer, budget, precisions)
    finally:
        timer.close()
    report["cpu"] = cpu_identity()  # training with precision auto on this CPU reuses the choices
    report["timing_s"] = round(time.perf_counter() - started, 2)
    report["contention"] = timer.contention()
    save_json(report, folder / "throughput.json")
    for name, r in report["configurations"].items():
        log.info("%-18s width %d, %s, chosen from measured steps: %s", name, r["chosen_base_features"],
                 r["precision"], ", ".join(f"{c['base_features']}: {c['seconds_per_step']:.2f} s "
                                           f"({c['precision']}, {c['memory_format']})" for c in r["candidates"]))
        for c in r["candidates"]:
            for note in c["abandoned"]:
                log.info("%-18s width %d: %s", "", c["base_features"], note)
    busy = report["contention"]
    if busy.get("busy"):
        log.warning("the machine was busy while the steps were timed: %d threads ran a reference convolution "
                    "only %.1fx faster than one (a quiet machine: about %d x, at least %.1f x expected). The "
                    "timings are pessimistic and the networks may be narrower than this machine affords; "
                    "training re-checks the width against its own first steps. To plan on a quiet machine, stop "
                    "the other work and run plan_and_preprocess again.", busy["threads"], busy["parallel_speedup"],
                    busy["threads"], QUIET_PARALLEL_SHARE * busy["threads"])
    return plans
