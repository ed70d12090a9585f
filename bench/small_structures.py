"""Benchmark: the small-structure handling vs plain training, on Hippocampus with implanted blobs.

Reproduce (from the repository root; the lead's run, ~25 min on this machine):

    python bench/small_structures.py --source $AUTOSEG_BENCH_DATA/Task04_Hippocampus --root /tmp/small_ws \\
        --time-budget 10m --json bench/out/small_structures.json

Smoke test (about 3 minutes on a quiet machine): ``--max-cases 24 --iterations 2``.

Repeats that the machine's load does not move: a fixed ``--schedule`` (e.g. ``20x95``, about what
20 minutes give the 8-64 network on a 2-core CPU) with ``--width 8``, one arm and seed per ROOT
(copies of one planned ROOT), each pinned to a core with ``taskset`` so that they run side by side.

Steps, all through the ``autoseg`` CLI in subprocesses (logs in ``ROOT/bench_small/``):
1. ``bench/data/implant_lesions.py`` builds ``Dataset104_HippocampusLesions`` (skipped when it exists):
   Hippocampus with bright blobs of label 3 in about a third of the cases, a held-out test part
   with references in ``labelsTs/``;
2. ``autoseg plan_and_preprocess -c CONFIG --device-profile PROFILE`` (the planner flags class 3
   small and rare; the script stops if it does not);
3. per arm, the same budget (``--time-budget``, or ``--iterations`` per epoch for one epoch):
   ``small``: variant ``default`` (the plans' small classes: their components pasted into every sample);
   ``plain``: variant ``no_small_classes`` (``small_classes=()``, everything else equal);
   ``sampler`` (only with ``--arms``): variant ``small_class_sampler``, the handling before copy-paste;
   ``autoseg train CONFIG FOLDS --variant V``, ``autoseg find_best_config -c CONFIG -f FOLDS --variant V``
   (selection and postprocessing learned on that arm's cross-validation), ``autoseg predict`` on
   ``imagesTs/`` and ``autoseg evaluate`` against ``labelsTs/``;
4. every mean metric of every class in each arm's ``summary.json`` goes into the JSON; a markdown
   table (Dice per class and, for the small class, whatever lesion-level metrics the summary has:
   recall, precision, F1, false-positive volume, ...) is printed for docs/benchmarks.md;
5. with both arms, the per-case Dice differences small - plain of every class, paired by case,
   with a bootstrap 95% interval over the test cases (``paired_differences``; it says whether a
   difference is larger than the spread of the cases, not whether another training seed would
   give it again; ``bench/experiments/paired.py`` does the same for any two summaries).
The arms run one after the other (``selection.json`` is one per dataset); each arm's selection is
copied beside its predictions.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "experiments")]  # common, and paired

from common import add_task_option, require_folder  # noqa: E402
from paired import describe, paired_differences  # noqa: E402

log = logging.getLogger("small_structures")
# arm -> training variant; "sampler" (not run unless named) is the handling before copy-paste
ARMS = {"small": "default", "plain": "no_small_classes", "sampler": "small_class_sampler"}
LESION = 3


def autoseg(args: list[str], log_path: Path) -> float:
    """Run ``autoseg ARGS`` (this interpreter), output to ``log_path``; return the wall time in s."""
    cmd = [sys.executable, "-m", "autoseg.cli", *args]
    log.info("$ autoseg %s", " ".join(args))
    started = time.perf_counter()
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"autoseg {' '.join(args)} failed with exit code {code}; end of {log_path}:\n{tail}")
    return time.perf_counter() - started


def mean_metrics(summary: dict) -> dict[str, dict[str, float]]:
    """Per class (str label), every numeric metric of an evaluate summary's per-class tables:
    ``mean`` (means over cases) by name, others (``pooled``: lesion counts summed over cases) as
    ``table.name``; NaN and ``null`` become None."""
    out: dict[str, dict[str, float]] = {}
    for key, table in summary.items():
        if key in ("per_case", "foreground_mean") or not isinstance(table, dict):
            continue
        for label, metrics in table.items():
            if not isinstance(metrics, dict):
                continue
            for name, value in metrics.items():
                if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    column = name if key == "mean" else f"{key}.{name}"
                    out.setdefault(str(label), {})[column] = None if value is None or math.isnan(value) else value
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


# the small class' columns, as ``autoseg evaluate`` names them (pooled: counts summed over cases)
LESION_COLUMNS = ("pooled.lesion_recall", "pooled.lesion_precision", "pooled.lesion_f1", "pooled.lesion_dice",
                  "pooled.presence_accuracy", "pooled.fp_volume_ml", "pooled.fn_volume_ml")
LESION_WORDS = ("recall", "precision", "f1", "fp_vol", "fn_vol", "presence")


def _lesion_header(column: str, name: str) -> str:
    words = column.split(".")[-1].replace("_", " ")
    return words if words.startswith(name) else f"{name} {words}"


def markdown(results: dict, labels: dict[int, str]) -> str:
    """Dice per class and the small class' lesion metrics, one row per arm; columns missing from a
    summary show as n/a (metric names not in ``LESION_COLUMNS`` are found by keyword)."""
    arms = list(results["arms"])
    found = {c for a in arms for c in results["arms"][a]["metrics"].get(str(LESION), {})}
    lesion_cols = [c for c in LESION_COLUMNS if c in found] or sorted(
        c for c in found if any(w in c.lower() for w in LESION_WORDS))
    head = ["arm", "train s", *[f"Dice {labels.get(k, k)}" for k in sorted(labels) if k],
            *[_lesion_header(c, labels.get(LESION, str(LESION))) for c in lesion_cols]]
    rows = []
    for arm in arms:
        r = results["arms"][arm]
        m = r["metrics"]
        rows.append([f"{arm} ({r['variant']})", f"{r['train_s']:.0f}",
                     *[_fmt(m.get(str(k), {}).get("dice")) for k in sorted(labels) if k],
                     *[_fmt(m.get(str(LESION), {}).get(c)) for c in lesion_cols]])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_schedule(text: str) -> tuple[int, int]:
    """``"20x95"`` -> ``(20, 95)``: epochs and iterations per epoch."""
    try:
        epochs, per_epoch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--schedule expects EPOCHSxITERATIONS such as 20x95, got {text!r}") from None
    if epochs < 1 or per_epoch < 1:
        raise SystemExit(f"--schedule needs at least one epoch of one iteration, got {text!r}")
    return epochs, per_epoch


def set_width(plans_path: Path, configuration: str, width: int) -> None:
    """Re-widen ``configuration``'s network in ``plans_path`` to ``width`` first-stage features
    (the planner's ``with_width``: same patch, strides and kernels, at most 10x the width), in place."""
    from autoseg.plans import load_plans, save_plans
    from autoseg.planners.throughput import with_width

    plans = with_width(load_plans(plans_path), configuration, width)
    save_plans(plans, plans_path)  # atomic (save_json)
    log.info("%s: %s network %s", plans_path, configuration,
             plans.configuration(configuration).network.features_per_stage)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_option(p, "--source", what="Decathlon Task04_Hippocampus folder")
    p.add_argument("--root", type=Path, required=True, help="workspace root (dataset, preprocessed, results)")
    p.add_argument("--dataset-id", type=int, default=104)
    p.add_argument("--seed", type=int, default=0, help="seed of the implanted dataset")
    p.add_argument("--max-cases", type=int, default=None, help="a seeded subset of the Hippocampus cases")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--device-profile", default="cpu")
    p.add_argument("--folds", nargs="+", default=["0"])
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--time-budget", help="per arm, e.g. 10m (autoseg train --time-budget)")
    budget.add_argument("--iterations", type=int, help="smoke test: one epoch of this many iterations per fold")
    budget.add_argument("--schedule", metavar="EPOCHSxITERATIONS",
                        help="a fixed schedule instead of a time budget, e.g. 20x95: every arm trains the same "
                             "iterations whatever the machine's load, so runs made at different times or side by "
                             "side (in separate ROOTs, pinned with taskset) are comparable")
    p.add_argument("--width", type=int, default=None,
                   help="first-stage features of the network both arms train: the plans' configuration is "
                        "re-widened in ROOT (a time-budgeted run re-chooses the width from its budget, e.g. 8 for "
                        "20 minutes on a 2-core CPU; use this to train that network on a fixed --schedule)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override for both arms (repeatable)")
    p.add_argument("--arms", nargs="+", default=["small", "plain"], choices=list(ARMS))
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("-nw", "--num-workers", type=int, default=None, help="augmentation workers for training")
    p.add_argument("--reuse-plans", action="store_true",
                   help="keep the plans and step timings of an earlier invocation in ROOT (planning re-times the "
                        "network widths, and a width chosen near the rule's threshold can differ between "
                        "invocations); use it to compare a variant with an arm of an earlier run")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    schedule = parse_schedule(args.schedule) if args.schedule else None
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = args.root.resolve()
    ds = str(args.dataset_id)
    raw = root / "raw" / f"Dataset{args.dataset_id:03d}_HippocampusLesions"
    work = root / "bench_small"
    work.mkdir(parents=True, exist_ok=True)
    if not raw.is_dir():
        from implant_lesions import build

        build(require_folder(args.source, "--source"), root, args.dataset_id, args.seed, max_cases=args.max_cases)
    common = ["--root", str(root)]
    plans_path = root / "preprocessed" / raw.name / "plans.json"
    if args.reuse_plans and plans_path.is_file():
        log.info("reusing %s (and its throughput.json)", plans_path)
    else:
        autoseg(["plan_and_preprocess", "-d", ds, *common, "-c", args.configuration, "--device-profile",
                 args.device_profile], work / "plan_and_preprocess.log")
    if args.width:
        set_width(plans_path, args.configuration, args.width)
    plans = json.loads(plans_path.read_text())
    flagged = plans["configurations"][args.configuration].get("small_classes", [])
    if LESION not in flagged:
        raise SystemExit(f"the planner did not flag class {LESION} as small in {args.configuration} "
                         f"(small_classes: {flagged}); nothing to compare")
    labels = {int(v): k for k, v in plans["labels"].items()}

    train_opts = list(args.overrides)
    if args.iterations:
        train_opts = [*train_opts, "schedule.num_epochs=1", f"schedule.num_iterations_per_epoch={args.iterations}",
                      "schedule.num_val_iterations_per_epoch=1"]
    if args.width:  # the network of the plans, not one re-chosen from a time budget
        train_opts = [*train_opts, "schedule.fit_width_to_budget=false"]
    if schedule:
        epochs, per_epoch = schedule
        from autoseg.training.budget import validation_iterations  # as a time-budgeted schedule has it

        train_opts = [*train_opts, f"schedule.num_epochs={epochs}", f"schedule.num_iterations_per_epoch={per_epoch}",
                      f"schedule.num_val_iterations_per_epoch={validation_iterations(per_epoch)}"]
    device = ["--device", args.device] if args.device else []
    results = {"dataset": raw.name, "configuration": args.configuration, "folds": args.folds,
               "budget": args.time_budget or args.schedule or f"1 x {args.iterations}", "overrides": args.overrides,
               "width": args.width,
               "small_classes": flagged, "labels": labels, "arms": {}}
    for arm in args.arms:
        variant = ARMS[arm]
        out = work / arm
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        fold_root = root / "results" / raw.name / args.configuration / variant
        for fold in args.folds:
            shutil.rmtree(fold_root / f"fold_{fold}", ignore_errors=True)
        train = ["train", args.configuration, *args.folds, "-d", ds, *common, "--variant", variant, *device]
        train += ["--time-budget", args.time_budget] if args.time_budget else []
        train += [f"--set={o}" for o in train_opts]
        train += ["-nw", str(args.num_workers)] if args.num_workers is not None else []
        train_s = autoseg(train, out / "train.log")
        autoseg(["find_best_config", "-d", ds, *common, "-c", args.configuration, "-f", *args.folds,
                 "--variant", variant], out / "find_best_config.log")
        shutil.copyfile(root / "results" / raw.name / "selection.json", out / "selection.json")
        autoseg(["predict", "-i", str(raw / "imagesTs"), "-o", str(out / "predictions"), "-d", ds, *common,
                 *device], out / "predict.log")
        autoseg(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out / "predictions"), "-d", ds, *common,
                 "-o", str(out / "summary.json")], out / "evaluate.log")
        summary = json.loads((out / "summary.json").read_text())
        handled = [(fold_root / f"fold_{f}" / "training.log") for f in args.folds]
        active = [("small classes (" in p.read_text()) if p.is_file() else False for p in handled]
        if arm == "small" and not all(active):
            log.warning("the training logs of the 'small' arm do not mention its small classes: the trainer does "
                        "not apply TrainConfig.small_classes (is the trainer hook merged?); both arms trained alike")
        results["arms"][arm] = {
            "variant": variant, "train_s": train_s, "small_class_handling_logged": all(active),
            "train_config": json.loads((fold_root / f"fold_{args.folds[0]}" / "train_config.json").read_text()),
            "selection": json.loads((out / "selection.json").read_text()),
            "num_test_cases": summary.get("num_cases"), "metrics": mean_metrics(summary),
            "foreground_mean": summary.get("foreground_mean"),
        }
    table = markdown(results, labels)
    results["table"] = table
    print(table)
    if {"small", "plain"} <= results["arms"].keys():
        results["paired_small_minus_plain"] = paired_differences(
            json.loads((work / "small" / "summary.json").read_text()),
            json.loads((work / "plain" / "summary.json").read_text()), [str(k) for k in sorted(labels) if k])
        for label, d in results["paired_small_minus_plain"].items():
            print(describe(f"Dice {labels[int(label)]}, A = small - B = plain", d))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, args.json)
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
