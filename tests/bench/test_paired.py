"""bench/experiments/paired.py: per-case Dice differences between two models scored on the same cases."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "experiments"))

import json  # noqa: E402

from paired import averaged, cases_by_label, common_cases, main, paired_differences, run_differences  # noqa: E402


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


def test_run_differences_resample_the_runs():
    # A's two runs score 0.80 and 0.90 on every case, B's one run 0.85: the arm means differ by 0,
    # and a resample draws A's first run twice (-0.05) or its second twice (+0.05) a quarter of the time each
    a = [summary({"1": [0.8, 0.8, 0.8]}), summary({"1": [0.9, 0.9, 0.9]})]
    b = [summary({"1": [0.85, 0.85, 0.85]})]
    out = run_differences(a, b, ["1"], n_boot=2000)["1"]
    assert out["a_runs"] == pytest.approx([0.8, 0.9]) and out["b_runs"] == pytest.approx([0.85])
    assert out["a_mean"] == pytest.approx(0.85) and out["diff"] == pytest.approx(0.0)
    assert out["a_sd"] == pytest.approx(math.sqrt(2 * 0.05 ** 2)) and out["b_sd"] == 0.0
    assert out["ci95"] == pytest.approx([-0.05, 0.05])


def test_run_differences_with_one_run_each_is_the_case_bootstrap():
    a = [summary({"1": [0.81, 0.71, 0.51, 0.91]})]
    b = [summary({"1": [0.80, 0.70, 0.50, 0.90]})]
    out = run_differences(a, b, ["1"], n_boot=500)["1"]
    assert out["diff"] == pytest.approx(0.01)
    assert out["ci95"] == pytest.approx([0.01, 0.01])  # every case differs by 0.01
    assert out["cases"] == 4


def test_run_differences_keep_the_cases_defined_in_every_run():
    a = [summary({"1": [0.8, math.nan, 0.6]}), summary({"1": [0.6, 0.5, 0.4]})]
    b = [summary({"1": [0.7, 0.7, None]})]
    out = run_differences(a, b, ["1"], n_boot=100)["1"]
    assert out["cases"] == 1  # only the first case is defined in all three runs
    assert out["a_runs"] == pytest.approx([0.8, 0.6]) and out["diff"] == pytest.approx(0.7 - 0.7)
    with pytest.raises(ValueError, match="same cases"):
        run_differences(a, [summary({"1": [0.7, 0.7]})], ["1"])


def test_averaged_runs():
    runs = [summary({"1": [0.8, None]}), summary({"1": [0.6, None]})]
    avg = averaged(runs)
    assert [c["metrics"]["1"]["dice"] for c in avg["per_case"]] == [pytest.approx(0.7), None]
    # cases are matched by id, not by their order in the summaries
    second = summary({"1": [0.6, None]})
    second["per_case"].reverse()
    assert [c["metrics"]["1"]["dice"] for c in averaged([runs[0], second])["per_case"]] == [pytest.approx(0.7), None]


def test_cli_with_several_runs(tmp_path, capsys):
    paths = []
    for name, values in [("a1", [0.8, 0.8]), ("a2", [0.9, 0.9]), ("b1", [0.7, 0.8])]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"labels": {"0": "background", "1": "x"}, **summary({"1": values})}))
        paths.append(str(path))
    assert main([f"{paths[0]},{paths[1]}", paths[2], "--boot", "200"]) == 0
    out = capsys.readouterr().out.splitlines()
    # arm means 0.85 and 0.75; averaged over runs the cases differ by 0.15 and 0.05
    assert "A 0.8000 0.9000 -> mean 0.8500 (SD 0.0707); B 0.7500 -> mean 0.7500 (SD 0.0000); A - B +0.1000" in out[0]
    assert "(averaged over runs) per case: mean +0.1000, median +0.1000" in out[1]


def test_common_cases_and_the_cli_flag(tmp_path, capsys):
    a = summary({"1": [0.8, 0.9, 0.6]})  # case_0, case_1, case_2
    b = {"per_case": [{"case_id": f"case_{i}", "metrics": {"1": {"dice": v}}} for i, v in ((2, 0.5), (1, 0.7), (3, 0.1))]}
    cut_a, cut_b = common_cases([a, b])
    assert [c["case_id"] for c in cut_a["per_case"]] == ["case_1", "case_2"]
    assert [c["case_id"] for c in cut_b["per_case"]] == ["case_2", "case_1"]
    with pytest.raises(ValueError, match="no case in common"):
        common_cases([a, {"per_case": [{"case_id": "other", "metrics": {}}]}])
    paths = []
    for name, s in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"labels": {"0": "background", "1": "x"}, **s}))
        paths.append(str(path))
    with pytest.raises(ValueError, match="same cases"):
        main(paths + ["--boot", "50"])
    assert main(paths + ["--boot", "50", "--common"]) == 0
    out = capsys.readouterr().out.splitlines()
    # case_1: 0.9 - 0.7 = 0.2, case_2: 0.6 - 0.5 = 0.1 -> mean 0.15
    assert out[0] == "2 cases in common"
    assert "per case: mean +0.1500, median +0.1500" in out[1] and "A higher in 2 and B in 0 of 2" in out[1]


def test_cases_by_label(tmp_path, capsys):
    def case(i, dice, lesion_voxels):
        return {"case_id": f"case_{i}", "metrics": {"1": {"dice": dice, "n_ref": 100},
                                                    "3": {"dice": None, "n_ref": lesion_voxels}}}
    a = {"labels": {"0": "background", "1": "x", "3": "lesion"},
         "per_case": [case(0, 0.8, 0), case(1, 0.9, 12), case(2, 0.6, 0)]}
    b = {**a, "per_case": [case(0, 0.7, 0), case(1, 0.5, 12), case(2, 0.6, 0)]}
    with_, without = cases_by_label([a, b], "3", True), cases_by_label([a, b], "3", False)
    assert [c["case_id"] for c in with_[1]["per_case"]] == ["case_1"]
    assert [c["case_id"] for c in without[0]["per_case"]] == ["case_0", "case_2"]
    with pytest.raises(ValueError, match="no reference voxel count"):
        cases_by_label([a, b], "7", True)
    paths = []
    for name, s in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(s))
        paths.append(str(path))
    assert main(paths + ["--boot", "50", "--without-label", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    # label 1 on case_0 (0.8 - 0.7) and case_2 (0.6 - 0.6): mean 0.05; label 3 is undefined throughout
    assert out[0] == "2 cases without label 3"
    assert "label 1, A - B per case: mean +0.0500" in out[1] and len(out) == 2
