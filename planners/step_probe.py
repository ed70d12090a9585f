"""Training steps timed in a probe process, every step under a cap (``CappedStepTimer``).

The ``StepTimer`` the cpu profile's planning uses (``planners/throughput.py`` says what is timed and
why): the steps run in a separate process (``autoseg.capped``) so that a step that never returns, or a
native crash inside one, costs that precision/layout combination and not the planning.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from autoseg.plans import NetworkPlan
from autoseg.planners.throughput import (BF16_CAP_RATIO, MIN_BF16_CAP_S, QUIET_PARALLEL_SHARE, TIMED_ROUNDS, Combo,
                                         StepTiming)

log = logging.getLogger(__name__)


class CappedStepTimer:
    """A ``StepTimer`` that times in a probe process (``autoseg.capped``), every step under a cap.

    A step that overruns its cap is abandoned: the probe process is killed, the combination
    recorded as abandoned (with the cap), and the candidate timed again without it. Caps: the warm-up
    step ``2 x cap_s``, a timed step ``cap_s``, a bf16 step at most ``BF16_CAP_RATIO`` x the fp32
    warm-up step of the same network (never under ``MIN_BF16_CAP_S``). ``references`` collects the
    probe's reference timings (``contention``)."""

    def __init__(self, in_channels: int, num_classes: int, cap_s: float, threads: Optional[int] = None,
                 rounds: int = TIMED_ROUNDS, child=None,
                 target: str = "autoseg.planners.step_timing:time_step_rounds"):
        from autoseg.capped import CappedChild

        self.target = target  # what the probe process runs (tests give a fake of the same protocol)
        self.in_channels, self.num_classes, self.cap_s, self.rounds = in_channels, num_classes, cap_s, rounds
        self.child = child if child is not None else CappedChild(threads)
        self.references: list[dict] = []

    def close(self) -> None:
        self.child.close()

    def __call__(self, net: NetworkPlan, patch: tuple[int, ...], batch: int, combos: tuple[Combo, ...]) -> StepTiming:
        from autoseg.capped import ProbeFailed, ProbeTimeout
        from autoseg.serialization import to_jsonable

        abandoned, remaining = [], list(combos)
        while remaining:
            steps: dict[int, list[float]] = {}
            dropped: list[Combo] = []
            caps = _StepCaps(remaining, self.cap_s)
            kwargs = dict(network=to_jsonable(net), patch=list(patch), batch=batch, in_channels=self.in_channels,
                          num_classes=self.num_classes, combos=[list(c) for c in remaining], rounds=self.rounds)
            try:
                for event in self.child.call(self.target, kwargs, caps):
                    if event["kind"] == "step":
                        steps.setdefault(event["combo"], []).append(event["seconds"])
                    elif event["kind"] == "drop":
                        dropped.append(tuple(remaining[event["combo"]]))
                    elif event["kind"] in ("threads", "ref"):
                        self.references.append(event)
            except ProbeTimeout as stop:
                running = caps.running
                if running is None:  # not inside a step (building the network): nothing more to try
                    abandoned += [f"{p} {f}: the probe gave no answer within {stop.cap_s:.0f} s" for p, f in remaining]
                    break
                p, f = remaining[running]
                abandoned.append(f"{p} {f}: a step took over {stop.cap_s:.1f} s (abandoned)")
                log.warning("timing %s wide network, patch %s, batch %d: a %s %s step took over %.1f s; abandoned",
                            net.features_per_stage[0], tuple(patch), batch, p, f, stop.cap_s)
                remaining.pop(running)
                continue
            except ProbeFailed as crash:  # a native crash in a step (seen: "double free" in a ResEnc step)
                if not crash.died:
                    raise
                running = caps.running
                if running is None:
                    abandoned += [f"{p} {f}: the probe process died ({crash})" for p, f in remaining]
                    break
                p, f = remaining[running]
                abandoned.append(f"{p} {f}: the probe process died in a step ({crash}); abandoned")
                log.warning("timing %s wide network, patch %s, batch %d: the probe process died in a %s %s step "
                            "(%s); abandoned", net.features_per_stage[0], tuple(patch), batch, p, f, crash)
                remaining.pop(running)
                continue
            seconds: dict[str, dict[str, float]] = {}
            for i, (p, f) in enumerate(remaining):
                timed = sorted(steps.get(i, [])[1:])  # round 0 is the warm-up
                if timed:
                    seconds.setdefault(p, {})[f] = timed[len(timed) // 2]
            return StepTiming(seconds, tuple(abandoned), tuple(dropped))
        return StepTiming({}, tuple(abandoned))

    def busy(self) -> bool:
        """Whether the reference convolution showed other work on the cores (True when not known)."""
        return bool(self.contention().get("busy", True))

    def contention(self) -> dict:
        """The reference convolution's timings (``planners/step_timing.py``): on one thread and on all
        (``parallel_speedup``, the best seen), and ``busy``: whether other work held the cores."""
        threads = [e for e in self.references if e["kind"] == "threads"]
        if not threads:
            return {}
        n = threads[0]["threads"]
        speedup = max(e["one"] / max(e["all"], 1e-9) for e in threads)
        refs = [e["seconds"] for e in self.references if e["kind"] == "ref"]
        return {"threads": n, "parallel_speedup": round(speedup, 3),
                "reference_spread": round(max(refs) / min(refs), 3) if refs else None,
                "busy": bool(n > 1 and speedup < QUIET_PARALLEL_SHARE * n)}


class _StepCaps:
    """The cap on the probe's next event, from the event before it (``CappedChild.call``)."""

    def __init__(self, combos: Sequence[Combo], cap_s: float):
        self.combos, self.cap_s = list(combos), cap_s
        self.running: Optional[int] = None  # the combination whose step is under way
        self.fp32_warmup: Optional[float] = None

    def __call__(self, event: Optional[dict]) -> float:
        self.running = None
        if event is not None and event["kind"] == "step":
            self.record(event)
        if event is None or event["kind"] != "start":
            return self.cap_s if event is not None else 2 * self.cap_s  # the first event: network built
        self.running = event["combo"]
        cap = 2 * self.cap_s if event["round"] == 0 else self.cap_s
        if self.combos[self.running][0] == "bf16" and self.fp32_warmup is not None:
            cap = min(cap, max(MIN_BF16_CAP_S, BF16_CAP_RATIO * self.fp32_warmup))
        return cap

    def record(self, event: dict) -> None:
        if event["kind"] == "step" and event["round"] == 0 and self.combos[event["combo"]][0] == "fp32":
            self.fp32_warmup = min(self.fp32_warmup or float("inf"), event["seconds"])
