"""A probe in a child process under a wall-clock cap (autoseg/capped.py): answers pass through, a
probe that overruns is abandoned within its cap, and the child serves the next call afresh."""
import time
from pathlib import Path

import pytest

from autoseg.capped import CappedChild, ProbeFailed, ProbeTimeout

HERE = str(Path(__file__).resolve().parent)


def counting(n: int):
    for k in range(n):
        yield {"k": k}


def slow_after(fast: int, sleep_s: float):
    """``fast`` quick events, then one that takes ``sleep_s`` (a fake step stuck in a kernel)."""
    for k in range(fast):
        yield {"k": k}
    time.sleep(sleep_s)
    yield {"k": fast}


def failing():
    raise ValueError("bad probe input")


def test_events_come_back_in_order_and_a_plain_return_is_one_event():
    with CappedChild(python_path=[HERE]) as child:
        assert list(child.call("test_capped:counting", {"n": 3}, cap_s=30)) == [{"k": 0}, {"k": 1}, {"k": 2}]
        assert list(child.call("autoseg.planners.throughput:target_step_seconds", {"budget_s": 1800.0},
                               cap_s=30)) == [pytest.approx(1800 / (2500 * 1.15))]


def test_a_probe_that_overruns_its_cap_is_abandoned_within_the_cap():
    with CappedChild(python_path=[HERE]) as child:
        list(child.call("test_capped:counting", {"n": 1}, cap_s=30))  # the child is up: no start-up allowance
        seen = []
        started = time.perf_counter()
        with pytest.raises(ProbeTimeout) as stop:
            for event in child.call("test_capped:slow_after", {"fast": 2, "sleep_s": 60}, cap_s=1.0):
                seen.append(event)
        waited = time.perf_counter() - started
        assert seen == [{"k": 0}, {"k": 1}] and stop.value.last_event == {"k": 1}
        assert waited < 5  # 1 s cap, plus the kill; the 60 s sleep was never waited for
        # the killed child is replaced at the next call
        assert list(child.call("test_capped:counting", {"n": 2}, cap_s=30)) == [{"k": 0}, {"k": 1}]


def test_a_cap_may_depend_on_the_event_before():
    caps = []

    def cap_for(event):
        caps.append(event)
        return 0.5 if event == {"k": 1} else 30.0

    with CappedChild(python_path=[HERE]) as child:
        with pytest.raises(ProbeTimeout):
            list(child.call("test_capped:slow_after", {"fast": 2, "sleep_s": 30}, cap_s=cap_for))
    assert caps == [None, {"k": 0}, {"k": 1}]


def test_an_exception_in_the_probe_is_reported_with_its_traceback():
    with CappedChild(python_path=[HERE]) as child:
        with pytest.raises(ProbeFailed, match="bad probe input"):
            list(child.call("test_capped:failing", {}, cap_s=30))
        assert list(child.call("test_capped:counting", {"n": 1}, cap_s=30)) == [{"k": 0}]  # still serving


def fake_step_rounds(network, patch, batch, in_channels, num_classes, combos, rounds):
    """The events of planners/step_timing.py's time_step_rounds for fake steps: fp32 takes 0.01 s,
    a bf16 step never ends (as oneDNN's bf16 backward of shallow, wide 3D inputs on an AMX CPU)."""
    yield {"kind": "threads", "one": 0.02, "all": 0.011, "threads": 2}
    yield {"kind": "ready"}
    for r in range(rounds + 1):
        if r:
            yield {"kind": "ref", "round": r, "seconds": 0.01}
        for i, (precision, _) in enumerate(combos):
            yield {"kind": "start", "combo": i, "round": r}
            time.sleep(0.01 if precision == "fp32" else 600)
            yield {"kind": "step", "combo": i, "round": r, "seconds": 0.01 + 0.001 * i}


def time_fake_steps(target: str, combos: tuple) -> tuple:
    """(timer, timing) of ``CappedStepTimer`` running the fake probe ``target`` of this file for a
    small network, 30 s cap, 2 rounds."""
    from autoseg.planners.step_probe import CappedStepTimer
    from autoseg.plans import NetworkPlan

    net = NetworkPlan(dim=3, features_per_stage=(8, 16), kernel_sizes=((1, 3, 3),) * 2,
                      strides=((1, 1, 1), (1, 2, 2)))
    timer = CappedStepTimer(1, 4, cap_s=30, child=CappedChild(python_path=[HERE]), target=f"test_capped:{target}",
                            rounds=2)
    try:
        return timer, timer(net, (4, 128, 112), 2, combos)
    finally:
        timer.close()


def test_the_step_timer_abandons_a_combination_that_overruns_and_times_the_others():
    from autoseg.planners.throughput import MIN_BF16_CAP_S

    started = time.perf_counter()
    timer, timed = time_fake_steps("fake_step_rounds", (("fp32", "contiguous"), ("fp32", "channels_last"),
                                                        ("bf16", "contiguous")))
    # the bf16 step is capped at max(3 s, 10 x the 0.01 s fp32 warm-up) = 3 s, not the 30 s cap
    assert time.perf_counter() - started < MIN_BF16_CAP_S + 15
    assert timed.seconds == {"fp32": {"contiguous": pytest.approx(0.01), "channels_last": pytest.approx(0.011)}}
    assert len(timed.abandoned) == 1 and timed.abandoned[0].startswith("bf16 contiguous: a step took over 3.0 s")
    assert timer.contention()["parallel_speedup"] == pytest.approx(0.02 / 0.011, abs=1e-3)


def crashing_step_rounds(network, patch, batch, in_channels, num_classes, combos, rounds):
    """``fake_step_rounds`` whose bf16 step kills the process natively (as a "double free" in a
    oneDNN kernel did while a residual-encoder step was timed)."""
    import os

    yield {"kind": "threads", "one": 0.02, "all": 0.011, "threads": 2}
    yield {"kind": "ready"}
    for r in range(rounds + 1):
        for i, (precision, _) in enumerate(combos):
            yield {"kind": "start", "combo": i, "round": r}
            if precision == "bf16":
                os.abort()
            time.sleep(0.01)
            yield {"kind": "step", "combo": i, "round": r, "seconds": 0.01 + 0.001 * i}


def test_a_step_that_crashes_the_probe_is_abandoned_and_the_others_are_timed():
    _, timed = time_fake_steps("crashing_step_rounds", (("bf16", "contiguous"), ("fp32", "contiguous")))
    assert timed.seconds == {"fp32": {"contiguous": pytest.approx(0.01)}}  # timed again, alone, in a new child
    assert len(timed.abandoned) == 1 and timed.abandoned[0].startswith("bf16 contiguous: the probe process died")
    with CappedChild(python_path=[HERE]) as child:  # a Python error in the probe is still raised
        with pytest.raises(ProbeFailed) as failed:
            list(child.call("test_capped:failing", {}, cap_s=30))
        assert not failed.value.died
