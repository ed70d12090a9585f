"""The schedule of one fold: fixed by its ``TrainConfig``, or fitted to its time budget after a
warm-up and re-fitted every epoch (the arithmetic is in ``budget``; this is the state that applies
it during a run, and what the checkpoint keeps of it)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.inference.fast_forward import inference_forward
from autoseg.preprocess.storage import load_properties
from autoseg.training.budget import (MARGIN_FRACTION, VALIDATION_SAFETY, VALIDATION_SHARE, WARMUP_ITERATIONS,
                                     choose_validation_mirroring, epochs_holding, estimate_validation_seconds,
                                     fit_schedule, refit_iterations, validation_mirror_options)
from autoseg.training.train_config import TrainConfig

log = logging.getLogger("autoseg.training.trainer")  # its lines belong in the fold's training.log


class Budget:
    """The schedule of one fold: fixed by the config, or fitted to ``cfg.schedule.time_budget_s``."""

    def __init__(self, cfg: TrainConfig, started_at: float, data_dir: Path, val_ids: list[str], configuration_plan,
                 fitted: bool):
        self.cfg, self.started_at, self.fitted = cfg, started_at, fitted
        self.active = cfg.schedule.time_budget_s is not None
        self.val_shapes = [load_properties(data_dir, c).shape_after_resample for c in val_ids] if self.active else []
        self.patch = tuple(configuration_plan.patch_size)
        first_kernel = configuration_plan.network.kernel_sizes[0]
        self.mirror_options = validation_mirror_options(first_kernel) if self.active else [()]
        self.mirroring_logged = False
        self.validation_s = 0.0
        self.forward_readings: list[float] = []  # per epoch: seconds per forward pass in its patch validation
        self.step_times: list[float] = []  # seconds per iteration during the warm-up, data wait included
        if self.active and not fitted:  # until the warm-up has measured the speed: one short epoch
            self.cfg = cfg.with_(schedule=dict(num_epochs=1, num_iterations_per_epoch=WARMUP_ITERATIONS,
                                               num_val_iterations_per_epoch=1))

    def _estimate_validation(self, per_forward: float) -> None:
        """``validation_s`` from ``per_forward`` (seconds per patch), with the mirror axes chosen so
        that the final validation stays a small share of the budget (``choose_validation_mirroring``;
        the choice goes to ``cfg.validation.mirror_axes``)."""
        def estimate(axes: tuple[int, ...]) -> float:
            return VALIDATION_SAFETY * estimate_validation_seconds(
                self.val_shapes, self.patch, self.cfg.validation.mirroring, self.cfg.validation.step_size,
                per_forward, mirror_axes=axes)

        if not self.cfg.validation.mirroring:
            self.validation_s = estimate(())
            return
        axes, self.validation_s = choose_validation_mirroring(self.cfg.schedule.time_budget_s, estimate,
                                                              self.mirror_options)
        every = self.mirror_options[0]
        before = every if self.cfg.validation.mirror_axes is None else tuple(self.cfg.validation.mirror_axes)
        if axes != before or not self.mirroring_logged:
            self.mirroring_logged = True
            log.info("final validation mirrors %s (~%.0f s%s)", f"axes {list(axes)}" if axes else "no axis",
                     self.validation_s, "" if axes == every else
                     f"; every axis would take ~{estimate(every):.0f} s, over {100 * VALIDATION_SHARE:.0f}% of the "
                     "budget")
            self.cfg = self.cfg.with_(**{"validation.mirror_axes": None if axes == every else axes})

    @property
    def total_iterations(self) -> int:
        return self.cfg.total_iterations

    @property
    def max_iterations(self) -> int:
        """An upper bound on the iterations this run can reach (for the batch iterator)."""
        return 10 ** 9 if self.active else self.total_iterations

    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at

    def needs_fit(self, iteration: int) -> bool:
        return self.active and not self.fitted and iteration >= WARMUP_ITERATIONS

    def fit(self, iteration: int, net, data: torch.Tensor, dev) -> None:
        """Measure seconds per iteration (warm-up minus its first step) and per forward pass."""
        steps = self.step_times[1:] or [self.elapsed() / max(1, iteration)]
        per_it = float(np.median(steps))
        net.eval()
        forward = inference_forward(net, self.cfg.runtime.precision, dev)
        with torch.no_grad():
            x = data[:1].to(dev)
            forward(x)
            t = time.perf_counter()
            forward(x)
            per_forward = time.perf_counter() - t
        net.train()
        self._estimate_validation(per_forward)
        sched = fit_schedule(self.cfg.schedule.time_budget_s, self.elapsed(), per_it, self.validation_s, iteration)
        self.cfg = self.cfg.with_(schedule=dict(num_epochs=sched.num_epochs, num_iterations=sched.num_iterations,
                                                num_iterations_per_epoch=sched.num_iterations_per_epoch,
                                                num_val_iterations_per_epoch=sched.num_val_iterations_per_epoch))
        self.fitted = True
        log.info("time budget %.0f s: %.2f s per iteration, %.3f s per forward pass, final validation ~%.0f s "
                 "-> %d epochs x %d iterations (%d in all)", self.cfg.schedule.time_budget_s, per_it, per_forward,
                 self.validation_s, sched.num_epochs, sched.num_iterations_per_epoch, sched.total_iterations)

    def refit(self, done_iterations: int, epoch_times: list[float], epoch_iterations: list[int],
              forward_s: float | None = None) -> None:
        """Re-fit the number of iterations (and so of epochs, the last one holding the rest) from the
        recent epochs' times and iterations; ``forward_s`` (seconds per sample in this epoch's patch
        validation) re-estimates the final validation from the median of the last three epochs'
        readings, so a slow spell (during the warm-up's measurement or one epoch's validation, e.g.
        another job on the machine) neither shortens the whole run nor the run's end."""
        if forward_s is not None and forward_s > 0:
            self.forward_readings.append(forward_s)
            typical = float(np.median(self.forward_readings[-3:]))
            self._estimate_validation(typical)
        # the last three epochs, not epoch 0 (start-up and warm-up) once there are others; a history
        # from before epoch_iterations was recorded has it for the epochs since the resume only
        k = min(3, len(epoch_iterations), max(1, len(epoch_times) - 1))
        recent, recent_its = epoch_times[len(epoch_times) - k:], epoch_iterations[len(epoch_iterations) - k:]
        before = self.total_iterations
        total = refit_iterations(self.cfg.schedule.time_budget_s, self.elapsed(), done_iterations, recent,
                                 recent_its, self.validation_s, before)
        if total != before:
            epochs = epochs_holding(total, self.cfg.schedule.num_iterations_per_epoch)
            log.info("time budget: %d iterations in %d epochs instead of %d (%.0f s left)", total, epochs, before,
                     self.cfg.schedule.time_budget_s - self.elapsed())
            self.cfg = self.cfg.with_(schedule=dict(num_epochs=epochs, num_iterations=total))

    def out_of_time(self, iteration: int) -> bool:
        """Whether a fitted budget has no time left for another iteration: what is left after the
        final validation's estimate and the margin is less than one iteration at the speed of the
        epochs so far. Checked after every step, so that a slow spell inside an epoch (another job
        starting) cannot run the training past its budget; the schedule then ends at ``iteration``."""
        if not (self.active and self.fitted):
            return False
        left = self.cfg.schedule.time_budget_s * (1 - MARGIN_FRACTION) - self.elapsed() - self.validation_s
        if left >= self.elapsed() / max(iteration, 1):
            return False
        self.end_at(iteration)
        return True

    def end_at(self, iteration: int) -> None:
        """The schedule ends at ``iteration`` (the time is up: ``out_of_time``, or rank 0 of a run
        on several processes found it so)."""
        if self.cfg.total_iterations > iteration:
            log.info("time budget: the time is up after %d iterations (%d were planned; %.0f s left for the "
                     "final validation, estimated %.0f s)", iteration, self.cfg.total_iterations,
                     self.cfg.schedule.time_budget_s - self.elapsed(), self.validation_s)
            epochs = epochs_holding(iteration, self.cfg.schedule.num_iterations_per_epoch)
            self.cfg = self.cfg.with_(schedule=dict(num_epochs=epochs, num_iterations=iteration))

    def state(self) -> dict:
        if not self.active:
            return {}
        s = self.cfg.schedule
        return {"fitted": self.fitted, "num_epochs": s.num_epochs, "num_iterations": s.num_iterations,
                "num_iterations_per_epoch": s.num_iterations_per_epoch,
                "num_val_iterations_per_epoch": s.num_val_iterations_per_epoch,
                "elapsed_s": self.elapsed(), "validation_s": self.validation_s}
