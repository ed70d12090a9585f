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
