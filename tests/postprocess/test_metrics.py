"""Voxel metrics and folder evaluation on hand-made masks, with the empty cases spelled out."""
import json
import math

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.postprocess.evaluate import evaluate_folder, summarise
from autoseg.postprocess.metrics import case_metrics, class_metrics, confusion, dice_from_counts, nanmean
from synthetic import write_nifti


def shifted_cubes() -> tuple[np.ndarray, np.ndarray]:
    """4x4x4 reference cube and the same cube shifted by one voxel along x."""
    ref = np.zeros((8, 8, 8), np.int16)
    pred = np.zeros((8, 8, 8), np.int16)
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 3:7] = 1
    return ref, pred


def test_cubes_shifted_by_one_voxel():
    ref, pred = shifted_cubes()
    # overlap 4 * 4 * 3 = 48 voxels; each cube has 64, so 16 false positives and 16 false negatives
    assert confusion(ref, pred, 1) == (48, 16, 16)
    m = class_metrics(ref, pred, 1)
    assert m["dice"] == pytest.approx(2 * 48 / (64 + 64))  # 0.75
    assert m["iou"] == pytest.approx(48 / (48 + 16 + 16))  # 0.6
    assert (m["tp"], m["fp"], m["fn"], m["n_ref"], m["n_pred"]) == (48, 16, 16, 64, 64)


def test_empty_reference_and_empty_prediction_is_nan():
    empty = np.zeros((4, 4, 4), np.int16)
    m = class_metrics(empty, empty, 1)
    assert math.isnan(m["dice"]) and math.isnan(m["iou"])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert math.isnan(dice_from_counts(0, 0, 0))


def test_empty_reference_with_a_prediction_scores_zero_and_vice_versa():
    empty = np.zeros((4, 4, 4), np.int16)
    some = empty.copy()
    some[1, 1, 1:3] = 2
    assert class_metrics(empty, some, 2)["dice"] == 0.0  # false positives only
    assert class_metrics(empty, some, 2)["fp"] == 2
    assert class_metrics(some, empty, 2)["dice"] == 0.0  # missed object
    assert class_metrics(some, empty, 2)["iou"] == 0.0


def test_case_metrics_per_label_and_shape_check():
    ref, pred = shifted_cubes()
    out = case_metrics(ref, pred, [1, 2])
    assert out[1]["dice"] == pytest.approx(0.75) and math.isnan(out[2]["dice"])
    with pytest.raises(ValueError, match="differs"):
        case_metrics(ref, pred[:-1], [1])


def test_nanmean_leaves_out_nan():
    assert nanmean([0.5, math.nan, 1.0]) == pytest.approx(0.75)
    assert math.isnan(nanmean([math.nan, math.nan]))
    assert math.isnan(nanmean([]))


def test_summary_mean_leaves_out_classes_absent_everywhere():
    ref, pred = shifted_cubes()
    per_case = [{"metrics": {str(k): v for k, v in case_metrics(ref, pred, [1, 2]).items()}}]
    s = summarise(per_case, [1, 2])
    assert math.isnan(s["mean"]["2"]["dice"])
    assert s["foreground_mean"]["dice"] == pytest.approx(0.75)  # class 2 (NaN) left out
    assert s["mean"]["2"]["tp"] == 0


def write_cases(ref_dir, pred_dir):
    """Case a: shifted cubes of class 1, class 2 absent from both.
    Case b: class 1 exact (2x2x2), class 2 (2x2x2) in the reference but missed."""
    ref, pred = shifted_cubes()
    write_nifti(ref, ref_dir / "a.nii.gz")
    write_nifti(pred, pred_dir / "a.nii.gz")
    ref_b = np.zeros((8, 8, 8), np.int16)
    ref_b[0:2, 0:2, 0:2] = 1
    ref_b[5:7, 5:7, 5:7] = 2
    pred_b = ref_b.copy()
    pred_b[pred_b == 2] = 0
    write_nifti(ref_b, ref_dir / "b.nii.gz")
    write_nifti(pred_b, pred_dir / "b.nii.gz")


EXPECTED_MEAN = {  # hand-computed from write_cases
    "1": {"dice": (0.75 + 1.0) / 2, "iou": (0.6 + 1.0) / 2, "tp": (48 + 8) / 2, "fp": 8.0, "fn": 8.0},
    "2": {"dice": 0.0, "iou": 0.0, "tp": 0.0, "fp": 0.0, "fn": 4.0},  # case a's NaN left out
}


def test_evaluate_folder_per_case_and_means(tmp_path):
    write_cases(tmp_path / "ref", tmp_path / "pred")
    s = evaluate_folder(tmp_path / "ref", tmp_path / "pred", [1, 2], output_json=tmp_path / "s.json")
    assert s["num_cases"] == 2 and s["labels"] == [1, 2]
    per_case = {c["case_id"]: c["metrics"] for c in s["per_case"]}
    assert per_case["a"]["1"]["dice"] == pytest.approx(0.75)
    assert math.isnan(per_case["a"]["2"]["dice"])
    assert per_case["b"]["1"]["dice"] == 1.0 and per_case["b"]["2"]["dice"] == 0.0
    assert per_case["b"]["2"]["fn"] == 8
    for label, metrics in EXPECTED_MEAN.items():
        for key, value in metrics.items():
            assert s["mean"][label][key] == pytest.approx(value), (label, key)
    assert s["foreground_mean"]["dice"] == pytest.approx((0.875 + 0.0) / 2)
    assert s["foreground_mean"]["iou"] == pytest.approx((0.8 + 0.0) / 2)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["foreground_mean"]["dice"] == pytest.approx(0.4375)


def test_missing_prediction_is_named(tmp_path):
    write_cases(tmp_path / "ref", tmp_path / "pred")
    with pytest.raises(UserFacingError, match=r"no prediction in .*pred for case\(s\) \['c'\]"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", [1, 2], case_ids=["a", "c"])


def test_missing_reference_is_named(tmp_path):
    write_cases(tmp_path / "ref", tmp_path / "pred")
    write_nifti(np.zeros((8, 8, 8), np.int16), tmp_path / "pred" / "z.nii.gz")
    with pytest.raises(UserFacingError, match=r"no reference in .*ref for case\(s\) \['z'\]"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", [1, 2])


def test_geometry_mismatch_is_a_user_error(tmp_path):
    ref, pred = shifted_cubes()
    write_nifti(ref, tmp_path / "ref" / "a.nii.gz", spacing_zyx=(2.0, 1.0, 1.0))
    write_nifti(pred, tmp_path / "pred" / "a.nii.gz")
    with pytest.raises(UserFacingError, match="case a: .*differ in spacing .*keep the reference geometry"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", [1])


def test_cli_evaluate_writes_the_summary(tmp_path, capsys):
    write_cases(tmp_path / "ref", tmp_path / "pred")
    out = tmp_path / "out" / "summary.json"
    code = main(["evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["labels"] == [1, 2]  # found in the references
    assert saved["foreground_mean"]["dice"] == pytest.approx(0.4375)
    assert "foreground mean" in capsys.readouterr().out


def test_cli_evaluate_reports_a_mismatch_without_traceback(tmp_path, capsys):
    ref, pred = shifted_cubes()
    write_nifti(ref, tmp_path / "ref" / "a.nii.gz")
    write_nifti(pred[:, :, :7].copy(), tmp_path / "pred" / "a.nii.gz")
    code = main(["evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--labels", "1"])
    assert code == 2
    assert "differ in shape" in capsys.readouterr().err
