"""``autoseg find_best_config``: choose a configuration or ensemble, and its postprocessing.

Every configuration whose requested folds have finished validation is a candidate, and so is
every ensemble of two or more of them (softmax averaged per case). All are scored on the same
cases against the reference labels; the best foreground-mean Dice wins, ties going to the
simpler choice (fewer members, then the order 3d_fullres, 2d, 3d_lowres, 3d_cascade_fullres).
Postprocessing is then learned on the winner's cross-validation predictions.
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
from autoseg.paths import Workspace
from autoseg.postprocess.components import Postprocessing, learn_postprocessing
from autoseg.serialization import load_json_as, save_json

log = logging.getLogger(__name__)
SELECTION_SCHEMA_VERSION = 1
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
    preds: dict[str, Path] = {}
    missing = []
    for k in folds:
        folder = results / configuration / variant / f"fold_{k}" / "validation"
        if not (folder / "summary.json").is_file():
            missing.append(k)
            continue
        for p in folder.glob(f"*{ending}"):
            if not p.name.startswith("."):
                preds[p.name[: -len(ending)]] = p
    return preds, missing


def _ensemble(members: list[dict[str, Path]], cases: list[str], out: Path, ending: str) -> dict[str, Path]:
    from autoseg.imageio import ImageGeometry, write_image

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
        write_image(probs.argmax(0).astype(np.uint8), geometry, target)
        result[case] = target
    return result


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
    labels = sorted(v for v in plans.labels.values() if v)
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
        scores[(c,)] = evaluate_pairs({k: (gt / f"{k}{ending}", preds[k]) for k in cases}, labels)
    members_of = {}
    for r in range(2, len(available) + 1):
        for combo in itertools.combinations(available, r):
            out = results / "ensembles" / variant / _candidate_name(combo)
            preds = _ensemble([available[c] for c in combo], cases, out, ending)
            members_of[combo] = preds
            scores[combo] = evaluate_pairs({k: (gt / f"{k}{ending}", preds[k]) for k in cases}, labels)
    ranked = sorted(((c, s["foreground_mean"]["dice"]) for c, s in scores.items()), key=_order_key)
    chosen = ranked[0][0]
    chosen_preds = available[chosen[0]] if len(chosen) == 1 else members_of[chosen]
    pairs = [(read_label(chosen_preds[k])[0][0], read_label(gt / f"{k}{ending}")[0][0]) for k in cases]
    postprocessing, effect = learn_postprocessing(pairs, labels)
    candidates = {_candidate_name(c): {**{str(lab): s["mean"][str(lab)]["dice"] for lab in labels},
                                       "mean": s["foreground_mean"]["dice"]} for c, s in scores.items()}
    post_mean = float(np.nanmean(list(effect["after"].values())))
    selection = Selection(SELECTION_SCHEMA_VERSION, name, chosen, variant, tuple(folds), checkpoint,
                          postprocessing, candidates, scores[chosen]["foreground_mean"]["dice"], post_mean)
    save_json(selection, results / "selection.json")
    return selection


def format_selection(sel: Selection, names: dict[int, str]) -> str:
    classes = [k for k in next(iter(sel.candidates.values())) if k != "mean"]
    header = f"{'candidate':<34}" + "".join(f"{names.get(int(k), k)[:12]:>13}" for k in classes) + f"{'mean':>10}"
    rows = [header]
    for cand, vals in sorted(sel.candidates.items(), key=lambda kv: -kv[1]["mean"]):
        mark = " *" if cand == _candidate_name(sel.configurations) else ""
        rows.append(f"{cand + mark:<34}" + "".join(f"{vals[k]:>13.4f}" for k in classes) + f"{vals['mean']:>10.4f}")
    steps = ", ".join(f"{s.kind}" + (f"(class {s.label}" + (f", < {s.min_size} voxels" if s.min_size else "") + ")"
                                     if s.kind != "keep_largest_foreground" else "")
                      for s in sel.postprocessing.steps) or "none"
    rows.append(f"chosen: {_candidate_name(sel.configurations)} (Dice {sel.chosen_dice:.4f}); "
                f"postprocessing: {steps} (Dice {sel.postprocessed_dice:.4f})")
    return "\n".join(rows)


def cli_find_best_config(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.root)
    folds = tuple(int(f) for f in args.folds) if args.folds else (0, 1, 2, 3, 4)
    sel = find_best_config(ws, args.dataset, args.configurations, args.variant or "default", folds)
    from autoseg.plans import load_plans

    plans = load_plans(ws.preprocessed_dataset(args.dataset) / "plans.json")
    print(format_selection(sel, {v: k for k, v in plans.labels.items()}))
    print(f"written to {ws.results_dataset(args.dataset) / 'selection.json'}")
    return 0

