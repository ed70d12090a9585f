"""Lesion-wise metrics on hand-made masks: shift, split, merge, miss, false positive, empty cases;
pooling over cases; the summary JSON with null for undefined values."""
import json
import math

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.postprocess.evaluate import evaluate_folder, evaluate_pairs, format_table, load_summary, summarise
from autoseg.postprocess.lesions import detection_scores, label_components, lesion_metrics
from autoseg.postprocess.metrics import case_metrics
from synthetic import write_nifti

VOXEL_MM3 = 2.0  # spacing (2, 1, 1) mm


def empty() -> np.ndarray:
    return np.zeros((12, 12, 12), bool)


def test_one_lesion_found_with_a_shift():
    """3^3 lesion predicted one voxel off along x: overlap 3*3*2 = 18, Dice 36 / 54. Found all the
    same: recall = precision = F1 = 1; nothing is a false-positive or missed volume."""
    ref, pred = empty(), empty()
    ref[2:5, 2:5, 2:5] = True
    pred[2:5, 2:5, 3:6] = True
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["detected_lesions"], m["true_pred_lesions"]) == (1, 1, 1, 1)
    assert m["lesion_recall"] == m["lesion_precision"] == m["lesion_f1"] == 1.0
    assert m["lesion_dice"] == pytest.approx(2 / 3)
    assert m["fp_volume_ml"] == 0.0 and m["fn_volume_ml"] == 0.0


def test_split_lesion_is_one_detection_and_two_true_pieces():
    """Reference 2x2x6 bar (24 voxels); predicted as its two 2x2x2 ends (8 + 8), gap between.
    Lesion Dice against both pieces: 2 * 16 / (24 + 16) = 0.8."""
    ref, pred = empty(), empty()
    ref[2:4, 2:4, 2:8] = True
    pred[2:4, 2:4, 2:4] = True
    pred[2:4, 2:4, 6:8] = True
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["detected_lesions"], m["true_pred_lesions"]) == (1, 2, 1, 2)
    assert m["split_lesions"] == 1 and m["merged_lesions"] == 0
    assert m["lesion_recall"] == m["lesion_precision"] == m["lesion_f1"] == 1.0
    assert m["lesion_dice"] == pytest.approx(0.8)


def test_merged_lesions_are_both_detected_by_one_component():
    """Two 2^3 reference lesions one voxel apart; one 2x2x5 prediction (20 voxels) bridges them.
    Each lesion's Dice is against the whole bridge: 2 * 8 / (8 + 20) = 4/7."""
    ref, pred = empty(), empty()
    ref[2:4, 2:4, 2:4] = True
    ref[2:4, 2:4, 5:7] = True
    pred[2:4, 2:4, 2:7] = True
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["detected_lesions"], m["true_pred_lesions"]) == (2, 1, 2, 1)
    assert m["merged_lesions"] == 1 and m["split_lesions"] == 0
    assert m["lesion_f1"] == 1.0
    assert m["lesion_dice"] == pytest.approx(4 / 7)


def missed_and_false_positive() -> tuple[np.ndarray, np.ndarray]:
    """Lesion A (3^3) found exactly, lesion B (2^3) missed, a 4-voxel false positive."""
    ref, pred = empty(), empty()
    ref[1:4, 1:4, 1:4] = True
    ref[8:10, 8:10, 8:10] = True
    pred[1:4, 1:4, 1:4] = True
    pred[1, 9, 6:10] = True
    return ref, pred


def test_missed_lesion_and_false_positive():
    ref, pred = missed_and_false_positive()
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["detected_lesions"], m["true_pred_lesions"]) == (2, 2, 1, 1)
    assert m["lesion_recall"] == 0.5 and m["lesion_precision"] == 0.5 and m["lesion_f1"] == 0.5
    assert m["lesion_dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["fp_volume_ml"] == pytest.approx(4 * 2.0 / 1000)  # 4 voxels of 2 mm^3
    assert m["fn_volume_ml"] == pytest.approx(8 * 2.0 / 1000)


def test_empty_reference():
    ref, pred = empty(), empty()
    pred[5, 5, 5:10] = True
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert math.isnan(m["lesion_recall"]) and math.isnan(m["lesion_dice"])
    assert m["lesion_precision"] == 0.0 and m["lesion_f1"] == 0.0
    assert m["fp_volume_ml"] == pytest.approx(5 * 2.0 / 1000) and m["fn_volume_ml"] == 0.0


def test_empty_prediction():
    ref, pred = empty(), empty()
    ref[5, 5, 5:10] = True
    m = lesion_metrics(ref, pred, VOXEL_MM3)
    assert m["lesion_recall"] == 0.0 and m["lesion_f1"] == 0.0 and m["lesion_dice"] == 0.0
    assert math.isnan(m["lesion_precision"])
    assert m["fn_volume_ml"] == pytest.approx(0.01) and m["fp_volume_ml"] == 0.0


def test_both_empty_is_undefined():
    m = lesion_metrics(empty(), empty(), VOXEL_MM3)
    assert all(math.isnan(m[k]) for k in ("lesion_recall", "lesion_precision", "lesion_f1", "lesion_dice"))
    assert m["n_ref_lesions"] == m["n_pred_lesions"] == 0 and m["fp_volume_ml"] == 0.0


def test_lesions_use_the_postprocessing_connectivity():
    """Two voxels touching only at a corner are one lesion (26 neighbours), as in components.py."""
    mask = empty()
    mask[2, 2, 2] = mask[3, 3, 3] = True
    _, sizes = label_components(mask)
    assert list(sizes[1:]) == [2]
    m = lesion_metrics(mask, mask)
    assert m["n_ref_lesions"] == 1


def test_detection_scores_from_counts():
    assert detection_scores(4, 3, 2, 2) == {"lesion_recall": 0.75, "lesion_precision": 1.0,
                                            "lesion_f1": pytest.approx(2 * 0.75 / 1.75)}
    assert detection_scores(2, 0, 3, 0)["lesion_f1"] == 0.0  # lesions on both sides, none found


def test_case_metrics_carry_presence_lesions_and_surface():
    ref, pred = missed_and_false_positive()
    lab_ref, lab_pred = ref.astype(np.uint8), pred.astype(np.uint8)
    m = case_metrics(lab_ref, lab_pred, [1, 2], spacing=(2.0, 1.0, 1.0))
    assert m[1]["presence"] == "tp" and m[2]["presence"] == "tn"
    assert m[1]["fp_volume_ml"] == pytest.approx(0.008)
    assert m[1]["nsd"] < 1 and m[1]["hd95"] > 0
    assert case_metrics(np.zeros_like(lab_ref), lab_pred, [1])[1]["presence"] == "fp"
    assert case_metrics(lab_ref, np.zeros_like(lab_pred), [1])[1]["presence"] == "fn"
    light = case_metrics(lab_ref, lab_pred, [1], surface=False)
    assert "hd95" not in light[1] and light[1]["lesion_f1"] == 0.5


def four_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """a: 1 of 2 lesions found + 1 FP (above); b: a shifted lesion; c: an FP in a case without
    lesions; d: nothing anywhere. Class 1 only."""
    a = missed_and_false_positive()
    ref_b, pred_b = empty(), empty()
    ref_b[2:5, 2:5, 2:5] = True
    pred_b[2:5, 2:5, 3:6] = True
    ref_c, pred_c = empty(), empty()
    pred_c[5, 5, 5:10] = True
    return {"a": a, "b": (ref_b, pred_b), "c": (ref_c, pred_c), "d": (empty(), empty())}


def test_pooled_counts_are_summed_over_cases_not_averaged():
    """Reference lesions 2 + 1 + 0 + 0 = 3, found 1 + 1 = 2; predicted 2 + 1 + 1 = 4, true 1 + 1 = 2.
    Recall 2/3, precision 1/2, F1 = 2 (1/2)(2/3) / (1/2 + 2/3) = 4/7. The mean of the per-case F1
    (0.5, 1, 0; d undefined) would be 1/2. Lesion Dice over the 3 lesions: (1 + 0 + 2/3) / 3."""
    per_case = [{"case_id": k, "metrics": {"1": case_metrics(r.astype(np.uint8), p.astype(np.uint8), [1],
                                                             (2.0, 1.0, 1.0))[1]}}
                for k, (r, p) in four_cases().items()]
    s = summarise(per_case, [1])
    p = s["pooled"]["1"]
    assert (p["n_ref_lesions"], p["detected_lesions"], p["n_pred_lesions"], p["true_pred_lesions"]) == (3, 2, 4, 2)
    assert p["lesion_recall"] == pytest.approx(2 / 3) and p["lesion_precision"] == pytest.approx(0.5)
    assert p["lesion_f1"] == pytest.approx(4 / 7)
    assert p["lesion_dice"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert p["fp_volume_ml"] == pytest.approx((4 + 5) * 2 / 1000)  # a's and c's false positives
    assert p["fn_volume_ml"] == pytest.approx(8 * 2 / 1000)
    assert p["presence"] == {"tp": 2, "fp": 1, "fn": 0, "tn": 1}
    assert p["presence_accuracy"] == pytest.approx(3 / 4)
    assert s["foreground_mean"]["lesion_f1"] == pytest.approx(4 / 7)
    # the mean over cases of the per-case volumes (ml per case)
    assert s["mean"]["1"]["fp_volume_ml"] == pytest.approx((0.008 + 0 + 0.010 + 0) / 4)


def write_four_cases(ref_dir, pred_dir):
    for k, (r, p) in four_cases().items():
        write_nifti(r.astype(np.uint8), ref_dir / f"{k}.nii.gz", spacing_zyx=(2.0, 1.0, 1.0))
        write_nifti(p.astype(np.uint8), pred_dir / f"{k}.nii.gz", spacing_zyx=(2.0, 1.0, 1.0))


def _no_nan_tokens(text: str):
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_summary_json_writes_null_for_undefined_and_reads_it_back_as_nan(tmp_path):
    write_four_cases(tmp_path / "ref", tmp_path / "pred")
    s = evaluate_folder(tmp_path / "ref", tmp_path / "pred", [1, 2], output_json=tmp_path / "s.json")
    raw = _no_nan_tokens((tmp_path / "s.json").read_text())  # strict JSON: no NaN tokens
    per_case = {c["case_id"]: c for c in raw["per_case"]}
    assert per_case["d"]["metrics"]["1"]["dice"] is None and per_case["d"]["metrics"]["1"]["hd95"] is None
    assert per_case["a"]["spacing"] == [2.0, 1.0, 1.0]
    back = load_summary(tmp_path / "s.json")
    assert math.isnan(back["mean"]["2"]["dice"]) and math.isnan(back["pooled"]["2"]["lesion_f1"])
    assert back["pooled"]["1"]["lesion_f1"] == pytest.approx(4 / 7) == s["pooled"]["1"]["lesion_f1"]
    assert back["pooled"]["1"]["fp_volume_ml"] == pytest.approx(0.018)


def test_cli_evaluate_nsd_tolerance_and_lesion_table(tmp_path, capsys):
    """Case b alone: a 3^3 cube shifted by one voxel along x (1 mm). Surfaces: 26 voxels each;
    16 lie on the other surface; the 9 of the face that leaves the other cube are 1 mm from it,
    and so is the entering face's centre, which is the other cube's centre (1 mm sideways in y
    or x from its shell). NSD is 32/52 at 0.5 mm and 1 at 1 mm."""
    cases = four_cases()
    r, p = cases["b"]
    write_nifti(r.astype(np.uint8), tmp_path / "ref" / "b.nii.gz", spacing_zyx=(2.0, 1.0, 1.0))
    write_nifti(p.astype(np.uint8), tmp_path / "pred" / "b.nii.gz", spacing_zyx=(2.0, 1.0, 1.0))
    for tol, expected in ((0.5, 32 / 52), (1.0, 1.0)):
        out = tmp_path / f"s{tol}.json"
        code = main(["evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(out),
                     "--nsd-tolerance", str(tol)])
        assert code == 0
        saved = load_summary(out)
        assert saved["nsd_tolerance_mm"] == tol
        assert saved["mean"]["1"]["nsd"] == pytest.approx(expected)
        assert saved["mean"]["1"]["hd95"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "NSD@0.5mm" in printed and "HD95 mm" in printed and "F1" in printed


def test_selection_summaries_leave_out_the_surface_metrics(tmp_path):
    write_four_cases(tmp_path / "ref", tmp_path / "pred")
    pairs = {k: (tmp_path / "ref" / f"{k}.nii.gz", tmp_path / "pred" / f"{k}.nii.gz") for k in "abcd"}
    s = evaluate_pairs(pairs, [1], surface=False)
    assert "hd95" not in s["mean"]["1"] and "nsd" not in s["foreground_mean"]
    assert s["pooled"]["1"]["lesion_f1"] == pytest.approx(4 / 7)
    assert "nan" in format_table(s).splitlines()[1]  # HD95/NSD shown as not computed
