"""One fold's training run in named steps (``FoldRun``: set-up, epochs, end of epoch, finish),
driven by ``trainer.train_fold``.

Schedule: the optimizer of ``train_config.resolve_optimizer`` (AdamW for a short run, nnU-Net's SGD
with Nesterov momentum for a long one), learning rate ``initial * (1 - epoch / num_epochs) ** 0.9``
set at the start of each epoch (poly, ``steps.poly_lr``), gradient-norm clipping. The position in
the schedule is the global iteration; batches are a pure function of it (see dataloader), so an
interrupted run resumed from ``checkpoint_latest`` produces the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.device import autocast_dtype, pick_device, torch_memory_format, usable_cpus
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.plans import load_plans, save_plans
from autoseg.serialization import save_json, to_jsonable
from autoseg.training.augmentation import resolve_order_data
from autoseg.training.budget import WARMUP_ITERATIONS
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.dataloader import BatchSampling, BatchSource, RankShare, class_frequencies, iterate
from autoseg.training.distributed import Ranks, ShareWeightedLoss, StepSync, batch_shares, is_collective_failure
from autoseg.training.health import clear_failed
from autoseg.training.loss import build_loss
from autoseg.training.network import build_network, deep_supervision_scales, init_output_bias
from autoseg.training.pretrained import load_pretrained
from autoseg.training.progress import format_epoch, plot_progress
from autoseg.training.resolve import planned_on_this_cpu, resolve_settings
from autoseg.training.schedule import Budget
from autoseg.training.small_classes import resolve_small_classes
from autoseg.training.speed import RunMonitor, warm_up_verdict
from autoseg.training.splits import get_split
from autoseg.training.steps import poly_lr, train_step, validate_patches
from autoseg.training.train_config import TrainConfig, resolve_optimizer, saved_setting

log = logging.getLogger("autoseg.training.trainer")  # its lines belong in the fold's training.log


# progress.png is redrawn at most this often during training (and once at its end): drawing it
# costs ~0.5 s of CPU, 2-3% of a 20-second epoch of the 10-minute CPU runs when done every epoch.
PLOT_EVERY_S = 60.0


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


def _empty_history() -> dict:
    return {k: [] for k in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_time", "data_wait")}


# a run whose loss or gradient norm is non-finite this many steps in a row has diverged: it stops,
# marked failed (checkpoint.mark_failed), without checkpoint_final. Single non-finite steps are
# skipped (no weight update), as fp16's gradient scaler skips its overflow steps.
MAX_NON_FINITE_STEPS = 20


class Diverged(Exception):
    """The loss or the gradients were not finite for ``MAX_NON_FINITE_STEPS`` steps in a row."""


class Restart(Exception):
    """The warm-up showed that another network width fits the time budget (``speed.check_speed``)."""

    def __init__(self, width: int):
        super().__init__(f"restart with width {width}")
        self.width = width


class FoldRun:
    """One fold's training run, step by step: ``__init__`` resolves the inputs (plans, split,
    device, a checkpoint to resume, the settings for this machine) and writes the fold's plans and
    train_config; ``set_up`` builds network, loss, optimizer, budget and batch sources; ``train``
    runs the epochs (``_epoch``: the iterations; ``_end_epoch``: patch validation, history,
    budget re-fit, checkpoints, plot); ``finish`` writes the final checkpoint (the final
    validation is ``trainer.run_validation``'s). On several processes (``ranks``) each step is
    shared as ``distributed.py`` says and rank 0 alone writes files."""

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
        if state is not None and cfg.optim.optimizer == "auto":  # go on with the optimizer the run started with
            saved = state.get("train_config")
            optimizer = saved_setting(saved, "optim.optimizer", "sgd")  # SGD before the choice existed
            lr = cfg.optim.initial_lr if cfg.optim.initial_lr is not None else saved_setting(saved, "optim.initial_lr")
            cfg = cfg.with_(optim=dict(optimizer=optimizer, initial_lr=lr))
        throughput_path = pre / "throughput.json"  # step timings of the cpu planning
        self.throughput = (json.loads(throughput_path.read_text())
                           if dev.type == "cpu" and throughput_path.is_file() else None)
        fold_plans = load_plans(out / "plans.json") if state is not None and (out / "plans.json").is_file() else None
        self.requested_precision = cfg.runtime.precision
        # rank 0 resolves (a precision probe times this machine), the other ranks take its settings
        self.resolved = ranks.from_main(resolve_settings(cfg, plans, configuration, dev, state, self.throughput,
                                                         fold_plans, width) if ranks.main else None,
                                        "the run's settings")
        cfg, self.plans, self.notes = self.resolved.cfg, self.resolved.plans, self.resolved.notes
        self.cfg = resolve_optimizer(cfg).with_(augmentation=resolve_order_data(cfg.augmentation, dev.type))
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
        self.batch_size = cfg.sampling.batch_size or cp.batch_size
        self.scales = deep_supervision_scales(cp) if cfg.loss.deep_supervision else None
        self.net = build_network(plans, self.configuration, cfg.loss.deep_supervision)
        self.small = small = resolve_small_classes(cfg, cp, plans.num_classes, plans.regions is not None)
        # the training batches' draws (the output prior's and the validation's differ in seed; the
        # validation's hold no small-class component)
        self.sampling = BatchSampling(self.batch_size, cfg.sampling.oversample_foreground_percent, cfg.seed,
                                      class_shares=small.shares, paste_shares=small.paste)
        if self.state is None and cfg.loss.output_prior_init:
            self._init_output_prior()
        if self.state is None and cfg.pretrained:  # after the prior: heads copied when the classes agree
            load_pretrained(self.net, cfg.pretrained, plans, log)
        self.layout = torch_memory_format(cfg.runtime.memory_format, cp.network.dim)
        self.net = self.net.to(dev, memory_format=self.layout)
        loss = cfg.loss
        self.loss_fn = build_loss(loss.name, cp.batch_dice if loss.batch_dice is None else loss.batch_dice,
                                  loss.ce_weight, loss.dice_weight, len(self.scales) if self.scales else None,
                                  small.ce_weights, small.batch_dice_classes, plans.ignore_label, plans.regions,
                                  self.ranks.pool if self.ranks.active else None)
        self.part = self.ranks.share(self.batch_size)  # this rank's samples of each global batch
        self.local_batch = self.part.stop - self.part.start
        if self.ranks.loss_weight(self.batch_size) != 1:
            self.loss_fn = ShareWeightedLoss(self.loss_fn, self.ranks.loss_weight(self.batch_size))
        if plans.regions:
            log.info("region-based: %d sigmoid outputs (%s), loss %s on each region's mask", len(plans.regions),
                     ", ".join(f"{v}: {list(m)}" for v, m in plans.regions), loss.name)
        optim = cfg.optim
        if optim.optimizer == "adamw":
            self.opt = torch.optim.AdamW(self.net.parameters(), lr=optim.initial_lr, weight_decay=optim.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=optim.initial_lr, momentum=optim.momentum,
                                       nesterov=optim.nesterov, weight_decay=optim.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.runtime.precision == "fp16" else None
        self.amp_dtype = autocast_dtype(cfg.runtime.precision)
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
                                                  and self.cfg.schedule.time_budget_s))
        self.total = budget.total_iterations
        cfg = self.cfg
        self.train_src = self.make_source(self.data_dir, self.train_ids, cp, self.sampling, cfg.augmentation,
                                          self.scales)
        self.val_src = self.make_source(self.data_dir, self.val_ids, cp, self.sampling.plain(cfg.seed + 1))
        if self.ranks.active:
            self.train_src, self.val_src = RankShare(self.train_src, self.part), RankShare(self.val_src, self.part)
            shares = " + ".join(str(n) for n in batch_shares(self.batch_size, self.ranks.world))
            log.info("%d processes: the global batch of %d is split %s%s", self.ranks.world, self.batch_size, shares,
                     "" if self.ranks.loss_weight(self.batch_size) == 1 else
                     "; each rank's loss is weighted by its share so that the gradient is the global batch's mean")
        fitted = budget.cfg.schedule
        schedule = (f"time budget {cfg.schedule.time_budget_s:.0f} s (schedule fitted after {WARMUP_ITERATIONS} "
                    "iterations)" if budget.active and not budget.fitted
                    else f"{fitted.num_epochs} epochs x {fitted.num_iterations_per_epoch} iterations")
        log.info("training %s %s fold %s on %s: %s, batch %d, patch %s, %d train / %d val cases, %s from lr %g",
                 self.name, self.configuration, self.fold, dev, schedule, self.batch_size, cp.patch_size,
                 len(self.train_ids), len(self.val_ids), "AdamW" if cfg.optim.optimizer == "adamw" else "SGD",
                 cfg.optim.initial_lr)
        if small.active:
            log.info("%s", small.describe())

    def _init_output_prior(self) -> None:
        """Output biases from the class (or region) frequencies of unaugmented training patches; a
        source of its own, dropped right after so its cases are not held in memory twice."""
        cfg, plans = self.cfg, self.plans
        source = self.make_source(self.data_dir, self.train_ids, self.cp,
                                  dataclasses.replace(self.sampling, seed=cfg.seed + 2))
        frequencies = class_frequencies(source, plans.num_classes, regions=plans.regions,
                                        ignore_label=plans.ignore_label)
        priors = init_output_bias(self.net, frequencies, cfg.loss.output_prior_min,
                                  sigmoid=plans.regions is not None)
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
        if self.cfg.schedule.time_budget_s and state.get("budget", {}).get("fitted"):
            b = state["budget"]
            self.cfg = self.cfg.with_(schedule=dict(
                num_epochs=int(b["num_epochs"]), num_iterations=b.get("num_iterations"),
                num_iterations_per_epoch=int(b["num_iterations_per_epoch"]),
                num_val_iterations_per_epoch=int(b["num_val_iterations_per_epoch"])))
            started_at -= float(b["elapsed_s"])
        return started_at

    # ------------------------------------------------------------------------------------ epochs

    def train(self) -> None:
        """Epochs until the schedule (or the budget) ends; SIGTERM or Ctrl-C saves checkpoint_latest
        and re-raises. A warm-up that finds another width better raises ``Restart``."""
        self.batches = iterate(self.train_src, self.iteration, self.budget.max_iterations - self.iteration,
                               self.cfg.sampling.num_workers)
        self.plotted_at = time.perf_counter()
        self.monitor = RunMonitor(self.resolved.expected_step_s,
                                  torch.get_num_threads() if self.dev.type == "cpu" else 1, self._verdict,
                                  WARMUP_ITERATIONS, logger=log)
        self.recheck = (self.state is None and self.width is None and self.budget.active and not self.ranks.active
                        and self.cfg.schedule.fit_width_to_budget and planned_on_this_cpu(self.throughput, self.dev))
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
        n_it = budget.cfg.schedule.num_iterations_per_epoch
        epoch, started = self.iteration // n_it, time.perf_counter()
        lr = poly_lr(cfg.optim.initial_lr, epoch, budget.cfg.schedule.num_epochs, cfg.optim.poly_exponent)
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
                loss, norm = train_step(self.train_net, self.loss_fn, self.opt, self.scaler, batch, self.dev,
                                        cfg.optim.grad_clip, self.amp_dtype, self.layout)
            except RuntimeError as exc:  # the gradients' all-reduce runs inside the step
                if self.ranks.active and is_collective_failure(exc):
                    raise self.ranks.lost("a training step", exc) from exc
                raise
            synced = self._sync_step(loss) if self.ranks.active else None
            if synced is not None:
                loss = synced.loss
            self.non_finite = 0 if math.isfinite(loss) and math.isfinite(norm) else self.non_finite + 1
            if self.non_finite >= MAX_NON_FINITE_STEPS:
                raise Diverged(f"the loss or the gradients were not finite (NaN or inf) for {self.non_finite} steps "
                               f"in a row (last loss {loss}, gradient norm {norm})")
            steps["losses"].append(loss)
            steps["norms"].append(norm)
            self.iteration += 1
            step_s = time.perf_counter() - step_started
            steps["trained"] += step_s
            new_width = self.monitor.step_done(step_s, wait_s, last=self.iteration == self.total)
            if new_width is not None:
                del self.batches  # stops the augmentation workers
                raise Restart(new_width)
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
                n_it = budget.cfg.schedule.num_iterations_per_epoch
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
        n_val = budget.cfg.schedule.num_val_iterations_per_epoch
        val_loss, dice, forward_total = validate_patches(self.net, self.loss_fn, self.val_src, epoch * n_val, n_val,
                                                         self.dev, self.plans, self.scales, cfg.runtime.precision,
                                                         self.ranks)
        forward_s = forward_total / max(1, n_val * self.local_batch)
        alpha = cfg.validation.ema_alpha
        ema = dice.mean() if not history["ema_dice"] else alpha * history["ema_dice"][-1] + (1 - alpha) * dice.mean()
        losses, norms = steps["losses"], steps["norms"]
        for key, value in (("train_loss", float(np.mean(losses))), ("val_loss", val_loss),
                           ("pseudo_dice", [float(d) for d in dice]), ("ema_dice", float(ema)),
                           ("lr", lr), ("epoch_time", time.perf_counter() - started),
                           ("epoch_iterations", len(losses)),
                           ("data_wait", steps["waited"] / max(steps["trained"], 1e-9)),
                           ("grad_norm", float(np.median(norms))),
                           ("clipped", float(np.mean(np.array(norms) > cfg.optim.grad_clip)))):
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
        if (epoch + 1) % cfg.schedule.checkpoint_every_epochs == 0:
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
            "epoch": self.iteration // self.budget.cfg.schedule.num_iterations_per_epoch,
            "iteration": self.iteration,
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
