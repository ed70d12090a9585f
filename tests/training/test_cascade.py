"""Cascade inputs: which lowres fold's mask feeds each case, the grid it is put on, the
missing-folds error, and the mask augmentation (hand-made splits, fake lowres predictions)."""
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.imageio import read_label, write_image
from autoseg.paths import Workspace
from autoseg.planners.experiment import plan_experiment
from autoseg.fingerprint_types import load_fingerprint
from autoseg.plans import load_plans
from autoseg.preprocess.previous_stage import num_input_channels, one_hot, previous_stage_to_grid
from autoseg.preprocess.storage import CaseProperties, load_case
from autoseg.training.augmentation import AugmentationConfig
from autoseg.training.cascade import (CascadeBatchSource, _morphology, augment_previous_stage,
                                      find_previous_stage_segmentations, heldout_folds, prepare_previous_stage)
from autoseg.training.dataloader import BatchSampling
from autoseg.training.network import build_network
from synthetic import plan_and_preprocess_cpu

NAME = "Dataset901_Synth"
CASES = [f"case_{i:03d}" for i in range(6)]
SPLITS = [{"train": CASES[3:], "val": CASES[:3]}, {"train": CASES[:3], "val": CASES[3:]}]
FINGERPRINT = Path(__file__).parents[1] / "planners" / "data" / "hippocampus_fingerprint.json"


@pytest.fixture
def cascade_ws(synth_dataset, workspace) -> Workspace:
    """Tiny dataset planned with --force-lowres, fullres data preprocessed, a hand-made 2-fold split."""
    plan_and_preprocess_cpu(str(workspace))
    (workspace / "preprocessed" / NAME / "splits.json").write_text(json.dumps(SPLITS))
    return Workspace(workspace)


def fake_lowres_fold(ws: Workspace, fold: int, label: int, cases=CASES, variant="default") -> Path:
    """A 'validated' lowres fold whose segmentation of every case in ``cases`` is ``label`` everywhere.

    It writes files for cases it trained on too, which the cascade must never use.
    """
    out = ws.results / NAME / "3d_lowres" / variant / f"fold_{fold}" / "validation"
    for c in cases:
        ref, geometry = read_label(ws.raw / NAME / "labelsTr" / f"{c}.nii.gz")
        write_image(np.full(ref.shape[1:], label, np.uint8), geometry, out / f"{c}.nii.gz")
    (out / "summary.json").write_text("{}")
    return out


def test_each_case_gets_the_mask_of_the_fold_that_held_it_out(cascade_ws):
    ws = cascade_ws
    plans = load_plans(ws.preprocessed / NAME / "plans.json")
    fake_lowres_fold(ws, 0, label=1)  # fold 0 held out case_000..002
    fake_lowres_fold(ws, 1, label=2)  # fold 1 held out case_003..005
    sources = find_previous_stage_segmentations(ws, NAME, plans, "3d_cascade_fullres", "default", CASES, 0)
    assert {c: p.parent.parent.name for c, p in sources.items()} == {
        **{c: "fold_0" for c in CASES[:3]}, **{c: "fold_1" for c in CASES[3:]}}

    prev = prepare_previous_stage(ws, NAME, plans, "3d_cascade_fullres", "default", CASES, 0)
    assert prev.folder == ws.results / NAME / "3d_lowres" / "default" / "predicted_next_stage"
    assert prev.labels == (1, 2)
    data_dir = ws.preprocessed / NAME / "3d_fullres"
    for c, expected in zip(CASES, [1, 1, 1, 2, 2, 2]):
        case = load_case(data_dir, c)
        source = CascadeBatchSource(data_dir, [c], plans.configuration("3d_cascade_fullres"), BatchSampling(1, 0.0, 0),
                                    previous=prev)
        mask = source._case(c).seg[1]
        assert mask.shape == case.seg.shape[1:] and np.all(mask == expected), c
        # the batch: image channel, then one channel per foreground label; padding outside the image is 0
        b = source.batch(0)
        assert b["data"].shape == (1, 3) + tuple(plans.configuration("3d_cascade_fullres").patch_size)
        inside = b["data"][0, 0] != 0  # the normalised noisy image; the padding is exactly 0
        assert np.array_equal(b["data"][0, expected], inside.astype(np.float32))
        assert not b["data"][0, 3 - expected].any()
        # copy-paste (the small-class default) writes image and target only, never the mask channels
        pasted = CascadeBatchSource(data_dir, [c], plans.configuration("3d_cascade_fullres"),
                                    BatchSampling(1, 0.0, 0, paste_shares={1: 1.0}), previous=prev).batch(0)
        assert (pasted["target"] == 1).any()
        inside = pasted["data"][0, 0] != 0
        assert np.array_equal(pasted["data"][0, expected], inside.astype(np.float32))
        assert not pasted["data"][0, 3 - expected].any()

    # a lowres fold retrained (new file) replaces the cached mask; unchanged cases are kept
    before = (prev.folder / "case_004.seg.b2").stat().st_mtime_ns
    fake_lowres_fold(ws, 0, label=2, cases=CASES[:1])
    prepare_previous_stage(ws, NAME, plans, "3d_cascade_fullres", "default", CASES, 0)
    source = CascadeBatchSource(data_dir, CASES[:1], plans.configuration("3d_cascade_fullres"),
                                BatchSampling(1, 0.0, 0), previous=prev)
    assert np.all(source._case(CASES[0]).seg[1] == 2)
    assert (prev.folder / "case_004.seg.b2").stat().st_mtime_ns == before


def test_missing_and_incomplete_lowres_folds_are_named_with_the_command(cascade_ws, capsys):
    ws = cascade_ws
    plans = load_plans(ws.preprocessed / NAME / "plans.json")
    fake_lowres_fold(ws, 0, label=1)
    with pytest.raises(UserFacingError) as err:
        find_previous_stage_segmentations(ws, NAME, plans, "3d_cascade_fullres", "default", CASES, 0)
    msg = str(err.value)
    assert "needs 3d_lowres ('default') folds [0, 1]" in msg and "missing: fold(s) [1]" in msg
    assert f"autoseg train 3d_lowres 1 -d {NAME}'" in msg

    assert main(["train", "3d_cascade_fullres", "0", "-d", "901", "--root", str(ws.root), "--variant", "short"]) == 2
    err_text = capsys.readouterr().err
    assert "needs 3d_lowres ('short') folds [0, 1]" in err_text and "missing: fold(s) [0, 1]" in err_text
    assert f"autoseg train 3d_lowres 0 1 -d {NAME} --variant short" in err_text
    assert not (ws.results / NAME / "3d_cascade_fullres").exists()  # nothing written before the check

    fake_lowres_fold(ws, 1, label=2, cases=CASES[3:5])  # case_005 missing from its validation
    with pytest.raises(UserFacingError, match=r"fold 1 has no validation segmentation of case\(s\) \['case_005'\]"
                                              r".*autoseg train 3d_lowres 1 -d Dataset901_Synth --val"):
        find_previous_stage_segmentations(ws, NAME, plans, "3d_cascade_fullres", "default", CASES, 0)


def test_heldout_folds_and_orphan_cases():
    splits = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a"], "val": ["b", "c"]}]
    assert heldout_folds(splits, ["a", "b", "c"]) == {"a": 0, "b": 1, "c": 1}
    with pytest.raises(UserFacingError, match=r"\['d'\] are in no fold's validation set"):
        heldout_folds(splits, ["a", "d"])


def test_previous_stage_to_grid_crops_and_resamples_like_labels():
    plans = plan_experiment(load_fingerprint(FINGERPRINT), force_lowres=True)
    seg = np.zeros((6, 4, 8), np.uint8)
    seg[2:4, 0:2, 0:2] = 1  # one 2x2x2 cell of the cropped region per label
    seg[4:6, 2:4, 6:8] = 2
    seg[0:2] = 2  # outside the crop box: must vanish
    props = CaseProperties("c", {"shape": [6, 4, 8], "spacing": [1, 1, 1], "origin": [0, 0, 0],
                                 "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "is_2d": False},
                           ((2, 6), (0, 4), (0, 8)), (4, 4, 8), (1.0, 1.0, 1.0), (2, 2, 4), (2.0, 2.0, 2.0))
    grid = previous_stage_to_grid(seg, props, plans, "3d_cascade_fullres")
    expected = np.zeros((1, 2, 2, 4), np.int8)
    expected[0, 0, 0, 0] = 1
    expected[0, 1, 1, 3] = 2
    assert grid.dtype == np.int8 and np.array_equal(grid, expected)
    assert np.array_equal(one_hot(grid, [1, 2])[:, 0, 0, :2], [[1, 0], [0, 0]])
    with pytest.raises(UserFacingError, match=r"has shape \(6, 4, 7\), the image has \(6, 4, 8\)"):
        previous_stage_to_grid(seg[..., :7], props, plans, "3d_cascade_fullres")

    assert num_input_channels(plans, "3d_cascade_fullres") == 3 and num_input_channels(plans, "3d_lowres") == 1
    assert build_network(plans, "3d_cascade_fullres", False).encoder[0][0].in_channels == 3


def test_morphology_with_hand_counted_balls():
    point = np.zeros((9, 9, 9), bool)
    point[4, 4, 4] = True
    iso, flat = np.ones(3), np.array([3.0, 1.0, 1.0])
    assert _morphology(point, 0, 1.0, iso).sum() == 7  # the voxel and its 6 face neighbours
    assert _morphology(point, 0, 1.5, iso).sum() == 19  # ... and the 12 edge neighbours (sqrt 2)
    assert _morphology(point, 0, 1.0, flat).sum() == 5  # anisotropic: in-plane neighbours only
    cube = np.zeros((9, 9, 9), bool)
    cube[2:7, 2:7, 2:7] = True  # 5^3
    eroded = _morphology(cube, 1, 1.0, iso)
    assert eroded.sum() == 27 and eroded[3:6, 3:6, 3:6].all()
    assert _morphology(cube, 2, 1.0, iso).sum() == 27 + 6 * 9  # opening: the 3^3 core plus its faces
    holed = cube.copy()
    holed[4, 4, 4] = False
    assert np.array_equal(_morphology(holed, 3, 1.0, iso), cube)  # closing fills the hole


def test_augmentation_probabilities_and_component_removal():
    masks = np.zeros((2, 20, 20, 20), np.float32)
    masks[0, 2:12, 2:12, 2:12] = 1  # 1000 voxels: 12.5% of the patch, removable at 0.15
    masks[0, 15:18, 15:18, 15:18] = 1  # 27 voxels
    masks[1, 5:8, 5:8, 5:8] = 1
    rng = np.random.default_rng(0)
    off = AugmentationConfig(p_previous_stage_morphology=0, p_previous_stage_remove_component=0)
    assert np.array_equal(augment_previous_stage(masks, rng, off, (1, 1, 1)), masks)
    remove = AugmentationConfig(p_previous_stage_morphology=0, p_previous_stage_remove_component=1,
                                previous_stage_max_component_fraction=0.01)  # only components < 80 voxels
    out = augment_previous_stage(masks, rng, remove, (1, 1, 1))
    assert out[0].sum() == 1000 and out[1].sum() == 0  # the 27-voxel cube of each label went
    morph = AugmentationConfig(p_previous_stage_morphology=1, p_previous_stage_remove_component=0,
                               previous_stage_radius=(1.0, 1.0))
    sizes = {augment_previous_stage(masks, np.random.default_rng(s), morph, (1, 1, 1))[1].sum() for s in range(20)}
    assert sizes == {27 + 6 * 9, 1, 7, 27}  # dilated, eroded, opened, closed (a cube is its own closing)
