import json

import numpy as np
import pytest

from autoseg.errors import UserFacingError
from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.preprocess.storage import CaseProperties, sample_class_locations, save_case
from autoseg.training.augmentation import AugmentationConfig
from autoseg.training.dataloader import (BatchSampling, BatchSource, class_frequencies, crop_with_padding, iterate,
                                         num_forced)
from autoseg.training.splits import get_split, make_splits


def test_splits_are_deterministic_disjoint_and_cover(tmp_path):
    ids = [f"c{i:02d}" for i in range(23)]
    a, b = make_splits(ids), make_splits(list(reversed(ids)))
    assert a == b
    vals = [set(f["val"]) for f in a]
    assert set().union(*vals) == set(ids) and sum(len(v) for v in vals) == 23
    for f in a:
        assert not set(f["train"]) & set(f["val"])
    train, val = get_split(tmp_path, 2, ids)
    assert val == a[2]["val"]
    assert json.loads((tmp_path / "splits.json").read_text()) == a
    assert get_split(tmp_path, "all", ids) == (sorted(ids), sorted(ids))


def test_user_edited_splits_are_respected_and_validated(tmp_path):
    ids = ["a", "b", "c"]
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]))
    assert get_split(tmp_path, 0, ids) == (["a", "b"], ["c"])
    with pytest.raises(UserFacingError, match="fold 1 does not exist"):
        get_split(tmp_path, 1, ids)
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["a", "zz"], "val": ["c"]}]))
    with pytest.raises(UserFacingError, match=r"names case\(s\) \['zz'\]"):
        get_split(tmp_path, 0, ids)


def test_num_forced():
    assert num_forced(2, 0.33) == 1 and num_forced(7, 0.33) == 2 and num_forced(4, 0.0) == 0


def test_crop_with_padding():
    a = np.arange(16).reshape(1, 4, 4)
    out = crop_with_padding(a, np.array([-1, 2]), (3, 3), -7)
    assert out.tolist() == [[[-7, -7, -7], [2, 3, -7], [6, 7, -7]]]


def tiny_cases(folder, n=4, shape=(24, 24, 24)):
    """Cases whose only foreground is one voxel of class 1 and one of class 2."""
    rng = np.random.default_rng(0)
    for i in range(n):
        data = rng.normal(size=(1,) + shape).astype(np.float32)
        seg = np.zeros((1,) + shape, np.int8)
        seg[0, 3 + i, 5, 7] = 1
        seg[0, 20, 18 - i, 2] = 2
        props = CaseProperties(f"c{i}", {}, ((0, s) for s in shape) and tuple((0, s) for s in shape), shape,
                               (1.0,) * 3, shape, (1.0,) * 3)
        save_case(folder, f"c{i}", data, seg, props, sample_class_locations(seg, [0, 1, 2], i))
    return [f"c{i}" for i in range(n)]


def plan(dim=3, patch=(8, 8, 8)):
    k = ((3,) * dim,) * 2
    s = ((1,) * dim, (2,) * dim)
    return ConfigurationPlan("3d_fullres" if dim == 3 else "2d", (1.0,) * 3, patch, 3, (24, 24, 24),
                             NetworkPlan(dim, (4, 8), k, s), ("zscore",), (False,), dim == 3, "x")


def test_oversampling_forces_the_expected_fraction(tmp_path):
    ids = tiny_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 3))  # 1 of 3 forced
    hits = np.zeros(3)
    for i in range(60):
        seg = src.batch(i)["target"]
        hits += (seg.reshape(3, -1) > 0).any(1)
    assert hits[2] == 60  # the forced (last) sample always holds foreground
    assert hits[:2].sum() < 30  # random 8^3 patches in a 24^3 volume rarely hit a single voxel


def test_class_frequencies_count_the_sampled_patches(tmp_path):
    ids = tiny_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 3))
    seen = np.zeros(3)
    for i in range(4):
        seen += np.bincount(src.batch(i)["target"].ravel(), minlength=3)
    freq = class_frequencies(src, 3, num_batches=4)
    assert freq.tolist() == pytest.approx((seen / (4 * 3 * 8 ** 3)).tolist())
    # each case has one voxel of each class: the forced sample (1 of 3) holds at least one
    assert seen[1] + seen[2] >= 4 and freq[0] > 0.99


def test_2d_sampling_and_deep_supervision_targets(tmp_path):
    ids = tiny_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(2, (8, 12)), BatchSampling(3, 0.5, 0), AugmentationConfig(),
                      [(1.0, 1.0), (0.5, 0.5)])
    b = src.batch(5)
    assert b["data"].shape == (3, 1, 8, 12)
    assert [t.shape for t in b["target"]] == [(3, 1, 8, 12), (3, 1, 4, 6)]


def test_batches_depend_only_on_seed_and_iteration(tmp_path):
    ids = tiny_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.33, 11), AugmentationConfig(), [(1.0,) * 3, (0.5,) * 3])
    inline = [b["data"] for b in iterate(src, 0, 5, num_workers=0)]
    workers = [b["data"] for b in iterate(src, 0, 5, num_workers=2)]
    resumed = [b["data"] for b in iterate(src, 3, 2, num_workers=1)]
    for a, b in zip(inline, workers):
        assert np.array_equal(a.numpy(), b.numpy())
    assert np.array_equal(resumed[0].numpy(), inline[3].numpy())
    assert not np.array_equal(inline[0].numpy(), inline[1].numpy())


def test_spatial_augmentation_interpolates_the_image_with_the_configured_spline_order():
    from autoseg.training.augmentation import build_transforms

    rng = np.random.default_rng(0)
    data = rng.choice([-1.0, 1.0], size=(1, 1, 24, 24, 24)).astype(np.float32)  # +-1 noise: splines overshoot it
    seg = np.zeros_like(data)
    values = {}
    for order in (0, 1, 3):
        cfg = AugmentationConfig(p_rotation=0.0, p_scaling=1.0, scale_range=(1.3, 1.3), order_data=order)
        spatial = build_transforms(cfg, (12, 12, 12)).transforms[0]  # scaled by 1.3: 15.6 voxels, inside the 24^3
        values[order] = spatial(data=data.copy(), seg=seg.copy())["data"]
    assert set(np.unique(values[0])) <= {-1.0, 1.0}  # nearest: input values only
    assert np.abs(values[1]).max() <= 1.0 + 1e-6 and np.any(np.abs(values[1]) < 0.99)  # linear: in between
    assert np.abs(values[3]).max() > 1.0  # cubic: overshoots
    low_res = [t for t in build_transforms(AugmentationConfig(low_resolution_order_upsample=1), (12, 12, 12)).transforms
               if type(t).__name__ == "LowResolutionTransform"]
    assert [t.order_upsample for t in low_res] == [1]
    with pytest.raises(ValueError, match="order_data must be a spline order 0-5, found 7"):
        AugmentationConfig(order_data=7)


def test_image_spline_order_follows_the_training_device_unless_set():
    from autoseg.training.augmentation import resolve_order_data

    assert AugmentationConfig().order_data is None
    assert resolve_order_data(AugmentationConfig(), "cpu").order_data == 1  # the worker shares the cores
    assert resolve_order_data(AugmentationConfig(), "cuda").order_data == 3  # nnU-Net's
    assert resolve_order_data(AugmentationConfig(order_data=3), "cpu").order_data == 3
    assert resolve_order_data(AugmentationConfig(order_data=0), "cuda").order_data == 0


def test_default_workers_build_batches_inline_on_two_cores(monkeypatch):
    from autoseg.training import dataloader

    expected = {1: 0, 2: 0, 4: 2, 6: 3, 32: 8}  # one per two cores above two, at most 8
    for cores, workers in expected.items():
        monkeypatch.setattr(dataloader, "usable_cpus", lambda c=cores: c)
        assert dataloader.default_num_workers() == workers
