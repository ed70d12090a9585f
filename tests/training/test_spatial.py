"""Rotation/scaling of training patches in torch (autoseg/training/spatial.py)."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from autoseg.training.augmentation import AugmentationConfig, build_transforms
from autoseg.training.spatial import LinearSpatialTransform, reach, resample, rotation_matrix


def smooth_case(shape, seed=0):
    """A smooth image (1, 1, *shape) and a nested-box segmentation (labels 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    data = gaussian_filter(rng.normal(size=(1, 1, *shape)), (0, 0) + (2.0,) * len(shape)).astype(np.float32)
    seg = np.zeros((1, 1, *shape), np.float32)
    outer = tuple(slice(n // 4, 3 * n // 4) for n in shape)
    inner = tuple(slice(n // 3, n // 2) for n in shape)
    seg[(0, 0) + outer] = 1
    seg[(0, 0) + inner] = 2
    return data, seg


@pytest.mark.parametrize("dim", [2, 3])
def test_same_draws_and_same_patches_as_batchgenerators(dim):
    from batchgenerators.transforms.spatial_transforms import SpatialTransform

    patch = (20, 28, 20)[:dim]
    sampled = (40, 46, 40)[:dim]
    a = math.radians(30)
    angles = [(-a, a)] * (1 if dim == 2 else 3)
    theirs = SpatialTransform(patch, patch_center_dist_from_border=None, do_elastic_deform=False, do_rotation=True,
                              angle_x=(-a, a), angle_y=(-a, a), angle_z=(-a, a), do_scale=True, scale=(0.7, 1.4),
                              border_mode_data="constant", border_cval_data=0, order_data=1,
                              border_mode_seg="constant", border_cval_seg=-1, order_seg=1, random_crop=False,
                              p_rot_per_sample=0.5, p_scale_per_sample=0.5)
    ours = LinearSpatialTransform(patch, angles, (0.7, 1.4), p_rotation=0.5, p_scaling=0.5)
    data, seg = smooth_case(sampled)
    data, seg = np.concatenate([data] * 4), np.concatenate([seg] * 4)  # 4 samples: some plain, some moved
    for seed in range(4):
        np.random.seed(seed)
        expected = theirs(data=data.copy(), seg=seg.copy())
        after_theirs = np.random.uniform()
        np.random.seed(seed)
        got = ours(data=data.copy(), seg=seg.copy())
        assert np.random.uniform() == after_theirs  # the same number of draws from numpy's generator
        assert got["data"].shape == expected["data"].shape == (4, 1, *patch)
        assert np.abs(got["data"] - expected["data"]).max() < 1e-5
        assert np.array_equal(got["seg"], expected["seg"])


def test_quarter_turn_about_axis_0_is_rot90_in_the_other_two():
    # R = Rx(90 deg); output c reads c @ R = (c0, c2, -c1): out[i, j, k] = in[i, k, n - 1 - j] = rot90 over axes (1, 2)
    data = np.arange(5 * 6 * 6, dtype=np.float32).reshape(1, 5, 6, 6)
    seg = (data % 3).astype(np.float32)
    image, labels = resample(data, seg, (5, 6, 6), rotation_matrix([math.pi / 2, 0.0, 0.0]))
    assert np.allclose(image, np.rot90(data, 1, axes=(2, 3)), atol=1e-3)
    assert np.array_equal(labels, np.rot90(seg, 1, axes=(2, 3)))


def test_scale_two_reads_every_other_voxel_and_outside_is_empty():
    data = np.arange(7, dtype=np.float32).reshape(1, 7) * 10  # 2D: rows of one sample along axis 1
    data = np.repeat(data[:, None, :], 7, axis=1)  # (1, 7, 7): value 10 * column
    seg = (data >= 30).astype(np.float32)
    # patch 4 in 7: centred c = -1.5 .. 1.5, read at 2c + 3 = 0, 2, 4, 6 along both axes
    image, labels = resample(data, seg, (4, 4), np.eye(2) * 2)
    assert np.allclose(image[0, 0], [0, 20, 40, 60])
    assert np.array_equal(labels[0, 0], [0, 0, 1, 1])
    # scale 3: read at -1.5, 1.5, 4.5, 7.5; the first and last are more than a voxel outside
    image, labels = resample(data, seg, (4, 4), np.eye(2) * 3)
    assert np.allclose(image[0, 1], [0, 15, 45, 0])
    assert np.array_equal(labels[0, 1], [-1, 0, 1, -1])


def test_reach_is_the_box_the_points_read():
    assert [a.tolist() for a in reach((4,), (10,), np.eye(1))] == [[3], [7]]  # points 3 .. 6
    lo, hi = reach((4, 4), (10, 10), np.eye(2) * 0.5)  # points 3.75 .. 5.25
    assert lo.tolist() == [3, 3] and hi.tolist() == [7, 7]
    lo, hi = reach((4, 4), (7, 7), np.eye(2) * 3)  # -1.5 .. 7.5: clipped to the patch
    assert lo.tolist() == [0, 0] and hi.tolist() == [7, 7]


def test_samples_that_draw_nothing_are_centre_crops():
    data, seg = smooth_case((12, 14, 12))
    t = LinearSpatialTransform((8, 8, 8), [(-1.0, 1.0)] * 3, (0.7, 1.4), p_rotation=0.0, p_scaling=0.0)
    out = t(data=data.copy(), seg=seg.copy())
    assert np.array_equal(out["data"], data[:, :, 2:10, 3:11, 2:10])
    assert np.array_equal(out["seg"], seg[:, :, 2:10, 3:11, 2:10])


def test_the_result_does_not_depend_on_the_thread_count():
    data, seg = smooth_case((30, 34, 30))
    matrix = rotation_matrix([0.3, -0.2, 0.4]) * 1.1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resample(data[0], seg[0], (17, 19, 15), matrix)
        torch.set_num_threads(3)
        three = resample(data[0], seg[0], (17, 19, 15), matrix)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one[0], three[0]) and np.array_equal(one[1], three[1])


def test_linear_image_interpolation_uses_torch_and_other_orders_batchgenerators():
    from batchgenerators.transforms.spatial_transforms import SpatialTransform

    first = build_transforms(AugmentationConfig(order_data=1), (12, 12, 12)).transforms[0]
    assert isinstance(first, LinearSpatialTransform)
    assert len(first.angle_ranges) == 3 and first.p_rotation == 0.2
    flat = build_transforms(AugmentationConfig(order_data=1), (4, 40, 40)).transforms[0]
    assert flat.angle_ranges[1:] == [(0.0, 0.0), (0.0, 0.0)]  # anisotropic: in-plane rotation only
    assert isinstance(build_transforms(AugmentationConfig(order_data=3), (12, 12, 12)).transforms[0], SpatialTransform)
    off = build_transforms(AugmentationConfig(order_data=1, enabled=False), (12, 12)).transforms[0]
    assert off.p_rotation == off.p_scaling == 0.0
    with pytest.raises(ValueError, match="3D patches take 3 angle ranges, found 1"):
        LinearSpatialTransform((4, 4, 4), [(0.0, 1.0)], (1.0, 1.0), 0.5, 0.5)
