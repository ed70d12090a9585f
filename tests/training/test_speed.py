"""Training watches its speed (autoseg/training/speed.py): the warm-up against the planned step, the
width re-checked for the budget, and a watchdog that never waits for a stuck step."""
import logging
import threading
import time

import pytest

from autoseg.training.speed import SLOW_FACTOR, StepWatchdog, check_speed


def test_a_warm_up_far_slower_than_planned_is_reported_in_plain_words():
    # planned 0.15 s x 1.15 = 0.1725 s; measured 0.93 s: 5.4 times
    report = check_speed(0.93, 0.1, 0.15, 1.15)
    assert report.scale == pytest.approx(0.93 / 0.1725)
    (level, message), = report.messages
    assert level == logging.WARNING
    assert "0.93 s per iteration, 5.4 times the 0.17 s expected" in message and "throughput.json" in message
    assert report.new_width is None
    # within SLOW_FACTOR: nothing to say
    assert check_speed(0.1725 * SLOW_FACTOR * 0.99, 0.1, 0.15, 1.15).messages == ()
    # nothing timed at planning: no verdict
    unknown = check_speed(0.93, 0.1, None, 1.15, rechoose=lambda s: 16, width=8)
    assert unknown.scale is None and unknown.messages == () and unknown.new_width is None


def test_the_width_is_rechecked_only_outside_the_noise_and_when_not_waiting_for_batches():
    asked = []

    def rechoose(scale):
        asked.append(scale)
        return 16

    # a sixth of the planned time: re-checked, another width
    report = check_speed(0.1725 / 6, 0.05, 0.15, 1.15, rechoose=rechoose, width=8)
    assert asked == [pytest.approx(1 / 6)] and report.new_width == 16
    assert "restarts with width 16" in report.messages[-1][1]
    # 1.2 times: inside (0.75, 1.33), not re-checked
    asked.clear()
    assert check_speed(0.1725 * 1.2, 0.05, 0.15, 1.15, rechoose=rechoose, width=8).new_width is None and not asked
    # the same width back: no restart
    assert check_speed(0.1725 / 6, 0.05, 0.15, 1.15, rechoose=lambda s: 8, width=8).new_width is None
    # waiting for batches 60% of the time: a narrower network would not be faster
    assert check_speed(0.1725 * 4, 0.6, 0.15, 1.15, rechoose=rechoose, width=16).new_width is None


def test_a_fixed_schedule_gets_its_duration_and_a_warning_beyond_a_day():
    (level, message), = check_speed(0.5, 0.0, None, 1.15, remaining_iterations=7200).messages
    assert level == logging.INFO and "remaining 7200 iterations take about 1.0 h" in message
    (level, message), = check_speed(2.0, 0.0, None, 1.15, remaining_iterations=250_000).messages
    assert level == logging.WARNING and "138.9 h" in message and "--time-budget" in message


def test_the_watchdog_warns_then_ends_a_step_that_never_returns(caplog):
    stuck = []
    done = threading.Event()

    def on_stuck(message):
        stuck.append(message)
        done.set()

    with caplog.at_level(logging.WARNING):
        with StepWatchdog(0.01, on_stuck=on_stuck, limits=((0.2, 5.0), (0.6, 10.0)), poll_s=0.02) as dog:
            for _ in range(3):  # quick steps: nothing to say
                dog.step_started()
                time.sleep(0.01)
                dog.step_done(0.01)
            assert dog.limits_s() == (0.2, 0.6)
            dog.step_started()  # this one never finishes
            started = time.perf_counter()
            assert done.wait(5)
            waited = time.perf_counter() - started
    assert 0.6 <= waited < 2.0
    assert "training step 4 has run for" in stuck[0] and "--set precision=fp32" in stuck[0]
    assert any("it is ended at 1 s" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_watchdog_scales_its_limits_with_the_typical_step():
    dog = StepWatchdog(None, on_stuck=lambda m: None)
    assert dog.limits_s() == (60.0, 900.0)  # nothing known: the minimums
    for s in (10.0, 12.0, 11.0):
        dog.step_done(s)
    assert dog.limits_s() == (20 * 11.0, 200 * 11.0)  # median 11 s
    assert StepWatchdog(5.0, on_stuck=lambda m: None).limits_s() == (100.0, 1000.0)  # planned 5 s
