"""``autoseg train CONFIG FOLD... -d DATASET`` and ``autoseg train_all -d DATASET``: the CLI handlers."""
from __future__ import annotations

import argparse
import logging
import sys

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
    from autoseg.units import parse_duration
    from autoseg.training.train_config import resolve_train_config

    cfg = resolve_train_config(args.variant or "default", args.overrides)
    if args.num_workers is not None:
        cfg = cfg.with_(**{"sampling.num_workers": args.num_workers})
    if getattr(args, "pretrained", None):
        from autoseg.training.pretrained import pretrained_checkpoint

        cfg = cfg.with_(pretrained=str(pretrained_checkpoint(args.pretrained).resolve()))
    budget = parse_duration(args.time_budget) if args.time_budget else None
    return cfg, budget


def cli_train(args: argparse.Namespace) -> int:
    from autoseg.device import pick_device
    from autoseg.training import distributed
    from autoseg.training.trainer import fold_directory, run_validation, train_runs

    folds = [_check_fold(f) for f in args.folds]
    if len(set(folds)) != len(folds):
        raise UserFacingError(f"fold given twice: {' '.join(args.folds)}")
    ws = Workspace.resolve(args.root)
    variant = args.variant or "default"
    cfg, budget = _resolve(args)
    ranks = distributed.from_environment()  # under torchrun
    if args.validate_only:
        from autoseg.training.splits import get_split

        if ranks is not None and not ranks.main:  # rank 0 validates
            return 0
        name = ws.dataset_name(args.dataset)
        for fold in folds:
            fold_dir = fold_directory(ws, name, args.configuration, fold, variant)
            _, val_ids = get_split(ws.preprocessed / name, fold)
            run_validation(fold_dir, ws, name, val_ids, pick_device(args.device), cfg)
        return 0
    if ranks is None and args.num_gpus > 1:
        _check_processes(args.num_gpus, pick_device(args.device))
        log.info("training on %d processes (torchrun's agent on this node)", args.num_gpus)
        distributed.launch_local(args.num_gpus, train_rank, args)
        return 0
    try:
        if ranks is not None:
            _train_on_ranks(args, ranks, ws, folds, cfg, budget, variant)
        else:
            train_runs(ws, args.dataset, [(args.configuration, f) for f in folds], cfg, budget, variant,
                       args.device, args.resume)
    except KeyboardInterrupt:
        return 130
    return 0


def _check_processes(num: int, dev) -> None:
    """``--num-gpus N`` on this node: at most one process per GPU; on a CPU, a warning beyond its cores."""
    import torch

    from autoseg.device import usable_cpus

    if dev.type == "cuda" and num > torch.cuda.device_count():
        raise UserFacingError(f"--num-gpus {num} asked for, but torch sees {torch.cuda.device_count()} GPU(s): "
                              f"use at most --num-gpus {torch.cuda.device_count()}")
    if dev.type == "cpu" and num > usable_cpus():
        log.warning("%d processes on %d CPU core(s): each gets one thread, they slow each other down", num,
                    usable_cpus())


def _train_on_ranks(args: argparse.Namespace, ranks, ws: Workspace, folds: list[str], cfg, budget,
                    variant: str) -> None:
    """This process's rank of a run started by torchrun (or ``--num-gpus``): the folds in order,
    each on all the ranks."""
    from autoseg.device import pick_device
    from autoseg.training import distributed
    from autoseg.training.trainer import train_runs

    distributed.configure_rank_logging(ranks, getattr(args, "verbose", False))
    if args.num_gpus > 1 and args.num_gpus != ranks.local_world:
        log.info("--num-gpus %d ignored: torchrun started %d processes on this node", args.num_gpus,
                 ranks.local_world)
    timeout_s = cfg.runtime.collective_timeout_s
    with distributed.process_group(ranks, pick_device(args.device), timeout_s) as (ranks, dev):
        train_runs(ws, args.dataset, [(args.configuration, f) for f in folds], cfg, budget, variant, str(dev),
                   args.resume, ranks)


def train_rank(args: argparse.Namespace) -> None:
    """A process started by ``launch_local`` (``--num-gpus N``): ``autoseg train`` on the rank torchrun's
    agent gave it; a user's error is a message and exit code 2, as in ``autoseg.cli.main``."""
    from autoseg.errors import user_errors

    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    try:
        code = cli_train(args)
    except user_errors() as exc:
        print(f"autoseg {args.command}: error: {exc}", file=sys.stderr, flush=True)
        code = 2
    if code:
        sys.exit(code)


def _one_gpu(args: argparse.Namespace) -> str | None:
    """``--device``, or on CUDA the one GPU of ``--gpus K``."""
    from autoseg.device import pick_device

    if not args.gpus or pick_device(args.device).type != "cuda":
        return args.device
    return f"cuda:{args.gpus[0]}"


def cli_train_all(args: argparse.Namespace) -> int:
    """Every fold of every configuration to compare; finished folds are skipped, interrupted ones resumed."""
    from autoseg.plans import load_plans
    from autoseg.training.trainer import fold_directory, train_runs

    from autoseg.training.distributed import from_environment

    if from_environment() is not None:
        raise UserFacingError("train_all starts its own processes (--gpus 0,1,...): run it without torchrun; "
                              "to train one fold on several GPUs use 'autoseg train CONFIG FOLD --num-gpus N'")
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
        if args.gpus and len(args.gpus) > 1 and runs:
            from autoseg.training.parallel_folds import train_concurrently

            train_concurrently(ws, name, runs, cfg, budget, variant, args.device, args.gpus)
        else:
            train_runs(ws, name, runs, cfg, budget, variant, _one_gpu(args), resume=True)
    except KeyboardInterrupt:
        return 130
    print(f"next: autoseg find_best_config -d {args.dataset}" + (f" --root {args.root}" if args.root else ""))
    return 0
