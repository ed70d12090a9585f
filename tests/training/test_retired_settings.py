"""Settings measured and not adopted were removed from ``TrainConfig``; a model saved before still
loads and predicts the same (``TrainConfig.RETIRED``)."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import SchemaError, UserFacingError
from autoseg.fingerprint_types import load_fingerprint
from autoseg.planners.experiment import plan_experiment
from autoseg.plans import save_plans
from autoseg.serialization import from_jsonable, load_json_as, save_json, to_jsonable
from autoseg.training.checkpoint import load_trained_model, save_checkpoint
from autoseg.training.network import build_network
from autoseg.training.train_config import TrainConfig, apply_overrides

DATA = Path(__file__).resolve().parent / "data"
# written by TrainConfig before the retirement (commit a661411), with the retired settings off
# their defaults: small_class_placement "centre", small_class_slots "random", balance_cases true
OLD_CONFIG = DATA / "train_config_before_retired_keys.json"
FINGERPRINT = Path(__file__).resolve().parents[1] / "planners" / "data" / "hippocampus_fingerprint.json"


def flat(sections: dict) -> dict:
    """A train_config object in sections in the flat layout it was written in before them."""
    out = {k: v for k, v in sections.items() if k == "augmentation" or not isinstance(v, dict)}
    for old, new in TrainConfig.MOVED.items():
        section, name = new.split(".")
        out[old] = sections[section][name]
    return out


def test_an_older_train_config_loads_with_a_note_for_each_retired_key(caplog):
    written = json.loads(OLD_CONFIG.read_text())
    assert set(TrainConfig.RETIRED) <= set(written)
    with caplog.at_level(logging.INFO, logger="autoseg.serialization"):
        cfg = load_json_as(TrainConfig, OLD_CONFIG)
    assert "TrainConfig: ignoring retired setting(s) " in caplog.text
    for key in TrainConfig.RETIRED:
        assert f"{key}={written[key]!r}" in caplog.text
    kept = {k: v for k, v in written.items() if k not in TrainConfig.RETIRED}
    read, default = flat(to_jsonable(cfg)), flat(to_jsonable(TrainConfig()))
    assert {k: read[k] for k in kept} == kept  # every other setting read as written, in its section now
    assert {k: read[k] for k in set(read) - set(kept)} == {  # settings added since: their defaults
        k: default[k] for k in set(read) - set(kept)}
    with pytest.raises(SchemaError, match="unknown field"):  # anything else unknown still fails
        from_jsonable(TrainConfig, dict(written, small_class_sideways=1))


def test_a_retired_setting_on_the_command_line_says_why_it_is_gone():
    with pytest.raises(UserFacingError, match="'small_class_placement' was retired: a small-class patch is always"):
        apply_overrides(TrainConfig(), ["small_class_placement=centre"])


def test_a_model_saved_before_predicts_the_same(tmp_path):
    """One fold saved as before (its train_config.json with the retired keys) and the same fold as
    the current code saves it: both load, with equal settings, and predict the same labels."""
    plans = plan_experiment(load_fingerprint(FINGERPRINT), "cpu")
    torch.manual_seed(0)
    net = build_network(plans, "3d_fullres", deep_supervision=False)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    save_plans(plans, old / "plans.json")
    save_checkpoint({"network": net.state_dict(), "configuration": "3d_fullres"}, old / "checkpoint_final.pth")
    shutil.copy(OLD_CONFIG, old / "train_config.json")
    shutil.copytree(old, new)
    save_json(load_json_as(TrainConfig, OLD_CONFIG), new / "train_config.json")
    assert "small_class_placement" not in (new / "train_config.json").read_text()

    models = [load_trained_model(folder) for folder in (old, new)]
    assert models[0].train_config == models[1].train_config
    patch = tuple(models[0].configuration.patch_size)
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1) + patch).astype(np.float32))
    with torch.no_grad():
        labels = [m.network(image).argmax(1) for m in models]
    assert torch.equal(labels[0], labels[1])
