import json

import numpy as np
import pytest

from autoseg.dataset import load_dataset
from autoseg.fingerprint import extract_fingerprint
from autoseg.fingerprint_types import Fingerprint, load_fingerprint, save_fingerprint
from synthetic import write_nifti


def hand_made_dataset(root):
    folder = root / "Dataset950_Hand"
    spacing = (2.0, 1.0, 0.5)  # z, y, x: voxel volume 1 mm3
    # case a: nonzero image region z 1:3, y 1:5, x 2:7 -> cropped (2, 4, 5)
    img = np.zeros((4, 6, 8), np.float32)
    img[1:3, 1:5, 2:7] = 1.0
    lab = np.zeros((4, 6, 8), np.uint8)
    lab[1:3, 1:3, 2:4] = 1  # one 8-voxel component of class 1
    img[lab == 1] = 10.0
    lab[1, 4, 6] = 2  # two 1-voxel components of class 2, far apart
    lab[2, 1, 6] = 2
    img[lab == 2] = 20.0
    write_nifti(img, folder / "imagesTr" / "a_0000.nii.gz", spacing)
    write_nifti(lab, folder / "labelsTr" / "a.nii.gz", spacing)
    # case b: class 1 only, 4 voxels of intensity 30; image nonzero everywhere
    img_b = np.ones((4, 6, 8), np.float32)
    lab_b = np.zeros((4, 6, 8), np.uint8)
    lab_b[0, 0, 0:4] = 1
    img_b[lab_b == 1] = 30.0
    write_nifti(img_b, folder / "imagesTr" / "b_0000.nii.gz", spacing)
    write_nifti(lab_b, folder / "labelsTr" / "b.nii.gz", spacing)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "big": 1, "dots": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return folder


def test_fingerprint_values_by_hand(tmp_path):
    fp = extract_fingerprint(load_dataset(hand_made_dataset(tmp_path)), num_processes=1)
    a, b = fp.cases
    assert a.shape == (4, 6, 8) and a.spacing == pytest.approx((2.0, 1.0, 0.5))
    assert a.shape_after_crop == (2, 4, 5) and b.shape_after_crop == (4, 6, 8)
    assert a.class_voxels == {"1": 8, "2": 2} and b.class_voxels == {"1": 4, "2": 0}
    assert a.class_component_sizes == {"1": (8,), "2": (1, 1)}
    # foreground intensities: 8 x 10, 2 x 20, 4 x 30 -> 14 values
    values = np.array([10.0] * 8 + [20.0] * 2 + [30.0] * 4)
    ch = fp.intensity[0]
    assert ch.mean == pytest.approx(values.mean()) and ch.std == pytest.approx(values.std())
    assert (ch.min, ch.max, ch.median) == (10.0, 30.0, 10.0)  # 7th and 8th of 14 sorted values are 10
    big, dots = fp.classes
    assert big.presence_fraction == 1.0 and dots.presence_fraction == 0.5
    assert big.mean_voxel_fraction == pytest.approx((8 + 4) / 2 / 192)
    assert dots.num_components_median == 2.0
    assert dots.component_volume_mm3_median == pytest.approx(1.0)  # voxel volume 2 * 1 * 0.5
    assert fp.crop_reduction_median == pytest.approx((40 / 192 + 1.0) / 2)
    assert not fp.is_2d


def test_fingerprint_is_deterministic_and_round_trips(synth_dataset, tmp_path):
    spec = load_dataset(synth_dataset)
    one = extract_fingerprint(spec, num_processes=1)
    two = extract_fingerprint(spec, num_processes=2)
    assert one == two
    save_fingerprint(one, tmp_path / "fp.json")
    assert load_fingerprint(tmp_path / "fp.json") == one
    assert isinstance(one, Fingerprint)
