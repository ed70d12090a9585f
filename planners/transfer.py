"""``autoseg transfer_plans --source-dataset A --target-dataset B``: plan B with A's plans.

B gets A's configurations (spacing, patch, batch, network, normalisation schemes) and A's
intensity statistics (a CT window is applied as A's network saw it), with B's own name, channels,
labels and file ending from B's fingerprint; so a model of B can start from A's weights (``autoseg
train ... -d B --pretrained A's fold``, training/pretrained.py) with every layer but the heads
matching. Small classes are B's business: none are carried over. A's timing record
(throughput.json: precision and step times on this kind of CPU) is copied, since the networks are
A's. Then ``autoseg preprocess -d B`` (not plan_and_preprocess, which would plan B anew).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.paths import Workspace

log = logging.getLogger(__name__)


def transfer_plans(ws: Workspace, source: str, target: str, num_processes: int | None = None):
    """Write target's plans.json from source's plans and target's fingerprint (computed if missing or
    outdated); return the new plans."""
    from autoseg.fingerprint import cli_fingerprint
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.plans import load_plans, save_plans

    source, target = ws.dataset_name(source), ws.dataset_name(target)
    if source == target:
        raise UserFacingError(f"--source-dataset and --target-dataset are both {source}; name two datasets")
    source_plans_path = ws.preprocessed / source / "plans.json"
    if not source_plans_path.is_file():
        raise UserFacingError(f"{source} has no plans ({source_plans_path}); run autoseg plan_and_preprocess -d "
                              f"{source} first")
    plans = load_plans(source_plans_path)
    cli_fingerprint(argparse.Namespace(root=str(ws.root), dataset=target, num_processes=num_processes, clean=False))
    fp = load_fingerprint(ws.preprocessed / target / "fingerprint.json")
    if len(fp.channel_names) != len(plans.channel_names):
        raise UserFacingError(f"{source} has {len(plans.channel_names)} channel(s) {list(plans.channel_names)}, "
                              f"{target} has {len(fp.channel_names)} {list(fp.channel_names)}: a network of one "
                              "cannot read the other's images; transfer between datasets with the same channels")
    if fp.is_2d != ("3d_fullres" not in plans.configurations):
        raise UserFacingError(f"{source} and {target} differ in dimension (one 2D, one 3D); transfer between "
                              "datasets of the same kind")
    spacings = np.array([c.spacing for c in fp.cases], float)
    new = dataclasses.replace(
        plans, dataset_name=fp.dataset_name, channel_names=fp.channel_names, labels=dict(fp.labels),
        regions_class_order=fp.regions_class_order, file_ending=fp.file_ending,
        original_median_spacing=tuple(float(v) for v in np.median(spacings, 0)),
        original_median_shape=tuple(int(v) for v in np.median([c.shape for c in fp.cases], 0)),
        configurations={k: dataclasses.replace(c, small_classes=()) for k, c in plans.configurations.items()})
    save_plans(new, ws.preprocessed / target / "plans.json")
    timings = ws.preprocessed / source / "throughput.json"
    if timings.is_file():
        shutil.copyfile(timings, ws.preprocessed / target / "throughput.json")
    if list(fp.channel_names) != list(plans.channel_names):
        log.warning("the channels are named differently (%s: %s, %s: %s); they are taken in order",
                    source, list(plans.channel_names), target, list(fp.channel_names))
    log.info("wrote %s with the plans of %s (%s); now run: autoseg preprocess -d %s", ws.preprocessed / target /
             "plans.json", source, ", ".join(new.configurations), target)
    return new


def cli_transfer_plans(args: argparse.Namespace) -> int:
    transfer_plans(Workspace.resolve(args.root), args.source_dataset, args.target_dataset, args.num_processes)
    return 0
