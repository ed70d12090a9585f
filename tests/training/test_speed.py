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
    assert "training step 4 has run for" in stuck[0] and "--set runtime.precision=fp32" in stuck[0]
    assert any("it is ended at 1 s" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_watchdog_scales_its_limits_with_the_typical_step():
    dog = StepWatchdog(None, on_stuck=lambda m: None)
    assert dog.limits_s() == (60.0, 900.0)  # nothing known: the minimums
    for s in (10.0, 12.0, 11.0):
        dog.step_done(s)
    assert dog.limits_s() == (20 * 11.0, 200 * 11.0)  # median 11 s
    assert StepWatchdog(5.0, on_stuck=lambda m: None).limits_s() == (100.0, 1000.0)  # planned 5 s


class FakeMachine:
    """Step seconds by thread count, changeable mid-run (another process starting or stopping)."""

    def __init__(self, seconds: dict):
        self.seconds, self.threads, self.calls = dict(seconds), 2, []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)

    def run(self, governor, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            used.append(self.threads)
            governor.step_done(self.seconds[self.threads])
        return used


def test_a_quiet_machine_keeps_all_threads_and_tries_the_other_ever_more_rarely():
    from autoseg.training.speed import ThreadGovernor

    machine = FakeMachine({2: 0.47, 1: 0.79})
    governor = ThreadGovernor(2, machine.set_threads, trial=4, first_after=10, interval=20, max_interval=80)
    used = machine.run(governor, 400)
    # duels of 5 steps on 1 thread then 5 back on 2 (the first of each left out), each ending 20, 40,
    # 80, 80, ... steps before the next: they start after steps 10, 40, 90, 180, 270, 360
    starts = [i for i in range(1, 400) if used[i] == 1 and used[i - 1] == 2]
    assert starts == [10, 40, 90, 180, 270, 360] and used.count(1) == 5 * 6
    assert used[15:20] == [2] * 5  # the duel's second half, back on 2


def test_a_job_starting_beside_the_training_moves_it_to_one_thread_fewer_and_back_when_it_ends():
    from autoseg.training.speed import ThreadGovernor

    machine = FakeMachine({2: 0.47, 1: 0.79})
    governor = ThreadGovernor(2, machine.set_threads, trial=4, first_after=10, interval=20, max_interval=1000)
    machine.run(governor, 100)  # quiet: the tries lost, the interval grew to 80
    machine.seconds = {2: 1.23, 1: 0.81}  # a busy process starts
    used = machine.run(governor, 16)
    assert used[-1] == 1  # noticed within a window of steps, a duel, won: no waiting for the interval
    machine.run(governor, 30)
    assert machine.threads == 1
    machine.seconds = {2: 0.47, 1: 0.79}  # the other process ends: the next duel (20 steps on) wins
    used = machine.run(governor, 40)
    assert used[:10] == [1] * 10 and used[-10:] == [2] * 10


def test_one_thread_has_no_other_count_to_try():
    from autoseg.training.speed import ThreadGovernor

    machine = FakeMachine({1: 0.5})
    machine.threads = 1
    governor = ThreadGovernor(1, machine.set_threads)
    assert not governor.active and machine.run(governor, 100) == [1] * 100 and machine.calls == []
