"""nnU-Net v2's plain trainer on the same fold of an autoseg workspace's dataset, within the same
wall-clock budget: its validation Dice beside autoseg's.

Reproduce (after ``bench/suite.py`` or any ``autoseg train CONFIG 0 -d ID --root WS``; on a quiet
machine; nnU-Net from ``bash bench/setup_nnunet.sh``):

    python bench/nnunet_side_by_side.py --root WS -d 130 --budget 10m --json OUT.json

What it does: the raw dataset folder of the workspace (nnU-Net v2's own layout) is linked into a
fresh ``nnUNet_raw``; ``nnUNetv2_plan_and_preprocess -c CONFIG`` plans it; autoseg's
``splits.json`` becomes nnU-Net's ``splits_final.json`` (the same training and validation cases);
``bench/nnunet_budget_train.py`` trains fold ``--fold`` with ``--plans cpu`` (batch 2, every
``features_per_stage`` entry halved: what a knowledgeable user would do on a CPU) or ``default``,
its poly schedule fitted to the budget after a warm-up, and nnU-Net validates it afterwards (outside
the budget: the generous choice). Reported: nnU-Net's plans, iterations, its own validation mean
Dice per class and foreground mean, and, read from the workspace, autoseg's fold with the same
numbers (``validation/summary.json``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import measure, nnunet_bin  # noqa: E402
from plan_and_preprocess import nnunet_env  # noqa: E402

TRAINER = Path(__file__).resolve().parent / "nnunet_budget_train.py"


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the autoseg workspace that holds the dataset and its fold")
    p.add_argument("-d", "--dataset-id", type=int, required=True)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--budget", default="10m", help="e.g. 10m, 1800s")
    p.add_argument("--plans", choices=("cpu", "default"), default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="nnU-Net's folders (default: a temporary folder)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    root = Path(args.root)
    raw = next((root / "raw").glob(f"Dataset{args.dataset_id:03d}_*"))
    name = raw.name
    work = Path(args.work or tempfile.mkdtemp(prefix="nnunet_side_"))
    env = nnunet_env(work)
    link = work / "nnUNet_raw" / name
    if not link.exists():
        link.symlink_to(raw.resolve())
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    plan = measure([nnunet_bin() / "nnUNetv2_plan_and_preprocess", "-d", str(args.dataset_id), "-c", args.configuration,
                    "-np", "2", "-npfp", "2"], env=env, log_path=logs / "plan_and_preprocess.log")
    splits = json.loads((root / "preprocessed" / name / "splits.json").read_text())
    nn_pre = work / "nnUNet_preprocessed" / name
    (nn_pre / "splits_final.json").write_text(json.dumps(splits))
    results = work / "nnUNet_results"
    out = work / "run.json"
    env = dict(env, nnUNet_results=str(results), nnUNet_n_proc_DA="1", OMP_NUM_THREADS=str(args.threads))
    train = measure([nnunet_bin() / "python", TRAINER, "--dataset", name, "--configuration", args.configuration,
                     "--fold", str(args.fold), "--budget-s", str(_seconds(args.budget)), "--plans", args.plans,
                     "--threads", str(args.threads), "--result", out], env=env, log_path=logs / "train.log")
    if not out.is_file():
        raise SystemExit(f"nnU-Net's training wrote no result; see {logs / 'train.log'}")
    r = json.loads(out.read_text())
    nn_summary = json.loads((Path(r["validation_folder"]) / "summary.json").read_text())
    ours = root / "results" / name / args.configuration / "default" / f"fold_{args.fold}" / "validation" / "summary.json"
    ours_summary = json.loads(ours.read_text()) if ours.is_file() else None
    record = {
        "dataset": name, "configuration": args.configuration, "fold": args.fold, "budget": args.budget,
        "nnunet": {"plan_and_preprocess_s": plan.wall_s, "plans": {k: r[k] for k in ("patch_size", "batch_size",
                                                                                   "features_per_stage")},
                   "iterations": r["iterations_done"], "training_wall_s": r["training_wall_s"],
                   "validation_wall_s": r["validation_wall_s"], "train_command_s": train.wall_s,
                   "dice_per_class": {k: v["Dice"] for k, v in nn_summary["mean"].items()},
                   "dice_mean": nn_summary["foreground_mean"]["Dice"]},
        "autoseg": None if ours_summary is None else {
            "dice_per_class": {k: v["dice"] for k, v in ours_summary["mean"].items()},
            "dice_mean": ours_summary["foreground_mean"]["dice"]},
    }
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
