"""Small-class handling in training: config resolution, per-class patch shares, the loss."""
import math

import numpy as np
import pytest
import torch

from autoseg.errors import UserFacingError
from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.preprocess.storage import CaseProperties, sample_class_locations, save_case
from autoseg.training import dataloader
from autoseg.training.dataloader import BatchSampling, BatchSource
from autoseg.training.loss import DiceCELoss, build_loss, soft_dice
from autoseg.training.small_classes import resolve_small_classes, unlearned_classes, unlearned_message
from autoseg.training.train_config import TrainConfig, apply_overrides, resolve_train_config

SHAPE = (20, 20, 20)
PATCH = (8, 8, 8)


def plan(small=(3,)):
    net = NetworkPlan(3, (4, 8), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)))
    return ConfigurationPlan("3d_fullres", (1.0,) * 3, PATCH, 4, SHAPE, net, ("zscore",), (False,), False, "x",
                             small_classes=small)


def lesion_cases(folder):
    """Six cases, each with a 27-voxel class-1 cube. Class 3 only in c0 (a 1-voxel and a 27-voxel
    lesion, far apart) and c3 (one 8-voxel lesion). Returns the ids and the class-3 voxels per case."""
    lesions = {"c0": [(slice(2, 3), slice(2, 3), slice(2, 3)), (slice(14, 17), slice(14, 17), slice(14, 17))],
               "c3": [(slice(5, 7), slice(12, 14), slice(3, 5))]}
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(6)]
    for i, cid in enumerate(ids):
        data = rng.normal(size=(1,) + SHAPE).astype(np.float32)
        seg = np.zeros((1,) + SHAPE, np.int8)
        seg[0, 9:12, 9:12, 9:12] = 1
        for box in lesions.get(cid, []):
            seg[(0,) + box] = 3
        props = CaseProperties(cid, {}, tuple((0, s) for s in SHAPE), SHAPE, (1.0,) * 3, SHAPE, (1.0,) * 3)
        save_case(folder, cid, data, seg, props, sample_class_locations(seg, [1, 2, 3], i))
    return ids


def slots(source: BatchSource, n: int) -> np.ndarray:
    """(n, B): per batch ``i < n``, the small class each sample was given (0: the usual sampling),
    as ``batch(i)`` draws them."""
    return np.array([[c or 0 for c in source.small_class_slots(source._rng(i))] for i in range(n)])


def holds(batch, cls: int) -> np.ndarray:
    """Per sample, whether its target holds class ``cls``."""
    return (batch["target"][:, 0] == cls).reshape(len(batch["target"]), -1).any(axis=1)


def centre_labels(batch) -> np.ndarray:
    """The label at the patch centre of each sample (a foreground-forced patch is centred on its voxel)."""
    c = [p // 2 for p in PATCH]
    return batch["target"][:, 0, c[0], c[1], c[2]]


# --- TrainConfig and resolution -------------------------------------------------------------------

def test_defaults_come_from_the_plans():
    """By default the flagged classes are pasted into every sample, with the plain sampler and loss;
    the variant small_class_sampler is the former handling (sampler, CE weight 3, pooled Dice)."""
    setup = resolve_small_classes(TrainConfig(), plan((3,)), num_classes=4)
    assert setup.classes == (3,) and setup.paste == {3: 1.0} and setup.shares == {3: 0.0}
    assert setup.ce_weights is None and setup.batch_dice_classes == ()
    assert setup.describe() == "small classes (3,): pasted into 3: 1.00 of the samples, CE weight 1, Dice per sample"
    assert not resolve_small_classes(TrainConfig(), plan(()), 4).active
    sampler = resolve_small_classes(resolve_train_config("small_class_sampler"), plan((3,)), 4)
    assert sampler.paste == {} and sampler.shares == {3: pytest.approx(0.33)}
    assert sampler.ce_weights == (1.0, 1.0, 1.0, 3.0) and sampler.batch_dice_classes == (3,)
    assert sampler.describe() == "small classes (3,): batch shares {3: 0.33}, CE weight 3, batch Dice for (3,)"


def test_overrides_and_variant():
    cfg = apply_overrides(TrainConfig(), ["small_classes.classes=1,3", "small_classes.shares=1,3",
                                          "small_classes.oversample=0.5", "small_classes.ce_weight=5",
                                          "small_classes.batch_dice=false"])
    setup = resolve_small_classes(cfg, plan((3,)), 4)
    assert setup.classes == (1, 3) and setup.shares == {1: pytest.approx(0.125), 3: pytest.approx(0.375)}
    assert setup.ce_weights == (1.0, 5.0, 1.0, 5.0) and setup.batch_dice_classes == ()
    off = resolve_train_config("no_small_classes")
    assert off.small_classes.classes == () and not resolve_small_classes(off, plan((3,)), 4).active
    assert apply_overrides(TrainConfig(), ["small_classes.classes=()"]).small_classes.classes == ()
    assert apply_overrides(off, ["small_classes.classes=none"]).small_classes.classes is None
    assert apply_overrides(off, ["small_classes=none"]).small_classes.classes is None  # the flat name
    weighted = apply_overrides(TrainConfig(), ["small_classes.ce_weight=1"])
    assert resolve_small_classes(weighted, plan(), 4).ce_weights is None


def test_override_errors():
    for key in ("small_class_placement=centre", "small_class_slots=random", "small_class_balance_cases=true"):
        with pytest.raises(UserFacingError, match=f"'{key.split('=')[0]}' was retired: .*docs/experiments/"):
            apply_overrides(TrainConfig(), [key])
    with pytest.raises(UserFacingError, match=r"small_classes.oversample must be in \[0, 1\]"):
        apply_overrides(TrainConfig(), ["small_classes.oversample=1.5"])
    with pytest.raises(UserFacingError, match="one entry per small class"):
        apply_overrides(TrainConfig(), ["small_classes.classes=1,3", "small_classes.shares=1"])
    with pytest.raises(UserFacingError, match="small_classes.shares has 2 entries but the small classes are"):
        resolve_small_classes(apply_overrides(TrainConfig(), ["small_classes.shares=1,1"]), plan((3,)), 4)
    with pytest.raises(UserFacingError, match=r"small_classes \[7\] are not foreground labels"):
        resolve_small_classes(apply_overrides(TrainConfig(), ["small_classes.classes=7"]), plan((3,)), 4)


def test_a_class_predicted_nowhere_is_reported_as_not_learned():
    summary = {"pooled": {"1": {"n_ref_lesions": 40, "n_pred_lesions": 41},
                          "3": {"n_ref_lesions": 9, "n_pred_lesions": 0},
                          "4": {"n_ref_lesions": 0, "n_pred_lesions": 0},  # in no validation case
                          "5": {"n_ref_lesions": 2, "n_pred_lesions": 1}}}  # predicted, even if wrongly
    assert unlearned_classes(summary, (3, 4, 5)) == {3: 9}
    assert unlearned_classes(summary, ()) == {}
    assert "never predicted on the 34 validation cases of fold_0, which hold 9 of its lesions" in \
        unlearned_message(3, 9, "the 34 validation cases of fold_0")


# --- the sampler ----------------------------------------------------------------------------------

def test_per_class_shares_over_many_batches(tmp_path):
    ids = lesion_cases(tmp_path)
    # shares 0.5 (class 3) + 0.25 (class 1) of a batch of 4: 4 x 0.75 = 3 slots per batch (the last
    # three), each class 3 with probability 2/3 and class 1 with 1/3, so 2 and 1 samples per batch
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(4, 0.0, 5, class_shares={3: 0.5, 1: 0.25}))
    n = 300
    given = slots(src, n)  # (n, 4)
    assert (given[:, 0] == 0).all()  # the first sample keeps the usual sampling
    forced = given[:, 1:]
    assert ((forced == 1) | (forced == 3)).all()  # every slot holds a small class
    share3, share1 = (forced == 3).sum() / (4 * n), (forced == 1).sum() / (4 * n)
    sd = math.sqrt(n * 3 * (2 / 3) * (1 / 3)) / (4 * n)  # binomial sd of the class-3 share
    assert abs(share3 - 0.5) < 4 * sd and abs(share1 - 0.25) < 4 * sd


def test_small_class_count_rounds_at_random_to_the_share():
    rng = np.random.default_rng(3)
    counts = np.array([dataloader.small_class_count(2, 0.33, rng) for _ in range(4000)])
    # B x share = 0.66: one slot with probability 0.66, never two
    assert set(counts) == {0, 1}
    assert abs(counts.mean() - 0.66) < 4 * math.sqrt(0.66 * 0.34 / 4000)
    assert all(dataloader.small_class_count(4, 0.75, rng) == 3 for _ in range(50))  # whole: no draw
    assert all(dataloader.small_class_count(2, 0.0, rng) == 0 for _ in range(50))


def test_a_batch_of_two_gives_a_third_of_its_samples_to_the_small_class(tmp_path):
    ids = lesion_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 7, class_shares={3: 0.33}))
    n = 400
    given = slots(src, n)  # (n, 2)
    # the slot is the second sample (the foreground-forced place); the first keeps the usual sampling
    assert (given[:, 0] == 0).all()
    share = (given[:, 1] == 3).mean() / 2
    assert abs(share - 0.33) < 4 * math.sqrt(0.66 * 0.34 / n) / 2
    # a sample given the class holds it
    assert all(holds(src.batch(i), 3)[1] for i in np.flatnonzero(given[:, 1] == 3)[:20])


def test_small_class_samples_take_the_foreground_forced_place_first(tmp_path):
    ids = lesion_cases(tmp_path)
    # B=2, oversample 0.5: the second sample is forced onto foreground, the first placed at random.
    # Share 0.5: one small-class sample in every batch (2 x 0.5 = 1, no draw), in the forced place.
    plain = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.5, 3))
    small = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.5, 3, class_shares={3: 0.5}))
    n = 200
    plain_centres = np.stack([centre_labels(plain.batch(i)) for i in range(n)])
    small_centres = np.stack([centre_labels(small.batch(i)) for i in range(n)])
    assert (plain_centres[:, 1] > 0).all() and (plain_centres[:, 1] == 1).mean() > 0.5  # forced: mostly the cube
    assert (slots(small, n)[:, 1] == 3).all()  # the lesion took that place
    assert all(holds(small.batch(i), 3)[1] for i in range(20))
    # the first sample stays random in both: seldom on the 27-voxel cube or a lesion (35 of 8,000 voxels)
    assert (plain_centres[:, 0] > 0).mean() < 0.05 and (small_centres[:, 0] > 0).mean() < 0.05
    # with a share above the forced places the random one is taken too
    both = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.5, 3, class_shares={3: 1.0}))
    assert (slots(both, 20) == 3).all() and all(holds(both.batch(i), 3).all() for i in range(20))


def test_a_containing_placement_is_a_random_one_that_holds_the_voxel():
    rng = np.random.default_rng(0)
    size, patch = (56, 72, 56), (40, 56, 40)  # sample (for rotation) and the central patch kept
    # image smaller than the sample: a random sample is centred, and so is this one when the
    # centred patch holds the voxel 5 / 7 / 5 voxels (patch / 8) from its faces
    small = (36, 50, 35)
    assert dataloader.choose_lower_corner_containing(small, size, patch, np.array([17, 25, 17]), rng).tolist() == \
        dataloader.choose_lower_corner(small, size, rng).tolist() == [-10, -11, -11]
    # a voxel in a corner: the patch shifted just enough to hold it 5 / 7 / 5 voxels inside its faces
    lower = dataloader.choose_lower_corner_containing(small, size, patch, np.array([0, 0, 34]), rng)
    assert (lower + (np.array(size) - patch) // 2).tolist() == [-5, -7, 0]  # x: 34 = 40 - 1 - 5
    # a large image: uniform over the containing centres inside the image, else the nearest containing one
    voxel = np.array([100, 5, 195])
    lowers = np.array([dataloader.choose_lower_corner_containing((200,) * 3, size, patch, voxel, rng)
                       for _ in range(3000)])
    offsets = voxel - (lowers + (np.array(size) - patch) // 2)  # voxel position inside the kept patch
    assert offsets[:, 0].min() == 5 and offsets[:, 0].max() == 34  # every position from 5 to 40 - 1 - 5
    assert abs(offsets[:, 0].mean() - 19.5) < 0.5
    assert (lowers[:, 0] >= 0).all() and (lowers[:, 0] <= 200 - 56).all()  # inside, as a random sample
    assert (offsets[:, 1] == 7).all()  # 5 voxels from the image face: no sample inside the image holds it
    assert (offsets[:, 2] == 34).all() and (lowers[:, 2] == 153).all()  # nearest to the image's inside


def test_contained_small_class_samples_hold_the_lesion_off_centre(tmp_path):
    ids = lesion_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 5, class_shares={3: 0.5}))
    targets = [src.batch(i)["target"][1, 0] for i in range(200)]  # the second sample is the lesion's
    assert all((t == 3).any() for t in targets)
    at_centre = np.mean([t[4, 4, 4] == 3 for t in targets])
    assert at_centre < 0.5  # centring put a lesion voxel at the centre every time


def test_components_are_drawn_uniformly_among_cases_that_contain_the_class(tmp_path):
    ids = lesion_cases(tmp_path)
    src = BatchSource(tmp_path, ids, plan(), BatchSampling(2, 0.0, 1, class_shares={3: 0.5}))
    assert src._cases_with[3] == ["c0", "c3"]
    rng = np.random.default_rng(0)
    single = 0
    for _ in range(600):
        data, seg, _ = src.sample_component(3, rng)
        assert (seg == 3).any()
        # the 1-voxel lesion of c0; a patch holding a voxel of the others (27 and 8 voxels, each
        # voxel kept an eighth of the patch from its faces) holds at least 8 of their voxels
        single += int((seg == 3).sum() == 1)
    # case c0 half the time, then one of its two components: 1/4 of draws on the single voxel
    # (voxel-uniform sampling would give 1/2 x 1/28 = 1.8%)
    assert abs(single / 600 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 600)


def test_lazy_loading_gives_the_same_batches(tmp_path, monkeypatch):
    ids = lesion_cases(tmp_path)
    shares = {3: 0.33}
    memory = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 2, class_shares=shares))
    monkeypatch.setattr(dataloader, "IN_MEMORY_LIMIT_BYTES", 0)
    lazy = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 2, class_shares=shares))
    assert lazy._cases is None and lazy._cases_with == memory._cases_with
    for i in range(5):
        assert np.array_equal(lazy.batch(i)["data"], memory.batch(i)["data"])


def test_without_small_classes_batches_are_unchanged(tmp_path):
    ids = lesion_cases(tmp_path)
    plain = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 4))
    empty = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 4, class_shares={}))
    absent = BatchSource(tmp_path, ids, plan(), BatchSampling(3, 0.33, 4, class_shares={2: 0.5}))  # in no case
    assert absent.class_shares == {}
    for i in range(4):
        assert np.array_equal(plain.batch(i)["data"], empty.batch(i)["data"])
        assert np.array_equal(plain.batch(i)["data"], absent.batch(i)["data"])


# --- the loss -------------------------------------------------------------------------------------

def test_weighted_cross_entropy_by_hand():
    # two voxels: background with uniform logits (loss ln 4), class 3 with logits (ln 3, 0, 0, 0) (p = 1/6)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # (B=1, K=4, 2)
    target = torch.tensor([[[0, 3]]])
    plain = DiceCELoss(False, 1.0, 0.0)(logits, target)
    weighted = DiceCELoss(False, 1.0, 0.0, ce_class_weights=(1.0, 1.0, 1.0, 3.0))(logits, target)
    assert float(plain) == pytest.approx((math.log(4) + math.log(6)) / 2)
    assert float(weighted) == pytest.approx((math.log(4) + 3 * math.log(6)) / 4)


def test_batch_dice_for_chosen_classes_by_hand():
    # 2 samples x 4 voxels, classes 0-2. Sample 0: target (1,1,0,0), prediction (1,0,2,0).
    # Sample 1: target (2,0,0,0), prediction (2,0,0,0).
    target = torch.tensor([[[1, 1, 0, 0]], [[2, 0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 2, 0]], [[2, 0, 0, 0]]])
    probs = torch.zeros(2, 3, 4).scatter_(1, pred, 1.0)
    # class 1: sample 0 Dice 2/3, sample 1 absent and not predicted (1): mean 5/6, pooled 2/3.
    # class 2: sample 0 absent but predicted (~0), sample 1 perfect (1): mean 1/2, pooled 2*1/3 = 2/3.
    assert float(soft_dice(probs, target, False)) == pytest.approx((5 / 6 + 1 / 2) / 2, abs=1e-4)
    assert float(soft_dice(probs, target, False, (2,))) == pytest.approx((5 / 6 + 2 / 3) / 2, abs=1e-4)
    assert float(soft_dice(probs, target, True)) == pytest.approx(2 / 3, abs=1e-4)
    assert float(soft_dice(probs, target, True, (2,))) == pytest.approx(2 / 3, abs=1e-4)


def test_build_loss_passes_the_small_class_settings():
    loss = build_loss("dice_ce", False, 1.0, 1.0, 3, ce_class_weights=(1.0, 3.0), batch_dice_classes=(1,))
    assert loss.loss.batch_dice_classes == (1,) and loss.loss.class_weights.tolist() == [1.0, 3.0]
    assert build_loss("ce", False, 1.0, 1.0, None).class_weights is None
