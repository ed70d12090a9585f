"""Training one fold, in named steps (``_FoldRun``: set-up, epochs, end of epoch, finish, validation).

Schedule: the optimizer of ``train_config.resolve_optimizer`` (AdamW for a short run, nnU-Net's SGD
with Nesterov momentum for a long one), learning rate ``initial * (1 - epoch / num_epochs) ** 0.9`` set at the start of
each epoch (poly), gradient-norm clipping. The position in the schedule is
the global iteration; batches are a pure function of it (see dataloader), so an interrupted
run resumed from ``checkpoint_latest`` produces the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.device import autocast_dtype, pick_device, resolve_precision, torch_memory_format, usable_cpus
from autoseg.errors import UserFacingError
from autoseg.inference.fast_forward import inference_forward
from autoseg.paths import Workspace
from autoseg.plans import Plans, load_plans, save_plans
from autoseg.serialization import save_json, to_jsonable
from autoseg.training.augmentation import resolve_order_data
from autoseg.training.budget import WARMUP_ITERATIONS
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.health import FAILED_MARKER, clear_failed, mark_failed
from autoseg.training.dataloader import BatchSource, RankShare, class_frequencies, iterate
from autoseg.training.distributed import Ranks, ShareWeightedLoss, StepSync, batch_shares, is_collective_failure
from autoseg.training.loss import build_loss, region_targets
from autoseg.training.network import build_network, deep_supervision_scales, init_output_bias
from autoseg.training.pretrained import load_pretrained
from autoseg.training.progress import format_epoch, plot_progress
from autoseg.training.resolve import planned_on_this_cpu, resolve_settings
from autoseg.training.schedule import Budget
from autoseg.training.speed import RunMonitor, warm_up_verdict
from autoseg.training.small_classes import resolve_small_classes, unlearned_classes, unlearned_message
from autoseg.training.splits import get_split
from autoseg.training.train_config import TrainConfig, resolve_optimizer

log = logging.getLogger(__name__)

# progress.png is redrawn at most this often during training (and once at its end): drawing it
# costs ~0.5 s of CPU, 2-3% of a 20-second epoch of the 10-minute CPU runs when done every epoch.
PLOT_EVERY_S = 60.0


def poly_lr(initial: float, epoch: int, num_epochs: int, exponent: float = 0.9) -> float:
    """``poly_lr(0.01, 0, 100) == 0.01``; ``poly_lr(0.01, 50, 100) == 0.01 * 0.5 ** 0.9``."""
    return initial * (1 - epoch / num_epochs) ** exponent


def fold_directory(ws: Workspace, dataset: str, configuration: str, fold, variant: str) -> Path:
    return ws.results_dataset(dataset) / configuration / variant / f"fold_{fold}"


class _StopRequest:
    """Turns SIGTERM into a flag checked between iterations."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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


def _empty_history() -> dict:
    return {k: [] for k in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_time", "data_wait")}


# a run whose loss or gradient norm is non-finite this many steps in a row has diverged: it stops,
# marked failed (checkpoint.mark_failed), without checkpoint_final. Single non-finite steps are
# skipped (no weight update), as fp16's gradient scaler skips its overflow steps.
MAX_NON_FINITE_STEPS = 20


class _Diverged(Exception):
    pass


class _Restart(Exception):
    """The warm-up showed that another network width fits the time budget (``speed.check_speed``)."""

    def __init__(self, width: int):
        super().__init__(f"restart with width {width}")
        self.width = width


def train_fold(ws: Workspace, dataset: str, configuration: str, fold, cfg: TrainConfig, variant: str = "default",
               device: str | None = "auto", resume: bool = False, validate: bool = True,
               ranks: Ranks | None = None) -> Path:
    """Train (or resume) one fold and validate it; return the fold folder.

    ``ranks``: this process's place in a run on several processes (``distributed.py``; its
    process group started); None: one process.

    With ``cfg.time_budget_s`` the schedule (epochs, iterations per epoch, validation iterations)
    is fitted to the budget after a warm-up and re-fitted every epoch (see ``budget``); the
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
        except _Restart as restart:
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
            run_cfg = dataclasses.replace(cfg, time_budget_s=share)
            log.info("%s fold %s: %.0f s of the %.0f s budget", configuration, fold, share, total_budget_s)
        train_fold(ws, dataset, configuration, fold, run_cfg, variant, device, resume, ranks=ranks)


def _train_fold(ws: Workspace, dataset: str, configuration: str, fold, cfg: TrainConfig, variant: str,
                device: str | None, resume: bool, validate: bool, started_at: float, width: int | None,
                ranks: Ranks) -> Path:
    """The steps of one run: resolve what to train, then inside the fold's training log set up the
    network and data, run the epochs, save the final model and validate it (on several processes:
    rank 0 alone writes the log and validates)."""
    run = _FoldRun(ws, dataset, configuration, fold, cfg, variant, device, resume, width, ranks)
    with _training_log(run.out) if ranks.main else contextlib.nullcontext():
        run.set_up(started_at)
        try:
            run.train()
        except _Diverged as exc:
            if ranks.main:
                mark_failed(run.out, str(exc), run.iteration)
            log.error("training stopped: %s", exc)
            raise UserFacingError(
                f"training of {run.out} diverged: {exc}. No final model was written and the fold is marked failed "
                f"({FAILED_MARKER}): find_best_config, predict and export_model refuse it. Train it again with a "
                f"lower learning rate (now {run.cfg.initial_lr:g}; e.g. --set initial_lr={run.cfg.initial_lr / 10:g}) "
                f"or in fp32 (--set precision=fp32)") from None
        run.finish()
        if validate and ranks.main:
            run.validate()
    return run.out


class _FoldRun:
    """One fold's training run, step by step: ``__init__`` resolves the inputs (plans, split,
    device, a checkpoint to resume, the settings for this machine) and writes the fold's plans and
    train_config; ``set_up`` builds network, loss, optimizer, budget and batch sources; ``train``
    runs the epochs (``_epoch``: the iterations; ``_end_epoch``: patch validation, history,
    budget re-fit, checkpoints, plot); ``finish`` writes the final checkpoint; ``validate`` runs
    the sliding-window validation of the validation cases. On several processes (``ranks``) each
    step is shared as ``distributed.py`` says and rank 0 alone writes files."""

    def __init__(self, ws: Workspace, dataset: str, configuration: str, fold, cfg: TrainConfig, variant: str,
                 device: str | None, resume: bool, width: int | None, ranks: Ranks):
        self.ws, self.configuration, self.fold, self.width, self.ranks = ws, configuration, fold, width, ranks
        self.name = ws.dataset_name(dataset)
        pre = ws.preprocessed / self.name
        plans = load_plans(pre / "plans.json")
        cp = plans.configuration(configuration)
        self.data_dir = pre / cp.preprocessed_name
        if not self.data_dir.is_dir():
            raise UserFacingError(f"{self.data_dir} not found; run 'autoseg preprocess -d {dataset} -c "
                                  f"{configuration}' first")
        self.train_ids, self.val_ids = get_split(pre, fold)
        self.make_source = BatchSource
        if cp.previous_stage:  # cascade: the lowres cross-validation masks become extra input channels
            from autoseg.training.cascade import cascade_batch_source

            self.make_source = cascade_batch_source(ws, self.name, plans, configuration, variant, cfg,
                                                    self.train_ids + self.val_ids, fold)
        self.out = out = fold_directory(ws, self.name, configuration, fold, variant)
        self.dev = dev = torch.device(ranks.device) if ranks.active else pick_device(device)
        if dev.type == "cpu":  # the ranks of one node share its cores
            torch.set_num_threads(max(1, usable_cpus() // ranks.local_world))
        self.state = state = _resume_state(out, resume, dev)
        ranks.check_same(-1 if state is None else int(state["iteration"]), "the iteration of the checkpoint to resume")
        if state is not None and cfg.optimizer == "auto":  # go on with the optimizer the run started with
            saved = state.get("train_config", {})
            cfg = dataclasses.replace(cfg, optimizer=saved.get("optimizer", "sgd"),  # SGD before the choice existed
                                      initial_lr=cfg.initial_lr if cfg.initial_lr is not None
                                      else saved.get("initial_lr"))
        throughput_path = pre / "throughput.json"  # step timings of the cpu planning
        self.throughput = (json.loads(throughput_path.read_text())
                           if dev.type == "cpu" and throughput_path.is_file() else None)
        fold_plans = load_plans(out / "plans.json") if state is not None and (out / "plans.json").is_file() else None
        self.requested_precision = cfg.precision
        # rank 0 resolves (a precision probe times this machine), the other ranks take its settings
        self.resolved = ranks.from_main(resolve_settings(cfg, plans, configuration, dev, state, self.throughput,
                                                         fold_plans, width) if ranks.main else None,
                                        "the run's settings")
        cfg, self.plans, self.notes = self.resolved.cfg, self.resolved.plans, self.resolved.notes
        self.cfg = dataclasses.replace(resolve_optimizer(cfg),
                                       augmentation=resolve_order_data(cfg.augmentation, dev.type))
        torch.manual_seed(self.cfg.seed)
        self.cp = self.plans.configuration(configuration)
        out.mkdir(parents=True, exist_ok=True)
        if ranks.main:
            save_plans(self.plans, out / "plans.json")
            save_json(self.cfg, out / "train_config.json")

    # ------------------------------------------------------------------------------------ set-up

    def set_up(self, started_at: float) -> None:
        """Network (output biases from the class frequencies), loss, optimizer, the state of a
        resumed run, the budget and the batch sources."""
        cfg, plans, cp, dev = self.cfg, self.plans, self.cp, self.dev
        for note in self.notes:
            log.info("%s", note)
        self.batch_size = cfg.batch_size or cp.batch_size
        self.scales = deep_supervision_scales(cp) if cfg.deep_supervision else None
        self.net = build_network(plans, self.configuration, cfg.deep_supervision)
        self.small = small = resolve_small_classes(cfg, cp, plans.num_classes, plans.regions is not None)
        self.source_options = dict(paste_shares=small.paste)
        if self.state is None and cfg.output_prior_init:
            self._init_output_prior()
        if self.state is None and cfg.pretrained:  # after the prior: heads copied when the classes agree
            load_pretrained(self.net, cfg.pretrained, plans, log)
        self.layout = torch_memory_format(cfg.memory_format, cp.network.dim)
        self.net = self.net.to(dev, memory_format=self.layout)
        self.loss_fn = build_loss(cfg.loss, cp.batch_dice if cfg.batch_dice is None else cfg.batch_dice,
                                  cfg.ce_weight, cfg.dice_weight, len(self.scales) if self.scales else None,
                                  small.ce_weights, small.batch_dice_classes, plans.ignore_label, plans.regions,
                                  self.ranks.pool if self.ranks.active else None)
        self.part = self.ranks.share(self.batch_size)  # this rank's samples of each global batch
        self.local_batch = self.part.stop - self.part.start
        if self.ranks.loss_weight(self.batch_size) != 1:
            self.loss_fn = ShareWeightedLoss(self.loss_fn, self.ranks.loss_weight(self.batch_size))
        if plans.regions:
            log.info("region-based: %d sigmoid outputs (%s), loss %s on each region's mask", len(plans.regions),
                     ", ".join(f"{v}: {list(m)}" for v, m in plans.regions), cfg.loss)
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.initial_lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.initial_lr, momentum=cfg.momentum,
                                       nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.amp_dtype = autocast_dtype(cfg.precision)
        self.history, self.best_ema, self.iteration = _empty_history(), -1.0, 0
        self.non_finite = 0  # steps in a row with a non-finite loss or gradient norm
        if self.state is not None:
            started_at = self._restore(started_at)
        self.train_net = self.net  # what the steps run: the network, or DDP around it on several processes
        if self.ranks.active:
            # deep supervision's lowest output has weight 0 (loss.deep_supervision_weights): its head gets no
            # gradient, which DDP must be told; it leaves that gradient None, as one process does
            self.train_net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=bool(self.scales))
        self.started_at, state = started_at, self.state
        self.budget = budget = Budget(self.cfg, started_at, self.data_dir, self.val_ids, cp,
                                      fitted=bool(state and state.get("budget", {}).get("fitted")
                                                  and self.cfg.time_budget_s))
        self.total = budget.total_iterations
        cfg = self.cfg
        self.train_src = self.make_source(self.data_dir, self.train_ids, cp, self.batch_size,
                                          cfg.oversample_foreground_percent, cfg.augmentation, self.scales, cfg.seed,
                                          small.shares, **self.source_options)
        self.val_src = self.make_source(self.data_dir, self.val_ids, cp, self.batch_size,
                                        cfg.oversample_foreground_percent, None, None, cfg.seed + 1)
        if self.ranks.active:
            self.train_src, self.val_src = RankShare(self.train_src, self.part), RankShare(self.val_src, self.part)
            shares = " + ".join(str(n) for n in batch_shares(self.batch_size, self.ranks.world))
            log.info("%d processes: the global batch of %d is split %s%s", self.ranks.world, self.batch_size, shares,
                     "" if self.ranks.loss_weight(self.batch_size) == 1 else
                     "; each rank's loss is weighted by its share so that the gradient is the global batch's mean")
        schedule = (f"time budget {cfg.time_budget_s:.0f} s (schedule fitted after {WARMUP_ITERATIONS} iterations)"
                    if budget.active and not budget.fitted
                    else f"{budget.cfg.num_epochs} epochs x {budget.cfg.num_iterations_per_epoch} iterations")
        log.info("training %s %s fold %s on %s: %s, batch %d, patch %s, %d train / %d val cases, %s from lr %g",
                 self.name, self.configuration, self.fold, dev, schedule, self.batch_size, cp.patch_size,
                 len(self.train_ids), len(self.val_ids), "AdamW" if cfg.optimizer == "adamw" else "SGD",
                 cfg.initial_lr)
        if small.active:
            log.info("%s", small.describe())

    def _init_output_prior(self) -> None:
        """Output biases from the class (or region) frequencies of unaugmented training patches; a
        source of its own, dropped right after so its cases are not held in memory twice."""
        cfg, plans = self.cfg, self.plans
        source = self.make_source(self.data_dir, self.train_ids, self.cp, self.batch_size,
                                  cfg.oversample_foreground_percent, None, None, cfg.seed + 2, self.small.shares,
                                  **self.source_options)
        frequencies = class_frequencies(source, plans.num_classes, regions=plans.regions,
                                        ignore_label=plans.ignore_label)
        priors = init_output_bias(self.net, frequencies, cfg.output_prior_min, sigmoid=plans.regions is not None)
        log.info("output biases from class frequencies in training patches: %s", " ".join(f"{p:.4f}" for p in priors))

    def _restore(self, started_at: float) -> float:
        """Weights, optimizer, history and position of the resumed run; a fitted budget keeps its
        schedule and the time already spent (returned: the run's start moved back by it)."""
        state = self.state
        self.net.load_state_dict(state["network"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.history, self.best_ema = state["history"], float(state["best_ema"])
        self.iteration = int(state["iteration"])
        if self.cfg.time_budget_s and state.get("budget", {}).get("fitted"):
            b = state["budget"]
            self.cfg = dataclasses.replace(self.cfg, num_epochs=int(b["num_epochs"]),
                                           num_iterations=b.get("num_iterations"),
                                           num_iterations_per_epoch=int(b["num_iterations_per_epoch"]),
                                           num_val_iterations_per_epoch=int(b["num_val_iterations_per_epoch"]))
            started_at -= float(b["elapsed_s"])
        return started_at

    # ------------------------------------------------------------------------------------ epochs

    def train(self) -> None:
        """Epochs until the schedule (or the budget) ends; SIGTERM or Ctrl-C saves checkpoint_latest
        and re-raises. A warm-up that finds another width better raises ``_Restart``."""
        self.batches = iterate(self.train_src, self.iteration, self.budget.max_iterations - self.iteration,
                               self.cfg.num_workers)
        self.plotted_at = time.perf_counter()
        self.monitor = RunMonitor(self.resolved.expected_step_s,
                                  torch.get_num_threads() if self.dev.type == "cpu" else 1, self._verdict,
                                  WARMUP_ITERATIONS, logger=log)
        self.recheck = (self.state is None and self.width is None and self.budget.active and not self.ranks.active
                        and self.cfg.fit_width_to_budget and planned_on_this_cpu(self.throughput, self.dev))
        with _StopRequest() as self.stop, self.monitor:
            try:
                while self.iteration < self.total:
                    self._end_epoch(*self._epoch())
            except KeyboardInterrupt:
                self.checkpoint("checkpoint_latest")
                if self.history["train_loss"] and self.ranks.main:
                    plot_progress(self.history, self.out / "progress.png")
                log.info("interrupted at iteration %d; checkpoint_latest saved, resume with --continue", self.iteration)
                raise
        del self.batches  # stops the augmentation workers before validation

    def _verdict(self, warm: list) -> object:
        """The warm-up's steps against the planned one (speed.py)."""
        return warm_up_verdict(warm, self.resolved.expected_step_s, self.budget, self.total - self.iteration,
                               self.throughput, self.plans, self.configuration, self.requested_precision,
                               self.recheck)

    def _epoch(self) -> tuple[int, float, float, dict]:
        """The iterations of one epoch; returns (epoch, its start, its learning rate, its step
        statistics)."""
        from tqdm import tqdm

        cfg, budget = self.cfg, self.budget
        n_it = budget.cfg.num_iterations_per_epoch
        epoch, started = self.iteration // n_it, time.perf_counter()
        lr = poly_lr(cfg.initial_lr, epoch, budget.cfg.num_epochs, cfg.poly_exponent)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.net.train()
        steps = {"losses": [], "norms": [], "waited": 0.0, "trained": 0.0}
        bar = tqdm(total=n_it, initial=self.iteration % n_it, desc=f"epoch {epoch}", unit="it", leave=False,
                   disable=None if self.ranks.main else True)
        while self.iteration < min((epoch + 1) * n_it, self.total):
            step_started = time.perf_counter()
            self.monitor.step_started()
            batch = next(self.batches)
            wait_s = time.perf_counter() - step_started
            steps["waited"] += wait_s
            try:
                loss, norm = _train_step(self.train_net, self.loss_fn, self.opt, self.scaler, batch, self.dev,
                                         cfg.grad_clip, self.amp_dtype, self.layout)
            except RuntimeError as exc:  # the gradients' all-reduce runs inside the step
                if self.ranks.active and is_collective_failure(exc):
                    raise self.ranks.lost("a training step", exc) from exc
                raise
            synced = self._sync_step(loss) if self.ranks.active else None
            if synced is not None:
                loss = synced.loss
            self.non_finite = 0 if math.isfinite(loss) and math.isfinite(norm) else self.non_finite + 1
            if self.non_finite >= MAX_NON_FINITE_STEPS:
                raise _Diverged(f"the loss or the gradients were not finite (NaN or inf) for {self.non_finite} steps "
                                f"in a row (last loss {loss}, gradient norm {norm})")
            steps["losses"].append(loss)
            steps["norms"].append(norm)
            self.iteration += 1
            step_s = time.perf_counter() - step_started
            steps["trained"] += step_s
            new_width = self.monitor.step_done(step_s, wait_s, last=self.iteration == self.total)
            if new_width is not None:
                del self.batches  # stops the augmentation workers
                raise _Restart(new_width)
            if budget.active and not budget.fitted:
                budget.step_times.append(step_s)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
            if synced.stop if synced is not None else self.stop.requested:
                raise KeyboardInterrupt
            if synced.out_of_time if synced is not None else budget.out_of_time(self.iteration):
                self.total = budget.total_iterations
            if budget.needs_fit(self.iteration):
                budget.fit(self.iteration, self.net, batch["data"], self.dev)
                self._sync_budget()
                n_it = budget.cfg.num_iterations_per_epoch
                self.total = budget.total_iterations
                if self.ranks.main:
                    save_json(budget.cfg, self.out / "train_config.json")
        bar.close()
        return epoch, started, lr, steps

    def _sync_step(self, loss: float) -> StepSync:
        """On several processes, after each step: the mean loss, a stop asked of any rank, and rank
        0's verdict on the time budget (the schedule then ends at this iteration on every rank)."""
        synced = StepSync.exchange(self.ranks, loss, self.stop.requested,
                                   self.ranks.main and self.budget.out_of_time(self.iteration + 1))
        if synced.out_of_time and not self.ranks.main:
            self.budget.end_at(self.iteration + 1)
        return synced

    def _sync_budget(self) -> None:
        """Every rank takes rank 0's fitted schedule (each rank measured its own speed)."""
        b = self.budget
        b.cfg, b.validation_s, b.fitted = self.ranks.from_main((b.cfg, b.validation_s, b.fitted),
                                                               "the time budget's schedule")

    def _end_epoch(self, epoch: int, started: float, lr: float, steps: dict) -> None:
        """Patch validation (loss, pseudo-Dice, EMA), the history and its log line, the budget's
        re-fit, checkpoint_best / checkpoint_latest and the progress plot."""
        cfg, budget, history = self.cfg, self.budget, self.history
        n_val = budget.cfg.num_val_iterations_per_epoch
        val_loss, dice, forward_total = _validate_patches(self.net, self.loss_fn, self.val_src, epoch * n_val, n_val,
                                                          self.dev, self.plans, self.scales, cfg.precision, self.ranks)
        forward_s = forward_total / max(1, n_val * self.local_batch)
        ema = dice.mean() if not history["ema_dice"] else (
            cfg.ema_alpha * history["ema_dice"][-1] + (1 - cfg.ema_alpha) * dice.mean())
        losses, norms = steps["losses"], steps["norms"]
        for key, value in (("train_loss", float(np.mean(losses))), ("val_loss", val_loss),
                           ("pseudo_dice", [float(d) for d in dice]), ("ema_dice", float(ema)),
                           ("lr", lr), ("epoch_time", time.perf_counter() - started),
                           ("epoch_iterations", len(losses)),
                           ("data_wait", steps["waited"] / max(steps["trained"], 1e-9)),
                           ("grad_norm", float(np.median(norms))),
                           ("clipped", float(np.mean(np.array(norms) > cfg.grad_clip)))):
            history.setdefault(key, []).append(value)
        log.info(format_epoch(history, epoch))
        if budget.active:
            budget.refit(self.iteration, history["epoch_time"], history.get("epoch_iterations", []), forward_s)
            self._sync_budget()
            self.total = budget.total_iterations
            if self.ranks.main:
                save_json(budget.cfg, self.out / "train_config.json")
        if ema > self.best_ema:
            self.best_ema = float(ema)
            self.checkpoint("checkpoint_best")
        if (epoch + 1) % cfg.checkpoint_every_epochs == 0:
            self.checkpoint("checkpoint_latest")
        if time.perf_counter() - self.plotted_at >= PLOT_EVERY_S and self.ranks.main:
            plot_progress(history, self.out / "progress.png")
            self.plotted_at = time.perf_counter()

    # ------------------------------------------------------------------------------------ end

    def checkpoint(self, path_name: str) -> None:
        if not self.ranks.main:  # rank 0 writes every file
            return
        save_checkpoint({
            "network": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.iteration // self.budget.cfg.num_iterations_per_epoch, "iteration": self.iteration,
            "history": self.history, "best_ema": self.best_ema, "configuration": self.configuration,
            "train_config": to_jsonable(self.budget.cfg), "budget": self.budget.state(),
        }, self.out / f"{path_name}.pth")

    def finish(self) -> None:
        """The progress plot, checkpoint_final and checkpoint_latest (a failed earlier run's mark
        removed); nothing on the ranks other than 0."""
        if not self.ranks.main:
            return
        clear_failed(self.out)
        if self.history["train_loss"]:
            plot_progress(self.history, self.out / "progress.png")
        self.checkpoint("checkpoint_final")
        self.checkpoint("checkpoint_latest")
        log.info("training done: %s (%d iterations)", self.out / "checkpoint_final.pth", self.iteration)

    def validate(self) -> None:
        """The sliding-window validation of the validation cases (``run_validation``)."""
        validation_started = time.perf_counter()
        run_validation(self.out, self.ws, self.name, self.val_ids, self.dev, self.budget.cfg)
        if self.budget.active:
            log.info("final validation took %.0f s (estimated %.0f s); total %.0f s of a %.0f s budget",
                     time.perf_counter() - validation_started, self.budget.validation_s,
                     time.perf_counter() - self.started_at, self.cfg.time_budget_s)


def _resume_state(out: Path, resume: bool, dev) -> dict | None:
    """The checkpoint a run goes on from: checkpoint_latest with ``resume`` (else checkpoint_final,
    to extend a finished run); None for a new run, which must not overwrite a finished model."""
    if resume and (out / "checkpoint_latest.pth").is_file():
        state = load_checkpoint(out / "checkpoint_latest.pth", dev)
        log.info("resuming from %s at epoch %d", out / "checkpoint_latest.pth", state["epoch"])
        return state
    if resume and (out / "checkpoint_final.pth").is_file():
        return load_checkpoint(out / "checkpoint_final.pth", dev)
    if not resume and (out / "checkpoint_final.pth").is_file():
        raise UserFacingError(f"{out} already holds a finished model; use --continue to extend it, "
                              "or --val to validate it again, or delete the folder to start over")
    return None


def _train_step(net, loss_fn, opt, scaler, batch, dev, grad_clip, amp_dtype=None,
                memory_format=None) -> tuple[float, float]:
    """One optimizer step; under autocast to ``amp_dtype`` (bf16/fp16) when given, with ``scaler`` for fp16;
    the batch in ``memory_format`` (a torch layout; None: as it comes). Returns the loss and the
    gradients' total norm before clipping to ``grad_clip``."""
    data = batch["data"].to(dev, non_blocking=True)
    if memory_format is not None:
        data = data.contiguous(memory_format=memory_format)
    target = batch["target"]
    target = [t.to(dev, non_blocking=True) for t in target] if isinstance(target, list) else target.to(dev)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = net(data)
        loss = loss_fn(out, target)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        if torch.isfinite(norm):  # a non-finite step would poison every weight; the run counts these
            opt.step()
    return float(loss.detach()), float(norm)


@torch.no_grad()
def _validate_patches(net, loss_fn, src: BatchSource, start: int, count: int, dev, plans: Plans, scales,
                      precision: str = "fp32", ranks: Ranks | None = None):
    """Validation loss, pseudo-Dice per foreground class or region (TP/FP/FN summed over all
    patches, and over the ``ranks`` of a run on several processes, as the loss is averaged) and the
    seconds spent in the network's forward passes alone (what the final
    sliding-window validation costs per patch; making the batches, which for a cascade means
    loading large cases, is not)."""
    net.eval()
    forward = inference_forward(net, precision, dev)
    num_classes, regions = plans.num_classes, plans.regions
    tp = np.zeros(len(regions) if regions else num_classes - 1)
    fp, fn = tp.copy(), tp.copy()
    losses, forward_s = [], 0.0
    for k in range(count):
        b = src.batch(start + k)
        data = torch.from_numpy(b["data"]).to(dev)
        target = torch.from_numpy(b["target"]).to(dev)
        started = time.perf_counter()
        out = forward(data)
        forward_s += time.perf_counter() - started
        full = out[0] if isinstance(out, list) else out
        if scales:
            from autoseg.training.dataloader import downsample_seg

            targets = [torch.from_numpy(downsample_seg(b["target"], s)).to(dev) for s in scales]
            losses.append(float(loss_fn(out, targets)))
        else:
            losses.append(float(loss_fn(full, target)))
        t = target[:, 0]
        if regions:  # a region is predicted where its logit is above 0 (sigmoid above 0.5)
            annotated = t != plans.ignore_label if plans.ignore_label is not None else torch.ones_like(t, dtype=bool)
            refs = region_targets(target, [members for _, members in regions])
            masks = [(full[:, k] > 0, refs[:, k]) for k in range(len(regions))]
        else:
            pred = full.argmax(1)
            annotated = t < num_classes  # the ignore label, where there is one, is the highest value
            masks = [(pred == c, t == c) for c in range(1, num_classes)]
        for k, (p, r) in enumerate(masks):
            tp[k] += float((p & r).sum())
            fp[k] += float((p & ~r & annotated).sum())
            fn[k] += float((~p & r).sum())
    mean_loss = float(np.mean(losses)) if losses else float("nan")
    if ranks is not None and ranks.active:
        k = len(tp)
        total = ranks.sum(np.concatenate([tp, fp, fn, [mean_loss]]), "the patch validation")
        tp, fp, fn, mean_loss = total[:k], total[k:2 * k], total[2 * k:3 * k], float(total[-1]) / ranks.world
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-8)
    return mean_loss, dice, forward_s


def run_validation(fold_dir: Path, ws: Workspace, dataset: str, val_ids: list[str], dev, cfg: TrainConfig) -> dict:
    """Predict every validation case with the sliding window and write validation/summary.json; warn
    about a small class the network never predicts (``unlearned_classes``)."""
    from autoseg.inference.validation import validate_fold
    from autoseg.training.checkpoint import load_trained_model

    model = load_trained_model(fold_dir, "checkpoint_final", dev)
    summary = validate_fold(fold_dir, model, ws, dataset, val_ids, dev, cfg.validation_step_size,
                            cfg.validation_mirroring, resolve_precision(cfg.precision, dev),
                            cfg.validation_mirror_axes)
    log.info("validation mean Dice %s over %d cases: %.4f", fold_dir.name, len(val_ids),
             summary["foreground_mean"]["dice"])
    small = resolve_small_classes(model.train_config, model.configuration, model.plans.num_classes)
    for c, n_ref in unlearned_classes(summary, small.classes).items():
        log.warning("%s", unlearned_message(c, n_ref, f"the {len(val_ids)} validation cases of {fold_dir.name}"))
    return summary

