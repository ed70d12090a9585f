"""find_best_config on hand-made cross-validation results where the best choice is known."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import UserFacingError
from autoseg.imageio import ImageGeometry, write_image
from autoseg.paths import Workspace
from autoseg.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans, save_plans
from autoseg.postprocess.selection import find_best_config, load_selection
from synthetic import write_nifti

NAME = "Dataset999_T"
CASES = ("c0", "c1", "c2", "c3")
GEOMETRY = ImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (6, 6, 6))
RIGHT = (0.1, 0.1, 0.8)  # a right voxel: 0.8 for its class, 0.1 for each other class
# probabilities (background, class 1, class 2) given to class-2 voxels when a model misses them:
UNSURE_MISS = (0.6, 0.1, 0.3)  # not confidently: averaged with a right model, class 2 wins
SURE_MISS = (0.9, 0.05, 0.05)  # confidently: it outvotes a right model


def make_plans() -> Plans:
    net = NetworkPlan(3, (8, 16), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)))
    cfg = ConfigurationPlan("3d_fullres", (1.0, 1.0, 1.0), (8, 8, 8), 2, (6, 6, 6), net, ("zscore",), (False,),
                            True, "3d_fullres")
    net2 = NetworkPlan(2, (8, 16), ((3, 3), (3, 3)), ((1, 1), (2, 2)))
    cfg2 = ConfigurationPlan("2d", (1.0, 1.0, 1.0), (8, 8), 2, (6, 6, 6), net2, ("zscore",), (False,), False, "2d")
    props = IntensityProperties(mean=0.0, std=1.0, median=0.0, min=-3.0, max=3.0, percentile_00_5=-2.5,
                                percentile_99_5=2.5)
    return Plans(1, NAME, ("MRI",), {"background": 0, "a": 1, "b": 2}, ".nii.gz", (1.0, 1.0, 1.0), (6, 6, 6),
                 (props,), {"3d_fullres": cfg, "2d": cfg2})


def reference() -> np.ndarray:
    """Class 1 in x 0:2 (72 voxels), background in x 2:4, class 2 in x 4:6 (72 voxels)."""
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[:, :, 0:2] = 1
    ref[:, :, 4:6] = 2
    return ref


def probabilities(miss_class_2: tuple[float, float, float] | None) -> np.ndarray:
    """(3, 6, 6, 6) probabilities: every voxel RIGHT, except class 2 voxels given ``miss_class_2``."""
    ref = reference()
    probs = np.zeros((3,) + ref.shape, np.float32)
    for label in range(3):
        for k in range(3):
            probs[k][ref == label] = RIGHT[2] if k == label else RIGHT[0]
    if miss_class_2 is not None:
        for k in range(3):
            probs[k][ref == 2] = miss_class_2[k]
    return probs


def make_workspace(root: Path, outcomes: dict[str, dict[str, tuple | None]], folds=(0,)) -> Workspace:
    """``outcomes[config][case]`` is None (right) or the probabilities given to class-2 voxels."""
    ws = Workspace(root)
    save_plans(make_plans(), ws.preprocessed / NAME / "plans.json")
    for case in CASES:
        write_nifti(reference(), ws.preprocessed / NAME / "gt_segmentations" / f"{case}.nii.gz")
    for config, per_case in outcomes.items():
        for k in folds:
            folder = ws.results / NAME / config / "default" / f"fold_{k}" / "validation"
            folder.mkdir(parents=True)
            for case in CASES:
                probs = probabilities(per_case.get(case))
                write_image(probs.argmax(0).astype(np.uint8), GEOMETRY, folder / f"{case}.nii.gz")
                np.savez_compressed(folder / f"{case}.npz", probabilities=probs.astype(np.float16))
                (folder / f"{case}.json").write_text(json.dumps(GEOMETRY.to_json()))
            (folder / "summary.json").write_text("{}")
    return ws


# Missing class 2 in two of four cases: class 1 Dice 1 everywhere, class 2 Dice (1 + 1 + 0 + 0) / 4.
HALF_MISSED = {"1": 1.0, "2": 0.5, "mean": 0.75}
PERFECT = {"1": 1.0, "2": 1.0, "mean": 1.0}


def test_the_better_configuration_wins(tmp_path):
    ws = make_workspace(tmp_path, {"3d_fullres": {}, "2d": {"c2": SURE_MISS, "c3": SURE_MISS}})
    sel = find_best_config(ws, "999", folds=(0,))
    assert sel.configurations == ("3d_fullres",)
    assert sel.candidates["3d_fullres"] == pytest.approx(PERFECT)
    assert sel.candidates["2d"] == pytest.approx(HALF_MISSED)
    # (0.9 + 0.05) / 2 background vs (0.05 + 0.8) / 2 class 2: the ensemble misses too
    assert sel.candidates["3d_fullres+2d"] == pytest.approx(HALF_MISSED)
    assert sel.chosen_dice == pytest.approx(1.0) and sel.postprocessed_dice == pytest.approx(1.0)
    assert sel.postprocessing.steps == ()
    assert (ws.results / NAME / "selection.json").is_file()
    assert load_selection(ws.results / NAME) == sel
    assert (ws.results / NAME / "ensembles" / "default" / "3d_fullres+2d" / "c0.nii.gz").is_file()


def test_the_ensemble_wins_when_the_models_err_on_different_cases(tmp_path):
    ws = make_workspace(tmp_path, {"3d_fullres": {"c0": UNSURE_MISS, "c1": UNSURE_MISS},
                                   "2d": {"c2": UNSURE_MISS, "c3": UNSURE_MISS}})
    sel = find_best_config(ws, "999", folds=(0,))
    # averaged class-2 voxels: background (0.6 + 0.1) / 2 = 0.35 < class 2 (0.3 + 0.8) / 2 = 0.55
    assert sel.configurations == ("3d_fullres", "2d")
    assert sel.candidates["3d_fullres+2d"] == pytest.approx(PERFECT)
    assert sel.candidates["3d_fullres"] == pytest.approx(HALF_MISSED)
    assert sel.candidates["2d"] == pytest.approx(HALF_MISSED)
    assert sel.chosen_dice == pytest.approx(1.0)
    assert load_selection(ws.results / NAME) == sel


def test_ties_go_to_3d_fullres_alone(tmp_path):
    same = {"c2": UNSURE_MISS, "c3": UNSURE_MISS}
    ws = make_workspace(tmp_path, {"3d_fullres": same, "2d": same})
    sel = find_best_config(ws, "999", configurations=["2d", "3d_fullres"], folds=(0,))
    assert sel.configurations == ("3d_fullres",)
    assert set(sel.candidates) == {"2d", "3d_fullres", "2d+3d_fullres"}
    for values in sel.candidates.values():
        assert values == pytest.approx(HALF_MISSED)
    assert sel.chosen_dice == pytest.approx(0.75)


def test_a_missing_fold_names_the_train_command(tmp_path):
    ws = make_workspace(tmp_path, {"3d_fullres": {}, "2d": {}}, folds=(0,))
    with pytest.raises(UserFacingError, match=r"3d_fullres: fold\(s\) \[1\] .*autoseg train 3d_fullres 1 -d 999"):
        find_best_config(ws, "999", configurations=["3d_fullres", "2d"], folds=(0, 1))
    with pytest.raises(UserFacingError, match=r"no configuration of Dataset999_T has validated folds \[0, 1\]"):
        find_best_config(ws, "999", folds=(0, 1))


def test_without_a_selection_the_error_says_what_to_run(tmp_path):
    with pytest.raises(UserFacingError, match="autoseg find_best_config -d Dataset999_T"):
        load_selection(tmp_path / "results" / NAME)


# ---- a rare class with spurious blobs in lesion-free cases: the presence rule is learned ---------

LESION_CASES = ("p0", "p1", "p2", "n0", "n1", "n2")


def lesion_workspace(root: Path, learned: bool = True) -> Workspace:
    """One configuration. p*: a 4-voxel lesion, predicted at probability 0.9; n*: no lesion, a
    4-voxel spurious blob predicted at 0.6. Probabilities saved as validation writes them.
    ``learned=False``: the lesion predicted nowhere (a network that did not learn the class)."""
    ws = Workspace(root)
    base = make_plans()
    cfg = dataclasses.replace(base.configurations["3d_fullres"], small_classes=(1,))
    plans = dataclasses.replace(base, dataset_name="Dataset998_L", labels={"background": 0, "lesion": 1},
                                configurations={"3d_fullres": cfg})
    save_plans(plans, ws.preprocessed / "Dataset998_L" / "plans.json")
    folder = ws.results / "Dataset998_L" / "3d_fullres" / "default" / "fold_0" / "validation"
    folder.mkdir(parents=True)
    for case in LESION_CASES:
        ref = np.zeros((6, 6, 6), np.uint8)
        pred = ref.copy()
        if case.startswith("p"):
            ref[1, 1, 1:5] = 1
            pred[1, 1, 1:5] = 1
        else:
            pred[4, 4, 1:5] = 1
        if not learned:
            pred[:] = 0
        probs = np.stack([np.full(ref.shape, 0.95, np.float32), np.full(ref.shape, 0.05, np.float32)])
        top = 0.9 if case.startswith("p") else 0.6
        probs[1][pred == 1], probs[0][pred == 1] = top, 1 - top
        write_nifti(ref, ws.preprocessed / "Dataset998_L" / "gt_segmentations" / f"{case}.nii.gz")
        write_image(pred, GEOMETRY, folder / f"{case}.nii.gz")
        np.savez_compressed(folder / f"{case}.npz", probabilities=probs.astype(np.float16))
        (folder / f"{case}.json").write_text(json.dumps(GEOMETRY.to_json()))
    (folder / "summary.json").write_text("{}")
    return ws


def test_selection_learns_a_presence_rule_from_the_saved_probabilities(tmp_path, capsys):
    """Before: Dice (1, 1, 1, 0, 0, 0) -> 0.5; lesions 3 found of 3, 3 true of 6 predicted ->
    F1 2/3. Gating on the top probability at (0.6 + 0.9) / 2 = 0.75 removes the blobs: Dice 1,
    F1 1. float16 storage makes the threshold (0.5996 + 0.8999) / 2."""
    ws = lesion_workspace(tmp_path)
    sel = find_best_config(ws, "998", folds=(0,))
    assert sel.candidates["3d_fullres"] == pytest.approx({"1": 0.5, "mean": 0.5})
    assert sel.candidate_lesion_f1["3d_fullres"] == pytest.approx({"1": 2 / 3, "mean": 2 / 3})
    (step,) = sel.postprocessing.steps
    assert (step.kind, step.label, step.min_size) == ("presence", 1, 0)
    assert step.min_probability == pytest.approx(0.75, abs=1e-3)
    assert sel.postprocessing_effect == {"dice_before": {"1": 0.5}, "dice_after": {"1": 1.0},
                                         "lesion_f1_before": {"1": pytest.approx(2 / 3)}, "lesion_f1_after": {"1": 1.0}}
    assert sel.postprocessed_dice == 1.0
    text = (ws.results / "Dataset998_L" / "selection.json").read_text()
    json.loads(text, parse_constant=lambda t: pytest.fail(f"invalid JSON token {t}"))
    assert load_selection(ws.results / "Dataset998_L") == sel

    # the CLI table shows lesion F1 beside Dice and the rule in words
    from autoseg.cli import main

    assert main(["find_best_config", "-d", "998", "-f", "0", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lesion F1" in out and "presence(lesion: p >= 0.75" in out and "lesion*" in out
    assert "lesion: Dice 0.5000 -> 1.0000, lesion F1 0.6667 -> 1.0000" in out

    # apply_postprocessing uses the {case}.npz beside each segmentation
    validation = ws.results / "Dataset998_L" / "3d_fullres" / "default" / "fold_0" / "validation"
    assert main(["apply_postprocessing", "-i", str(validation), "-o", str(tmp_path / "pp"), "-d", "998",
                 "--root", str(tmp_path)]) == 0
    from autoseg.imageio import read_label

    for case in LESION_CASES:
        seg = read_label(tmp_path / "pp" / f"{case}.nii.gz")[0]
        assert seg.sum() == (4 if case.startswith("p") else 0), case
    (validation / "n0.npz").unlink()
    assert main(["apply_postprocessing", "-i", str(validation), "-o", str(tmp_path / "pp2"), "-d", "998",
                 "--root", str(tmp_path)]) == 2
    assert "n0.npz not found" in capsys.readouterr().err


def test_a_small_class_found_in_no_case_is_flagged(tmp_path, capsys):
    """No lesion predicted: 3 reference lesions, 0 found -> lesion F1 0, and find_best_config says
    that the network did not learn the class; with the lesions found (F1 2/3) it says nothing."""
    from autoseg.cli import main

    lesion_workspace(tmp_path / "a", learned=False)
    assert main(["find_best_config", "-d", "998", "-f", "0", "--root", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "warning: lesion (small/rare): not one of its lesions found" in out and "--set seed=N" in out
    lesion_workspace(tmp_path / "b")
    assert main(["find_best_config", "-d", "998", "-f", "0", "--root", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().out


def test_without_saved_probabilities_the_rule_is_size_only(tmp_path, caplog):
    """Same cases without the .npz files: sizes (all 4) cannot separate, so nothing is learned."""
    ws = lesion_workspace(tmp_path)
    for p in (ws.results / "Dataset998_L").rglob("*.npz"):
        p.unlink()
    sel = find_best_config(ws, "998", folds=(0,))
    assert sel.postprocessing.steps == ()
    assert "presence rule is learned on component size only" in caplog.text
