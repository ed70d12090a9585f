import dataclasses

import numpy as np
import pytest

from autoseg.imageio import ImageGeometry
from autoseg.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans
from autoseg.cropping import nonzero_bbox
from autoseg.preprocess.normalization import normalize
from autoseg.preprocess.preprocessor import export_to_original, preprocess_case
from autoseg.preprocess.resampling import compute_new_shape, resample_data, resample_seg
from autoseg.preprocess.storage import list_cases, load_case, save_case


def make_plans(spacing=(1.0, 1.0, 1.0), schemes=("zscore",), masks=(False,)) -> Plans:
    net = NetworkPlan(3, (8, 16), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)))
    cfg = ConfigurationPlan("3d_fullres", spacing, (8, 8, 8), 2, (10, 10, 10), net, schemes, masks, True, "3d_fullres")
    net2 = NetworkPlan(2, (8, 16), ((3, 3), (3, 3)), ((1, 1), (2, 2)))
    cfg2 = ConfigurationPlan("2d", spacing, (8, 8), 2, (10, 10, 10), net2, schemes, masks, False, "2d")
    props = IntensityProperties(mean=100.0, std=50.0, median=100.0, min=-1000.0, max=1000.0,
                                percentile_00_5=-200.0, percentile_99_5=300.0)
    return Plans(1, "Dataset999_T", ("CT",) if schemes == ("ct",) else ("MRI",), {"background": 0, "a": 1, "b": 2},
                 ".nii.gz", spacing, (10, 10, 10), (props,), {"3d_fullres": cfg, "2d": cfg2})


def test_compute_new_shape():
    assert compute_new_shape((10, 20, 30), (3.0, 1.0, 1.0), (1.5, 2.0, 1.0)) == (20, 10, 30)


def test_linear_ramp_stays_a_ramp():
    ramp = np.arange(8, dtype=np.float32)[None, :, None, None] * np.ones((1, 8, 4, 4), np.float32)
    up = resample_data(ramp, (16, 4, 4), order=1)
    # cell-centred: new centres at (i + 0.5) / 2 - 0.5 in old index units
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    assert np.allclose(up[0, :, 2, 2], expected, atol=1e-5)


def test_identity_when_shape_matches():
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 7)).astype(np.float32)
    assert resample_data(x, (5, 6, 7)) is x


def test_anisotropic_axis_uses_nearest():
    x = np.zeros((1, 4, 6, 6), np.float32)
    for z in range(4):
        x[0, z] = z * 10
    out = resample_data(x, (8, 12, 12), order=3, separate_axis=0)
    assert set(np.round(np.unique(out), 4)) == {0.0, 10.0, 20.0, 30.0}  # no values between slices
    smooth = resample_data(x, (8, 12, 12), order=1)
    assert len(np.unique(np.round(smooth, 4))) > 4


def test_seg_resampling_keeps_labels():
    seg = np.zeros((1, 6, 6, 6), np.int8)
    seg[0, 1:5, 1:5, 1:5] = 1
    seg[0, 2:4, 2:4, 2:4] = 2
    up = resample_seg(seg, (12, 12, 12), [0, 1, 2])
    assert set(np.unique(up)) == {0, 1, 2}
    assert np.array_equal(resample_seg(up, (6, 6, 6), [0, 1, 2]), seg)


def test_ct_and_masked_zscore_normalisation():
    props = IntensityProperties(100.0, 50.0, 100.0, -1000.0, 1000.0, -200.0, 300.0)
    x = np.array([[-1000.0, 100.0, 250.0, 1000.0]], np.float32)
    out = normalize(x, ("ct",), (False,), (props,), np.ones(4, bool))
    assert np.allclose(out[0], [(-200 - 100) / 50, 0.0, 3.0, (300 - 100) / 50])
    y = np.array([[0.0, 2.0, 4.0, 0.0]], np.float32)
    mask = y[0] != 0
    out = normalize(y, ("zscore",), (True,), (props,), mask)
    assert np.allclose(out[0], [0.0, -1.0, 1.0, 0.0])  # mean 3, std 1 inside the mask


def test_nonzero_bbox():
    x = np.zeros((2, 4, 4, 4))
    x[1, 1, 2, 3] = 5
    assert nonzero_bbox(x) == ((1, 2), (2, 3), (3, 4))
    assert nonzero_bbox(np.zeros((1, 2, 3, 4))) == ((0, 2), (0, 3), (0, 4))


def one_hot(seg, k=3):
    return np.stack([(seg[0] == c).astype(np.float32) for c in range(k)])


def test_round_trip_exact_when_spacing_matches():
    rng = np.random.default_rng(1)
    image = np.zeros((1, 10, 12, 14), np.float32)
    image[0, 2:9, 1:11, 3:12] = rng.normal(5, 1, size=(7, 10, 9))
    seg = np.zeros((1, 10, 12, 14), np.int16)
    seg[0, 3:7, 2:8, 4:10] = 1
    seg[0, 4:6, 3:5, 5:7] = 2
    geom = ImageGeometry((1.0, 1.0, 1.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (10, 12, 14))
    data, seg_p, props = preprocess_case(image, geom, make_plans(), "3d_fullres", seg)
    assert data.shape == (1, 7, 10, 9) and props.crop_bbox == ((2, 9), (1, 11), (3, 12))
    out, probs = export_to_original(one_hot(seg_p), props, make_plans(), "3d_fullres")
    assert out.shape == (10, 12, 14) and np.array_equal(out, seg[0])
    assert probs.shape == (3, 10, 12, 14) and np.allclose(probs.sum(0), 1)


def test_round_trip_with_odd_spacing():
    image = np.ones((1, 16, 40, 36), np.float32)
    seg = np.zeros((1, 16, 40, 36), np.int16)
    seg[0, 4:12, 5:35, 4:30] = 1
    geom = ImageGeometry((1.5, 0.7, 0.9), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 40, 36))
    plans = make_plans()
    data, seg_p, props = preprocess_case(image, geom, plans, "3d_fullres", seg)
    assert data.shape[1:] == (24, 28, 32)
    out, _ = export_to_original(one_hot(seg_p), props, plans, "3d_fullres")
    assert out.shape == (16, 40, 36)
    # resampling 0.7 mm -> 1 mm -> 0.7 mm moves boundaries by at most one voxel
    dice = 2 * ((out == 1) & (seg[0] == 1)).sum() / ((out == 1).sum() + (seg[0] == 1).sum())
    assert dice > 0.85
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        got = np.flatnonzero(out.any(axis=other))
        want = np.flatnonzero(seg[0].any(axis=other))
        assert abs(got[0] - want[0]) <= 1 and abs(got[-1] - want[-1]) <= 1


def test_2d_configuration_keeps_the_slice_axis():
    image = np.ones((1, 5, 20, 20), np.float32)
    geom = ImageGeometry((3.0, 0.5, 0.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (5, 20, 20))
    data, _, props = preprocess_case(image, geom, make_plans(), "2d")
    assert data.shape == (1, 5, 10, 10) and props.spacing_after_resample == (3.0, 1.0, 1.0)


def test_storage_round_trip_and_incomplete_case(tmp_path):
    data = np.random.default_rng(0).normal(size=(1, 4, 5, 6)).astype(np.float32)
    seg = np.zeros((1, 4, 5, 6), np.int8)
    seg[0, 1, 2, 3] = 2
    geom = ImageGeometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 5, 6))
    _, _, props = preprocess_case(data, geom, make_plans(), "3d_fullres")
    locations = {2: np.array([[1, 2, 3]], np.int32)}
    save_case(tmp_path, "c1", data, seg, props, locations)
    case = load_case(tmp_path, "c1")
    assert np.array_equal(case.data, data) and np.array_equal(case.seg, seg)
    assert case.properties == props and np.array_equal(case.class_locations[2], locations[2])
    (tmp_path / "c1.json").unlink()  # as if interrupted before the properties were written
    assert list_cases(tmp_path) == []


def test_preprocess_dataset_skips_up_to_date_cases(synth_dataset, workspace):
    from autoseg.cli import main

    root = ["--root", str(workspace)]
    assert main(["plan_and_preprocess", "-d", "901", "-np", "2", *root]) == 0
    folder = workspace / "preprocessed" / "Dataset901_Synth" / "3d_fullres"
    assert len(list_cases(folder)) == 6
    assert len(list((workspace / "preprocessed" / "Dataset901_Synth" / "gt_segmentations").iterdir())) == 6
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["preprocess", "-d", "901", "-np", "1", *root]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert main(["preprocess", "-d", "901", "-np", "1", "--clean", *root]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert all(after[n] > before[n] for n in before if n.endswith(".json"))
    case = load_case(folder, "case_000")
    assert abs(float(case.data.mean())) < 1e-3 and set(np.unique(case.seg)) == {0, 1, 2}
