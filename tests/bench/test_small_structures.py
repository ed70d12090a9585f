"""bench/small_structures.py: the fixed schedule and the network width it trains both arms with."""
import sys
from pathlib import Path

import pytest

from autoseg.fingerprint_types import load_fingerprint
from autoseg.planners.experiment import plan_experiment
from autoseg.plans import load_plans, save_plans

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from small_structures import parse_schedule, set_width  # noqa: E402

FINGERPRINT = Path(__file__).resolve().parents[1] / "planners" / "data" / "hippocampus_fingerprint.json"


def test_parse_schedule():
    assert parse_schedule("20x95") == (20, 95)
    assert parse_schedule("3X7") == (3, 7)
    for bad in ("20", "20x", "x95", "0x95", "20x0", "twentyx95"):
        with pytest.raises(SystemExit, match="EPOCHSxITERATIONS|at least one epoch"):
            parse_schedule(bad)


def test_set_width_rewidens_only_the_network_of_one_configuration(tmp_path):
    plans = plan_experiment(load_fingerprint(FINGERPRINT), "cpu")
    path = tmp_path / "plans.json"
    save_plans(plans, path)
    set_width(path, "3d_fullres", 8)
    got, was = load_plans(path).configuration("3d_fullres"), plans.configuration("3d_fullres")
    # as many stages as planned, from 8 features doubling per stage, capped at 10 x 8
    stages = len(was.network.features_per_stage)
    assert got.network.features_per_stage == tuple(min(8 * 2 ** i, 80) for i in range(stages))
    assert got.patch_size == was.patch_size and got.network.strides == was.network.strides
    assert got.batch_size == was.batch_size
    assert load_plans(path).configuration("2d") == plans.configuration("2d")
    assert [p.name for p in tmp_path.iterdir()] == ["plans.json"]  # no temporary file left
