"""Hippocampus end to end: 5-fold cross-validation of 3d_fullres and 2d under one time budget,
find_best_config, predict on held-out cases, evaluate.

    .venv/bin/python bench/hippocampus_cv.py --budget 70m --holdout 20 --json bench/out/hippocampus_cv.json

Steps (all through the ``autoseg`` CLI, in a workspace under bench/out/):
1. convert the Decathlon Task04_Hippocampus from --data (default $AUTOSEG_BENCH_DATA) into the raw layout;
2. move ``--holdout`` cases (seeded choice) from imagesTr/labelsTr to imagesTs/labelsTs, so they
   take no part in planning, training, cross-validation or selection;
3. plan_and_preprocess with the cpu device profile (3d_fullres and 2d);
4. ``autoseg train_all -c 3d_fullres 2d --time-budget BUDGET`` (10 folds sharing the budget);
5. find_best_config, predict the held-out images with the selection, evaluate against their labels.
Prints and writes (``--json``) the time of each step, the cross-validation Dice of every candidate
and the held-out Dice.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_task_option, require_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def autoseg(*args: str) -> float:
    cmd = [str(Path(sys.executable).with_name("autoseg")), *args]
    print("$ autoseg " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def hold_out(raw: Path, n: int, seed: int) -> list[str]:
    """Move ``n`` cases of ``raw`` (nnU-Net raw layout) to imagesTs/labelsTs; returns their ids."""
    spec = json.loads((raw / "dataset.json").read_text())
    ending = spec["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in (raw / "labelsTr").glob(f"*{ending}"))
    chosen = sorted(random.Random(seed).sample(cases, n))
    (raw / "imagesTs").mkdir(exist_ok=True)
    (raw / "labelsTs").mkdir(exist_ok=True)
    for test_dir in ("imagesTs",):  # the converter's own test images have no labels: set them aside
        for p in (raw / test_dir).glob(f"*{ending}"):
            p.unlink()
    for case in chosen:
        for img in (raw / "imagesTr").glob(f"{case}_*{ending}"):
            shutil.move(str(img), raw / "imagesTs" / img.name)
        shutil.move(str(raw / "labelsTr" / f"{case}{ending}"), raw / "labelsTs" / f"{case}{ending}")
    spec["numTraining"] = len(cases) - n
    (raw / "dataset.json").write_text(json.dumps(spec, indent=2))
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="70m", help="total training budget for the 10 folds")
    ap.add_argument("--holdout", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workspace", default=str(REPO / "bench" / "out" / "hippocampus_cv"))
    ap.add_argument("--json", default=None)
    add_task_option(ap, "--data")
    args = ap.parse_args()
    task = require_folder(args.data, "--data")

    ws = Path(args.workspace)
    if ws.exists():
        shutil.rmtree(ws)
    root = ["--root", str(ws)]
    times = {"convert": autoseg("convert_msd", "-i", str(task), *root)}
    raw = next((ws / "raw").glob("Dataset004_*"))
    held = hold_out(raw, args.holdout, args.seed)
    times["plan_and_preprocess"] = autoseg("plan_and_preprocess", "-d", "4", *root, "--device-profile", "cpu",
                                           "-c", "3d_fullres", "2d")
    times["train_all"] = autoseg("train_all", "-d", "4", *root, "-c", "3d_fullres", "2d", "--time-budget", args.budget)
    times["find_best_config"] = autoseg("find_best_config", "-d", "4", *root)
    pred = ws / "heldout_pred"
    times["predict"] = autoseg("predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "4", *root)
    times["evaluate"] = autoseg("evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(pred), "-d", "4", *root)

    results = ws / "results" / raw.name
    selection = json.loads((results / "selection.json").read_text())
    from autoseg.training.train_config import load_train_config  # either layout of train_config.json

    folds = {}
    for cfg in ("3d_fullres", "2d"):
        for k in range(5):
            fold = results / cfg / "default" / f"fold_{k}"
            tc = load_train_config(fold / "train_config.json").schedule
            summ = json.loads((fold / "validation" / "summary.json").read_text())
            folds[f"{cfg}/{k}"] = {"iterations": tc.num_epochs * tc.num_iterations_per_epoch,
                                   "budget_s": tc.time_budget_s, "val_dice": summ["foreground_mean"]["dice"]}
    held_summary = json.loads((pred / "summary.json").read_text())
    report = {"budget": args.budget, "held_out": held, "times_s": times, "folds": folds, "selection": selection,
              "held_out_dice": {k: v["dice"] for k, v in held_summary["mean"].items()},
              "held_out_foreground_mean_dice": held_summary["foreground_mean"]["dice"]}
    print(json.dumps({k: v for k, v in report.items() if k != "selection"}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
