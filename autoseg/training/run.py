"""``autoseg train CONFIG FOLD... -d DATASET`` and ``autoseg train_all -d DATASET``: the CLI handlers."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from autoseg.errors import UserFacingError
from autoseg.paths import Workspace

log = logging.getLogger(__name__)

FOLDS = ("0", "1", "2", "3", "4")
# find_best_config compares these; a cascade needs its 3d_lowres folds first
TRAIN_ORDER = ("3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres")


def _check_fold(fold: str) -> str:
    if fold != "all" and not (fold.isdigit() and 0 <= int(fold) <= 4):
        raise UserFacingError(f"fold must be 0-4 or 'all', found '{fold}'")
    return fold


def _resolve(args: argparse.Namespace):
    from autoseg.training.loss import LOSSES
    from autoseg.units import parse_duration
    from autoseg.training.train_config import resolve_train_config

    cfg = resolve_train_config(args.variant or "default", args.overrides)
    LOSSES.get(cfg.loss)  # an unknown name is refused before any fold folder is written
    if args.num_workers is not None:
        cfg = dataclasses.replace(cfg, num_workers=args.num_workers)
    if getattr(args, "pretrained", None):
        from autoseg.training.pretrained import pretrained_checkpoint

        cfg = dataclasses.replace(cfg, pretrained=str(pretrained_checkpoint(args.pretrained).resolve()))
    budget = parse_duration(args.time_budget) if args.time_budget else None
    return cfg, budget


def train_runs(ws: Workspace, dataset: str, runs: list[tuple[str, str]], cfg, total_budget_s: float | None,
               variant: str, device: str | None, resume: bool) -> None:
    """Train ``(configuration, fold)`` runs in order; a total budget is shared among them, a run
    that finishes early leaving its time to the ones after it."""
    from autoseg.training.budget import split_budget
    from autoseg.training.trainer import train_fold

    started = time.perf_counter()
    for k, (configuration, fold) in enumerate(runs):
        run_cfg = cfg
        if total_budget_s:
            share = split_budget(total_budget_s, time.perf_counter() - started, len(runs) - k)
            if share < 1.0:  # the budget is spent: the warm-up and the validation only, never a default schedule
                log.warning("%s fold %s: the time budget is used up; training it for the warm-up only",
                            configuration, fold)
                share = 1.0
            run_cfg = dataclasses.replace(cfg, time_budget_s=share)
            log.info("%s fold %s: %.0f s of the %.0f s budget", configuration, fold, share, total_budget_s)
        train_fold(ws, dataset, configuration, fold, run_cfg, variant, device, resume)


def cli_train(args: argparse.Namespace) -> int:
    from autoseg.device import pick_device
    from autoseg.training.trainer import fold_directory, run_validation

    folds = [_check_fold(f) for f in args.folds]
    if len(set(folds)) != len(folds):
        raise UserFacingError(f"fold given twice: {' '.join(args.folds)}")
    ws = Workspace.resolve(args.root)
    variant = args.variant or "default"
    cfg, budget = _resolve(args)
    if args.validate_only:
        from autoseg.training.splits import get_split

        name = ws.dataset_name(args.dataset)
        for fold in folds:
            fold_dir = fold_directory(ws, name, args.configuration, fold, variant)
            _, val_ids = get_split(ws.preprocessed / name, fold)
            run_validation(fold_dir, ws, name, val_ids, pick_device(args.device), cfg)
        return 0
    try:
        train_runs(ws, args.dataset, [(args.configuration, f) for f in folds], cfg, budget, variant, args.device,
                   args.resume)
    except KeyboardInterrupt:
        return 130
    return 0


def cli_train_all(args: argparse.Namespace) -> int:
    """Every fold of every configuration to compare; finished folds are skipped, interrupted ones resumed."""
    from autoseg.plans import load_plans
    from autoseg.training.trainer import fold_directory

    ws = Workspace.resolve(args.root)
    name = ws.dataset_name(args.dataset)
    plans_path = ws.preprocessed / name / "plans.json"
    if not plans_path.is_file():
        raise UserFacingError(f"{plans_path} not found; run 'autoseg plan_and_preprocess -d {args.dataset}' first")
    planned = load_plans(plans_path).configurations
    wanted = args.configurations or [c for c in TRAIN_ORDER if c in planned]
    missing = [c for c in wanted if c not in planned]
    if missing:
        raise UserFacingError(f"configuration(s) {', '.join(missing)} not planned for {name}; "
                              f"planned: {', '.join(planned)}")
    if "3d_cascade_fullres" in wanted and "3d_lowres" not in wanted:
        wanted = ["3d_lowres"] + wanted
    wanted = sorted(wanted, key=TRAIN_ORDER.index)
    variant = args.variant or "default"
    cfg, budget = _resolve(args)
    runs = []
    for configuration in wanted:
        for fold in FOLDS:
            fold_dir = fold_directory(ws, name, configuration, fold, variant)
            if (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file():
                log.info("%s fold %s is already trained; skipped", configuration, fold)
                continue
            runs.append((configuration, fold))
    print(f"training {len(runs)} fold(s): " + ", ".join(f"{c}/{f}" for c, f in runs) if runs else "nothing to train")
    try:
        train_runs(ws, name, runs, cfg, budget, variant, args.device, resume=True)
    except KeyboardInterrupt:
        return 130
    print(f"next: autoseg find_best_config -d {args.dataset}" + (f" --root {args.root}" if args.root else ""))
    return 0
