"""Connected-component postprocessing: the operations on hand-made masks and what is learned."""
import numpy as np
import pytest

from autoseg.errors import UserFacingError

from autoseg.postprocess.components import (
    Postprocessing,
    PostprocessingStep,
    apply_postprocessing,
    apply_step,
    keep_largest_component,
    learn_postprocessing,
    remove_small_components,
)


def scene() -> np.ndarray:
    """Component X: a class-1 cube (27) touching a class-2 slab (9); Y: a separate class-1 bar (4);
    Z: a class-2 voxel touching nothing."""
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[1:4, 1:4, 1:4] = 1
    seg[1:4, 1:4, 4] = 2  # touches the class-1 cube: one foreground component of 36
    seg[9, 9, 0:4] = 1
    seg[9, 1, 9] = 2
    return seg


def test_keep_largest_foreground_keeps_the_mixed_component():
    seg = scene()
    out = keep_largest_component(seg, None)
    expected = seg.copy()
    expected[9, 9, 0:4] = 0
    expected[9, 1, 9] = 0
    assert np.array_equal(out, expected)
    assert np.array_equal(seg, scene())  # input untouched


def test_keep_largest_per_class_only_touches_that_class():
    seg = scene()
    out = keep_largest_component(seg, 1)
    expected = seg.copy()
    expected[9, 9, 0:4] = 0  # the smaller class-1 component
    assert np.array_equal(out, expected)
    out2 = keep_largest_component(seg, 2)
    expected2 = seg.copy()
    expected2[9, 1, 9] = 0  # 1 voxel < the 9-voxel slab
    assert np.array_equal(out2, expected2)


def test_keep_largest_of_an_absent_class_changes_nothing():
    seg = scene()
    assert np.array_equal(keep_largest_component(seg, 3), seg)


def test_components_use_full_connectivity():
    seg = np.zeros((6, 6, 6), np.uint8)
    seg[0:2, 0:2, 0:2] = 1
    seg[2, 2, 2] = 1  # touches the cube only at a corner: 26-connected, so the same component
    seg[5, 5, 5] = 1
    out = keep_largest_component(seg, 1)
    assert out[2, 2, 2] == 1 and out[5, 5, 5] == 0
    assert np.array_equal(remove_small_components(seg, 1, 2), out)  # the corner voxel is not a speck


def test_remove_small_components_threshold_is_strict():
    seg = scene()
    out = remove_small_components(seg, 1, 4)  # the 4-voxel bar is not smaller than 4: kept
    assert np.array_equal(out, seg)
    out = remove_small_components(seg, 1, 5)
    expected = seg.copy()
    expected[9, 9, 0:4] = 0
    assert np.array_equal(out, expected)
    out = remove_small_components(seg, 1, 28)  # the 27-voxel cube goes as well, class 2 stays
    assert not (out == 1).any() and np.array_equal(out == 2, seg == 2)


def test_apply_postprocessing_runs_steps_in_order():
    """X = a bar of four class-1 then two class-2 voxels (6 foreground), Y = five class-1 voxels.
    remove_small(2, 3) then keep_largest_foreground: X shrinks to 4 < 5, Y survives.
    In the other order X (6) beats Y (5) first, then loses its class-2 voxels."""
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1, 1, 0:4] = 1
    seg[1, 1, 4:6] = 2
    seg[5, 5, 0:5] = 1
    small, largest = PostprocessingStep("remove_small", 2, 3), PostprocessingStep("keep_largest_foreground")
    a = apply_postprocessing(seg, Postprocessing((small, largest)))
    b = apply_postprocessing(seg, Postprocessing((largest, small)))
    only_y = np.zeros_like(seg)
    only_y[5, 5, 0:5] = 1
    only_x1 = np.zeros_like(seg)
    only_x1[1, 1, 0:4] = 1
    assert np.array_equal(a, only_y)
    assert np.array_equal(b, only_x1)
    assert np.array_equal(apply_postprocessing(seg, Postprocessing()), seg)


def test_unknown_step_is_refused():
    with pytest.raises(ValueError, match="unknown postprocessing step 'erode'"):
        apply_step(np.zeros((2, 2, 2), np.uint8), PostprocessingStep("erode"))


def test_learning_removes_a_spurious_blob():
    """Reference: a 4^3 class-1 cube with a 2^3 class-2 core. Prediction: the same plus a
    2-voxel class-1 blob far away. Keeping the largest foreground component is tried first
    and fixes it; the per-class steps then change nothing and are not added."""
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[3:5, 3:5, 3:5] = 2
    pred = ref.copy()
    pred[13, 13, 12:14] = 1
    pp, effect = learn_postprocessing([(pred, ref), (ref.copy(), ref)], [1, 2])
    assert pp.steps == (PostprocessingStep("keep_largest_foreground"),)
    # class 1: 56 reference voxels, 58 predicted -> Dice 112 / 114 in the first case, 1 in the second
    assert effect["before"][1] == pytest.approx((112 / 114 + 1) / 2)
    assert effect["before"][2] == pytest.approx(1.0)
    assert effect["after"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_learning_single_class_uses_keep_largest_for_that_class():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred = ref.copy()
    pred[10, 10, 10] = 1
    pp, effect = learn_postprocessing([(pred, ref)], [1])
    assert pp.steps == (PostprocessingStep("keep_largest", 1),)  # no foreground step with one class
    assert effect["before"][1] == pytest.approx(54 / 55)
    assert effect["after"][1] == pytest.approx(1.0)


def two_lesion_cases():
    """Case 1: lesion A (4^3, class 1 around a 2^3 class-2 core) and lesion B (2^3, class 1),
    predicted exactly, plus a 1-voxel class-1 false positive. Case 2: lesion C (3^3, class 1),
    predicted exactly, plus a 3-voxel class-1 false positive; no class 2 anywhere."""
    ref1 = np.zeros((16, 16, 16), np.uint8)
    ref1[1:5, 1:5, 1:5] = 1
    ref1[2:4, 2:4, 2:4] = 2
    ref1[10:12, 10:12, 10:12] = 1
    pred1 = ref1.copy()
    pred1[14, 1, 14] = 1
    ref2 = np.zeros((16, 16, 16), np.uint8)
    ref2[5:8, 5:8, 5:8] = 1
    pred2 = ref2.copy()
    pred2[14, 14, 0:3] = 1
    return [(pred1, ref1), (pred2, ref2)]


def test_learning_keeps_several_true_lesions_and_removes_specks():
    cases = two_lesion_cases()
    pp, effect = learn_postprocessing(cases, [1, 2])
    kinds = [(s.kind, s.label) for s in pp.steps]
    # keep-largest would delete lesion B: class 1 Dice of case 1 falls from 128/129 to 112/120,
    # more than case 2 gains (54/57 -> 1), so neither keep-largest step is chosen
    assert ("keep_largest_foreground", 0) not in kinds and ("keep_largest", 1) not in kinds
    # false-positive sizes [1, 3] -> candidates {2, 3, 4} (percentiles + 1); 4 removes both specks
    assert pp.steps == (PostprocessingStep("remove_small", 1, 4),)
    assert effect["before"][1] == pytest.approx((128 / 129 + 54 / 57) / 2)
    assert effect["after"][1] == pytest.approx(1.0)
    out1 = apply_postprocessing(cases[0][0], pp)
    assert np.array_equal(out1, cases[0][1])  # lesion B (8 voxels) survives


def test_learning_adds_nothing_when_nothing_helps():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[5:7, 5:7, 5:7] = 1  # two true lesions, both predicted; no false positives
    pp, effect = learn_postprocessing([(ref.copy(), ref)], [1])
    assert pp == Postprocessing()
    assert effect["before"] == effect["after"] == {1: 1.0}


# ---- lesion-driven steps: the presence rule and the F1-judged minimum size -----------------------

def lesion_cases(positive_pred_extra=None):
    """4 positive cases: a 3^3 lesion and a true 2-voxel satellite lesion, both predicted exactly;
    4 negative cases: no lesion, a spurious 4-voxel blob predicted."""
    cases = []
    for _ in range(4):
        ref = np.zeros((12, 12, 12), np.uint8)
        ref[2:5, 2:5, 2:5] = 1
        ref[9, 9, 9:11] = 1
        cases.append((ref.copy(), ref))
    for _ in range(4):
        ref = np.zeros((12, 12, 12), np.uint8)
        pred = ref.copy()
        pred[8, 2, 2:6] = 1
        cases.append((pred, ref))
    return cases


def test_presence_rule_is_learned_where_a_minimum_size_would_lose_true_lesions():
    """Dice of class 1: positives 1, negatives 0 -> 0.5. Lesions: 8 reference, all found; 12
    predicted, 8 true -> F1 = 2 (2/3)(1) / (5/3) = 0.8.
    - keep_largest drops the satellites (Dice 54/56 each) and keeps the blobs: Dice 0.48, rejected;
    - presence: largest components 27 (positives) and 4 (negatives); the gap threshold is
      ceil(sqrt(4 * 27)) = 11. Removing class 1 from the negatives: Dice 1, F1 1.
    remove_small(5) (FP sizes all 4) would have raised Dice to 54/56 but dropped the satellites
    (recall 1/2, F1 2/3); it comes after the presence rule, which leaves no false positive."""
    pp, effect = learn_postprocessing(lesion_cases(), [1])
    assert pp.steps == (PostprocessingStep("presence", 1, 11, 0.0),)
    assert effect["before"][1] == pytest.approx(0.5) and effect["after"][1] == pytest.approx(1.0)
    assert effect["lesion_f1_before"][1] == pytest.approx(0.8) and effect["lesion_f1_after"][1] == pytest.approx(1.0)
    assert not pp.needs_probabilities
    for pred, ref in lesion_cases():
        assert np.array_equal(apply_postprocessing(pred, pp), ref)  # satellites kept, blobs gone


def test_no_step_may_trade_true_small_lesions_for_dice():
    """4 cases, each a 3^3 lesion and a true 2-voxel satellite predicted exactly, plus a 4-voxel
    false-positive speck. Removing components under 5 voxels (or keeping the largest) raises
    each case's Dice from 2*29/(29+33) to 2*27/(29+27) but loses the satellites: lesion F1 falls
    from 2 (2/3)(1) / (5/3) = 0.8 to 2 (1)(1/2) / (3/2) = 2/3, so nothing is learned. Every case
    has the class, so no presence rule can help either."""
    cases = []
    for pred, ref in lesion_cases()[:4]:
        pred = pred.copy()
        pred[8, 2, 2:6] = 1
        cases.append((pred, ref))
    pp, effect = learn_postprocessing(cases, [1])
    assert pp == Postprocessing()
    assert effect["before"][1] == pytest.approx(58 / 62)
    assert effect["lesion_f1_after"][1] == pytest.approx(0.8)


def probability_cases(negative_probability: float):
    """3 positive cases with a 4-voxel lesion predicted at probability 0.9; 3 negative cases with a
    4-voxel spurious blob predicted at ``negative_probability``. Sizes cannot tell them apart."""
    cases, probs = [], []
    for k in range(6):
        ref = np.zeros((8, 8, 8), np.uint8)
        pred = ref.copy()
        p = np.zeros((2, 8, 8, 8), np.float32)
        p[0] = 0.95
        p[1] = 0.05
        if k < 3:
            ref[1, 1, 1:5] = 1
            pred[1, 1, 1:5] = 1
            top = 0.9
        else:
            pred[5, 5, 1:5] = 1
            top = negative_probability
        p[1][pred == 1] = top
        p[0][pred == 1] = 1 - top
        cases.append((pred, ref))
        probs.append(p)
    return cases, probs


def test_presence_rule_on_probability_when_sizes_do_not_separate():
    """Dice 0.5 and F1 2/3 (3 of 6 predicted lesions true) before; keeping class 1 only where its
    top probability reaches (0.6 + 0.9) / 2 = 0.75 gives Dice 1 and F1 1."""
    cases, probs = probability_cases(0.6)
    pp, effect = learn_postprocessing(cases, [1], [lambda p=p: p for p in probs])
    assert len(pp.steps) == 1
    step = pp.steps[0]
    assert (step.kind, step.label, step.min_size) == ("presence", 1, 0)
    assert step.min_probability == pytest.approx(0.75)
    assert pp.needs_probabilities
    assert effect["lesion_f1_before"][1] == pytest.approx(2 / 3) and effect["lesion_f1_after"][1] == 1.0
    assert effect["after"][1] == 1.0
    for (pred, ref), p in zip(cases, probs):
        assert np.array_equal(apply_postprocessing(pred, pp, p), ref)


def test_no_presence_rule_when_nothing_separates_true_from_spurious():
    cases, probs = probability_cases(0.9)  # same size, same probability
    pp, effect = learn_postprocessing(cases, [1], [lambda p=p: p for p in probs])
    assert pp == Postprocessing()
    assert effect["lesion_f1_after"][1] == effect["lesion_f1_before"][1] == pytest.approx(2 / 3)
    pp, _ = learn_postprocessing(probability_cases(0.6)[0], [1])  # no probabilities: size only
    assert pp == Postprocessing()


def test_presence_step_needs_the_probabilities_it_gates_on():
    cases, probs = probability_cases(0.6)
    step = PostprocessingStep("presence", 1, 0, 0.75)
    pred = cases[3][0]
    assert not apply_step(pred, step, probs[3]).any()  # top probability 0.6 < 0.75: removed
    assert apply_step(cases[0][0], step, probs[0]) is cases[0][0]  # 0.9: kept as is
    with pytest.raises(UserFacingError, match="no probabilities were given"):
        apply_step(pred, step)
    size_only = PostprocessingStep("presence", 1, 5)
    assert not apply_step(pred, size_only).any()  # largest component 4 < 5
    assert np.array_equal(apply_step(pred, PostprocessingStep("presence", 1, 4)), pred)


def test_minimum_size_learned_on_lesion_f1_when_dice_cannot_move():
    """Case 1: its 3^3 lesion is missed; predicted are a 10-voxel blob and a 1-voxel speck
    elsewhere (Dice 0 whatever is removed). Case 2: an 8-voxel lesion found exactly.
    Lesions: 2 reference, 1 found; 3 predicted, 1 true: F1 = 2 (1/3)(1/2) / (5/6) = 0.4.
    No Dice can rise, so no Dice-driven step; the presence gap threshold (ceil(sqrt(8 * 10)) = 9)
    would drop case 2's lesion. FP sizes [1, 10] give candidates {4, 6, 8, 10, 11}; 4 removes the
    speck: precision 1/2, F1 0.5; 10 and 11 would also remove the true 8-voxel lesion."""
    ref1 = np.zeros((12, 12, 12), np.uint8)
    ref1[1:4, 1:4, 1:4] = 1
    pred1 = np.zeros_like(ref1)
    pred1[8, 1:6, 1:3] = 1  # 10 voxels
    pred1[10, 10, 10] = 1
    ref2 = np.zeros((12, 12, 12), np.uint8)
    ref2[5:7, 5:7, 5:7] = 1
    pp, effect = learn_postprocessing([(pred1, ref1), (ref2.copy(), ref2)], [1])
    assert pp.steps == (PostprocessingStep("remove_small", 1, 4),)
    assert effect["before"][1] == effect["after"][1] == pytest.approx(0.5)
    assert effect["lesion_f1_before"][1] == pytest.approx(0.4) and effect["lesion_f1_after"][1] == pytest.approx(0.5)


def test_learned_presence_rule_is_the_best_of_all_candidate_rules():
    """Random cases (seeded): true lesions of 1-11 voxels at probability 0.7-1.0 in a third of the
    cases, spurious blobs of 1-7 voxels at 0.5-0.8 in the others. Scoring every candidate rule
    exactly, case by case, none that passes the lesion-driven rule has a higher F1 than the
    learned one."""
    from autoseg.postprocess import components as C

    rng = np.random.default_rng(3)
    cases, probs = [], []
    for k in range(24):
        ref = np.zeros((4, 4, 14), np.uint8)
        pred = ref.copy()
        p = np.stack([np.full(ref.shape, 0.9, np.float32), np.full(ref.shape, 0.1, np.float32)])
        n = int(rng.integers(1, 12 if k % 3 == 0 else 8))
        pred[2, 2, 1:1 + n] = 1
        if k % 3 == 0:
            ref[2, 2, 1:1 + n] = 1
        p[1][pred == 1] = rng.uniform(0.7, 1.0) if k % 3 == 0 else rng.uniform(0.5, 0.8)
        cases.append((pred, ref))
        probs.append(p)
    metrics = [C._metrics(q, r, [1]) for q, r in cases]
    before = C._scores(metrics, [1])
    features = [C.presence_features(q, 1, pr) for (q, _), pr in zip(cases, probs)]
    step, _, _, learned = C._learn_presence(cases, metrics, features, 1, [1], before)
    assert learned.f1[1] > before.f1[1]
    sizes = [f[0] for f in features]
    tops = [f[1] for f in features]
    for s_min in [0.0] + C._gap_thresholds(sizes, integer=True):
        for p_min in [0.0] + C._gap_thresholds(tops, integer=False):
            rule = PostprocessingStep("presence", 1, int(s_min), p_min)
            exact = C._scores([C._metrics(apply_step(q, rule, pr), r, [1]) for (q, r), pr in zip(cases, probs)], [1])
            if C._lesion_better(exact, before, 1):
                assert exact.f1[1] <= learned.f1[1] + 1e-12, rule
    exact = C._scores([C._metrics(apply_step(q, step, pr), r, [1]) for (q, r), pr in zip(cases, probs)], [1])
    assert exact == learned  # the learned step, applied as predict applies it, scores as reported
