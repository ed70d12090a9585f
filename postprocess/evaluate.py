"""``autoseg evaluate``: compare a folder of predictions with a folder of references.

The summary (JSON) holds per-case metrics per class (voxel, surface and lesion-wise), the
mean per class over cases (NaN cases left out), ``pooled``: lesion counts, volumes and case
presence summed over cases and the lesion recall/precision/F1 computed from those sums, and
``foreground_mean``: the mean over classes of the class means (and of the pooled lesion
scores). Undefined values (NaN) are written as JSON ``null``; ``load_summary`` reads them
back as NaN. Definitions: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from multiprocessing import get_context
from pathlib import Path

from autoseg.device import pool_size
from autoseg.errors import UserFacingError, output_file
from autoseg.imageio import SUPPORTED_ENDINGS, read_label
from autoseg.labels import Regions, ignore_value, label_names, regions_of, scored_classes
from autoseg.postprocess.lesions import LESION_COUNT_KEYS, detection_scores
from autoseg.postprocess.metrics import case_metrics, nanmean
from autoseg.postprocess.surface import DEFAULT_NSD_TOLERANCE_MM
from autoseg.serialization import save_json

log = logging.getLogger(__name__)
MEAN_KEYS = ("dice", "iou", "tp", "fp", "fn", "hd95", "nsd", "fp_volume_ml", "fn_volume_ml")
SUMMED_KEYS = LESION_COUNT_KEYS + ("split_lesions", "merged_lesions", "fp_volume_ml", "fn_volume_ml")
POOLED_MEAN_KEYS = ("lesion_recall", "lesion_precision", "lesion_f1", "lesion_dice", "presence_accuracy")


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


def _evaluate_case(job: tuple[str, Path, Path, list[int], float, bool, int | None, Regions | None]) -> dict:
    case_id, ref_path, pred_path, labels, nsd_tolerance_mm, surface, ignore_label, regions = job
    ref, rgeom = read_label(ref_path)
    pred, pgeom = read_label(pred_path)
    diffs = rgeom.matches(pgeom)
    if diffs:
        raise UserFacingError(f"case {case_id}: prediction {pred_path.name} and reference {ref_path.name} "
                              f"differ in {'; '.join(diffs)}; predictions must keep the reference geometry")
    spacing = rgeom.spacing
    if rgeom.is_2d:  # natural 2D image: its placeholder slice thickness is not a length
        spacing = (1.0,) + tuple(spacing[1:])
    metrics = case_metrics(ref[0], pred[0], labels, spacing, nsd_tolerance_mm, surface=surface,
                           ignore_label=ignore_label, regions=regions)
    return {"case_id": case_id, "reference": str(ref_path), "prediction": str(pred_path),
            "spacing": list(spacing), "metrics": {str(k): v for k, v in metrics.items()}}


def pool_class(per_case_metrics: list[dict]) -> dict:
    """Dataset-level lesion and presence numbers of one class from its per-case metrics.

    Counts and volumes are summed over cases; recall, precision and F1 come from the summed
    counts (not a mean of per-case scores); ``lesion_dice`` is the mean over every reference
    lesion of every case; ``presence`` counts cases by outcome.
    """
    pooled: dict = {k: sum(m[k] for m in per_case_metrics) for k in SUMMED_KEYS}
    for k in ("fp_volume_ml", "fn_volume_ml"):
        pooled[k] = float(pooled[k])
    pooled.update(detection_scores(pooled["n_ref_lesions"], pooled["detected_lesions"],
                                   pooled["n_pred_lesions"], pooled["true_pred_lesions"]))
    n = pooled["n_ref_lesions"]
    pooled["lesion_dice"] = (sum(m["lesion_dice"] * m["n_ref_lesions"] for m in per_case_metrics
                                 if m["n_ref_lesions"]) / n) if n else math.nan
    outcomes = {k: sum(m["presence"] == k for m in per_case_metrics) for k in ("tp", "fp", "fn", "tn")}
    pooled["presence"] = outcomes
    total = sum(outcomes.values())
    pooled["presence_accuracy"] = (outcomes["tp"] + outcomes["tn"]) / total if total else math.nan
    return pooled


def summarise(per_case: list[dict], labels: list[int], nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict:
    """Means over cases, pooled lesion numbers and foreground means of per-case results."""
    mean, pooled = {}, {}
    computed = per_case[0]["metrics"][str(labels[0])] if per_case and labels else {}
    keys = [m for m in MEAN_KEYS if m in computed or not computed]  # no hd95/nsd when surface=False
    for label in labels:
        key = str(label)
        mean[key] = {m: nanmean([c["metrics"][key][m] for c in per_case]) for m in keys}
        pooled[key] = pool_class([c["metrics"][key] for c in per_case])
    fg = {m: nanmean([mean[str(label)][m] for label in labels]) for m in keys}
    fg.update({m: nanmean([pooled[str(label)][m] for label in labels]) for m in POOLED_MEAN_KEYS})
    return {"labels": labels, "num_cases": len(per_case), "nsd_tolerance_mm": nsd_tolerance_mm, "mean": mean,
            "pooled": pooled, "foreground_mean": fg, "per_case": per_case}


def load_summary(path: str | Path) -> dict:
    """Read a summary JSON written by ``evaluate_folder``; ``null`` (undefined) comes back as NaN."""
    return _null_to_nan(json.loads(Path(path).read_text()))


def _null_to_nan(obj):
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _null_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_to_nan(v) for v in obj]
    return obj


def evaluate_folder(reference_dir: str | Path, prediction_dir: str | Path, labels: list[int],
                    file_ending: str | None = None, output_json: str | Path | None = None,
                    num_processes: int | None = None, case_ids: list[str] | None = None,
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, ignore_label: int | None = None,
                    regions: Regions | None = None) -> dict:
    """Evaluate every prediction of ``prediction_dir`` (or ``case_ids``) against ``reference_dir``.

    ``nsd_tolerance_mm``: the tolerance of the normalised surface Dice, in mm; ``ignore_label``: the
    reference value of unannotated voxels, where predictions are not scored; ``regions``: score
    regions (``labels`` are then their written values, ``metrics.case_metrics``). The summary is
    returned and, with ``output_json``, written there (NaN as ``null``).
    """
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
    summary = evaluate_pairs({c: (refs[c], preds[c]) for c in wanted}, labels, num_processes, nsd_tolerance_mm,
                             ignore_label=ignore_label, regions=regions)
    if output_json is not None:
        save_json(summary, output_json)
    return summary


def evaluate_pairs(pairs: dict[str, tuple[Path, Path]], labels: list[int], num_processes: int | None = None,
                   nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, surface: bool = True,
                   ignore_label: int | None = None, regions: Regions | None = None) -> dict:
    """Summary over ``{case_id: (reference file, prediction file)}``; ``surface=False`` leaves
    out HD95 and NSD (model selection does not use them); ``ignore_label`` and ``regions`` as
    ``evaluate_folder``."""
    if not nsd_tolerance_mm >= 0:
        raise UserFacingError(f"the NSD tolerance must be a distance in mm >= 0, got {nsd_tolerance_mm}")
    jobs = [(c, ref, pred, list(labels), float(nsd_tolerance_mm), surface, ignore_label, regions)
            for c, (ref, pred) in sorted(pairs.items())]
    n = pool_size(num_processes, len(jobs))
    if n == 1 or len(jobs) < 8:
        per_case = [_evaluate_case(j) for j in jobs]
    else:
        with get_context("fork").Pool(n) as pool:
            per_case = pool.map(_evaluate_case, jobs)
    summary = summarise(per_case, list(labels), float(nsd_tolerance_mm))
    if ignore_label is not None:
        summary["ignore_label"] = ignore_label
    if regions is not None:
        summary["regions"] = {str(v): list(members) for v, members in regions}
    return summary


def format_table(summary: dict, names: dict[int, str] | None = None) -> str:
    """Two tables: voxel and surface means over cases; lesion numbers pooled over cases."""
    names = names or {}
    tol = summary.get("nsd_tolerance_mm", DEFAULT_NSD_TOLERANCE_MM)
    nsd = f"NSD@{tol:g}mm"
    rows = [f"{'class':<20}{'Dice':>8}{'IoU':>8}{'HD95 mm':>9}{nsd:>11}"]
    for label in summary["labels"]:
        m = summary["mean"][str(label)]
        rows.append(f"{names.get(label, str(label))[:19]:<20}{_f(m['dice']):>8}{_f(m['iou']):>8}"
                    f"{_f(m.get('hd95'), 2):>9}{_f(m.get('nsd')):>11}")
    fg = summary["foreground_mean"]
    rows.append(f"{'foreground mean':<20}{_f(fg['dice']):>8}{_f(fg['iou']):>8}{_f(fg.get('hd95'), 2):>9}"
                f"{_f(fg.get('nsd')):>11}")
    rows.append("")
    rows.append(f"{'class':<20}{'lesions':>9}{'found':>7}{'FP':>5}{'recall':>8}{'precis.':>8}{'F1':>8}"
                f"{'les.Dice':>9}{'FP ml':>9}{'FN ml':>9}{'presence':>9}")
    for label in summary["labels"]:
        p = summary["pooled"][str(label)]
        fp_lesions = p["n_pred_lesions"] - p["true_pred_lesions"]
        rows.append(f"{names.get(label, str(label))[:19]:<20}{p['n_ref_lesions']:>9}{p['detected_lesions']:>7}"
                    f"{fp_lesions:>5}{_f(p['lesion_recall'], 3):>8}{_f(p['lesion_precision'], 3):>8}"
                    f"{_f(p['lesion_f1'], 3):>8}{_f(p['lesion_dice'], 3):>9}{p['fp_volume_ml']:>9.3f}"
                    f"{p['fn_volume_ml']:>9.3f}{_f(p['presence_accuracy'], 3):>9}")
    rows.append(f"({summary['num_cases']} cases; lesion numbers summed over cases; presence = case-level "
                f"accuracy of 'class present')")
    return "\n".join(rows)


def _f(v: float, digits: int = 4) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _labels_from_workspace(args) -> tuple[list[int] | None, dict[int, str], int | None, Regions | None]:
    """The classes (or regions) to score, their names, the ignore label's value and the regions,
    from the dataset.json of -d."""
    if not args.dataset:
        return None, {}, None, None
    from autoseg.paths import Workspace

    ws = Workspace.resolve(args.root)
    name = ws.dataset_name(args.dataset)
    for folder in (ws.preprocessed / name, ws.raw / name):
        path = folder / "dataset.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            labels = raw["labels"]
            regions = regions_of(labels, raw.get("regions_class_order"))
            return (list(scored_classes(labels, regions)), label_names(labels, regions), ignore_value(labels),
                    regions)
    return None, {}, None, None


def cli_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    labels, names, ignore, regions = _labels_from_workspace(args)
    if getattr(args, "ignore_label", None) is not None:
        ignore = args.ignore_label
    if args.labels:
        labels = args.labels
    if labels is None:  # the classes present in the references
        found: set[int] = set()
        for p in _case_files(Path(args.reference), None).values():
            found |= set(np.unique(read_label(p)[0]).tolist())
        labels = sorted(v for v in found if v and v != ignore)
    out = Path(args.output) if args.output else Path(args.prediction) / "summary.json"
    if args.output:
        output_file(out, "summary file")
    summary = evaluate_folder(args.reference, args.prediction, labels, output_json=out,
                              nsd_tolerance_mm=args.nsd_tolerance, ignore_label=ignore, regions=regions)
    print(format_table(summary, names))
    print(f"written to {out}")
    return 0
