"""Region-based labels (nnU-Net v2): label map -> region masks -> label map, the dataset.json rules,
the loss on regions, and postprocessing and metrics per region."""
import re

import numpy as np
import pytest

from autoseg.labels import (ignore_problems, is_region_based, labels_to_regions, num_outputs,
                            probabilities_to_labels, region_values, regions_to_labels, remove_class)

BRATS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def test_the_regions_of_a_brats_dataset_json():
    assert is_region_based(BRATS) and not is_region_based({"background": 0, "a": 1})
    assert region_values(BRATS) == ((1, 2, 3), (2, 3), (3,))
    assert region_values({"background": [0], "a": [1, 2], "ignore": 4}) == ((1, 2),)


def test_nested_regions_there_and_back():
    seg = np.array([0, 1, 2, 3, 2])  # edema, necrosis, enhancing, necrosis
    masks = labels_to_regions(seg, region_values(BRATS))
    assert masks.tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0]]
    assert regions_to_labels(masks.astype(float), [1, 2, 3]).tolist() == seg.tolist()


def test_probabilities_at_one_half_and_the_later_region_winning():
    probs = np.array([[0.9, 0.9, 0.6, 0.4],   # whole tumor
                      [0.2, 0.7, 0.8, 0.9],   # tumor core: voxel 3 above 0.5 although whole is not
                      [0.1, 0.3, 0.51, 0.5]])  # enhancing: only voxel 2 exceeds 0.5 (0.5 does not)
    assert regions_to_labels(probs, [1, 2, 3]).tolist() == [1, 2, 3, 2]
    # the order decides where regions overlap: written last, "whole tumor" (1) covers voxels 0-2
    assert regions_to_labels(probs[::-1], [3, 2, 1]).tolist() == [1, 1, 1, 2]


def test_overlapping_regions_that_are_not_nested():
    # A = {1, 2}, B = {2, 3}: value 2 lies in both, so the way back writes B's class over it
    masks = labels_to_regions(np.array([1, 2, 3, 0]), [(1, 2), (2, 3)])
    assert masks.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    assert regions_to_labels(masks, [1, 3]).tolist() == [1, 3, 3, 0]
    with pytest.raises(ValueError, match="2 region maps but regions_class_order has 3 entries"):
        regions_to_labels(masks, [1, 2, 3])


# --- dataset.json: regions accepted as nnU-Net v2 writes them, mistakes refused -----------------

def _dataset_json(tmp_path, labels, **extra):
    import json

    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "FLAIR"}, "labels": labels, "numTraining": 0,
        "file_ending": ".nii.gz", **extra}))
    return tmp_path


def test_a_brats_dataset_json_is_read_with_its_regions(tmp_path):
    from autoseg.dataset import load_dataset

    spec = load_dataset(_dataset_json(tmp_path, BRATS, regions_class_order=[1, 2, 3]))
    assert spec.regions == ((1, (1, 2, 3)), (2, (2, 3)), (3, (3,)))
    assert spec.label_values == (0, 1, 2, 3) and spec.foreground_labels == (1, 2, 3)
    assert spec.label_names == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    assert num_outputs(BRATS) == 3  # one sigmoid output per region, none for background


@pytest.mark.parametrize("order, expected", [
    (None, "need 'regions_class_order'"),
    ([1, 2], "has 2 entries for 3 regions"),
    ([1, 3, 3], "repeats a value"),
    ([1, 2, 2], "repeats a value"),
    ([2, 1, 3], "writes 1 for the region [2, 3], which does not hold 1"),
])
def test_region_mistakes_are_refused_with_what_was_found(tmp_path, order, expected):
    from autoseg.dataset import DatasetError, load_dataset

    extra = {} if order is None else {"regions_class_order": order}
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_dataset(_dataset_json(tmp_path, BRATS, **extra))


def test_an_order_without_regions_and_a_region_of_strings_are_refused(tmp_path):
    from autoseg.dataset import parse_dataset_json

    _, problems = parse_dataset_json(_dataset_json(tmp_path, {"background": 0, "a": 1}, regions_class_order=[1]))
    assert len(problems) == 1 and "no label maps to a list" in problems[0]
    _, problems = parse_dataset_json(_dataset_json(tmp_path, {"background": 0, "a": ["1", "2"]}))
    assert len(problems) == 1 and "found ['1', '2']" in problems[0]


def test_regions_with_an_ignore_label(tmp_path):
    from autoseg.dataset import load_dataset

    labels = {**BRATS, "ignore": 4}
    spec = load_dataset(_dataset_json(tmp_path, labels, regions_class_order=[1, 2, 3]))
    assert spec.ignore_label == 4 and spec.label_values == (0, 1, 2, 3, 4) and len(spec.regions) == 3
    assert ignore_problems({**BRATS, "ignore": 2}) and "below \"whole tumor\": [1, 2, 3]" in ignore_problems(
        {**BRATS, "ignore": 2})[0]


# --- removing a region keeps the regions around it ----------------------------------------------

REGIONS = ((1, (1, 2, 3)), (2, (2, 3)), (3, (3,)))


def test_removing_a_region_keeps_the_voxels_other_regions():
    seg = np.array([0, 1, 2, 3, 3])
    where = np.array([True, True, True, True, False])
    # enhancing (3) leaves tumour core: 3 -> 2; the last voxel is outside ``where``
    assert remove_class(seg, where, 3, REGIONS).tolist() == [0, 1, 2, 2, 3]
    # tumour core goes with the enhancing part inside it: 2, 3 -> 1 (whole tumour stays)
    assert remove_class(seg, where, 2, REGIONS).tolist() == [0, 1, 1, 1, 3]
    assert remove_class(seg, where, 1, REGIONS).tolist() == [0, 0, 0, 0, 3]
    assert remove_class(seg, where, 2).tolist() == [0, 1, 0, 3, 3]  # plain labels: to background
    # overlapping, not nested: A = {1, 2} written 1, B = {2, 3} written 3; removing A from value 2 leaves B
    assert remove_class(np.array([1, 2, 3]), np.ones(3, bool), 1, ((1, (1, 2)), (3, (2, 3)))).tolist() == [0, 3, 3]


def test_keep_largest_of_a_region_and_its_metrics():
    from autoseg.postprocess.components import keep_largest_component
    from autoseg.postprocess.metrics import case_metrics

    pred = np.array([3, 3, 2, 0, 3, 0, 1, 1])  # two core components: voxels 0-2 and voxel 4
    ref = np.array([3, 2, 2, 0, 0, 0, 1, 0])
    kept = keep_largest_component(pred, 2, REGIONS)
    assert kept.tolist() == [3, 3, 2, 0, 1, 0, 1, 1]  # voxel 4 leaves core and enhancing, stays whole tumour
    m = case_metrics(ref, pred, [1, 2, 3], surface=False, lesions=False, regions=REGIONS)
    # whole tumour: ref {0,1,2,6}, pred {0,1,2,4,6,7}: TP 4, FP 2, FN 0 -> 8/10
    assert m[1]["dice"] == pytest.approx(0.8)
    # core: ref {0,1,2}, pred {0,1,2,4}: 6/7; enhancing: ref {0}, pred {0,1,4}: 2/4
    assert m[2]["dice"] == pytest.approx(6 / 7) and m[3]["dice"] == pytest.approx(0.5)


def test_probabilities_to_labels_argmax_or_regions():
    probs = np.array([[0.2, 0.9], [0.7, 0.6], [0.1, 0.55]])
    assert probabilities_to_labels(probs).tolist() == [1, 0]
    assert probabilities_to_labels(probs, [1, 2, 3]).tolist() == [2, 3]


# --- the loss on regions ------------------------------------------------------------------------

def test_region_loss_by_hand_and_no_gradient_where_ignored():
    import math

    import torch

    from autoseg.training.loss import RegionLoss

    # one sample, four voxels: values 0, 1, 2 and the ignore value 4; regions {1, 2} and {2}
    target = torch.tensor([0, 1, 2, 4]).view(1, 1, 4)
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    loss = RegionLoss([(1, 2), (2,)], batch_dice=False, ignore_label=4)(logits, target)
    # BCE: every annotated prediction is 0.5 -> ln 2. Dice per region on the 3 annotated voxels:
    # region {1,2}: ref 0,1,1, probs 0.5 each: 2*1/(1.5+2) = 4/7; region {2}: 2*0.5/(1.5+1) = 0.4
    expected = math.log(2) + 1 - (4 / 7 + 0.4) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert torch.all(logits.grad[..., 3] == 0) and torch.all(logits.grad[..., :3] != 0)


def test_a_perfect_region_prediction_has_a_small_loss_and_plain_losses_are_unchanged():
    import torch

    from autoseg.training.loss import build_loss

    target = torch.tensor([0, 1, 2, 2]).view(1, 1, 4)
    logits = torch.tensor([[-20.0, 20, 20, 20], [-20, -20, 20, 20]]).view(1, 2, 4)
    loss = build_loss("dice_ce", False, 1.0, 1.0, None, regions=((1, (1, 2)), (2, (2,))))
    assert float(loss(logits, target)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="small-class loss weights do not apply"):
        build_loss("dice_ce", False, 1.0, 1.0, None, ce_class_weights=(1.0, 3.0), regions=((1, (1,)), (2, (2,))))


def test_sigmoid_output_biases_from_region_frequencies():
    from autoseg.plans import NetworkPlan
    from autoseg.training.network import UNet, init_output_bias

    net = UNet(NetworkPlan(3, (4, 8), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2))), 1, 2, deep_supervision=False)
    used = init_output_bias(net, [0.2, 0.0], min_prior=0.01, sigmoid=True)
    assert used == pytest.approx([0.2, 0.01])  # not renormalised: regions overlap
    assert net.heads[0].bias.tolist() == pytest.approx([np.log(0.2 / 0.8), np.log(0.01 / 0.99)], rel=1e-5)
