"""``autoseg demo``: the whole pipeline on the bundled 30-case Hippocampus subset.

convert_msd -> plan_and_preprocess -> train 3d_fullres fold 0 (short schedule) ->
find_best_config -> predict the 6 held-out cases -> evaluate against their labels.
Every step is the same code path as the corresponding CLI command.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from autoseg.paths import Workspace

log = logging.getLogger(__name__)

DEMO_TASK = Path(__file__).resolve().parent / "demo_data" / "Task04_Hippocampus"
DEMO_DATASET = "Dataset004_Hippocampus"
# A short schedule that finishes in a few minutes on a 2-core CPU.
DEMO_TRAIN_OVERRIDES = ("schedule.num_epochs=10", "schedule.num_iterations_per_epoch=40",
                        "schedule.num_val_iterations_per_epoch=5")


def cli_demo(args: argparse.Namespace) -> int:
    from autoseg.cli import main

    ws = Workspace.resolve(args.root)
    root = ["--root", str(ws.root)]
    started = time.perf_counter()

    def step(title: str, argv: list[str]) -> None:
        log.info("== %s: autoseg %s", title, " ".join(argv))
        t0 = time.perf_counter()
        code = main(argv)
        if code:
            raise SystemExit(f"demo step '{title}' failed with exit code {code}")
        log.info("== %s took %.1f s", title, time.perf_counter() - t0)

    if not (ws.raw / DEMO_DATASET).is_dir():
        step("convert", ["convert_msd", "-i", str(DEMO_TASK), "-d", "4", *root])
    step("plan and preprocess", ["plan_and_preprocess", "-d", "4", "-c", "3d_fullres",
                                 "--device-profile", "cpu", *root])
    sets = [a for o in DEMO_TRAIN_OVERRIDES for a in ("--set", o)]
    fold_dir = ws.results / DEMO_DATASET / "3d_fullres" / "default" / "fold_0"
    if not (fold_dir / "checkpoint_final.pth").is_file():
        step("train", ["train", "3d_fullres", "0", "-d", "4", *sets, *root])
    step("find best configuration", ["find_best_config", "-d", "4", "-c", "3d_fullres", "-f", "0", *root])
    out = ws.root / "demo_predictions"
    step("predict held-out cases", ["predict", "-i", str(ws.raw / DEMO_DATASET / "imagesTs"),
                                    "-o", str(out), "-d", "4", *root])
    summary = out / "summary.json"
    step("evaluate", ["evaluate", "-ref", str(DEMO_TASK / "labelsTs"), "-pred", str(out),
                      "-d", "4", "-o", str(summary), *root])
    import json

    result = json.loads(summary.read_text())
    dice = result["foreground_mean"]["dice"]
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s: mean Dice on the 6 held-out "
          f"cases = {dice:.3f}  (details: {summary})")
    return 0
