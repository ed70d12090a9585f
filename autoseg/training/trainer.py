"""Training folds: ``train_fold`` runs one (``fold_run.FoldRun``: set-up, epochs, final
checkpoint) inside the fold's training log, then its final validation (``run_validation``: the
sliding window of ``autoseg predict`` over the validation cases); ``train_runs`` trains several in
order, sharing one time budget.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from autoseg.device import resolve_precision
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.training.distributed import Ranks
from autoseg.training.fold_run import Diverged, FoldRun, Restart, fold_directory
from autoseg.training.health import FAILED_MARKER, mark_failed
from autoseg.training.small_classes import resolve_small_classes, unlearned_classes, unlearned_message
from autoseg.training.train_config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["fold_directory", "run_validation", "train_fold", "train_runs"]


@contextlib.contextmanager
def _training_log(out: Path):
    """The trainer's messages also go to ``out/training.log`` (at least one line per epoch) while
    the block runs, whichever way it ends."""
    handler = logging.FileHandler(out / "training.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def train_fold(ws: Workspace, dataset: str, configuration: str, fold, cfg: TrainConfig, variant: str = "default",
               device: str | None = "auto", resume: bool = False, validate: bool = True,
               ranks: Ranks | None = None) -> Path:
    """Train (or resume) one fold and validate it; return the fold folder.

    ``ranks``: this process's place in a run on several processes (``distributed.py``; its
    process group started); None: one process.

    With ``cfg.schedule.time_budget_s`` the schedule (epochs, iterations per epoch, validation
    iterations) is fitted to the budget after a warm-up and re-fitted every epoch (see ``budget``); the
    budget includes the final validation. Resuming continues the same budget: the time already
    spent is stored in the checkpoint. When the warm-up of a new run on a CPU shows that the steps
    run at another speed than the planning timed and another width fits the budget better
    (``speed.check_speed``), the run starts again once at that width, its time so far counted."""
    started_at = time.perf_counter()
    width = None
    while True:
        try:
            return _train_fold(ws, dataset, configuration, fold, cfg, variant, device, resume, validate,
                               started_at, width, ranks or Ranks())
        except Restart as restart:
            width = restart.width


def train_runs(ws: Workspace, dataset: str, runs: list[tuple[str, str]], cfg, total_budget_s: float | None,
               variant: str, device: str | None, resume: bool, ranks=None) -> None:
    """Train ``(configuration, fold)`` runs in order; a total budget is shared among them, a run
    that finishes early leaving its time to the ones after it. ``ranks``: each run on the
    processes of a started process group (``distributed.Ranks``); None: on this process."""
    from autoseg.training.budget import split_budget

    started = time.perf_counter()
    for k, (configuration, fold) in enumerate(runs):
        run_cfg = cfg
        if total_budget_s:
            share = split_budget(total_budget_s, time.perf_counter() - started, len(runs) - k)
            if share < 1.0:  # the budget is spent: the warm-up and the validation only, never a default schedule
                log.warning("%s fold %s: the time budget is used up; training it for the warm-up only",
                            configuration, fold)
                share = 1.0
            run_cfg = cfg.with_(**{"schedule.time_budget_s": share})
            log.info("%s fold %s: %.0f s of the %.0f s budget", configuration, fold, share, total_budget_s)
        train_fold(ws, dataset, configuration, fold, run_cfg, variant, device, resume, ranks=ranks)


def _train_fold(ws: Workspace, dataset: str, configuration: str, fold, cfg: TrainConfig, variant: str,
                device: str | None, resume: bool, validate: bool, started_at: float, width: int | None,
                ranks: Ranks) -> Path:
    """The steps of one run: resolve what to train, then inside the fold's training log set up the
    network and data, run the epochs, save the final model and validate it (on several processes:
    rank 0 alone writes the log and validates)."""
    run = FoldRun(ws, dataset, configuration, fold, cfg, variant, device, resume, width, ranks)
    with _training_log(run.out) if ranks.main else contextlib.nullcontext():
        run.set_up(started_at)
        try:
            run.train()
        except Diverged as exc:
            if ranks.main:
                mark_failed(run.out, str(exc), run.iteration)
            log.error("training stopped: %s", exc)
            lr = run.cfg.optim.initial_lr
            raise UserFacingError(
                f"training of {run.out} diverged: {exc}. No final model was written and the fold is marked failed "
                f"({FAILED_MARKER}): find_best_config, predict and export_model refuse it. Train it again with a "
                f"lower learning rate (now {lr:g}; e.g. --set optim.initial_lr={lr / 10:g}) "
                f"or in fp32 (--set runtime.precision=fp32)") from None
        run.finish()
        if validate and ranks.main:
            _validate(run)
    return run.out


def _validate(run: FoldRun) -> None:
    """The final validation of a finished run (``run_validation``), its time set against the
    budget's estimate in the log."""
    started = time.perf_counter()
    run_validation(run.out, run.ws, run.name, run.val_ids, run.dev, run.budget.cfg)
    if run.budget.active:
        log.info("final validation took %.0f s (estimated %.0f s); total %.0f s of a %.0f s budget",
                 time.perf_counter() - started, run.budget.validation_s, time.perf_counter() - run.started_at,
                 run.cfg.schedule.time_budget_s)


def run_validation(fold_dir: Path, ws: Workspace, dataset: str, val_ids: list[str], dev, cfg: TrainConfig) -> dict:
    """Predict every validation case with the sliding window and write validation/summary.json; warn
    about a small class the network never predicts (``unlearned_classes``)."""
    from autoseg.inference.validation import validate_fold
    from autoseg.training.checkpoint import load_trained_model

    model = load_trained_model(fold_dir, "checkpoint_final", dev)
    summary = validate_fold(fold_dir, model, ws, dataset, val_ids, dev, cfg.validation.step_size,
                            cfg.validation.mirroring, resolve_precision(cfg.runtime.precision, dev),
                            cfg.validation.mirror_axes)
    log.info("validation mean Dice %s over %d cases: %.4f", fold_dir.name, len(val_ids),
             summary["foreground_mean"]["dice"])
    small = resolve_small_classes(model.train_config, model.configuration, model.plans.num_classes)
    for c, n_ref in unlearned_classes(summary, small.classes).items():
        log.warning("%s", unlearned_message(c, n_ref, f"the {len(val_ids)} validation cases of {fold_dir.name}"))
    return summary
