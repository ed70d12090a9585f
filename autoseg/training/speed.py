"""Training watches its own speed: the first steps against what the planning timed, and every step
against a watchdog, so that a run never goes on silently for days or waits forever.

- ``check_speed``: after the warm-up, the measured seconds per iteration against the step the
  planning timed for this network, precision and layout (``throughput.json``) with its overhead
  (``STEP_OVERHEAD``). Far slower: a warning in plain words (what was expected, what was measured,
  what to do). With a time budget on a CPU the width is re-checked against that speed
  (``planners.throughput.recheck_width``): on a machine that was busy while planning, the planning
  timed every width slower than training runs it and chose too narrow a network, and the other way
  round. A fixed schedule gets its duration at the measured speed, with a warning beyond a day.
- ``StepWatchdog``: a thread that warns when one step takes far longer than the steps before it
  (or than planned), and ends the process with a message when it takes longer still: a kernel that
  never returns (oneDNN's bf16 backward of shallow, wide 3D patches on CPUs with AMX did not return
  within 22 minutes where fp32 took 0.15 s) cannot be interrupted from Python, so the run is ended,
  never waited for.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

SLOW_FACTOR = 3.0  # measured / planned seconds per iteration above which training says so
RECHECK_OUTSIDE = (0.75, 1.33)  # the width is re-checked when measured / planned falls outside this
DATA_BOUND_SHARE = 0.5  # warm-up iterations spent waiting for batches above this: no width re-check
LONG_RUN_S = 24 * 3600.0  # a fixed schedule estimated longer than this gets a warning
WATCHDOG_WARN = (60.0, 20.0)  # warn after max(60 s, 20 x the typical step)
WATCHDOG_ABORT = (900.0, 200.0)  # end the run after max(900 s, 200 x the typical step)


@dataclass(frozen=True)
class SpeedReport:
    """What the warm-up showed: ``scale`` = measured / expected seconds per iteration (None: nothing
    was timed at planning), lines for the log, and the width to train instead (None: keep it)."""

    scale: Optional[float]
    messages: tuple[tuple[int, str], ...]  # (logging level, message)
    new_width: Optional[int] = None


def check_speed(per_iteration_s: float, data_wait_share: float, expected_step_s: Optional[float],
                overhead: float, *, remaining_iterations: Optional[int] = None,
                rechoose: Optional[Callable[[float], Optional[int]]] = None,
                width: Optional[int] = None) -> SpeedReport:
    """The verdict on the warm-up's ``per_iteration_s`` (seconds per iteration, batches included;
    ``data_wait_share`` of it spent waiting for them). ``expected_step_s``: the step timed at planning
    for this network, precision and layout (None: not timed), plus ``overhead`` for everything
    around it. ``remaining_iterations``: of a fixed schedule (None with a time budget).
    ``rechoose(scale)``: the width for the budget if every planned step took ``scale`` times as long
    (``recheck_width``); called when ``scale`` is outside ``RECHECK_OUTSIDE`` and the run is not
    waiting on its batches; ``width``: the width being trained.

    Example: planned 0.15 s (x 1.15 = 0.17 s), measured 0.93 s: scale 5.4, a warning."""
    messages = []
    scale = None
    if expected_step_s:
        scale = per_iteration_s / (expected_step_s * overhead)
        if scale > SLOW_FACTOR:
            messages.append((logging.WARNING, (
                f"training runs at {per_iteration_s:.2f} s per iteration, {scale:.1f} times the "
                f"{expected_step_s * overhead:.2f} s expected from the step timed when planning "
                f"({expected_step_s:.3f} s, throughput.json). Other work is probably taking the CPU "
                f"({100 * data_wait_share:.0f}% of the time went to waiting for batches); with a time "
                "budget the run trains fewer iterations, without one it takes longer. Stop the other work, "
                "or run 'autoseg plan_and_preprocess' again on the machine as it is now.")))
    new_width = None
    if (scale is not None and rechoose is not None and not RECHECK_OUTSIDE[0] <= scale <= RECHECK_OUTSIDE[1]
            and data_wait_share <= DATA_BOUND_SHARE):
        chosen = rechoose(scale)
        if chosen is not None and chosen != width:
            new_width = chosen
            messages.append((logging.WARNING, (
                f"the first steps ran {scale:.2f} times as long as the planning timed them: at that speed "
                f"network width {chosen} fits the time budget better than {width}; training restarts with "
                f"width {chosen}")))
    if remaining_iterations is not None:
        hours = remaining_iterations * per_iteration_s / 3600
        line = (f"at {per_iteration_s:.2f} s per iteration the remaining {remaining_iterations} iterations "
                f"take about {hours:.1f} h")
        if hours * 3600 > LONG_RUN_S:
            messages.append((logging.WARNING, line + ("; to fit the training to the time you have, use "
                                                      "--time-budget (for example --time-budget 8h)")))
        else:
            messages.append((logging.INFO, line))
    return SpeedReport(scale, tuple(messages), new_width)


def warm_up_verdict(warm: list[tuple[float, float]], expected_step_s: Optional[float], budget, remaining: int,
                    throughput: Optional[dict], plans, configuration: str, precision: str,
                    recheck: bool) -> SpeedReport:
    """``check_speed`` on the warm-up's steps ((seconds, of which waiting for the batch) each; the
    first, which builds oneDNN's kernels, left out) of a run with ``budget``
    (``schedule.Budget``) and ``remaining`` iterations in a fixed schedule; with ``recheck`` the width
    for the rest of the budget at that speed (``planners.throughput.recheck_width``, in ``precision``
    as the run asked for it)."""
    from autoseg.planners.throughput import STEP_OVERHEAD, recheck_width

    steps = [s for s, _ in warm[1:]] or [warm[0][0]]
    per_iteration = float(sorted(steps)[len(steps) // 2])
    wait_share = sum(w for _, w in warm[1:]) / max(sum(steps), 1e-9)

    def rechoose(scale: float):
        left = budget.cfg.schedule.time_budget_s - budget.elapsed()
        return recheck_width(throughput, plans, configuration, left, scale, precision)

    report = check_speed(per_iteration, wait_share, expected_step_s, STEP_OVERHEAD,
                         remaining_iterations=None if budget.active else remaining,
                         rechoose=rechoose if recheck else None,
                         width=plans.configuration(configuration).network.features_per_stage[0])
    return report


class RunMonitor:
    """What watches a run's steps, as one collaborator of the training loop: the ``StepWatchdog``, the
    ``ThreadGovernor`` (a CPU's threads, ``threads``; 1: nothing to govern) and, once, the warm-up's
    verdict: ``verdict(warm)`` (``warm_up_verdict`` with the run's particulars) after
    ``warmup`` steps or at the last step of a shorter run. ``step_done`` returns the width the run
    should start again with (None: go on)."""

    def __init__(self, expected_step_s: Optional[float], threads: int, verdict: Callable[[list], SpeedReport],
                 warmup: int, logger: logging.Logger = log):
        self.watchdog = StepWatchdog(expected_step_s, logger=logger)
        self.governor = ThreadGovernor(threads, logger=logger) if threads > 1 else None
        self.verdict, self.warmup, self.log = verdict, warmup, logger
        self.warm: Optional[list[tuple[float, float]]] = []  # (seconds, of which waiting for the batch)

    def __enter__(self) -> "RunMonitor":
        self.watchdog.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.__exit__(*exc)

    def step_started(self) -> None:
        self.watchdog.step_started()

    def step_done(self, seconds: float, wait_s: float, last: bool) -> Optional[int]:
        self.watchdog.step_done(seconds)
        if self.governor is not None:
            self.governor.step_done(seconds - wait_s)
        if self.warm is None:
            return None
        self.warm.append((seconds, wait_s))
        if len(self.warm) < self.warmup and not last:
            return None
        report = self.verdict(self.warm)
        for level, message in report.messages:
            self.log.log(level, "%s", message)
        self.warm = None  # checked once
        return report.new_width


class StepWatchdog:
    """Watches the training steps (or prediction's forward passes: ``what``, ``advice``) from a
    thread of its own.

    ``step_started()`` before each step and ``step_done(seconds)`` after it. When a step has run for
    ``max(WATCHDOG_WARN[0], WATCHDOG_WARN[1] x typical)`` it logs a warning; at ``max(WATCHDOG_ABORT[0],
    WATCHDOG_ABORT[1] x typical)`` it logs an error and calls ``on_stuck(message)`` (by default: end
    the process with exit code 2; the main thread is inside a kernel and cannot be reached). The
    typical step is the median of those done, else ``expected_step_s``, else unknown (then the
    minimums alone count). ``limits`` replaces the two (minimum, factor) pairs (tests); ``logger``
    takes the messages (the trainer's, which writes training.log)."""

    TRAINING_ADVICE = ("The run is ended; its last checkpoint is kept. Train in fp32 (--set runtime.precision=fp32), or "
                       "run 'autoseg plan_and_preprocess' on this machine so that the precision is chosen from "
                       "timed steps, then resume with --continue.")
    PREDICT_ADVICE = "Prediction is ended. Predict in fp32 (--precision fp32)."

    def __init__(self, expected_step_s: Optional[float] = None, on_stuck: Optional[Callable[[str], None]] = None,
                 limits: tuple[tuple[float, float], tuple[float, float]] = (WATCHDOG_WARN, WATCHDOG_ABORT),
                 poll_s: float = 1.0, logger: logging.Logger = log, what: str = "training step",
                 advice: str = TRAINING_ADVICE):
        self.expected, self.limits, self.poll_s, self.log = expected_step_s, limits, poll_s, logger
        self.what, self.advice = what, advice
        self.on_stuck = on_stuck or (lambda message: _end_process(logger))
        self._recent: list[float] = []
        self._started: Optional[float] = None
        self._step = 0
        self._warned = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="autoseg-step-watchdog", daemon=True)

    def __enter__(self) -> "StepWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def step_started(self) -> None:
        with self._lock:
            self._started, self._warned = time.perf_counter(), False
            self._step += 1

    def step_done(self, seconds: float) -> None:
        with self._lock:
            self._started = None
            self._recent = (self._recent + [seconds])[-20:]

    def typical(self) -> Optional[float]:
        if len(self._recent) >= 3:
            return sorted(self._recent)[len(self._recent) // 2]
        return self.expected

    def limits_s(self) -> tuple[float, float]:
        typical = self.typical() or 0.0
        (warn_min, warn_factor), (abort_min, abort_factor) = self.limits
        return max(warn_min, warn_factor * typical), max(abort_min, abort_factor * typical)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                started, step = self._started, self._step
            if started is None:
                continue
            running = time.perf_counter() - started
            warn_s, abort_s = self.limits_s()
            typical = self.typical()
            usual = f"they took {typical:.2f} s" if typical else "none had finished yet"
            if running >= abort_s:
                message = (f"{self.what} {step} has run for {running:.0f} s where {usual}: a kernel of this "
                           f"machine is stuck (seen with bf16 on shallow 3D patches on CPUs with AMX). {self.advice}")
                self.log.error("%s", message)
                self._stop.set()
                self.on_stuck(message)
                return
            if running >= warn_s and not self._warned:
                self._warned = True
                self.log.warning("%s %d has run for %.0f s where %s; it is ended at %.0f s if it does not finish",
                                 self.what, step, running, usual, abort_s)


class ThreadGovernor:
    """Keeps a CPU training on the thread count whose steps run fastest now: all of the usable CPUs,
    or one fewer when another process holds a core.

    torch's OpenMP threads spin at every barrier while they wait for the slowest of them; when
    another process of the same priority runs on one of the cores, the thread sharing it falls
    behind and the step takes far longer than on one thread fewer (measured in
    docs/experiments/threads_under_contention.md).

    A try is a duel: ``trial`` steps on the other count, then ``trial`` steps back on the current one
    (the first step after each switch left out), so that both are measured alike just after a switch;
    the other count wins when its median step is under ``margin`` x the current one's. (Comparing a
    try with the steps before it switched back and forth on a quiet machine: the steps right after a
    switch ran faster than the steady ones.) Tries come ``first_after`` steps into the run, then
    ``interval`` steps apart, doubling each time the try loses (up to ``max_interval``), and at once
    when the recent steps run ``slowdown`` times slower than the best seen at the current count (a
    job that starts beside the training). ``step_done`` takes each step's compute seconds (without the
    wait for its batch); ``set_threads`` applies a count (``torch.set_num_threads``); ``logger`` gets a
    line per switch."""

    def __init__(self, threads: int, set_threads: Optional[Callable[[int], None]] = None, trial: int = 6,
                 first_after: int = 20, interval: int = 200, max_interval: int = 3200, slowdown: float = 1.3,
                 margin: float = 0.8, logger: logging.Logger = log):
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.counts = (threads, threads - 1) if threads > 1 else (threads,)
        self.set_threads, self.trial, self.max_interval = set_threads, trial, max_interval
        self.interval = self.base_interval = interval
        self.slowdown, self.margin, self.log = slowdown, margin, logger
        self.current = threads
        self.phase: Optional[str] = None  # "other", then "back" during a duel
        self.recent: list[float] = []  # the current count's last steps
        self.duel: dict[str, list[float]] = {}
        self.best: dict[int, float] = {}  # the best median of ``trial`` steps seen per count
        self.next_try = first_after
        self.steps = 0

    @property
    def active(self) -> bool:
        return len(self.counts) > 1

    def step_done(self, seconds: float) -> None:
        if not self.active:
            return
        self.steps += 1
        if self.phase is not None:
            self.duel[self.phase].append(seconds)
            if len(self.duel[self.phase]) > self.trial:  # the first step after a switch is left out
                if self.phase == "other":
                    self.phase = "back"
                    self.set_threads(self.current)
                else:
                    self._decide()
            return
        self.recent = (self.recent + [seconds])[-self.trial:]
        if len(self.recent) == self.trial:
            median = _median(self.recent)
            self.best[self.current] = min(self.best.get(self.current, median), median)
            if self.steps >= self.next_try or median > self.slowdown * self.best[self.current]:
                self.phase, self.duel = "other", {"other": [], "back": []}
                self.set_threads(self.other)

    @property
    def other(self) -> int:
        return next(c for c in self.counts if c != self.current)

    def _decide(self) -> None:
        other, mine = _median(self.duel["other"][1:]), _median(self.duel["back"][1:])
        if other < self.margin * mine:
            self.log.info("training on %d thread(s) instead of %d: %.3f s per step against %.3f s (another "
                          "process is using the CPU, or has stopped)", self.other, self.current, other, mine)
            self.current, self.interval = self.other, self.base_interval
            self.set_threads(self.current)
            self.best[self.current], self.recent = other, self.duel["other"][1:]
            gap = self.interval
        else:  # stay; the current speed is the new normal, so the same slowdown does not trigger again
            self.best[self.current], self.recent = mine, self.duel["back"][1:]
            gap, self.interval = self.interval, min(self.max_interval, self.interval * 2)
        self.phase, self.duel = None, {}
        self.next_try = self.steps + gap


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _end_process(logger: logging.Logger) -> None:
    handlers, current = [], logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    for handler in handlers:
        try:
            handler.flush()
        except Exception:  # a handler that cannot flush must not keep the process alive
            pass
    os._exit(2)
