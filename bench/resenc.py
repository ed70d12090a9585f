"""The residual-encoder U-Net (ResEnc) against the plain U-Net at equal wall time on a CPU.

    python bench/resenc.py --raw WS/raw --datasets 201 202 --root WS_RESENC [--budget 10m]

For each dataset of ``--raw`` (nnU-Net v2 raw folders with imagesTs/labelsTs, e.g. the suite's
Hippocampus 201 and its thick-slice copy 202) and each network (``plain``, ``resenc``), one
after the other with nothing else running: a workspace ``ROOT/<network>`` (its raw/ a link to
``--raw``), ``autoseg plan_and_preprocess -d ID -c 3d_fullres --network NETWORK --time-budget B``
(the cpu profile times each network and picks its width for the budget), ``autoseg train
3d_fullres 0 --time-budget B``, predict of the held-out images and ``autoseg evaluate``. Writes
ROOT/results.json and prints a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, run_untimed, write_json  # noqa: E402
from steps import fold_facts, fold_folder, predict_and_evaluate, train_fold  # noqa: E402

log = logging.getLogger("bench.resenc")
NETWORKS = ("plain", "resenc")


def run(autoseg: str, root: Path, raw_root: Path, dataset_id: int, network: str, budget: str) -> dict:
    ws = root / network
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / "raw").exists():
        (ws / "raw").symlink_to(raw_root.resolve())
    [raw] = [p for p in raw_root.iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}_")]
    ident = ["-d", str(dataset_id), "--root", str(ws)]
    logs = root / "logs" / f"{dataset_id}_{network}"
    run_untimed([autoseg, "plan_and_preprocess", *ident, "-c", "3d_fullres", "--network", network,
                 "--time-budget", budget], log_path=logs / "plan_and_preprocess.log", timeout_s=3600)
    plans = json.loads((ws / "preprocessed" / raw.name / "plans.json").read_text())["configurations"]["3d_fullres"]
    fold = fold_folder(ws, raw.name, "3d_fullres", 0)
    train = train_fold(autoseg, ident, "3d_fullres", 0, budget, fold, logs)
    _, summary = predict_and_evaluate(autoseg, raw, root / "pred" / f"{dataset_id}_{network}", ident, "3d_fullres",
                                      0, logs)
    return {"dataset": raw.name, "network": network, "width": plans["network"]["features_per_stage"][0],
            "patch": plans["patch_size"], **fold_facts(fold),
            "train_wall_s": train.wall_s, "held_out_dice": summary["foreground_mean"]["dice"],
            "per_class": {k: v["dice"] for k, v in summary["mean"].items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, required=True, help="folder of raw datasets (nnU-Net v2 layout)")
    p.add_argument("--datasets", type=int, nargs="+", required=True)
    p.add_argument("--root", type=Path, required=True, help="folder for the two workspaces and the results")
    p.add_argument("--budget", default="10m")
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--json", type=Path, default=None, help="results file (default ROOT/results.json)")
    p.add_argument("--autoseg", default=str(Path(sys.executable).with_name("autoseg")))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = {"machine": machine_info(), "budget": args.budget, "runs": []}
    for dataset_id in args.datasets:
        for network in args.networks:
            log.info("dataset %d, %s", dataset_id, network)
            results["runs"].append(run(args.autoseg, args.root, args.raw, dataset_id, network, args.budget))
            write_json(results, args.json or args.root / "results.json")
    rows = [[r["dataset"], r["network"], r["width"], "x".join(map(str, r["patch"])), r["iterations"],
             r["held_out_dice"]] for r in results["runs"]]
    print(markdown_table(["dataset", "network", "width", "patch", "iterations", "held-out Dice"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
