"""Fitting the training schedule to a wall-clock budget (``autoseg train --time-budget 30m``).

The budget covers everything ``train_fold`` does, from its start to the end of the final
sliding-window validation. The schedule is fitted in two steps:

1. After a short warm-up (the first ``WARMUP_ITERATIONS`` iterations of epoch 0, trained at the
   initial learning rate as any schedule would), the measured seconds per iteration and seconds
   per forward pass give the number of iterations that fit::

       iterations = (budget - elapsed - final_validation - margin) / (seconds_per_iteration * (1 + v))

   where ``v`` is the share of patch validation per epoch. Epochs are sized so that the poly
   learning rate steps about ``TARGET_EPOCHS`` times (``iterations // TARGET_EPOCHS`` per epoch,
   between the warm-up length and 250); the last epoch may be shorter, so the run stops at the
   iteration the time allows rather than at the end of the last whole epoch that fits
   (``TrainConfig.num_iterations``).
2. At the end of every epoch the number of iterations is re-fitted from the measured seconds per
   iteration of the recent epochs (their patch validation included), so a machine that slows down
   (other jobs) or speeds up still ends on time. The poly schedule follows the new length from the
   next epoch on.

Example: a 30-minute budget, 2.0 s spent before the warm-up ended, 0.6 s per iteration, an
estimated 60 s final validation and a 2% margin (36 s) leave 1,702 s, so about 2,700 iterations
at v = 0.05: 2,711 iterations with the warm-up, 25 epochs of 108 and a 26th of 11.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence


WARMUP_ITERATIONS = 10
TARGET_EPOCHS = 25
MAX_ITERATIONS_PER_EPOCH = 250
MARGIN_FRACTION = 0.02
VALIDATION_SAFETY = 1.25  # the final-validation estimate is multiplied by this
# the final validation of a time-budgeted fold mirrors on fewer axes where every axis would take more
# than this share of the budget (choose_validation_mirroring)
VALIDATION_SHARE = 0.15

def split_budget(total_s: float, spent_s: float, remaining_runs: int) -> float:
    """Budget of the next of ``remaining_runs`` runs: what is left, shared equally.

    A run that ends early leaves its unused time to the ones after it:
    ``split_budget(3600, 0, 4) == 900``; ``split_budget(3600, 800, 3) == 933.3``."""
    if remaining_runs < 1:
        raise ValueError("remaining_runs must be >= 1")
    return max(0.0, total_s - spent_s) / remaining_runs


def count_tiles(shape: Sequence[int], patch: Sequence[int], step_size: float) -> int:
    """Sliding-window tiles of one image: ``count_tiles((40, 56, 40), (40, 56, 40), .5) == 1``,
    ``count_tiles((100,), (40,), .5) == 4`` (starts 0, 20, 40, 60)."""
    n = 1
    for size, p in zip(shape, patch):
        n *= 1 if size <= p else math.ceil((size - p) / (p * step_size)) + 1
    return n


def estimate_validation_seconds(shapes: Sequence[Sequence[int]], patch: Sequence[int], mirroring: bool,
                                step_size: float, seconds_per_forward: float, seconds_per_case: float = 0.1,
                                mirror_axes: Optional[Sequence[int]] = None) -> float:
    """Seconds to predict cases of preprocessed ``shapes`` (spatial, Z first) with the sliding window.

    ``patch`` has 2 entries for 2D configurations (every slice is predicted on its own) or 3.
    ``seconds_per_forward`` is one patch through the network without gradients; mirroring
    multiplies the forward passes by 2 ** (number of ``mirror_axes``; None: all axes);
    ``seconds_per_case`` covers resampling and writing."""
    dim = len(patch)
    mirrors = 2 ** (dim if mirror_axes is None else len(mirror_axes)) if mirroring else 1
    total = 0.0
    for shape in shapes:
        slices = shape[0] if dim == 2 else 1
        tiles = slices * count_tiles(shape[-dim:], patch, step_size)
        total += tiles * mirrors * seconds_per_forward + seconds_per_case
    return total


def validation_mirror_options(first_kernels: Sequence[int]) -> list[tuple[int, ...]]:
    """Mirror axes for the final validation, from the most copies to none: every axis; the in-plane
    axes alone where the network's first kernels skip one (the thick-slice axis of anisotropic data,
    kernel 1 there); none. ``validation_mirror_options((1, 3, 3)) == [(0, 1, 2), (1, 2), ()]``."""
    every = tuple(range(len(first_kernels)))
    in_plane = tuple(a for a, k in enumerate(first_kernels) if k > 1)
    return [every] + ([in_plane] if in_plane and in_plane != every else []) + [()]


def choose_validation_mirroring(budget_s: float, estimate: Callable[[tuple[int, ...]], float],
                                options: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], float]:
    """The first of ``options`` (``validation_mirror_options``) whose ``estimate`` (seconds of the final
    validation) is at most ``VALIDATION_SHARE`` of ``budget_s``, else the last; with its estimate.
    Why this share: docs/experiments/validation_cost.md."""
    for axes in options:
        seconds = estimate(axes)
        if seconds <= VALIDATION_SHARE * budget_s:
            return axes, seconds
    return options[-1], estimate(options[-1])


@dataclass(frozen=True)
class FittedSchedule:
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    num_iterations: int  # in all; the last epoch holds what is left of it

    @property
    def total_iterations(self) -> int:
        return self.num_iterations


def fit_schedule(budget_s: float, elapsed_s: float, seconds_per_iteration: float, validation_s: float,
                 done_iterations: int, val_share: float = 0.05) -> FittedSchedule:
    """The schedule that fits the rest of the budget after the warm-up (see the module docstring).

    ``done_iterations`` (the warm-up) are part of epoch 0, so an epoch is never shorter than them;
    when not even the warm-up fits, training stops after it (one epoch of ``done_iterations``)."""
    left = budget_s - elapsed_s - validation_s - MARGIN_FRACTION * budget_s
    more = max(0, int(left / (seconds_per_iteration * (1 + val_share))))
    total = max(1, done_iterations + more)
    per_epoch = min(MAX_ITERATIONS_PER_EPOCH, max(done_iterations, total // TARGET_EPOCHS, 1))
    val_its = validation_iterations(per_epoch, val_share)
    return FittedSchedule(epochs_holding(total, per_epoch), per_epoch, val_its, total)


def validation_iterations(per_epoch: int, val_share: float = 0.05) -> int:
    """Validation forward passes per epoch that take about ``val_share`` of its training time (a
    forward pass costs about 1/3 of a step): ``validation_iterations(95) == 14``."""
    return max(1, round(per_epoch * val_share * 3))


def epochs_holding(total_iterations: int, per_epoch: int) -> int:
    """Epochs of ``per_epoch`` iterations that hold ``total_iterations``, the last one holding the
    rest: ``epochs_holding(2711, 108) == 26`` (25 whole, 11 in the last)."""
    return max(1, math.ceil(total_iterations / per_epoch))


def refit_iterations(budget_s: float, elapsed_s: float, done_iterations: int, recent_epoch_s: Sequence[float],
                     recent_epoch_iterations: Sequence[int], validation_s: float, num_iterations: int) -> int:
    """Total number of iterations, re-fitted after ``done_iterations`` from the recent epochs' times
    (each with its patch validation) and iterations: what the rest of the budget holds at their
    seconds per iteration. Never fewer than those done; training ends when the value equals them.

    ``refit_iterations(1000, 400, 200, [50, 50], [50, 50], 80, 1000)``: 1 s per iteration, 500 s
    left after validation and the 20 s margin -> 700."""
    if not recent_epoch_s or not sum(recent_epoch_iterations):
        return num_iterations
    per_iteration = sum(recent_epoch_s) / sum(recent_epoch_iterations)
    left = budget_s - elapsed_s - validation_s - MARGIN_FRACTION * budget_s
    return done_iterations + max(0, int(left / per_iteration))
