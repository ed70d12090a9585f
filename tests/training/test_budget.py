"""Time-budgeted training: the arithmetic by hand, and a real tiny run that ends on time."""
import json
import time

import pytest

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.training.budget import (MARGIN_FRACTION, count_tiles, estimate_validation_seconds, fit_schedule,
                                     parse_duration, refit_epochs, split_budget)
from autoseg.training.checkpoint import load_checkpoint


def test_parse_duration():
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == parse_duration("90") == 90
    assert parse_duration("2.5h") == 9000
    assert parse_duration("10min") == 600
    for bad in ("ten minutes", "30x", "0m", "m30", ""):
        with pytest.raises(UserFacingError, match="time-budget"):
            parse_duration(bad)


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
    assert s.num_epochs == total // 108 == 25
    assert s.num_val_iterations_per_epoch == round(108 * 0.05 * 3) == 16


def test_fit_schedule_when_only_the_warmup_fits():
    s = fit_schedule(20, 19.0, 0.5, 5.0, done_iterations=10)
    assert (s.num_epochs, s.num_iterations_per_epoch) == (1, 10)


def test_refit_epochs_follows_the_measured_epoch_time():
    # 1000 s budget, 400 s spent after 4 epochs, epochs now take 50 s, validation 80 s, margin 20 s
    assert refit_epochs(1000, 400, 4, [50, 50], 80, num_epochs=20) == 4 + int(500 / 50)
    # over time: no more epochs
    assert refit_epochs(1000, 990, 7, [50], 80, num_epochs=20) == 7


@pytest.fixture
def prepared(synth_dataset, workspace):
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu",
                 "-c", "3d_fullres", "--root", str(workspace)]) == 0
    return Workspace(workspace)


def test_two_folds_share_the_budget_and_end_on_time(prepared):
    budget = 40.0
    started = time.perf_counter()
    assert main(["train", "3d_fullres", "0", "1", "-d", "901", "--root", str(prepared.root), "-np", "0",
                 "--time-budget", f"{budget:g}s"]) == 0
    wall = time.perf_counter() - started
    assert wall <= budget * 1.1, wall
    assert wall >= budget * 0.6, wall  # the budget is used, not left idle
    for fold in (0, 1):
        fold_dir = prepared.results / "Dataset901_Synth" / "3d_fullres" / "default" / f"fold_{fold}"
        cfg = json.loads((fold_dir / "train_config.json").read_text())
        state = load_checkpoint(fold_dir / "checkpoint_final.pth")
        assert cfg["time_budget_s"] > 0 and cfg["num_epochs"] >= 1
        # the stored schedule is the one that ran
        assert state["iteration"] == cfg["num_epochs"] * cfg["num_iterations_per_epoch"]
        assert (fold_dir / "validation" / "summary.json").is_file()
    first = json.loads((prepared.results / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_0" /
                        "train_config.json").read_text())
    assert first["time_budget_s"] == pytest.approx(budget / 2, abs=1.0)
