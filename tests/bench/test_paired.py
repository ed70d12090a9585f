"""bench/paired.py: per-case Dice differences between two models scored on the same cases."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from paired import paired_differences  # noqa: E402


def summary(dice: dict[str, list[float]]) -> dict:
    """An evaluate summary with only what the comparison reads: per case, Dice per label."""
    n = len(next(iter(dice.values())))
    return {"per_case": [{"case_id": f"case_{i}", "metrics": {k: {"dice": v[i]} for k, v in dice.items()}}
                         for i in range(n)]}


def test_paired_differences_by_hand():
    a = summary({"1": [0.8, 0.9, 0.6, 0.5], "2": [0.7, 0.7, 0.7, 0.7]})
    b = summary({"1": [0.7, 0.9, 0.7, 0.2], "2": [0.6, 0.6, 0.6, 0.6]})
    out = paired_differences(a, b, ["1", "2"], n_boot=2000)
    # label 1: differences 0.1, 0, -0.1, 0.3 -> mean 0.075, median 0.05, A higher in 2, B in 1
    assert out["1"]["mean"] == pytest.approx(0.075)
    assert out["1"]["median"] == pytest.approx(0.05)
    assert (out["1"]["a_higher"], out["1"]["b_higher"], out["1"]["cases"]) == (2, 1, 4)
    low, high = out["1"]["ci95"]
    assert -0.1 <= low < 0.075 < high <= 0.3  # resampled means lie between the extremes
    # label 2: every difference is 0.1, so every resample's mean is too
    assert out["2"]["mean"] == pytest.approx(0.1)
    assert out["2"]["ci95"] == pytest.approx([0.1, 0.1])
    assert out["2"]["a_higher"] == 4


def test_paired_differences_seeded_and_skip_undefined():
    a = summary({"1": [0.8, math.nan, 0.6, 0.9, 0.4, None]})
    b = summary({"1": [0.7, 0.5, 0.7, 0.6, 0.4, None]})
    first = paired_differences(a, b, ["1"], n_boot=500, seed=3)
    assert first == paired_differences(a, b, ["1"], n_boot=500, seed=3)
    assert first["1"]["cases"] == 4  # the NaN and None (both empty) cases are left out
    assert first["1"]["mean"] == pytest.approx((0.1 - 0.1 + 0.3 + 0.0) / 4)


def test_paired_differences_needs_the_same_cases():
    a = summary({"1": [0.8, 0.9]})
    b = summary({"1": [0.8, 0.9, 0.5]})
    with pytest.raises(ValueError, match="same cases.*only in the second: \\['case_2'\\]"):
        paired_differences(a, b, ["1"])
