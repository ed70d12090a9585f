"""Fine-tuning, the Python API, the residual-encoder network and the report, on the bundled demo data.

    bash scripts/demo.sh WS                          # a fresh install and the demo: dataset 4, fold 0
    .venv/bin/python bench/feature_tour.py --root WS --json bench/out/feature_tour.json

Run after the demo (``autoseg demo --root WS``), in the same workspace, each part through the CLI
the way a user would, and checks what it made:

1. report: ``autoseg report -d 4`` writes one HTML page naming every validation case of fold 0;
   ``autoseg overlay`` writes one PNG per predicted held-out case;
2. Python API: ``load_model(WS, dataset=4).predict_folder(imagesTs)`` gives the labels the demo's
   ``autoseg predict`` wrote, voxel for voxel;
3. ResEnc: the demo data again as dataset 6, ``plan_and_preprocess --network resenc``, the demo's
   short schedule, predict and evaluate the held-out cases;
4. fine-tuning: the demo data again as dataset 5, ``transfer_plans`` from 4, ``preprocess``,
   ``train --pretrained`` from the demo's fold 0 with half the demo's schedule, predict and evaluate.

Writes a JSON with each part's result and wall time, and exits non-zero if a check failed. The
Dice figures are those of a few hundred iterations on 24 cases: they show the parts work, not
how well they train (docs/benchmarks.md has the measurements).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_untimed, write_json  # noqa: E402

log = logging.getLogger("bench.feature_tour")
DEMO_ID, FINE_TUNE_ID, RESENC_ID = 4, 5, 6
TIMEOUT_S = 1800


class TourFailed(Exception):
    pass


def demo_paths(root: Path) -> dict:
    from autoseg.demo import DEMO_DATASET, DEMO_TASK

    return {"task": DEMO_TASK, "raw": root / "raw" / DEMO_DATASET, "pred": root / "demo_predictions",
            "fold": root / "results" / DEMO_DATASET / "3d_fullres" / "default" / "fold_0"}


def autoseg(args: argparse.Namespace, part: str, *argv, workspace: bool = True) -> None:
    """``autoseg ARGV`` (with ``--root`` where the command reads the workspace), its output in the part's log."""
    root = ["--root", str(args.root)] if workspace else []
    run_untimed([args.autoseg, *map(str, argv), *root],
                log_path=args.root / "feature_tour_logs" / f"{part}.log", timeout_s=TIMEOUT_S)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise TourFailed(message)


def report(args, demo) -> dict:
    html = args.root / "tour_report.html"
    autoseg(args, "report", "report", "-d", DEMO_ID, "-o", html)
    text = html.read_text()
    summary = json.loads((demo["fold"] / "validation" / "summary.json").read_text())
    cases = [c["case_id"] for c in summary["per_case"]]
    missing = [c for c in cases if c not in text]
    check(not missing, f"the report names no row for validation case(s) {missing}")
    pngs = args.root / "tour_overlays"
    shutil.rmtree(pngs, ignore_errors=True)
    autoseg(args, "report", "overlay", "-i", demo["raw"] / "imagesTs", "-s", demo["pred"], "-o", pngs,
            "--reference", demo["task"] / "labelsTs", workspace=False)
    predicted = sorted(p.name for p in demo["pred"].glob("*.nii.gz"))
    check(len(list(pngs.glob("*.png"))) == len(predicted), f"{len(predicted)} predictions but overlays: "
          f"{sorted(p.name for p in pngs.glob('*.png'))}")
    return {"html": str(html), "html_kb": round(html.stat().st_size / 1024), "validation_cases": len(cases),
            "overlays": len(predicted)}


def python_api(args, demo) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from autoseg.inference.api import load_model

    compared = 0
    with load_model(args.root, dataset=DEMO_ID) as model:
        for case_id, result in model.predict_folder(demo["raw"] / "imagesTs"):
            cli = sitk.GetArrayFromImage(sitk.ReadImage(str(demo["pred"] / f"{case_id}.nii.gz")))
            differing = int(np.count_nonzero(cli != result.labels))
            check(differing == 0, f"{case_id}: the API's labels differ from predict's in {differing} voxel(s)")
            compared += 1
    check(compared > 0, "the API predicted no case")
    return {"cases_equal_to_cli": compared}


def _short_schedule(fraction: float = 1.0) -> list[str]:
    from autoseg.demo import DEMO_TRAIN_OVERRIDES

    sets = []
    for item in DEMO_TRAIN_OVERRIDES:
        key, value = item.split("=")
        if key.endswith("num_epochs"):
            value = str(max(1, round(int(value) * fraction)))
        sets += ["--set", f"{key}={value}"]
    return sets


def _predict_and_score(args, demo, dataset_id: int, part: str) -> float:
    pred = args.root / f"tour_pred_{dataset_id}"
    shutil.rmtree(pred, ignore_errors=True)
    autoseg(args, part, "predict", "-i", demo["raw"] / "imagesTs", "-o", pred, "-d", dataset_id, "-c", "3d_fullres",
            "-f", "0")
    autoseg(args, part, "evaluate", "-ref", demo["task"] / "labelsTs", "-pred", pred, "-d", dataset_id)
    return json.loads((pred / "summary.json").read_text())["foreground_mean"]["dice"]


def _copy_of_demo(args, demo, dataset_id: int, part: str) -> str:
    from autoseg.paths import Workspace

    ws = Workspace.resolve(args.root)
    found = list(ws.raw.glob(f"Dataset{dataset_id:03d}_*"))
    if not found:
        autoseg(args, part, "convert_msd", "-i", demo["task"], "-d", dataset_id)
        found = list(ws.raw.glob(f"Dataset{dataset_id:03d}_*"))
    return found[0].name


def resenc(args, demo) -> dict:
    name = _copy_of_demo(args, demo, RESENC_ID, "resenc")
    autoseg(args, "resenc", "plan_and_preprocess", "-d", RESENC_ID, "-c", "3d_fullres", "--network", "resenc",
            "--device-profile", "cpu")
    plans = json.loads((args.root / "preprocessed" / name / "plans.json").read_text())
    network = plans["configurations"]["3d_fullres"]["network"]
    check(network.get("encoder") == "residual", f"plans.json network is not the residual encoder: {network}")
    shutil.rmtree(args.root / "results" / name / "3d_fullres" / "default" / "fold_0", ignore_errors=True)
    autoseg(args, "resenc", "train", "3d_fullres", "0", "-d", RESENC_ID, *_short_schedule())
    return {"blocks_per_stage": network.get("blocks_per_stage"), "features": network["features_per_stage"],
            "held_out_dice": _predict_and_score(args, demo, RESENC_ID, "resenc")}


def fine_tune(args, demo) -> dict:
    name = _copy_of_demo(args, demo, FINE_TUNE_ID, "fine_tune")
    autoseg(args, "fine_tune", "transfer_plans", "--source-dataset", DEMO_ID, "--target-dataset", FINE_TUNE_ID)
    autoseg(args, "fine_tune", "preprocess", "-d", FINE_TUNE_ID, "-c", "3d_fullres")
    fold = args.root / "results" / name / "3d_fullres" / "default" / "fold_0"
    shutil.rmtree(fold, ignore_errors=True)
    autoseg(args, "fine_tune", "train", "3d_fullres", "0", "-d", FINE_TUNE_ID, "--pretrained", demo["fold"],
            *_short_schedule(0.5))
    text = (fold / "training.log").read_text()
    copied = [ln.split(" ", 2)[-1] for ln in text.splitlines() if "pretrained weights from" in ln]
    check(bool(copied), f"{fold}/training.log does not say which pretrained weights were copied")
    return {"held_out_dice": _predict_and_score(args, demo, FINE_TUNE_ID, "fine_tune"), "pretrained": copied[-1]}


PARTS = {"report": report, "python_api": python_api, "resenc": resenc, "fine_tune": fine_tune}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="the workspace `autoseg demo --root` used")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--json", type=Path, default=None, help="results file (default ROOT/feature_tour.json)")
    p.add_argument("--autoseg", default=str(Path(sys.executable).with_name("autoseg")))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    demo = demo_paths(args.root)
    if not (demo["fold"] / "checkpoint_final.pth").is_file() or not demo["pred"].is_dir():
        print(f"{args.root} holds no finished demo (expected {demo['fold']}/checkpoint_final.pth and "
              f"{demo['pred']}); run `autoseg demo --root {args.root}` first", file=sys.stderr)
        return 2
    results, failed = {}, 0
    for name in args.parts:
        started = time.perf_counter()
        try:
            results[name] = {"ok": True, **PARTS[name](args, demo)}
        except Exception as exc:  # one part failing must not hide the others' results
            failed += 1
            results[name] = {"ok": False, "error": str(exc)}
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        log.info("%s: %s", name, json.dumps(results[name]))
        write_json(results, args.json or args.root / "feature_tour.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
