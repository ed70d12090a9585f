"""Time-budgeted training: the arithmetic by hand, and a real tiny run that ends on time."""
import json
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.training.budget import (MARGIN_FRACTION, count_tiles, estimate_validation_seconds, fit_schedule,
                                     refit_iterations, split_budget)
from autoseg.training.checkpoint import load_checkpoint, load_trained_model
from autoseg.training.train_config import TrainConfig


def budgeted(time_budget_s: float, **sampling) -> TrainConfig:
    return TrainConfig().with_(**{"schedule.time_budget_s": time_budget_s}, sampling=sampling)


def test_split_budget_gives_unused_time_to_later_runs():
    assert split_budget(3600, 0, 4) == 900
    assert split_budget(3600, 800, 3) == pytest.approx(2800 / 3)
    assert split_budget(100, 150, 1) == 0


def test_tiles_and_validation_estimate():
    assert count_tiles((40, 56, 40), (40, 56, 40), 0.5) == 1
    assert count_tiles((100,), (40,), 0.5) == 4  # starts 0, 20, 40, 60
    assert count_tiles((30, 100), (40, 40), 0.5) == 4
    # 3D: 2 cases of 1 and 4 tiles, 8 mirrorings, 0.5 s per forward, 0.1 s per case
    assert estimate_validation_seconds([(40, 56, 40), (40, 56, 100)], (40, 56, 40), True, 0.5, 0.5) == \
        pytest.approx((1 + 4) * 8 * 0.5 + 2 * 0.1)
    # 2D: every slice on its own: 10 slices x 4 tiles, no mirroring
    assert estimate_validation_seconds([(10, 30, 100)], (40, 40), False, 0.5, 0.01, 0.0) == pytest.approx(0.4)


def test_fit_schedule_example_from_the_docstring():
    s = fit_schedule(1800, 2.0, 0.6, 60.0, done_iterations=10)
    left = 1800 - 2 - 60 - MARGIN_FRACTION * 1800  # 1702 s
    total = 10 + int(left / (0.6 * 1.05))  # 2711
    assert s.num_iterations_per_epoch == total // 25 == 108
    assert s.num_iterations == s.total_iterations == 2711
    assert s.num_epochs == 26  # 25 of 108 and the rest, 11, in a 26th
    assert s.num_val_iterations_per_epoch == round(108 * 0.05 * 3) == 16


def test_fit_schedule_when_only_the_warmup_fits():
    s = fit_schedule(20, 19.0, 0.5, 5.0, done_iterations=10)
    assert (s.num_epochs, s.num_iterations_per_epoch, s.num_iterations) == (1, 10, 10)


def test_refit_iterations_follows_the_measured_seconds_per_iteration():
    # 1000 s budget, 400 s spent after 200 iterations, the last epochs 50 s for 40 iterations each
    # (1.25 s per iteration), validation 80 s, margin 20 s: 500 s left -> 400 more, not whole epochs
    assert refit_iterations(1000, 400, 200, [50, 50], [40, 40], 80, num_iterations=1000) == 200 + 400
    # 503 s left: 402 more (a last epoch of 2 beyond ten whole ones)
    assert refit_iterations(1000, 397, 200, [50, 50], [40, 40], 80, num_iterations=1000) == 200 + 402
    # over time: no more iterations; nothing measured: unchanged
    assert refit_iterations(1000, 990, 280, [50], [40], 80, num_iterations=1000) == 280
    assert refit_iterations(1000, 400, 200, [], [], 80, num_iterations=1000) == 1000


@pytest.fixture
def prepared(synth_dataset, workspace):
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu",
                 "-c", "3d_fullres", "--root", str(workspace)]) == 0
    return Workspace(workspace)


class SimulatedClock:
    """Stands in for ``time.perf_counter`` in the trainer: every training step costs ``step_s``,
    every forward pass timed by the budget ``forward_s``, each validation case ``case_s``; all else
    is free. The budget logic then runs exactly as on a machine of that speed, without wall-clock
    flakiness on a busy test machine."""

    def __init__(self, step_s: float, case_s: float):
        self.now, self.step_s, self.case_s = 0.0, step_s, case_s

    def __call__(self) -> float:
        return self.now


def test_budget_is_respected_on_a_simulated_clock(prepared, monkeypatch):
    from autoseg.training import budget as budget_module
    from autoseg.training import fold_run, trainer

    clock = SimulatedClock(step_s=2.0, case_s=0.4)
    real_step, real_validation = fold_run.train_step, trainer.run_validation

    def step(*args):
        clock.now += clock.step_s
        return real_step(*args)

    def validation(fold_dir, ws, dataset, val_ids, dev, cfg):
        clock.now += clock.case_s * len(val_ids)
        return real_validation(fold_dir, ws, dataset, val_ids, dev, cfg)

    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    monkeypatch.setattr(fold_run, "train_step", step)
    monkeypatch.setattr(trainer, "run_validation", validation)
    budget = 200.0
    cfg = budgeted(budget, num_workers=0, batch_size=2)
    fold_dir = trainer.train_fold(prepared, "901", "3d_fullres", 0, cfg)
    used = clock.now
    # never over; under by the 2% margin, the final validation's safety factor and less than a step
    assert budget * 0.9 <= used <= budget, used
    saved = json.loads((fold_dir / "train_config.json").read_text())
    state = load_checkpoint(fold_dir / "checkpoint_final.pth")
    schedule = saved["schedule"]
    assert schedule["time_budget_s"] == budget
    assert saved["augmentation"]["order_data"] == 1  # resolved for the cpu and saved
    assert (saved["optim"]["optimizer"], saved["optim"]["initial_lr"]) == ("adamw", 1e-3)  # "auto" with a budget
    assert all("exp_avg" in s for s in state["optimizer"]["state"].values())
    assert state["iteration"] == schedule["num_iterations"] <= (schedule["num_epochs"]
                                                                * schedule["num_iterations_per_epoch"])
    # 200 s at 2 s per step, less validation and margin: about 90 iterations, not the default 250,000
    assert 80 <= state["iteration"] <= 100
    assert budget_module.WARMUP_ITERATIONS <= schedule["num_iterations_per_epoch"] <= 250


def test_several_folds_share_one_budget(prepared, monkeypatch):
    budgets = []
    monkeypatch.setattr("autoseg.training.trainer.train_fold",
                        lambda ws, ds, c, fold, cfg, *a, **k: budgets.append((fold, cfg.schedule.time_budget_s)))
    assert main(["train", "3d_fullres", "0", "1", "-d", "901", "--root", str(prepared.root),
                 "--time-budget", "10m"]) == 0
    assert [f for f, _ in budgets] == ["0", "1"]
    # the first fold returns at once here, so the second gets all that is left
    assert budgets[0][1] == pytest.approx(300, abs=1) and budgets[1][1] == pytest.approx(600, abs=1)
    from autoseg.training import run

    assert run.FOLDS == ("0", "1", "2", "3", "4")


def test_bad_fold_and_bad_budget_are_user_errors(prepared):
    root = ["-d", "901", "--root", str(prepared.root)]
    assert main(["train", "3d_fullres", "7", *root]) == 2
    assert main(["train", "3d_fullres", "0", *root, "--time-budget", "soon"]) == 2


def test_a_spent_budget_never_falls_back_to_the_default_schedule(prepared, monkeypatch):
    from autoseg.training import trainer

    budgets = []

    def slow_fold(ws, ds, c, fold, cfg, *a, **k):
        budgets.append(cfg.schedule.time_budget_s)
        clock[0] += 1000  # the first fold overruns the whole budget

    clock = [0.0]
    monkeypatch.setattr("autoseg.training.trainer.train_fold", slow_fold)
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
    assert main(["train", "3d_fullres", "0", "1", "-d", "901", "--root", str(prepared.root),
                 "--time-budget", "100s"]) == 0
    assert budgets == [50.0, 1.0]


def test_a_time_budget_trains_the_width_the_planning_timings_give_it(prepared, monkeypatch):
    """throughput.json gives one width 0.02 s per step and the others 10 s: a 200 s budget affords
    2,500 iterations of only that one (200 / (0.02 * 1.15) = 8,695; 200 / (10 * 1.15) = 17)."""
    from autoseg.device import resolve_precision
    from autoseg.training import fold_run, trainer

    pre = prepared.preprocessed / "Dataset901_Synth"
    planned = json.loads((pre / "plans.json").read_text())
    planned_width = planned["configurations"]["3d_fullres"]["network"]["features_per_stage"][0]
    target = 8 if planned_width != 8 else 16
    precision = resolve_precision("auto", torch.device("cpu"))
    (pre / "throughput.json").write_text(json.dumps({"precision": precision, "configurations": {"3d_fullres": {
        "candidates": [{"base_features": w, "seconds_per_step": 0.02 if w == target else 10.0}
                       for w in (8, 16, 24, 32)]}}}))
    clock = SimulatedClock(step_s=20.0, case_s=0.1)  # about 10 iterations
    real_step = fold_run.train_step

    def step(*args):
        clock.now += clock.step_s
        return real_step(*args)

    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    monkeypatch.setattr(fold_run, "train_step", step)
    fold_dir = trainer.train_fold(prepared, "901", "3d_fullres", 0, budgeted(200, num_workers=0, batch_size=2))
    fold_net = json.loads((fold_dir / "plans.json").read_text())["configurations"]["3d_fullres"]["network"]
    assert fold_net["features_per_stage"][0] == target
    # the dataset's plans are untouched; the trained model is rebuilt from the fold's own plans
    assert json.loads((pre / "plans.json").read_text()) == planned
    assert load_trained_model(fold_dir).network.heads[-1].in_channels == target
    assert (fold_dir / "validation" / "summary.json").is_file()
    # switched off, the planned width stays
    off = trainer.train_fold(prepared, "901", "3d_fullres", 1, budgeted(200, num_workers=0, batch_size=2).with_(
        **{"schedule.fit_width_to_budget": False}), validate=False)
    assert (json.loads((off / "plans.json").read_text())["configurations"]["3d_fullres"]["network"]
            == planned["configurations"]["3d_fullres"]["network"])


def test_final_validation_estimate_ignores_one_slow_epoch_but_follows_a_lasting_slowdown(monkeypatch):
    from types import SimpleNamespace

    from autoseg.training import schedule

    # the estimate is proportional to the forward time it is given: 1000 passes
    monkeypatch.setattr(schedule, "estimate_validation_seconds",
                        lambda shapes, patch, mirror, step, fwd, mirror_axes: 1000 * fwd)
    cfg = budgeted(10_000.0)
    budget = schedule.Budget(cfg, schedule.time.perf_counter(), Path("unused"), [], _plan((8, 8, 8)), fitted=True)
    safety = schedule.VALIDATION_SAFETY
    for forward_s, expected in ((0.1, 100), (0.1, 100), (0.5, 100), (0.5, 500), (0.1, 500), (0.1, 100)):
        budget.refit(10, [10.0, 10.0], [10, 10], forward_s)  # medians of the last three: 0.1 0.1 0.1 0.5 0.5 0.1
        assert budget.validation_s == pytest.approx(safety * expected)


def test_validation_iterations_take_a_twentieth_of_the_epoch():
    from autoseg.training.budget import validation_iterations

    # a forward pass costs 1/3 of a step, so 5% of the time is 15% as many passes as steps
    assert validation_iterations(95) == 14  # 14.25
    assert validation_iterations(250) == 38  # 37.5, rounded to even
    assert validation_iterations(2) == 1  # never none


def test_the_width_is_rechecked_from_the_warm_up_and_the_run_restarts_once(prepared, monkeypatch):
    """The planning (on this CPU) timed every width 100 s per step: far slower than the warm-up runs.
    The re-check is asked for the width at that speed; it answers 16, and the run starts again at 16,
    its time so far counted, never re-checked a second time."""
    from autoseg.device import cpu_identity
    from autoseg.training import trainer

    pre = prepared.preprocessed / "Dataset901_Synth"
    slow = {"fp32": {"contiguous": 100.0, "channels_last": 100.0}}
    (pre / "throughput.json").write_text(json.dumps({"cpu": cpu_identity(), "configurations": {"3d_fullres": {
        "candidates": [{"base_features": w, "seconds_per_step": 100.0, "precision": "fp32",
                        "seconds_by_precision": slow} for w in (8, 16)]}}}))
    asked = []

    def recheck(throughput, plans, configuration, budget_left, scale, precision):
        asked.append((plans.configuration(configuration).network.features_per_stage[0], scale, precision))
        return 16

    monkeypatch.setattr("autoseg.planners.throughput.recheck_width", recheck)
    fold = trainer.train_fold(prepared, "901", "3d_fullres", 0, budgeted(60, num_workers=0), validate=False)
    # the budget affords none of the timed widths: the fold starts at the narrowest
    assert len(asked) == 1 and asked[0][0] == 8 and asked[0][1] < 0.1 and asked[0][2] == "auto"
    assert json.loads((fold / "plans.json").read_text())["configurations"]["3d_fullres"]["network"][
        "features_per_stage"][0] == 16
    assert load_checkpoint(fold / "checkpoint_final.pth")["train_config"]["runtime"]["precision"] == "fp32"
    log = (fold / "training.log").read_text()
    assert "training restarts with width 16" in log and log.count("training Dataset901_Synth 3d_fullres") == 2


def test_recheck_width_example_from_the_docstring():
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.planners.experiment import plan_experiment
    from autoseg.planners.throughput import recheck_width

    throughput = {"configurations": {"3d_fullres": {"candidates": [
        {"base_features": 8, "seconds_per_step": 0.9}, {"base_features": 16, "seconds_per_step": 1.9}]}}}
    plans = plan_experiment(load_fingerprint(Path(__file__).parents[1] / "planners" / "data" /
                                             "hippocampus_fingerprint.json"), "cpu")
    assert recheck_width(throughput, plans, "3d_fullres", 1800, 1 / 6) == 16  # 1.9 / 6 = 0.32 s: 4,900 iterations
    assert recheck_width(throughput, plans, "3d_fullres", 1800, 1.0) == 8  # as timed: neither fits, the narrowest
    assert recheck_width(throughput, plans, "2d", 1800, 1.0) is None  # 2d was not timed


def test_the_budget_ends_the_schedule_inside_an_epoch_when_the_time_is_up():
    from types import SimpleNamespace

    from autoseg.training import schedule

    cfg = TrainConfig().with_(schedule=dict(time_budget_s=100.0, num_epochs=4, num_iterations_per_epoch=50,
                                            num_iterations=200))
    now = schedule.time.perf_counter()
    budget = schedule.Budget(cfg, now - 50.0, Path("unused"), [], _plan((8, 8, 8)), fitted=True)
    budget.validation_s = 10.0
    # 50 s spent on 10 iterations (5 s each); 100 x 0.98 - 50 - 10 = 38 s left: go on
    assert not budget.out_of_time(10) and budget.total_iterations == 200
    budget.started_at = now - 85.0  # a slow spell: 3 s left, less than an iteration (8.5 s)
    assert budget.out_of_time(10)
    assert budget.total_iterations == 10 and budget.cfg.schedule.num_epochs == 1
    unfitted = schedule.Budget(cfg, now - 500.0, Path("unused"), [], _plan((8, 8, 8)), fitted=False)
    assert not unfitted.out_of_time(5)  # the warm-up is never cut


def _plan(patch, first_kernels=(3, 3, 3)):
    """The parts of a ConfigurationPlan the schedule reads."""
    from types import SimpleNamespace

    return SimpleNamespace(patch_size=patch, network=SimpleNamespace(kernel_sizes=(first_kernels,)))


def test_the_final_validation_mirrors_fewer_axes_where_every_axis_would_take_too_much_of_the_budget(monkeypatch):
    from autoseg.training import schedule
    from autoseg.training.budget import VALIDATION_SHARE, choose_validation_mirroring, validation_mirror_options

    assert validation_mirror_options((1, 3, 3)) == [(0, 1, 2), (1, 2), ()]
    assert validation_mirror_options((3, 3, 3)) == [(0, 1, 2), ()]
    assert validation_mirror_options((3, 3)) == [(0, 1), ()]
    # 10 s per mirror copy: every axis 80 s, in-plane 40 s, none 10 s; 15% of 600 s = 90 s
    by_copies = lambda axes: 10.0 * 2 ** len(axes)
    assert VALIDATION_SHARE == 0.15
    assert choose_validation_mirroring(600, by_copies, [(0, 1, 2), (1, 2), ()]) == ((0, 1, 2), 80.0)
    assert choose_validation_mirroring(400, by_copies, [(0, 1, 2), (1, 2), ()]) == ((1, 2), 40.0)  # 60 s allowed
    assert choose_validation_mirroring(100, by_copies, [(0, 1, 2), (1, 2), ()]) == ((), 10.0)  # even 10 s is over
    # in the schedule: a thick-slice plan with a 400 s budget validates in-plane; the choice is in its config
    monkeypatch.setattr(schedule, "estimate_validation_seconds",
                        lambda shapes, patch, mirror, step, fwd, mirror_axes: fwd * 2 ** len(mirror_axes))
    budget = schedule.Budget(budgeted(400.0), schedule.time.perf_counter(), Path("unused"), [],
                             _plan((12, 128, 160), (1, 3, 3)), fitted=True)
    budget._estimate_validation(10.0 / schedule.VALIDATION_SAFETY)
    assert budget.cfg.validation.mirror_axes == (1, 2) and budget.validation_s == pytest.approx(40.0)
    budget.cfg = budget.cfg.with_(**{"schedule.time_budget_s": 600.0})
    budget._estimate_validation(10.0 / schedule.VALIDATION_SAFETY)
    assert budget.cfg.validation.mirror_axes is None  # every axis fits again
