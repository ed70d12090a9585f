import json
import logging
import typing

import pytest

from autoseg.errors import SchemaError, UserFacingError
from autoseg.serialization import from_jsonable, load_json_as, to_jsonable
from autoseg.training.train_config import (TrainConfig, apply_overrides, load_train_config, resolve_train_config,
                                           saved_setting)


def small() -> TrainConfig:
    return TrainConfig().with_(schedule=dict(num_epochs=2, num_iterations_per_epoch=3), seed=7)


def test_overrides_are_parsed_by_type():
    cfg = apply_overrides(TrainConfig(), ["schedule.num_epochs=50", "optim.initial_lr=0.005",
                                          "augmentation.p_rotation=0", "loss.deep_supervision=false",
                                          "loss.batch_dice=none", "augmentation.scale_range=0.8,1.2",
                                          "optim.optimizer=sgd", "runtime.precision=bf16"])
    assert cfg.schedule.num_epochs == 50 and cfg.optim.initial_lr == 0.005 and cfg.augmentation.p_rotation == 0.0
    assert cfg.loss.deep_supervision is False and cfg.loss.batch_dice is None
    assert cfg.augmentation.scale_range == (0.8, 1.2)
    assert (cfg.optim.optimizer, cfg.runtime.precision) == ("sgd", "bf16")
    # nothing else moved
    assert cfg.with_(schedule=dict(num_epochs=1000), optim=dict(initial_lr=None, optimizer="auto"),
                     augmentation=dict(p_rotation=0.2, scale_range=(0.7, 1.4)),
                     loss=dict(deep_supervision=True), runtime=dict(precision="auto")) == TrainConfig()


def test_the_flat_names_and_the_dotted_paths_give_the_same_config(caplog):
    flat = ["num_epochs=50", "initial_lr=0.002", "loss=ce", "small_classes=1,3", "small_class_shares=1,3",
            "small_class_paste=0", "validation_mirroring=false", "ema_alpha=0.5", "precision=fp32",
            "num_workers=0", "batch_size=2", "fit_width_to_budget=false", "seed=3"]
    dotted = ["schedule.num_epochs=50", "optim.initial_lr=0.002", "loss.name=ce", "small_classes.classes=1,3",
              "small_classes.shares=1,3", "small_classes.paste=0", "validation.mirroring=false",
              "validation.ema_alpha=0.5", "runtime.precision=fp32", "sampling.num_workers=0",
              "sampling.batch_size=2", "schedule.fit_width_to_budget=false", "seed=3"]
    with caplog.at_level(logging.INFO, logger="autoseg.training.train_config"):
        old = apply_overrides(TrainConfig(), flat)
    new = apply_overrides(TrainConfig(), dotted)
    assert old == new
    assert (new.schedule.num_epochs, new.optim.initial_lr, new.loss.name, new.small_classes.classes,
            new.small_classes.shares, new.small_classes.paste, new.validation.mirroring, new.validation.ema_alpha,
            new.runtime.precision, new.sampling.num_workers, new.sampling.batch_size, new.seed) == (
        50, 0.002, "ce", (1, 3), (1.0, 3.0), 0.0, False, 0.5, "fp32", 0, 2, 3)
    assert "--set initial_lr: the setting is now optim.initial_lr" in caplog.text
    assert "--set loss: the setting is now loss.name" in caplog.text
    assert "seed:" not in caplog.text  # a top-level setting has not moved


def test_a_flat_train_config_of_an_older_autoseg_loads_into_the_sections(caplog):
    """The layout written before the sections: a few keys by hand, one of them retired."""
    old = {"num_epochs": 7, "num_iterations": 20, "optimizer": "adamw", "initial_lr": 0.003, "loss": "ce",
           "batch_dice": True, "oversample_foreground_percent": 0.5, "small_classes": [2],
           "small_class_paste": 0.25, "small_class_placement": "centre", "ema_alpha": 0.8,
           "validation_mirror_axes": [1, 2], "precision": "bf16", "memory_format": "channels_last",
           "collective_timeout_s": 60.0, "seed": 9, "augmentation": {"p_rotation": 0.0},
           "previous_stage_variant": "lowres_v"}
    with caplog.at_level(logging.INFO):
        cfg = from_jsonable(TrainConfig, old)
    expected = TrainConfig().with_(
        schedule=dict(num_epochs=7, num_iterations=20), optim=dict(optimizer="adamw", initial_lr=0.003),
        loss=dict(name="ce", batch_dice=True), sampling=dict(oversample_foreground_percent=0.5),
        small_classes=dict(classes=(2,), paste=0.25), validation=dict(ema_alpha=0.8, mirror_axes=(1, 2)),
        runtime=dict(precision="bf16", memory_format="channels_last", collective_timeout_s=60.0),
        augmentation=dict(p_rotation=0.0), seed=9, previous_stage_variant="lowres_v")
    assert cfg == expected
    assert cfg.loss.name == "ce" and cfg.small_classes.classes == (2,) and cfg.validation.mirror_axes == (1, 2)
    assert "14 setting(s) of the flat layout read into their sections" in caplog.text
    assert "ignoring retired setting(s) small_class_placement='centre'" in caplog.text
    # a key that is neither of the layout now, nor flat, nor retired still fails
    with pytest.raises(SchemaError, match=r"unknown field\(s\) \['num_epoch'\]"):
        from_jsonable(TrainConfig, dict(old, num_epoch=3))


def test_every_reader_takes_both_layouts(tmp_path):
    cfg = small().with_(**{"runtime.precision": "bf16", "optim.optimizer": "sgd"})
    sections = to_jsonable(cfg)
    flat = {old: sections[new.split(".")[0]][new.split(".")[1]] for old, new in TrainConfig.MOVED.items()}
    flat.update(seed=7, augmentation=sections["augmentation"])
    for data in (sections, flat):
        (tmp_path / "train_config.json").write_text(json.dumps(data))
        assert load_train_config(tmp_path / "train_config.json") == cfg
        assert load_json_as(TrainConfig, tmp_path / "train_config.json") == cfg
        assert saved_setting(data, "runtime.precision") == "bf16"
        assert saved_setting(data, "optim.optimizer") == "sgd"
        assert saved_setting(data, "schedule.num_epochs") == 2
    assert saved_setting({}, "optim.optimizer", "sgd") == "sgd"  # not saved: the default given
    assert saved_setting(None, "runtime.precision") is None
    assert saved_setting({"precision": "fp16"}, "runtime.precision") == "fp16"  # a part of a flat one


def test_the_sections_layout_round_trips():
    cfg = apply_overrides(small(), ["small_classes.classes=1,3", "small_classes.shares=1,2",
                                    "validation.mirror_axes=1,2", "optim.initial_lr=0.01", "pretrained=/a/b.pth"])
    data = to_jsonable(cfg)
    assert set(data) == {"schedule", "optim", "loss", "sampling", "small_classes", "augmentation", "validation",
                         "runtime", "seed", "pretrained", "previous_stage_variant"}
    assert data["loss"]["name"] == "dice_ce" and data["small_classes"]["classes"] == [1, 3]
    assert from_jsonable(TrainConfig, data) == cfg
    assert from_jsonable(TrainConfig, to_jsonable(TrainConfig())) == TrainConfig()


def test_override_errors():
    with pytest.raises(UserFacingError, match="unknown training setting 'num_epoch'; did you mean 'schedule.num_epochs'"):
        apply_overrides(TrainConfig(), ["num_epoch=3"])
    with pytest.raises(UserFacingError, match="unknown training setting 'optim.num_epochs'; did you mean "
                                              "'schedule.num_epochs'.* available: optim.optimizer, optim.initial_lr"):
        apply_overrides(TrainConfig(), ["optim.num_epochs=3"])
    with pytest.raises(UserFacingError, match="expected a value of type int"):
        apply_overrides(TrainConfig(), ["num_epochs=many"])
    with pytest.raises(UserFacingError, match="KEY=VALUE"):
        apply_overrides(TrainConfig(), ["num_epochs"])
    with pytest.raises(UserFacingError, match="'optim' is a group of settings; set one of its fields, e.g. "
                                              "optim.optimizer="):
        apply_overrides(TrainConfig(), ["optim=sgd"])
    with pytest.raises(UserFacingError, match="unknown training variant"):
        resolve_train_config("nope")


def test_variant_then_overrides_and_json_round_trip():
    cfg = resolve_train_config("no_deep_supervision", ["num_epochs=7"])
    assert not cfg.loss.deep_supervision and cfg.schedule.num_epochs == 7
    assert from_jsonable(TrainConfig, to_jsonable(cfg)) == cfg
    assert resolve_train_config("ce_only").loss.name == "ce"
    assert resolve_train_config("short").schedule.num_epochs == 50
    assert resolve_train_config("no_augmentation").augmentation.enabled is False


def test_optimizer_auto_is_adamw_for_short_runs_and_sgd_for_long_ones():
    from autoseg.training.train_config import resolve_optimizer

    def schedule(**changes):
        return TrainConfig().with_(schedule=changes)

    plain = resolve_optimizer(TrainConfig())
    assert (plain.optim.optimizer, plain.optim.initial_lr) == ("sgd", 1e-2)  # nnU-Net's 1000 x 250 iterations
    # 5,000 iterations or fewer count as short, whether as epochs or as a cap on the total
    assert resolve_optimizer(schedule(num_epochs=50, num_iterations_per_epoch=100)).optim.optimizer == "adamw"
    assert resolve_optimizer(schedule(num_epochs=50, num_iterations_per_epoch=101)).optim.optimizer == "sgd"
    assert resolve_optimizer(schedule(num_iterations=5000)).optim.optimizer == "adamw"
    budgeted = resolve_optimizer(schedule(time_budget_s=600))
    assert (budgeted.optim.optimizer, budgeted.optim.initial_lr) == ("adamw", 1e-3)
    # an explicit choice wins either way, and an explicit learning rate is kept
    chosen = resolve_optimizer(apply_overrides(schedule(time_budget_s=600), ["optimizer=sgd"]))
    assert (chosen.optim.optimizer, chosen.optim.initial_lr) == ("sgd", 1e-2)
    chosen = resolve_optimizer(apply_overrides(TrainConfig(), ["optim.optimizer=adamw", "optim.initial_lr=0.002"]))
    assert (chosen.optim.optimizer, chosen.optim.initial_lr) == ("adamw", 0.002)
    assert resolve_optimizer(chosen) == chosen


@pytest.mark.parametrize("setting, message", [
    ("optim.optimizer=adam", "optim.optimizer must be one of auto, sgd, adamw, found 'adam'; did you mean 'adamw'?"),
    ("optimizer=adam", "optimizer must be one of auto, sgd, adamw, found 'adam'; did you mean 'adamw'?"),
    ("runtime.precision=fp8", "runtime.precision must be one of auto, fp32, bf16, fp16, found 'fp8'"),
    ("runtime.memory_format=channel_last", "runtime.memory_format must be one of auto, contiguous, channels_last, found "
                                           "'channel_last'; did you mean 'channels_last'?"),
    ("loss.name=dic", "loss.name must be one of dice_ce, ce, dice, found 'dic'; did you mean 'dice'?"),
    ("augmentation.backend=scipy", "augmentation.backend must be one of auto, batchgenerators, found 'scipy'"),
])
def test_a_bad_choice_on_the_command_line_names_the_choices(setting, message):
    with pytest.raises(UserFacingError) as err:
        apply_overrides(TrainConfig(), [setting])
    assert str(err.value).startswith(f"--set {setting}: {message}")


def test_a_bad_choice_in_a_file_names_the_choices():
    data = to_jsonable(TrainConfig())
    data["optim"]["optimizer"] = "adam"
    with pytest.raises(SchemaError, match=r"TrainConfig.optim.optimizer must be one of auto, sgd, adamw, "
                                          r"found 'adam'; did you mean 'adamw'\?"):
        from_jsonable(TrainConfig, data)
    with pytest.raises(SchemaError, match="TrainConfig.runtime.precision must be one of auto, fp32, bf16, fp16, "
                                          "found 'fp64'"):
        from_jsonable(TrainConfig, {"precision": "fp64"})  # the flat layout too
    with pytest.raises(ValueError, match="optim.optimizer must be one of auto, sgd, adamw, found 'adam'"):
        TrainConfig().with_(**{"optim.optimizer": "adam"})  # typed in code: checked from the type as well


def test_each_choice_is_written_once():
    from autoseg.device import MEMORY_FORMATS, PRECISIONS, MemoryFormat, Precision
    from autoseg.training.loss import LOSSES
    from autoseg.training.train_config import OPTIMIZERS, LossName, Optimizer

    assert PRECISIONS == typing.get_args(Precision) == ("auto", "fp32", "bf16", "fp16")
    assert MEMORY_FORMATS == typing.get_args(MemoryFormat) == ("auto", "contiguous", "channels_last")
    assert OPTIMIZERS == typing.get_args(Optimizer) == ("auto", "sgd", "adamw")
    assert sorted(typing.get_args(LossName)) == LOSSES.names()  # the type names every registered loss


def test_with_changes_sections_by_dict_or_dotted_path():
    cfg = TrainConfig().with_(schedule=dict(num_epochs=2), **{"schedule.num_iterations_per_epoch": 3,
                                                               "optim.initial_lr": 1e-3})
    assert (cfg.schedule.num_epochs, cfg.schedule.num_iterations_per_epoch, cfg.optim.initial_lr) == (2, 3, 1e-3)
    assert cfg.total_iterations == 6 and cfg.schedule.total_iterations == 6
    assert cfg.optim.weight_decay == TrainConfig().optim.weight_decay  # the rest of the section kept
    with pytest.raises(TypeError, match="ScheduleConfig has no field 'num_epoch'"):
        TrainConfig().with_(schedule=dict(num_epoch=2))
    with pytest.raises(ValueError, match=r"small_classes.oversample must be in \[0, 1\], found 1.5"):
        TrainConfig().with_(**{"small_classes.oversample": 1.5})


@pytest.mark.parametrize("setting, message", [
    ("validation_step_size=0", r"validation.step_size must be in \(0, 1\], found 0.0"),
    ("validation.step_size=1.5", r"validation.step_size must be in \(0, 1\], found 1.5"),
    ("num_workers=-1", "sampling.num_workers must be >= 0 .*found -1"),
    ("sampling.batch_size=0", "sampling.batch_size must be >= 1 .*found 0"),
    ("checkpoint_every_epochs=0", "schedule.checkpoint_every_epochs must be >= 1, found 0"),
    ("ema_alpha=1.1", r"validation.ema_alpha must be in \[0, 1\], found 1.1"),
    ("optim.momentum=1", r"optim.momentum must be in \[0, 1\), found 1.0"),
    ("runtime.collective_timeout_s=0", r"runtime.collective_timeout_s must be > 0 \(seconds\), found 0.0"),
    ("optim.initial_lr=nan", "optim.initial_lr must be a finite number, found nan"),
    ("initial_lr=0", "optim.initial_lr must be positive"),
])
def test_numbers_out_of_range_are_refused_naming_the_setting(setting, message):
    with pytest.raises(UserFacingError, match=rf"--set {setting}: {message}"):
        apply_overrides(TrainConfig(), [setting])


def test_the_edges_of_the_ranges_are_taken():
    cfg = apply_overrides(TrainConfig(), ["validation.step_size=1", "sampling.num_workers=0", "sampling.batch_size=1",
                                          "schedule.checkpoint_every_epochs=1", "validation.ema_alpha=0"])
    assert (cfg.validation.step_size, cfg.sampling.num_workers, cfg.sampling.batch_size, cfg.validation.ema_alpha,
            cfg.schedule.checkpoint_every_epochs) == (1.0, 0, 1, 0.0, 1)
