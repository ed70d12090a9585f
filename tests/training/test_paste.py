"""Copy-paste of small-class components (``TrainConfig.small_class_paste``, autoseg/training/paste.py)."""
import math

import numpy as np
import pytest

from autoseg.errors import UserFacingError
from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.training import dataloader
from autoseg.training.dataloader import BatchSampling, BatchSource
from autoseg.training.paste import SHELL_SIGMA, Piece, cut_pieces, paste_piece
from autoseg.training.small_classes import resolve_small_classes
from autoseg.training.train_config import TrainConfig, apply_overrides

from tests.training.test_small_class_training import lesion_cases, plan


def gaussian_weights(sigma: float) -> np.ndarray:
    """scipy's 1D Gaussian kernel by hand: exp(-k^2 / 2 sigma^2) for |k| <= int(4 sigma + 0.5), normalised."""
    radius = int(4 * sigma + 0.5)
    w = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def single_voxel_case(host_label=0):
    """7^3 case, channel 0 = 10 everywhere and 50 at the lesion voxel (3, 3, 3); ``host_label``
    fills the 5^3 block around it."""
    data = np.full((1, 7, 7, 7), 10.0, np.float32)
    data[0, 3, 3, 3] = 50.0
    seg = np.zeros((7, 7, 7), np.int16)
    seg[1:6, 1:6, 1:6] = host_label
    seg[3, 3, 3] = 3
    return data, seg


# --- cutting --------------------------------------------------------------------------------------

def test_a_single_voxel_lesion_is_cut_with_its_shell():
    data, seg = single_voxel_case()
    [piece] = cut_pieces(data, seg, 3)
    assert piece.cls == 3 and piece.host == 0 and piece.context == pytest.approx(10.0)
    assert piece.mask.shape == (3, 3, 3) and piece.mask.sum() == 1 and piece.mask[1, 1, 1]
    assert piece.data[0, 1, 1, 1] == 50.0 and piece.data[0, 0, 0, 0] == 10.0
    w = gaussian_weights(SHELL_SIGMA)
    c = len(w) // 2
    assert piece.alpha[1, 1, 1] == 1.0
    assert piece.alpha[0, 1, 1] == pytest.approx(w[c - 1] * w[c] ** 2, rel=1e-5)  # a face neighbour
    assert piece.alpha[0, 0, 0] == pytest.approx(w[c - 1] ** 3, rel=1e-5)  # a corner neighbour


def test_the_host_is_the_label_around_the_lesion():
    data, seg = single_voxel_case(host_label=1)
    [piece] = cut_pieces(data, seg, 3)
    assert piece.host == 1


def test_components_are_cut_apart_and_clipped_at_the_image_face():
    data, seg = single_voxel_case()
    seg[0, 0, 0] = 3  # a second lesion in the corner: its box holds only the voxels inside the image
    seg[6, 5:7, 6] = 3  # a third, two voxels, on an edge
    pieces = sorted(cut_pieces(data, seg, 3), key=lambda p: p.mask.sum())
    shapes = sorted(p.mask.shape for p in pieces)
    assert shapes == [(2, 2, 2), (2, 3, 2), (3, 3, 3)]
    assert [int(p.mask.sum()) for p in pieces] == [1, 1, 2]


# --- pasting --------------------------------------------------------------------------------------

def lesion_piece(host=0, context=0.0):
    """A 3^3 piece: lesion voxel 10 in the middle, shell voxels 4, alpha 1 / 0.25 / 0 (corners)."""
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    alpha = np.full((3, 3, 3), 0.25, np.float32)
    alpha[1, 1, 1] = 1.0
    alpha[::2, ::2, ::2] = 0.0  # corners outside the footprint
    data = np.full((1, 3, 3, 3), 4.0, np.float32)
    data[0, 1, 1, 1] = 10.0
    return Piece(3, data, mask, alpha, host, context)


def test_paste_goes_only_where_the_host_label_is_and_blends_the_shell():
    seen = set()
    for seed in range(40):
        data = np.zeros((1, 6, 6, 6), np.float32)
        seg = np.zeros((6, 6, 6), np.int16)
        seg[:, :, 3:] = 1  # the last three columns are anatomy: the 3-wide footprint fits only at x 0..2
        assert paste_piece(data, seg, lesion_piece(), np.zeros(3), np.full(3, 6), np.random.default_rng(seed),
                           attempts=100)  # a quarter of the drawn positions fit
        [(z, y, x)] = np.argwhere(seg == 3)
        seen.add((z, y))
        assert x == 1 and (seg[:, :, 3:] == 1).all() and (seg == 3).sum() == 1
        assert data[0, z, y, x] == 10.0
        assert data[0, z - 1, y, x] == pytest.approx(0.25 * 4.0)  # a shell voxel: 0.25 x 4 + 0.75 x 0
        assert data[0, z - 1, y - 1, x - 1] == 0.0  # a corner: alpha 0, untouched
        assert np.count_nonzero(data) == 1 + 3 * 3 * 3 - 1 - 8  # the footprint: all but the corners
    assert len(seen) > 8  # the position is drawn at random among the 4 x 4 that fit


def test_no_place_leaves_the_sample_unchanged():
    rng = np.random.default_rng(0)
    data = np.zeros((1, 6, 6, 6), np.float32)
    seg = np.ones((6, 6, 6), np.int16)  # no background anywhere
    assert not paste_piece(data, seg, lesion_piece(host=0), np.zeros(3), np.full(3, 6), rng)
    assert (seg == 1).all() and (data == 0).all()
    small = np.zeros((6, 6, 6), np.int16)  # the region is narrower than the piece
    assert not paste_piece(data, small, lesion_piece(), np.array([0, 0, 0]), np.array([6, 2, 6]), rng)
    assert (small == 0).all()


def test_the_surroundings_intensity_must_match_the_source():
    rng = np.random.default_rng(0)
    seg = np.zeros((5, 5, 5), np.int16)
    bright = np.full((1, 5, 5, 5), 5.0, np.float32)  # shell mean 5 against the source's 0: refused
    assert not paste_piece(bright, seg, lesion_piece(context=0.0), np.zeros(3), np.full(3, 5), rng, tolerance=1.0)
    assert (seg == 0).all()
    close = np.full((1, 5, 5, 5), 0.8, np.float32)  # within 1 of it: pasted
    assert paste_piece(close, seg, lesion_piece(context=0.0), np.zeros(3), np.full(3, 5), rng, tolerance=1.0)
    assert (seg == 3).sum() == 1


# --- in the batches -------------------------------------------------------------------------------

def test_a_pasted_sample_is_the_plain_sample_with_a_lesion_added(tmp_path):
    """Batch size 1: the case and the patch are drawn before the paste, so the sample is plain
    training's except on the pasted piece, and only background turns into the lesion."""
    ids = lesion_cases(tmp_path)
    plain = BatchSource(tmp_path, ids, plan(), BatchSampling(1, 0.0, 3))
    pasted = BatchSource(tmp_path, ids, plan(), BatchSampling(1, 0.0, 3, paste_shares={3: 1.0}))
    added = 0
    for i in range(60):
        a, b = plain.batch(i), pasted.batch(i)
        ta, tb = a["target"][0, 0], b["target"][0, 0]
        changed = ta != tb
        assert (ta[changed] == 0).all() and (tb[changed] == 3).all()
        added += int(changed.any())
        differs = np.argwhere(a["data"][0, 0] != b["data"][0, 0])
        if len(differs):  # the image changes only on the lesion and the voxels next to it
            lesion = np.argwhere(changed)
            distance = np.abs(differs[:, None, :] - lesion[None, :, :]).max(-1).min(1)
            assert distance.max() <= 1
    assert added >= 55  # a place is found in almost every 8^3 patch of these cases


def test_where_no_place_matches_the_sample_holds_a_component_of_its_own_case(tmp_path, monkeypatch):
    ids = lesion_cases(tmp_path)
    monkeypatch.setattr(dataloader, "paste_piece", lambda *args, **kwargs: False)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 2, paste_shares={3: 1.0}))
    assert all((src.batch(i)["target"][j] == 3).any() for i in range(30) for j in range(2))


def test_paste_rate_over_many_samples(tmp_path):
    ids = lesion_cases(tmp_path)
    rate = 0.4
    plain = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 7))
    pasted = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 7, paste_shares={3: rate}))
    n = 300

    def with_lesion(src):
        return np.mean([(src.batch(i)["target"][j] == 3).any() for i in range(n) for j in range(2)])

    base = with_lesion(plain)  # lesions that the random patches hold by themselves
    expected = base + (1 - base) * rate  # a place is found in these patches (previous test)
    assert abs(with_lesion(pasted) - expected) < 4 * math.sqrt(expected * (1 - expected) / (2 * n)) + 0.02


def test_paste_in_a_2d_configuration_uses_a_section_of_the_lesion(tmp_path):
    ids = lesion_cases(tmp_path)
    net = NetworkPlan(2, (4, 8), ((3, 3),) * 2, ((1, 1), (2, 2)))
    cfg2d = ConfigurationPlan("2d", (1.0,) * 3, (8, 8), 4, (20, 20, 20), net, ("zscore",), (False,), False, "x",
                              small_classes=(3,))
    plain = BatchSource(tmp_path, ids, cfg2d, BatchSampling(1, 0.0, 1))
    pasted = BatchSource(tmp_path, ids, cfg2d, BatchSampling(1, 0.0, 1, paste_shares={3: 1.0}))
    assert pasted.batch(0)["target"].shape == (1, 1, 8, 8)
    added = []
    for i in range(80):
        a, b = plain.batch(i)["target"], pasted.batch(i)["target"]
        if ((a == b) | ((a == 0) & (b == 3))).all():  # pasted into the plain sample (else: no place, a new one)
            added.append(int((a != b).sum()))
    # a section of one of the lesions: 1 pixel (the 1-voxel one), 9 (the 27-voxel cube), 4 (the 2x2x2 one)
    assert set(added) - {0} <= {1, 4, 9} and len(set(added) - {0}) == 3
    assert np.count_nonzero(added) > 60


def test_without_paste_batches_are_unchanged(tmp_path):
    ids = lesion_cases(tmp_path)
    plain = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.33, 4))
    for shares in ({}, {3: 0.0}, {2: 0.5}):  # none, rate 0, a class in no case
        other = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.33, 4, paste_shares=shares))
        assert other.paste_shares == {}
        for i in range(4):
            assert np.array_equal(plain.batch(i)["data"], other.batch(i)["data"])


def test_paste_setting_is_resolved_per_class_and_checked():
    cfg = apply_overrides(TrainConfig(), ["small_classes.classes=1,3", "small_classes.shares=1,3",
                                          "small_classes.paste=0.4"])
    setup = resolve_small_classes(cfg, plan((3,)), 4)
    assert setup.paste == {1: pytest.approx(0.1), 3: pytest.approx(0.3)}
    assert "pasted into 1: 0.10, 3: 0.30 of the samples" in setup.describe()
    assert resolve_small_classes(apply_overrides(TrainConfig(), ["small_classes.paste=0"]), plan((3,)), 4).paste == {}
    with pytest.raises(UserFacingError, match=r"small_classes.paste must be in \[0, 1\], found 1.5"):
        apply_overrides(TrainConfig(), ["small_classes.paste=1.5"])
