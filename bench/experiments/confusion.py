"""Where two models' labels differ: the voxel confusion matrix of each against the same references.

    python bench/experiments/confusion.py REF_DIR PRED_DIR [PRED_DIR ...] [--json out.json]

For every case in the first prediction folder (``{case}.nii.gz`` etc., as ``autoseg predict`` writes
them) it reads the reference of the same name and counts, over all voxels of all cases, how many of
reference label i were predicted as label j. Each folder's matrix is printed (rows: reference,
columns: prediction), with each foreground label's Dice, false positives and false negatives from
it (Dice over all voxels pooled, not the mean over cases that ``autoseg evaluate`` reports), and
where its false negatives went. Used for the implanted-lesion benchmark
(docs/experiments/small_class_sampler_cost.md): does a
model lose anatomy Dice to lesion labels on the anatomy, to the background, or at the border between
two anatomy labels?
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for autoseg


def confusion(ref_dir: Path, pred_dir: Path, cases: list[str], num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: reference label (row) against predicted label (column)."""
    import SimpleITK as sitk

    counts = np.zeros((num_labels, num_labels), np.int64)
    for name in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / name)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / name)))
        if ref.shape != pred.shape:
            raise SystemExit(f"{pred_dir / name}: shape {pred.shape}, its reference {ref.shape}")
        np.add.at(counts, (ref.ravel().astype(np.int64), pred.ravel().astype(np.int64)), 1)
    return counts


def per_label(counts: np.ndarray) -> dict[int, dict]:
    """Dice, FP, FN of each foreground label from a confusion matrix, and where its FN went.

    ``per_label(np.array([[5, 1], [2, 4]]))[1] == {"dice": 8 / 11, "fp": 1, "fn": 2, "fn_to": {0: 2}}``."""
    out = {}
    for k in range(1, len(counts)):
        tp = int(counts[k, k])
        fp, fn = int(counts[:, k].sum()) - tp, int(counts[k, :].sum()) - tp
        out[k] = {"dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"), "fp": fp, "fn": fn,
                  "fn_to": {j: int(counts[k, j]) for j in range(len(counts)) if j != k and counts[k, j]}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", type=Path, help="folder of reference label images")
    p.add_argument("preds", type=Path, nargs="+", help="folders of predicted label images")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cases = sorted(f.name for f in args.preds[0].iterdir() if f.name.endswith((".nii.gz", ".nrrd", ".mha", ".nii")))
    if not cases:
        raise SystemExit(f"no label images in {args.preds[0]}")
    missing = [c for c in cases if not (args.ref / c).exists()]
    if missing:
        raise SystemExit(f"{len(missing)} predicted cases have no reference in {args.ref}, e.g. {missing[0]}")
    import SimpleITK as sitk

    num_labels = 1 + max(int(sitk.GetArrayFromImage(sitk.ReadImage(str(args.ref / c))).max()) for c in cases)
    results = {}
    for folder in args.preds:
        counts = confusion(args.ref, folder, cases, num_labels)
        results[str(folder)] = {"confusion": counts.tolist(), "labels": per_label(counts)}
        print(f"\n{folder} ({len(cases)} cases; rows: reference label, columns: predicted label)")
        for i, row in enumerate(counts):
            print(f"  {i}: " + " ".join(f"{v:>10,d}" for v in row))
        for k, r in per_label(counts).items():
            went = ", ".join(f"{n:,} to {j}" for j, n in r["fn_to"].items())
            print(f"  label {k}: Dice {r['dice']:.4f} (pooled), FP {r['fp']:,}, FN {r['fn']:,} ({went})")
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cases": cases, "results": results}, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
