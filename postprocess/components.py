"""Connected-component postprocessing, learned from cross-validation predictions.

Steps, tried in this order and each kept only if it raises the mean foreground Dice over the
cross-validation cases and lowers no class's Dice:
1. keep the largest connected component of all foreground together;
2. per class, keep the largest component of that class;
3. per class, remove components smaller than a threshold chosen from the data: candidates are
   quantiles of the sizes of the predicted components that overlap no reference (false
   positives). Unlike keep-largest, this keeps several true lesions while removing specks.
Components use full connectivity (26 neighbours in 3D).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.postprocess.lesions import label_components
from autoseg.postprocess.metrics import case_metrics, nanmean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostprocessingStep:
    kind: str  # "keep_largest_foreground" | "keep_largest" | "remove_small"
    label: int = 0
    min_size: int = 0


@dataclass(frozen=True)
class Postprocessing:
    steps: tuple[PostprocessingStep, ...] = ()


_components = label_components  # one connectivity for postprocessing and lesion metrics


def keep_largest_component(seg: np.ndarray, label: int | None = None) -> np.ndarray:
    """Keep only the largest component of ``label`` (None: of all foreground together)."""
    mask = seg > 0 if label is None else seg == label
    if not mask.any():
        return seg
    comp, sizes = _components(mask)
    sizes[0] = 0
    out = seg.copy()
    out[mask & (comp != int(np.argmax(sizes)))] = 0
    return out


def remove_small_components(seg: np.ndarray, label: int, min_size: int) -> np.ndarray:
    """Set components of ``label`` with fewer than ``min_size`` voxels to background."""
    mask = seg == label
    if not mask.any():
        return seg
    comp, sizes = _components(mask)
    small = sizes < min_size
    small[0] = False
    out = seg.copy()
    out[small[comp] & mask] = 0
    return out


def apply_step(seg: np.ndarray, step: PostprocessingStep) -> np.ndarray:
    if step.kind == "keep_largest_foreground":
        return keep_largest_component(seg, None)
    if step.kind == "keep_largest":
        return keep_largest_component(seg, step.label)
    if step.kind == "remove_small":
        return remove_small_components(seg, step.label, step.min_size)
    raise ValueError(f"unknown postprocessing step '{step.kind}'")


def apply_postprocessing(seg: np.ndarray, postprocessing: Postprocessing) -> np.ndarray:
    for step in postprocessing.steps:
        seg = apply_step(seg, step)
    return seg


def _scores(cases: list[tuple[np.ndarray, np.ndarray]], labels: list[int]) -> dict[int, float]:
    per_case = [case_metrics(ref, pred, labels) for pred, ref in cases]
    return {label: nanmean([m[label]["dice"] for m in per_case]) for label in labels}


def _better(new: dict[int, float], old: dict[int, float]) -> bool:
    def v(x):
        return -1.0 if np.isnan(x) else x

    mean_new, mean_old = nanmean(list(new.values())), nanmean(list(old.values()))
    return mean_new > mean_old + 1e-6 and all(v(new[k]) >= v(old[k]) - 1e-9 for k in new)


def _false_positive_sizes(cases, label: int) -> list[int]:
    sizes = []
    for pred, ref in cases:
        mask = pred == label
        if not mask.any():
            continue
        comp, counts = _components(mask)
        hit = np.unique(comp[(ref == label) & mask])
        for k in range(1, len(counts)):
            if k not in hit:
                sizes.append(int(counts[k]))
    return sizes


def learn_postprocessing(cases: list[tuple[np.ndarray, np.ndarray]], labels: list[int]) -> tuple[Postprocessing, dict]:
    """Learn steps from (prediction, reference) pairs; return them and the Dice before/after."""
    steps: list[PostprocessingStep] = []
    current = [(p, r) for p, r in cases]
    best = _scores(current, labels)
    before = dict(best)

    def attempt(step: PostprocessingStep) -> bool:
        nonlocal current, best
        trial = [(apply_step(p, step), r) for p, r in current]
        scores = _scores(trial, labels)
        if _better(scores, best):
            steps.append(step)
            current, best = trial, scores
            return True
        return False

    if len(labels) > 1:
        attempt(PostprocessingStep("keep_largest_foreground"))
    for label in labels:
        attempt(PostprocessingStep("keep_largest", label))
    for label in labels:
        sizes = _false_positive_sizes(current, label)
        if not sizes:
            continue
        candidates = sorted({int(np.percentile(sizes, q)) + 1 for q in (25, 50, 75, 90, 100)})
        chosen = None  # the candidate with the best mean Dice that passes the no-class-worse rule
        for size in candidates:
            step = PostprocessingStep("remove_small", label, size)
            trial = [(apply_step(p, step), r) for p, r in current]
            scores = _scores(trial, labels)
            if _better(scores, best) and (chosen is None or _better(scores, chosen[2])):
                chosen = (step, trial, scores)
        if chosen is not None:
            steps.append(chosen[0])
            current, best = chosen[1], chosen[2]
    return Postprocessing(tuple(steps)), {"before": before, "after": best}


def cli_apply_postprocessing(args: argparse.Namespace) -> int:
    from autoseg.imageio import SUPPORTED_ENDINGS, read_label, write_image
    from autoseg.paths import Workspace
    from autoseg.postprocess.selection import load_selection

    ws = Workspace.resolve(args.root)
    if args.selection:
        from autoseg.postprocess.selection import Selection
        from autoseg.serialization import load_json_as

        selection = load_json_as(Selection, args.selection)
    else:
        selection = load_selection(ws.results_dataset(args.dataset))
    out = Path(args.output)
    count = 0
    for p in sorted(Path(args.input).iterdir()):
        if p.name.startswith(".") or not p.name.endswith(SUPPORTED_ENDINGS):
            continue
        seg, geom = read_label(p)
        write_image(apply_postprocessing(seg[0], selection.postprocessing).astype(np.uint8), geom, out / p.name)
        count += 1
    log.info("postprocessed %d segmentations into %s", count, out)
    return 0
