"""Connected-component postprocessing, learned from cross-validation predictions.

Steps, tried in this order on the cross-validation cases (docs/metrics.md has the exact rules):

Dice-driven steps are kept only if they raise the mean foreground Dice, lower no class's Dice
and lower no class's lesion F1; lesion-driven steps (on one class) only if they raise that
class's lesion F1 (pooled over the cases) without lowering the mean Dice, any class's Dice or
any other class's F1.
1. keep the largest connected component of all foreground together (Dice-driven);
2. per class, keep the largest component of that class (Dice-driven);
3. per class, a case-level presence rule (lesion-driven): keep the class in a case only if its
   largest component has at least ``min_size`` voxels and its highest softmax probability is
   at least ``min_probability`` (when the validation probabilities are there), otherwise set
   the whole class to background in that case;
4. per class, remove components smaller than a threshold chosen from the data (Dice-driven):
   candidates are quantiles of the sizes of the predicted components that overlap no reference
   (false positives). Unlike keep-largest, this keeps several true lesions while removing specks;
5. per class, a minimum component size with the candidates of 4, lesion-driven.

Components use full connectivity (26 neighbours in 3D), ``lesions.label_components``.

Region-based datasets (``autoseg.labels``): a step's ``label`` names a region by its written value
and acts on the region's mask; removing a region from voxels keeps their other regions
(``labels.remove_class``). Steps 1, 2, 4 and 5 are learned per region, every region rescored after
each trial (removing a region also removes the regions inside it); the presence rule (3), whose
scoring assumes that one class alone changes, is not tried on regions.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.labels import Regions, class_channel, class_mask, remove_class
from autoseg.postprocess.lesions import LESION_COUNT_KEYS, detection_scores, label_components
from autoseg.postprocess.metrics import case_metrics, nanmean

log = logging.getLogger(__name__)
STEP_KINDS = ("keep_largest_foreground", "keep_largest", "remove_small", "presence")


@dataclass(frozen=True)
class PostprocessingStep:
    """One step. ``min_size`` in voxels; ``min_probability`` a softmax probability (0: no gate).

    - ``keep_largest_foreground``: keep the largest component of all foreground together;
    - ``keep_largest``: keep the largest component of class ``label``;
    - ``remove_small``: remove components of ``label`` with fewer than ``min_size`` voxels;
    - ``presence``: remove class ``label`` from the case unless its largest component has
      ``>= min_size`` voxels and its highest probability is ``>= min_probability``.
    """

    kind: str
    label: int = 0
    min_size: int = 0
    min_probability: float = 0.0


@dataclass(frozen=True)
class Postprocessing:
    steps: tuple[PostprocessingStep, ...] = ()
    # region-based datasets: each region's written value and members, so the steps apply with
    # nothing else given (empty for plain labels)
    regions: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def needs_probabilities(self) -> bool:
        return any(s.kind == "presence" and s.min_probability > 0 for s in self.steps)


_components = label_components  # one connectivity for postprocessing and lesion metrics


def keep_largest_component(seg: np.ndarray, label: int | None = None, regions: Regions | None = None) -> np.ndarray:
    """Keep only the largest component of ``label`` (None: of all foreground together).

    Returns ``seg`` itself when nothing is removed, else a modified copy.
    """
    mask = seg > 0 if label is None else class_mask(seg, label, regions)
    if not mask.any():
        return seg
    comp, sizes = _components(mask)
    if len(sizes) <= 2:
        return seg
    sizes[0] = 0
    if label is None:
        out = seg.copy()
        out[mask & (comp != int(np.argmax(sizes)))] = 0
        return out
    return remove_class(seg, mask & (comp != int(np.argmax(sizes))), label, regions)


def remove_small_components(seg: np.ndarray, label: int, min_size: int, regions: Regions | None = None) -> np.ndarray:
    """Set components of ``label`` with fewer than ``min_size`` voxels to background."""
    mask = class_mask(seg, label, regions)
    if not mask.any():
        return seg
    comp, sizes = _components(mask)
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return seg
    return remove_class(seg, small[comp] & mask, label, regions)


def presence_features(seg: np.ndarray, label: int, probabilities: np.ndarray | None = None,
                      regions: Regions | None = None) -> tuple[int, float]:
    """(largest component size in voxels, highest probability of ``label`` over its voxels) of a case.

    (0, NaN) when the class is absent; the probability is NaN without ``probabilities``
    ((K, *seg.shape) softmax).
    """
    mask = class_mask(seg, label, regions)
    if not mask.any():
        return 0, math.nan
    _, sizes = _components(mask)
    top = math.nan
    if probabilities is not None:
        channel = class_channel(label, regions)
        if probabilities.shape[1:] != seg.shape or channel >= probabilities.shape[0]:
            raise ValueError(f"probabilities of shape {probabilities.shape} do not fit a segmentation of shape "
                             f"{seg.shape} with class {label}")
        top = float(probabilities[channel][mask].max())
    return int(sizes[1:].max()), top


def apply_presence(seg: np.ndarray, label: int, min_size: int, min_probability: float = 0.0,
                   probabilities: np.ndarray | None = None, regions: Regions | None = None) -> np.ndarray:
    """Remove ``label`` from the case unless its largest component and top probability pass."""
    if min_probability > 0 and probabilities is None:
        raise UserFacingError(f"the learned postprocessing keeps class {label} only where its softmax probability "
                              f"reaches {min_probability:.3f}, but no probabilities were given; predict with "
                              "'autoseg predict' (which has them), or keep the {case}.npz files written with "
                              "--save_probabilities beside the segmentations")
    size, top = presence_features(seg, label, probabilities if min_probability > 0 else None, regions)
    if size == 0 or (size >= min_size and (min_probability <= 0 or top >= min_probability)):
        return seg
    return remove_class(seg, np.ones(seg.shape, bool), label, regions)


def apply_step(seg: np.ndarray, step: PostprocessingStep, probabilities: np.ndarray | None = None,
               regions: Regions | None = None) -> np.ndarray:
    """Apply one step; ``probabilities`` ((K, *seg.shape) softmax) only matter to a presence step;
    ``regions``: ``step.label`` names a region (``Postprocessing.regions``)."""
    if step.kind == "keep_largest_foreground":
        return keep_largest_component(seg, None)
    if step.kind == "keep_largest":
        return keep_largest_component(seg, step.label, regions)
    if step.kind == "remove_small":
        return remove_small_components(seg, step.label, step.min_size, regions)
    if step.kind == "presence":
        return apply_presence(seg, step.label, step.min_size, step.min_probability, probabilities, regions)
    raise ValueError(f"unknown postprocessing step '{step.kind}'")


def apply_postprocessing(seg: np.ndarray, postprocessing: Postprocessing,
                         probabilities: np.ndarray | None = None) -> np.ndarray:
    """Apply the steps in order. ``probabilities``: the case's softmax (K, *seg.shape), needed
    when ``postprocessing.needs_probabilities``."""
    regions = postprocessing.regions or None
    for step in postprocessing.steps:
        seg = apply_step(seg, step, probabilities, regions)
    return seg


# ---------------------------------------------------------------------------------------------
# Learning from cross-validation predictions

Case = tuple[np.ndarray, np.ndarray]  # (prediction, reference) label maps
Metrics = dict[int, dict]  # class -> case_metrics entry (voxel and lesion, no surface)


@dataclass(frozen=True)
class Scores:
    """Per class: mean Dice over cases (NaN left out) and lesion F1 pooled over cases."""

    dice: dict[int, float]
    f1: dict[int, float]

    @property
    def mean_dice(self) -> float:
        return nanmean(list(self.dice.values()))


def _metrics(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], ignore_label: int | None = None,
             regions: Regions | None = None) -> Metrics:
    return case_metrics(ref, pred, list(labels), surface=False, ignore_label=ignore_label, regions=regions)


def _scores(per_case: list[Metrics], labels: Sequence[int]) -> Scores:
    dice = {label: nanmean([m[label]["dice"] for m in per_case]) for label in labels}
    f1 = {}
    for label in labels:
        n_ref, n_pred, detected, true_pred = (sum(m[label][k] for m in per_case) for k in LESION_COUNT_KEYS)
        f1[label] = detection_scores(n_ref, detected, n_pred, true_pred)["lesion_f1"]
    return Scores(dice, f1)


def _comparable(score: float) -> float:
    """A score to compare, NaN (undefined: no reference and no prediction of a class) below any other."""
    return -1.0 if math.isnan(score) else score


def _no_worse(new: Scores, old: Scores, skip_f1: int | None = None) -> bool:
    return (all(_comparable(new.dice[k]) >= _comparable(old.dice[k]) - 1e-9 for k in new.dice)
            and all(_comparable(new.f1[k]) >= _comparable(old.f1[k]) - 1e-9 for k in new.f1 if k != skip_f1))


def _better(new: Scores, old: Scores) -> bool:
    """Dice-driven rule: the mean Dice rises, and no class's Dice or lesion F1 falls."""
    return _comparable(new.mean_dice) > _comparable(old.mean_dice) + 1e-6 and _no_worse(new, old)


def _lesion_better(new: Scores, old: Scores, label: int) -> bool:
    """Lesion-driven rule: ``label``'s F1 rises; no Dice (mean or class) and no other F1 falls."""
    return (_comparable(new.f1[label]) > _comparable(old.f1[label]) + 1e-6
            and _comparable(new.mean_dice) >= _comparable(old.mean_dice) - 1e-9
            and _no_worse(new, old, skip_f1=label))


def _trial(current: list[Case], metrics: list[Metrics], step: PostprocessingStep,
           labels: Sequence[int], ignore_label: int | None = None,
           regions: Regions | None = None) -> tuple[list[Case], list[Metrics]]:
    """Apply ``step`` to every case; recompute metrics only of changed cases and touched classes
    (with regions every region: the ones inside a removed region go with it)."""
    touched = list(labels) if step.kind == "keep_largest_foreground" or regions else [step.label]
    cases, per_case = [], []
    for (p, r), m in zip(current, metrics):
        q = apply_step(p, step, regions=regions)
        cases.append((q, r))
        per_case.append(m if q is p else {**m, **_metrics(q, r, touched, ignore_label, regions)})
    return cases, per_case


def _false_positive_sizes(cases, label: int, regions: Regions | None = None) -> list[int]:
    sizes = []
    for pred, ref in cases:
        mask = class_mask(pred, label, regions)
        if not mask.any():
            continue
        comp, counts = _components(mask)
        hit = np.unique(comp[class_mask(ref, label, regions) & mask])
        for k in range(1, len(counts)):
            if k not in hit:
                sizes.append(int(counts[k]))
    return sizes


def _size_candidates(sizes: list[int]) -> list[int]:
    return sorted({int(np.percentile(sizes, q)) + 1 for q in (25, 50, 75, 90, 100)})


def _gap_thresholds(values: list[float], integer: bool) -> list[float]:
    """One threshold inside each gap between consecutive distinct values (``keep if value >= t``).

    Sizes: the geometric midpoint rounded up, at least the lower value + 1; probabilities: the
    arithmetic midpoint.
    """
    distinct = sorted(set(values))
    if integer:
        return [float(min(max(math.ceil(math.sqrt(a * b)), a + 1), b)) for a, b in zip(distinct, distinct[1:])]
    return [(a + b) / 2 for a, b in zip(distinct, distinct[1:])]


def _f1_vectorised(n_ref: np.ndarray, detected: np.ndarray, n_pred: np.ndarray, true_pred: np.ndarray) -> np.ndarray:
    """``lesions.detection_scores``' F1 over arrays of summed counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = detected / n_ref
        precision = true_pred / n_pred
        f1 = np.where(recall + precision > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where((n_ref == 0) | (n_pred == 0), 0.0, f1)
    return np.where((n_ref == 0) & (n_pred == 0), np.nan, f1)


def _learn_presence(current: list[Case], metrics: list[Metrics], features: list[tuple[int, float]], label: int,
                    labels: Sequence[int], best: Scores, ignore_label: int | None = None
                    ) -> tuple[PostprocessingStep, list[Case], list[Metrics], Scores] | None:
    """The presence rule for ``label`` with the best F1 that passes the lesion-driven rule, or None.

    Removing a class from a case changes only that case's metrics of that class, so the outcome
    of every candidate rule is combined from two precomputed per-case results (kept, removed),
    vectorised over the probability thresholds. Candidates: every pair of gap thresholds on the
    largest-component size (and on the top probability when every case has it), 0 meaning no
    gate on that feature. Ties in F1 go to the higher mean Dice, then to fewer gates, then to
    fewer cases removed.
    """
    present = [i for i, (size, _) in enumerate(features) if size > 0]
    if len(present) < 2:
        return None
    sizes = np.asarray([features[i][0] for i in present], float)
    probs = np.asarray([features[i][1] for i in present], float)
    use_prob = not np.isnan(probs).any()
    size_cands = [0.0] + _gap_thresholds(sizes.tolist(), integer=True)
    prob_cands = np.asarray([0.0] + (_gap_thresholds(probs.tolist(), integer=False) if use_prob else []))
    if len(size_cands) * len(prob_cands) == 1:
        return None
    if not use_prob:
        probs = np.ones_like(sizes)
    dropped = {}
    for i in present:
        pred, ref = current[i]
        q = np.where(pred == label, 0, pred).astype(pred.dtype)
        dropped[i] = (q, _metrics(q, ref, [label], ignore_label)[label])

    def column(key: str, which: str) -> np.ndarray:
        return np.asarray([float((metrics[i][label] if which == "keep" else dropped[i][1])[key]) for i in present])

    absent = [i for i in range(len(metrics)) if i not in set(present)]
    fixed_dice = np.asarray([metrics[i][label]["dice"] for i in absent], float)
    fixed_sum, fixed_n = float(np.nansum(fixed_dice)), int(np.count_nonzero(~np.isnan(fixed_dice)))
    other_dice = [best.dice[k] for k in labels if k != label and not math.isnan(best.dice[k])]
    dice_keep, dice_drop = column("dice", "keep"), column("dice", "drop")
    counts = {k: (sum(metrics[i][label][k] for i in absent), column(k, "keep"), column(k, "drop"))
              for k in LESION_COUNT_KEYS}
    old_f1, old_dice = _comparable(best.f1[label]), _comparable(best.dice[label])
    old_mean = _comparable(best.mean_dice)
    chosen = None
    for s_min in size_cands:
        keep = (sizes[None, :] >= s_min) & (probs[None, :] >= prob_cands[:, None])  # (rules, present cases)
        dice = np.where(keep, dice_keep, dice_drop)
        n = fixed_n + np.count_nonzero(~np.isnan(dice), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            class_dice = np.where(n > 0, (fixed_sum + np.nansum(dice, axis=1)) / n, np.nan)
        summed = {name: fixed + np.where(keep, k, d).sum(axis=1) for name, (fixed, k, d) in counts.items()}
        f1 = np.nan_to_num(_f1_vectorised(summed["n_ref_lesions"], summed["detected_lesions"],
                                          summed["n_pred_lesions"], summed["true_pred_lesions"]), nan=-1.0)
        k = len(other_dice)
        mean = np.where(np.isnan(class_dice), (sum(other_dice) / k) if k else -1.0,
                        (sum(other_dice) + np.nan_to_num(class_dice)) / (k + 1))
        class_dice = np.nan_to_num(class_dice, nan=-1.0)
        ok = ((f1 > old_f1 + 1e-6) & (class_dice >= old_dice - 1e-9) & (mean >= old_mean - 1e-9)
              & ~keep.all(axis=1) & ((s_min > 0) | (prob_cands > 0)))
        for j in np.flatnonzero(ok):
            key = (float(f1[j]), float(mean[j]), -(int(s_min > 0) + int(prob_cands[j] > 0)), int(keep[j].sum()))
            if chosen is None or key > chosen[0]:
                chosen = (key, s_min, float(prob_cands[j]), keep[j])
    if chosen is None:
        return None
    _, s_min, p_min, keep = chosen
    cases, per_case = list(current), list(metrics)
    for i, k in zip(present, keep):
        if not k:
            cases[i] = (dropped[i][0], current[i][1])
            per_case[i] = {**metrics[i], label: dropped[i][1]}
    scores = _scores(per_case, labels)
    assert _lesion_better(scores, best, label), "vectorised presence scoring disagrees with _scores"
    return PostprocessingStep("presence", label, int(s_min), p_min), cases, per_case, scores


ProbabilityLoader = Callable[[], np.ndarray]


def learn_postprocessing(cases: list[Case], labels: list[int],
                         probabilities: Sequence[ProbabilityLoader] | None = None,
                         ignore_label: int | None = None, regions: Regions | None = None
                         ) -> tuple[Postprocessing, dict]:
    """Learn steps from (prediction, reference) pairs, the cross-validation predictions; where a
    reference holds ``ignore_label`` (unannotated voxels), the prediction is not scored. With
    ``regions``, ``labels`` are the regions' written values (see the module docstring).

    ``probabilities``: optional, one loader per case returning its softmax (K, *shape); with
    them the presence rule may also gate on the top probability. Returns the steps and their
    effect: ``before``/``after`` (mean Dice per class) and ``lesion_f1_before``/``_after``
    (pooled lesion F1 per class).
    """
    steps: list[PostprocessingStep] = []
    current = [(p, r) for p, r in cases]
    metrics = [_metrics(p, r, labels, ignore_label, regions) for p, r in current]
    best = _scores(metrics, labels)
    first = best

    def attempt(step: PostprocessingStep) -> None:
        nonlocal current, metrics, best
        trial, per_case = _trial(current, metrics, step, labels, ignore_label, regions)
        scores = _scores(per_case, labels)
        if _better(scores, best):
            steps.append(step)
            current, metrics, best = trial, per_case, scores

    def best_min_size(label: int, better: Callable[[Scores, Scores], bool]) -> None:
        """The candidate that passes ``better`` against the current scores and beats (by the
        same rule) every other passing candidate tried before it (smaller thresholds first)."""
        nonlocal current, metrics, best
        sizes = _false_positive_sizes(current, label, regions)
        if not sizes:
            return
        chosen = None
        for size in _size_candidates(sizes):
            step = PostprocessingStep("remove_small", label, size)
            trial, per_case = _trial(current, metrics, step, labels, ignore_label, regions)
            scores = _scores(per_case, labels)
            if better(scores, best) and (chosen is None or better(scores, chosen[3])):
                chosen = (step, trial, per_case, scores)
        if chosen is not None:
            steps.append(chosen[0])
            current, metrics, best = chosen[1], chosen[2], chosen[3]

    # Dice-driven steps
    if len(labels) > 1:
        attempt(PostprocessingStep("keep_largest_foreground"))
    for label in labels:
        attempt(PostprocessingStep("keep_largest", label))
    # case-level presence rules (lesion-driven) before any size threshold: a threshold learned
    # first would remove every small true lesion to clean cases the rule can drop as a whole
    features = _presence_features(current, labels, probabilities) if regions is None else {}
    for label in features:
        learned = _learn_presence(current, metrics, features[label], label, labels, best, ignore_label)
        if learned is not None:
            steps.append(learned[0])
            current, metrics, best = learned[1], learned[2], learned[3]
    for label in labels:
        best_min_size(label, _better)
    for label in labels:
        best_min_size(label, lambda new, old, c=label: _lesion_better(new, old, c))
    effect = {"before": first.dice, "after": best.dice, "lesion_f1_before": first.f1, "lesion_f1_after": best.f1}
    return Postprocessing(tuple(steps), tuple(regions or ())), effect


def _presence_features(current: list[Case], labels: Sequence[int], probabilities: Sequence[ProbabilityLoader] | None
                       ) -> dict[int, list[tuple[int, float]]]:
    """Per class, per case: (largest component size, top probability or NaN), loading each softmax once."""
    out: dict[int, list[tuple[int, float]]] = {label: [] for label in labels}
    for i, (pred, _) in enumerate(current):
        probs = probabilities[i]() if probabilities is not None else None
        for label in labels:
            out[label].append(presence_features(pred, label, probs))
    return out
