import pytest

from autoseg.errors import UserFacingError
from autoseg.serialization import from_jsonable, to_jsonable
from autoseg.training.train_config import TrainConfig, apply_overrides, resolve_train_config


def test_overrides_are_parsed_by_type():
    cfg = apply_overrides(TrainConfig(), ["num_epochs=50", "initial_lr=0.005", "augmentation.p_rotation=0",
                                          "deep_supervision=false", "batch_dice=none",
                                          "augmentation.scale_range=0.8,1.2"])
    assert cfg.num_epochs == 50 and cfg.initial_lr == 0.005 and cfg.augmentation.p_rotation == 0.0
    assert cfg.deep_supervision is False and cfg.batch_dice is None
    assert cfg.augmentation.scale_range == (0.8, 1.2)


def test_override_errors():
    with pytest.raises(UserFacingError, match="unknown training setting 'num_epoch'; did you mean 'num_epochs'"):
        apply_overrides(TrainConfig(), ["num_epoch=3"])
    with pytest.raises(UserFacingError, match="expected a value of type int"):
        apply_overrides(TrainConfig(), ["num_epochs=many"])
    with pytest.raises(UserFacingError, match="KEY=VALUE"):
        apply_overrides(TrainConfig(), ["num_epochs"])
    with pytest.raises(UserFacingError, match="unknown training variant"):
        resolve_train_config("nope")


def test_variant_then_overrides_and_json_round_trip():
    cfg = resolve_train_config("no_deep_supervision", ["num_epochs=7"])
    assert not cfg.deep_supervision and cfg.num_epochs == 7
    assert from_jsonable(TrainConfig, to_jsonable(cfg)) == cfg


def test_optimizer_auto_is_adamw_for_short_runs_and_sgd_for_long_ones():
    from autoseg.training.train_config import resolve_optimizer

    plain = resolve_optimizer(TrainConfig())
    assert (plain.optimizer, plain.initial_lr) == ("sgd", 1e-2)  # nnU-Net's 1000 x 250 iterations
    # 5,000 iterations or fewer count as short, whether as epochs or as a cap on the total
    assert resolve_optimizer(TrainConfig(num_epochs=50, num_iterations_per_epoch=100)).optimizer == "adamw"
    assert resolve_optimizer(TrainConfig(num_epochs=50, num_iterations_per_epoch=101)).optimizer == "sgd"
    assert resolve_optimizer(TrainConfig(num_iterations=5000)).optimizer == "adamw"
    budgeted = resolve_optimizer(TrainConfig(time_budget_s=600))
    assert (budgeted.optimizer, budgeted.initial_lr) == ("adamw", 1e-3)
    # an explicit choice wins either way, and an explicit learning rate is kept
    chosen = resolve_optimizer(apply_overrides(TrainConfig(time_budget_s=600), ["optimizer=sgd"]))
    assert (chosen.optimizer, chosen.initial_lr) == ("sgd", 1e-2)
    chosen = resolve_optimizer(apply_overrides(TrainConfig(), ["optimizer=adamw", "initial_lr=0.002"]))
    assert (chosen.optimizer, chosen.initial_lr) == ("adamw", 0.002)
    assert resolve_optimizer(chosen) == chosen


def test_bad_optimizer_settings_say_what_is_allowed():
    with pytest.raises(UserFacingError, match="optimizer must be one of auto, sgd, adamw, found 'adam'"):
        apply_overrides(TrainConfig(), ["optimizer=adam"])
    with pytest.raises(UserFacingError, match="initial_lr must be positive"):
        apply_overrides(TrainConfig(), ["initial_lr=0"])


@pytest.mark.parametrize("setting, message", [
    ("validation_step_size=0", r"validation_step_size must be in \(0, 1\], found 0.0"),
    ("validation_step_size=1.5", r"validation_step_size must be in \(0, 1\], found 1.5"),
    ("num_workers=-1", "num_workers must be >= 0 .*found -1"),
    ("batch_size=0", "batch_size must be >= 1 .*found 0"),
    ("checkpoint_every_epochs=0", "checkpoint_every_epochs must be >= 1, found 0"),
    ("ema_alpha=1.1", r"ema_alpha must be in \[0, 1\], found 1.1"),
])
def test_numbers_out_of_range_are_refused_naming_the_setting(setting, message):
    with pytest.raises(UserFacingError, match=rf"--set {setting}: {message}"):
        apply_overrides(TrainConfig(), [setting])


def test_the_edges_of_the_ranges_are_taken():
    cfg = apply_overrides(TrainConfig(), ["validation_step_size=1", "num_workers=0", "batch_size=1",
                                          "checkpoint_every_epochs=1", "ema_alpha=0"])
    assert (cfg.validation_step_size, cfg.num_workers, cfg.batch_size, cfg.ema_alpha) == (1.0, 0, 1, 0.0)
