"""``autoseg train CONFIG FOLD -d DATASET``: the CLI handler."""
from __future__ import annotations

import argparse
import dataclasses
import logging

from autoseg.errors import UserFacingError
from autoseg.paths import Workspace

log = logging.getLogger(__name__)


def cli_train(args: argparse.Namespace) -> int:
    from autoseg.training.train_config import resolve_train_config
    from autoseg.device import pick_device
    from autoseg.training.trainer import fold_directory, run_validation, train_fold

    if args.fold != "all" and not (args.fold.isdigit() and 0 <= int(args.fold) <= 4):
        raise UserFacingError(f"fold must be 0-4 or 'all', found '{args.fold}'")
    if args.time_budget:
        raise UserFacingError("--time-budget is not supported yet; set num_epochs / num_iterations_per_epoch with --set")
    ws = Workspace.resolve(args.root)
    variant = args.variant or "default"
    cfg = resolve_train_config(variant, args.overrides)
    if args.num_workers is not None:
        cfg = dataclasses.replace(cfg, num_workers=args.num_workers)
    if args.validate_only:
        from autoseg.training.splits import get_split

        name = ws.dataset_name(args.dataset)
        fold_dir = fold_directory(ws, name, args.configuration, args.fold, variant)
        _, val_ids = get_split(ws.preprocessed / name, args.fold)
        run_validation(fold_dir, ws, name, val_ids, pick_device(args.device), cfg)
        return 0
    try:
        train_fold(ws, args.dataset, args.configuration, args.fold, cfg, variant, args.device, args.resume)
    except KeyboardInterrupt:
        return 130
    return 0
