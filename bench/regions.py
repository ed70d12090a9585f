"""Regions against plain labels at the same budget, on the BraTS-like set of make_regions.py.

    python bench/regions.py --root WS --source WS/raw/Dataset203_HippocampusTwoChannel [--budget 10m]

Builds (once) dataset 205 (the lesion as nnU-Net v2 regions: whole tumour [1, 2, 3], tumour core
[2, 3], enhancing 3) and dataset 206 (the same files as plain labels: edema 1, necrosis 2,
enhancing 3) with bench/data/make_regions.py, then for each, one after the other and nothing else
running: ``autoseg plan_and_preprocess -d ID -c 3d_fullres --time-budget BUDGET``, ``autoseg
train 3d_fullres 0 -d ID --time-budget BUDGET`` (timed), ``autoseg predict`` of the held-out
images (imagesTs) with that fold, and ``autoseg evaluate -d 205`` of the predictions against the
held-out labels: both models scored per region by one evaluation (a plain-label model's label map
holds the regions too: whole tumour = any of 1, 2, 3). Writes ``WS/bench_regions/results.json`` and
prints a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "data")]
from common import machine_info, markdown_table, run_untimed, write_json  # noqa: E402
from steps import fold_facts, fold_folder, predict_and_evaluate, train_fold  # noqa: E402
import make_regions  # noqa: E402

log = logging.getLogger("bench.regions")
ARMS = ((205, "LesionRegions", False), (206, "LesionLabels", True))
REGION_NAMES = {"1": "whole tumour", "2": "tumour core", "3": "enhancing"}


def run_arm(root: Path, source: Path, dataset_id: int, name: str, as_labels: bool, budget: str, autoseg: str,
            out: Path) -> dict:
    raw = root / "raw" / f"Dataset{dataset_id:03d}_{name}"
    if not raw.is_dir():
        make_regions.build(source, root, dataset_id, as_labels=as_labels, name=name)
    ident = ["-d", str(dataset_id), "--root", str(root)]
    logs = out / f"logs_{dataset_id}"
    run_untimed([autoseg, "plan_and_preprocess", *ident, "-c", "3d_fullres", "--time-budget", budget],
                log_path=logs / "plan_and_preprocess.log", timeout_s=3600)
    fold = fold_folder(root, raw.name, "3d_fullres", 0)
    train = train_fold(autoseg, ident, "3d_fullres", 0, budget, fold, logs)
    pred = out / f"pred_{dataset_id}"
    predict, summary = predict_and_evaluate(autoseg, raw, pred, ident, "3d_fullres", 0, logs,
                                            evaluate_ident=["-d", str(ARMS[0][0]), "--root", str(root)],
                                            summary_name="summary_regions.json")
    if set(summary.get("regions", {})) != set(REGION_NAMES):
        raise SystemExit(f"{pred}/summary_regions.json is not scored on the three regions")
    validation = json.loads((fold / "validation" / "summary.json").read_text())
    return {"dataset": raw.name, "as_labels": as_labels, "train_wall_s": train.wall_s,
            **fold_facts(fold),
            "validation_dice_own_classes": validation["foreground_mean"]["dice"],
            "held_out_cases": summary["num_cases"],
            "held_out_dice": {k: summary["mean"][k]["dice"] for k in REGION_NAMES},
            "held_out_hd95": {k: summary["mean"][k].get("hd95") for k in REGION_NAMES},
            "held_out_mean_dice": summary["foreground_mean"]["dice"], "predict_wall_s": predict.wall_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="autoseg workspace root")
    p.add_argument("--source", type=Path, required=True, help="the two-channel raw dataset make_regions.py derives from")
    p.add_argument("--budget", default="10m", help="plan_and_preprocess and train --time-budget, the same for both")
    p.add_argument("--autoseg", default=str(Path(sys.executable).with_name("autoseg")))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.root / "bench_regions"
    results = {"machine": machine_info(), "budget": args.budget, "arms": []}
    for dataset_id, name, as_labels in ARMS:
        log.info("dataset %d (%s)", dataset_id, "plain labels" if as_labels else "regions")
        results["arms"].append(run_arm(args.root, args.source, dataset_id, name, as_labels, args.budget, args.autoseg,
                                       out))
        write_json(results, out / "results.json")
    rows = [["plain labels (softmax)" if a["as_labels"] else "regions (sigmoid)", a["iterations"],
             *[a["held_out_dice"][k] for k in REGION_NAMES], a["held_out_mean_dice"]] for a in results["arms"]]
    print(markdown_table(["trained as", "iterations", *[f"{v} Dice" for v in REGION_NAMES.values()], "mean"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
