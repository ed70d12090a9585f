"""``autoseg find_best_config``: choose a configuration or ensemble, and its postprocessing.

Every configuration whose requested folds have finished validation is a candidate, and so is
every ensemble of two or more of them (softmax averaged per case). All are scored on the same
cases against the reference labels; the best foreground-mean Dice wins, ties going to the
simpler choice (fewer members, then the order 3d_fullres, 2d, 3d_lowres, 3d_cascade_fullres).
Postprocessing is then learned on the winner's cross-validation predictions (with their saved
softmax, so a presence rule may gate on probability), judged on Dice and on lesion F1.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.labels import label_names
from autoseg.paths import Workspace
from autoseg.postprocess.components import Postprocessing, PostprocessingStep, learn_postprocessing
from autoseg.postprocess.metrics import nanmean
from autoseg.serialization import load_json_as, save_json

log = logging.getLogger(__name__)
SELECTION_SCHEMA_VERSION = 2  # 2: presence steps, lesion F1 per candidate, postprocessing effect
PREFERENCE = ("3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres")


@dataclass(frozen=True)
class Selection:
    schema_version: int
    dataset_name: str
    configurations: tuple[str, ...]  # one: a single model; several: an ensemble
    variant: str
    folds: tuple[int, ...]
    checkpoint: str
    postprocessing: Postprocessing
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> class -> Dice, "mean"
    chosen_dice: float = 0.0
    postprocessed_dice: float = 0.0
    # name -> class -> lesion F1 pooled over the cases, "mean" over classes
    candidate_lesion_f1: dict[str, dict[str, float]] = field(default_factory=dict)
    # "dice_before"/"dice_after"/"lesion_f1_before"/"lesion_f1_after" -> class -> value, for the winner
    postprocessing_effect: dict[str, dict[str, float]] = field(default_factory=dict)


def load_selection(results_dataset_dir: str | Path) -> Selection:
    path = Path(results_dataset_dir) / "selection.json"
    if not path.is_file():
        raise UserFacingError(f"{path} not found: run 'autoseg find_best_config -d {Path(results_dataset_dir).name}' "
                              "first, or choose a model with -c/-f")
    return load_json_as(Selection, path)


def _candidate_name(configs: tuple[str, ...]) -> str:
    return "+".join(configs)


def _order_key(item: tuple[tuple[str, ...], float]) -> tuple:
    configs, dice = item
    return (-round(dice, 6), len(configs), [PREFERENCE.index(c) if c in PREFERENCE else 9 for c in configs])


def _validation_files(results: Path, configuration: str, variant: str, folds: tuple[int, ...], ending: str):
    from autoseg.training.health import refuse_failed

    preds: dict[str, Path] = {}
    missing = []
    for k in folds:
        refuse_failed(results / configuration / variant / f"fold_{k}")
        folder = results / configuration / variant / f"fold_{k}" / "validation"
        if not (folder / "summary.json").is_file():
            missing.append(k)
            continue
        for p in folder.glob(f"*{ending}"):
            if not p.name.startswith("."):
                preds[p.name[: -len(ending)]] = p
    return preds, missing


def _ensemble(members: list[dict[str, Path]], cases: list[str], out: Path, ending: str,
              regions_class_order=None) -> dict[str, Path]:
    from autoseg.imageio import ImageGeometry, write_image
    from autoseg.labels import probabilities_to_labels

    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for case in cases:
        target = out / f"{case}{ending}"
        probs = None
        for m in members:
            stem = m[case].with_name(case)
            with np.load(stem.with_name(case + ".npz")) as z:
                p = z["probabilities"].astype(np.float32)
            probs = p if probs is None else probs + p
        geometry = ImageGeometry.from_json(json.loads(stem.with_name(case + ".json").read_text()))
        write_image(probabilities_to_labels(probs / len(members), regions_class_order), geometry, target)
        result[case] = target
    return result


def _probability_loaders(members: list[dict[str, Path]], cases: list[str]):
    """Per case, a function returning the members' mean softmax from the saved ``{case}.npz``;
    None (learn without probabilities) when any case lacks them."""
    missing = [k for k in cases for m in members if not m[k].with_name(k + ".npz").is_file()]
    if missing:
        log.warning("no saved probabilities for %d case(s) (e.g. %s): the presence rule is learned on component "
                    "size only", len(set(missing)), missing[0])
        return None

    def loader(case: str):
        def load() -> np.ndarray:
            total = None
            for m in members:
                with np.load(m[case].with_name(case + ".npz")) as z:
                    p = z["probabilities"].astype(np.float32)
                total = p if total is None else total + p
            return total / len(members)
        return load

    return [loader(k) for k in cases]


def find_best_config(ws: Workspace, dataset: str, configurations: list[str] | None = None, variant: str = "default",
                     folds: tuple[int, ...] = (0, 1, 2, 3, 4), checkpoint: str = "checkpoint_final") -> Selection:
    from autoseg.imageio import read_label
    from autoseg.plans import load_plans
    from autoseg.postprocess.evaluate import evaluate_pairs

    name = ws.dataset_name(dataset)
    plans = load_plans(ws.preprocessed / name / "plans.json")
    results = ws.results / name
    gt = ws.preprocessed / name / "gt_segmentations"
    ending = plans.file_ending
    labels, ignore, regions = list(plans.scored_classes), plans.ignore_label, plans.regions
    asked = configurations or [c for c in PREFERENCE if c in plans.configurations]
    available: dict[str, dict[str, Path]] = {}
    problems = []
    for c in asked:
        preds, missing = _validation_files(results, c, variant, folds, ending)
        if not missing:
            available[c] = preds
        elif configurations:
            problems.append(f"{c}: fold(s) {missing} have no finished validation; run "
                            + "; ".join(f"autoseg train {c} {k} -d {dataset}" for k in missing))
    if problems or not available:
        raise UserFacingError("cannot select a model: " + (" | ".join(problems) or
                              f"no configuration of {name} has validated folds {list(folds)}; train them first, "
                              f"e.g. " + "; ".join(f"autoseg train 3d_fullres {k} -d {dataset}" for k in folds)))
    cases = sorted(set.intersection(*(set(p) for p in available.values())))
    scores: dict[tuple[str, ...], dict] = {}
    for c, preds in available.items():
        scores[(c,)] = evaluate_pairs({k: (gt / f"{k}{ending}", preds[k]) for k in cases}, labels, surface=False,
                                      ignore_label=ignore, regions=regions)
    members_of = {}
    for r in range(2, len(available) + 1):
        for combo in itertools.combinations(available, r):
            out = results / "ensembles" / variant / _candidate_name(combo)
            preds = _ensemble([available[c] for c in combo], cases, out, ending, plans.regions_class_order)
            members_of[combo] = preds
            scores[combo] = evaluate_pairs({k: (gt / f"{k}{ending}", preds[k]) for k in cases}, labels,
                                           surface=False, ignore_label=ignore, regions=regions)
    ranked = sorted(((c, s["foreground_mean"]["dice"]) for c, s in scores.items()), key=_order_key)
    chosen = ranked[0][0]
    chosen_preds = available[chosen[0]] if len(chosen) == 1 else members_of[chosen]
    pairs = [(read_label(chosen_preds[k])[0][0], read_label(gt / f"{k}{ending}")[0][0]) for k in cases]
    loaders = _probability_loaders([available[c] for c in chosen], cases)
    postprocessing, effect = learn_postprocessing(pairs, labels, loaders, ignore, regions)
    candidates = {_candidate_name(c): {**{str(lab): s["mean"][str(lab)]["dice"] for lab in labels},
                                       "mean": s["foreground_mean"]["dice"]} for c, s in scores.items()}
    lesion_f1 = {_candidate_name(c): {**{str(lab): s["pooled"][str(lab)]["lesion_f1"] for lab in labels},
                                      "mean": s["foreground_mean"]["lesion_f1"]} for c, s in scores.items()}
    post_mean = nanmean(list(effect["after"].values()))
    effect_json = {"dice_before": effect["before"], "dice_after": effect["after"],
                   "lesion_f1_before": effect["lesion_f1_before"], "lesion_f1_after": effect["lesion_f1_after"]}
    selection = Selection(SELECTION_SCHEMA_VERSION, name, chosen, variant, tuple(folds), checkpoint,
                          postprocessing, candidates, scores[chosen]["foreground_mean"]["dice"], post_mean,
                          lesion_f1, {k: {str(c): v for c, v in d.items()} for k, d in effect_json.items()})
    save_json(selection, results / "selection.json")
    return selection


def describe_step(step: PostprocessingStep, names: dict[int, str] | None = None) -> str:
    """A step in words, e.g. ``presence(lesion: largest >= 11 voxels, p >= 0.750)``."""
    names = names or {}
    cls = names.get(step.label, f"class {step.label}")
    if step.kind == "keep_largest_foreground":
        return "keep_largest_foreground"
    if step.kind == "keep_largest":
        return f"keep_largest({cls})"
    if step.kind == "remove_small":
        return f"remove_small({cls}: < {step.min_size} voxels)"
    gates = ([f"largest >= {step.min_size} voxels"] if step.min_size else []) + \
        ([f"p >= {step.min_probability:.3f}"] if step.min_probability else [])
    return f"presence({cls}: {', '.join(gates)})"


def format_selection(sel: Selection, names: dict[int, str], small_classes: tuple[int, ...] = ()) -> str:
    """Candidates with Dice and lesion F1 (pooled over cases) per class, then the learned rules.

    Classes the planner marked small/rare carry a ``*`` after their name.
    """
    classes = [k for k in next(iter(sel.candidates.values())) if k != "mean"]
    f1 = sel.candidate_lesion_f1

    def title(k: str) -> str:
        return names.get(int(k), k)[:10] + ("*" if int(k) in small_classes else "")

    header = f"{'candidate':<34}" + "".join(f"{title(k):>22}" for k in classes) + f"{'mean':>18}"
    sub = f"{'':<34}" + "".join(f"{'Dice':>11}{'lesion F1':>11}" for _ in classes) + f"{'Dice':>9}{'F1':>9}"
    rows = [header, sub]
    for cand, vals in sorted(sel.candidates.items(), key=lambda kv: -_num(kv[1]["mean"])):
        mark = " <" if cand == _candidate_name(sel.configurations) else ""
        cf1 = f1.get(cand, {})
        rows.append(f"{cand + mark:<34}" + "".join(f"{_fmt(vals[k]):>11}{_fmt(cf1.get(k)):>11}" for k in classes)
                    + f"{_fmt(vals['mean']):>9}{_fmt(cf1.get('mean')):>9}")
    steps = ", ".join(describe_step(s, names) for s in sel.postprocessing.steps) or "none"
    rows.append(f"chosen: {_candidate_name(sel.configurations)} (Dice {_fmt(sel.chosen_dice)}); "
                f"postprocessing: {steps} (Dice {_fmt(sel.postprocessed_dice)})")
    eff = sel.postprocessing_effect
    if eff:
        for k in classes:
            rows.append(f"  {names.get(int(k), k)}: Dice {_fmt(eff['dice_before'].get(k))} -> "
                        f"{_fmt(eff['dice_after'].get(k))}, lesion F1 {_fmt(eff['lesion_f1_before'].get(k))} -> "
                        f"{_fmt(eff['lesion_f1_after'].get(k))}")
    chosen_f1 = f1.get(_candidate_name(sel.configurations), {})
    for k in classes:
        if int(k) in small_classes and chosen_f1.get(k) == 0:
            rows.append(f"warning: {names.get(int(k), k)} (small/rare): not one of its lesions found in the "
                        "cross-validation cases (lesion F1 0): the network did not learn it. Train longer or with "
                        "another seed (--set seed=N); see docs/small_structures.md, 'When a small class is not "
                        "learned'")
    if small_classes:
        rows.append("* small/rare class (planner)")
    return "\n".join(rows)


def _num(v) -> float:
    return -1.0 if v is None or v != v else v


def _fmt(v) -> str:
    return "-" if v is None else ("nan" if v != v else f"{v:.4f}")


def cli_find_best_config(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.root)
    folds = tuple(int(f) for f in args.folds) if args.folds else (0, 1, 2, 3, 4)
    sel = find_best_config(ws, args.dataset, args.configurations, args.variant or "default", folds)
    from autoseg.plans import load_plans

    plans = load_plans(ws.preprocessed_dataset(args.dataset) / "plans.json")
    small = plans.small_classes
    print(format_selection(sel, label_names(plans.labels, plans.regions), small))
    print(f"written to {ws.results_dataset(args.dataset) / 'selection.json'}")
    return 0

