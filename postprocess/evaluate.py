"""``autoseg evaluate``: compare a folder of predictions with a folder of references.

The summary (JSON) holds per-case metrics per class, the mean per class over cases (NaN
cases left out), and ``foreground_mean``: the mean over classes of the class means.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from multiprocessing import get_context
from pathlib import Path

from autoseg.errors import UserFacingError
from autoseg.imageio import SUPPORTED_ENDINGS, read_label
from autoseg.postprocess.metrics import case_metrics, nanmean
from autoseg.serialization import save_json

log = logging.getLogger(__name__)
MEAN_KEYS = ("dice", "iou", "tp", "fp", "fn")


def _case_files(folder: Path, file_ending: str | None) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith("."):
            continue
        for ending in ([file_ending] if file_ending else SUPPORTED_ENDINGS):
            if p.name.endswith(ending):
                out[p.name[: -len(ending)]] = p
                break
    return out


def _evaluate_case(job: tuple[str, Path, Path, list[int]]) -> dict:
    case_id, ref_path, pred_path, labels = job
    ref, rgeom = read_label(ref_path)
    pred, pgeom = read_label(pred_path)
    diffs = rgeom.matches(pgeom)
    if diffs:
        raise UserFacingError(f"case {case_id}: prediction {pred_path.name} and reference {ref_path.name} "
                              f"differ in {'; '.join(diffs)}; predictions must keep the reference geometry")
    metrics = case_metrics(ref[0], pred[0], labels)
    return {"case_id": case_id, "reference": str(ref_path), "prediction": str(pred_path),
            "metrics": {str(k): v for k, v in metrics.items()}}


def summarise(per_case: list[dict], labels: list[int]) -> dict:
    mean = {}
    for label in labels:
        key = str(label)
        mean[key] = {m: nanmean([c["metrics"][key][m] for c in per_case]) for m in MEAN_KEYS}
    fg = {m: nanmean([mean[str(label)][m] for label in labels]) for m in MEAN_KEYS}
    return {"labels": labels, "num_cases": len(per_case), "mean": mean, "foreground_mean": fg,
            "per_case": per_case}


def evaluate_folder(reference_dir: str | Path, prediction_dir: str | Path, labels: list[int],
                    file_ending: str | None = None, output_json: str | Path | None = None,
                    num_processes: int | None = None, case_ids: list[str] | None = None) -> dict:
    """Evaluate every prediction of ``prediction_dir`` (or ``case_ids``) against ``reference_dir``."""
    refs = _case_files(Path(reference_dir), file_ending)
    preds = _case_files(Path(prediction_dir), file_ending)
    wanted = sorted(case_ids) if case_ids is not None else sorted(preds)
    if not wanted:
        raise UserFacingError(f"no predictions found in {prediction_dir}")
    missing_ref = [c for c in wanted if c not in refs]
    missing_pred = [c for c in wanted if c not in preds]
    if missing_ref or missing_pred:
        parts = []
        if missing_pred:
            parts.append(f"no prediction in {prediction_dir} for case(s) {missing_pred[:10]}")
        if missing_ref:
            parts.append(f"no reference in {reference_dir} for case(s) {missing_ref[:10]}")
        raise UserFacingError("; ".join(parts) + "; predict the missing cases or evaluate a matching folder")
    summary = evaluate_pairs({c: (refs[c], preds[c]) for c in wanted}, labels, num_processes)
    if output_json is not None:
        save_json(summary, output_json)
    return summary


def evaluate_pairs(pairs: dict[str, tuple[Path, Path]], labels: list[int], num_processes: int | None = None) -> dict:
    """Summary over ``{case_id: (reference file, prediction file)}``."""
    jobs = [(c, ref, pred, list(labels)) for c, (ref, pred) in sorted(pairs.items())]
    n = max(1, min(num_processes or os.cpu_count() or 1, len(jobs)))
    if n == 1 or len(jobs) < 8:
        per_case = [_evaluate_case(j) for j in jobs]
    else:
        with get_context("fork").Pool(n) as pool:
            per_case = pool.map(_evaluate_case, jobs)
    return summarise(per_case, list(labels))


def format_table(summary: dict, names: dict[int, str] | None = None) -> str:
    names = names or {}
    rows = [f"{'class':<20}{'Dice':>8}{'IoU':>8}{'TP':>12}{'FP':>12}{'FN':>12}"]
    for label in summary["labels"]:
        m = summary["mean"][str(label)]
        rows.append(f"{names.get(label, str(label)):<20}{_f(m['dice']):>8}{_f(m['iou']):>8}"
                    f"{m['tp']:>12.1f}{m['fp']:>12.1f}{m['fn']:>12.1f}")
    fg = summary["foreground_mean"]
    rows.append(f"{'foreground mean':<20}{_f(fg['dice']):>8}{_f(fg['iou']):>8}")
    rows.append(f"({summary['num_cases']} cases)")
    return "\n".join(rows)


def _f(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}"


def _labels_from_workspace(args) -> tuple[list[int] | None, dict[int, str]]:
    if not args.dataset:
        return None, {}
    from autoseg.paths import Workspace

    ws = Workspace.resolve(args.root)
    name = ws.dataset_name(args.dataset)
    for folder in (ws.preprocessed / name, ws.raw / name):
        path = folder / "dataset.json"
        if path.is_file():
            labels = json.loads(path.read_text())["labels"]
            return sorted(v for v in labels.values() if v), {v: k for k, v in labels.items()}
    return None, {}


def cli_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    labels, names = _labels_from_workspace(args)
    if args.labels:
        labels = args.labels
    if labels is None:  # the classes present in the references
        found: set[int] = set()
        for p in _case_files(Path(args.reference), None).values():
            found |= set(np.unique(read_label(p)[0]).tolist())
        labels = sorted(v for v in found if v)
    out = Path(args.output) if args.output else Path(args.prediction) / "summary.json"
    summary = evaluate_folder(args.reference, args.prediction, labels, output_json=out)
    print(format_table(summary, names))
    print(f"written to {out}")
    return 0
