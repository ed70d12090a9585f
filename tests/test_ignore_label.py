"""nnU-Net v2's ignore label (a label named "ignore", the highest value): unannotated voxels take no
part in the loss, the metrics, the postprocessing learning or the patch sampling, and are never
predicted."""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.dataset import DatasetError, load_dataset, parse_dataset_json
from autoseg.labels import class_values, foreground_values, ignore_problems, num_outputs
from autoseg.postprocess.components import learn_postprocessing
from autoseg.postprocess.metrics import case_metrics
from autoseg.preprocess.storage import ANNOTATED, sample_class_locations
from autoseg.training.loss import DiceCELoss
from synthetic import make_dataset, relist_files

SPARSE = {"background": 0, "outer": 1, "inner": 2, "ignore": 3}


def _write_dataset_json(folder, labels):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}))


def test_the_ignore_label_is_no_class_and_no_output():
    assert class_values(SPARSE) == (0, 1, 2) and foreground_values(SPARSE) == (1, 2)
    assert num_outputs(SPARSE) == 3  # background, outer, inner: no channel for "ignore"
    assert num_outputs({"background": 0, "a": 1}) == 2 and ignore_problems({"background": 0, "a": 1}) == []


def test_a_dataset_json_with_the_ignore_label_highest_is_read(tmp_path):
    _write_dataset_json(tmp_path / "D", SPARSE)
    spec, problems = parse_dataset_json(tmp_path / "D")
    assert problems == [] and spec.ignore_label == 3 and spec.foreground_labels == (1, 2)


@pytest.mark.parametrize("labels, expected", [
    ({"background": 0, "ignore": 1, "tumour": 2},
     "the 'ignore' label must have the highest value (nnU-Net v2's rule); found \"ignore\": 1 below \"tumour\": 2; "
     "renumber it to 3"),
    ({"background": 0, "ignore": 1}, "needs background and at least one class besides it"),
])
def test_an_ignore_label_against_nnunets_rule_is_refused_with_what_was_found(tmp_path, labels, expected):
    _write_dataset_json(tmp_path / "D", labels)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "D")
    assert expected in str(err.value)


def test_the_loss_gives_ignored_voxels_no_gradient_and_scores_the_rest():
    # two voxels: the first annotated as class 1 with equal logits, the second unannotated (value 3)
    logits = torch.tensor([[[0.0, 5.0], [0.0, -2.0], [0.0, 1.0]]], requires_grad=True)  # (B=1, K=3, N=2)
    target = torch.tensor([[[1, 3]]])
    loss = DiceCELoss(batch_dice=False, ignore_label=3)(logits, target)
    # CE: -log(1/3) on the first voxel alone; soft Dice over classes 1 and 2 on the first voxel:
    # class 1: (2 * 1/3 + s) / (1/3 + 1 + s); class 2: (0 + s) / (1/3 + s), s = 1e-5
    s = 1e-5
    dice = ((2 / 3 + s) / (4 / 3 + s) + s / (1 / 3 + s)) / 2
    assert loss.item() == pytest.approx(math.log(3) + 1 - dice, rel=1e-5)
    loss.backward()
    assert torch.all(logits.grad[..., 1] == 0) and torch.any(logits.grad[..., 0] != 0)


def test_a_patch_without_annotation_has_loss_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = DiceCELoss(batch_dice=True, ce_class_weights=(1.0, 2.0, 1.0), ignore_label=3)(
        logits, torch.full((2, 1, 4, 4), 3))
    loss.backward()
    # nothing to score: CE 0 and soft Dice (0 + s) / (0 + s) = 1 per class
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.all(logits.grad == 0)


def test_metrics_skip_unannotated_voxels():
    ref = np.array([0, 1, 1, 3, 3])
    pred = np.array([1, 1, 0, 1, 1])
    # annotated voxels 0-2: tp 1, fp 1, fn 1 -> Dice 2 / 4; the predictions on voxels 3-4 do not count
    assert case_metrics(ref, pred, [1], surface=False, lesions=False, ignore_label=3)[1]["dice"] == 0.5
    assert case_metrics(ref, pred, [1], surface=False, lesions=False)[1]["dice"] == pytest.approx(2 / 6)


def test_postprocessing_learning_does_not_count_predictions_where_nothing_is_annotated():
    # a stray component of class 1 lies in the unannotated part of each case: against the ignore
    # value it is no false positive, so removing it gains nothing and no step is learned
    cases = []
    for _ in range(3):
        ref = np.zeros((1, 12, 12), np.uint8)
        ref[0, 2:6, 2:6] = 1
        ref[0, 8:, :] = 3
        pred = np.where(ref == 3, 0, ref).astype(np.uint8)
        pred[0, 9:11, 9:11] = 1
        cases.append((pred, ref))
    steps, effect = learn_postprocessing(cases, [1], ignore_label=3)
    assert steps.steps == () and effect["before"][1] == 1.0
    steps, _ = learn_postprocessing([(p, np.where(r == 3, 0, r)) for p, r in cases], [1])
    assert [s.kind for s in steps.steps] == ["keep_largest"]  # dense labels: the stray is a false positive


def test_patches_are_drawn_around_annotated_voxels():
    seg = np.full((1, 4, 5, 6), 3, np.int8)
    seg[0, 2] = 0  # one annotated slice: background ...
    seg[0, 2, 1:3, 1:3] = 1  # ... and four voxels of class 1
    locations = sample_class_locations(seg, [1, 2], seed=0, ignore=3)
    assert set(locations) == {1, 2, ANNOTATED}
    assert len(locations[1]) == 4 and len(locations[2]) == 0
    assert len(locations[ANNOTATED]) == 30 and set(locations[ANNOTATED][:, 0]) == {2}


@pytest.mark.slow
def test_a_sparsely_annotated_dataset_with_a_file_list_end_to_end(tmp_path):
    """Three of every case's slices labelled, the rest "ignore", the files named in dataset.json's
    "dataset" list (not in imagesTr/labelsTr): plan, train, find_best_config, predict and evaluate
    through the CLI with the dataset.json as nnU-Net v2 reads it."""
    ws = tmp_path / "ws"
    raw = make_dataset(ws / "raw", name="Dataset905_Sparse", num_cases=8, shape=(14, 20, 18), seed=5)
    dense, sparse_refs, inputs = tmp_path / "dense", tmp_path / "sparse", tmp_path / "inputs"
    for folder in (dense, sparse_refs, inputs):
        folder.mkdir()
    for path in sorted((raw / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        sitk.WriteImage(image, str(dense / path.name))
        lab = sitk.GetArrayFromImage(image)
        sparse = np.full_like(lab, 3)
        keep = np.linspace(2, lab.shape[0] - 3, 3).round().astype(int)
        sparse[keep] = lab[keep]
        out = sitk.GetImageFromArray(sparse)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))
        sitk.WriteImage(out, str(sparse_refs / path.name))
    for path in sorted((raw / "imagesTr").glob("*.nii.gz"))[:3]:
        sitk.WriteImage(sitk.ReadImage(str(path)), str(inputs / path.name))
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (raw / "dataset.json").write_text(json.dumps(meta))
    relist_files(raw)
    root = ["--root", str(ws)]
    assert main(["plan_and_preprocess", "-d", "905", "-np", "1", "--device-profile", "cpu", "-c", "3d_fullres",
                 "2d", "--time-budget", "1m", *root]) == 0
    pre = ws / "preprocessed" / "Dataset905_Sparse"
    classes = {c["label"] for c in json.loads((pre / "fingerprint.json").read_text())["classes"]}
    assert classes == {1, 2} and len(list((pre / "gt_segmentations").glob("case_*.nii.gz"))) == 8
    for configuration in ("3d_fullres", "2d"):  # 2d: each sample one slice, an annotated one
        assert main(["train", configuration, "0", "-d", "905", "-nw", "1", "--set", "num_epochs=3",
                     "--set", "num_iterations_per_epoch=8", "--set", "num_val_iterations_per_epoch=2", *root]) == 0
        fold = ws / "results" / "Dataset905_Sparse" / configuration / "default" / "fold_0"
        validation = json.loads((fold / "validation" / "summary.json").read_text())
        assert validation["ignore_label"] == 3 and set(validation["mean"]) == {"1", "2"}
    # both configurations and their ensemble, scored where the references are annotated
    assert main(["find_best_config", "-d", "905", "-c", "3d_fullres", "2d", "-f", "0", *root]) == 0
    selection = json.loads((ws / "results" / "Dataset905_Sparse" / "selection.json").read_text())
    assert set(selection["candidates"]) == {"3d_fullres", "2d", "3d_fullres+2d"}

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-d", "905", *root]) == 0
    for path in sorted(out.glob("*.nii.gz")):
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))) <= {0, 1, 2}  # never "ignore"
    assert main(["evaluate", "-ref", str(sparse_refs), "-pred", str(out), "-d", "905", *root]) == 0
    scores = json.loads((out / "summary.json").read_text())
    assert scores["ignore_label"] == 3 and set(scores["mean"]) == {"1", "2"} and scores["num_cases"] == 3
    assert main(["evaluate", "-ref", str(dense), "-pred", str(out), "--labels", "1", "2", "-o",
                 str(tmp_path / "dense.json"), *root]) == 0
    assert "ignore_label" not in json.loads((tmp_path / "dense.json").read_text())
