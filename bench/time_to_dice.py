"""Benchmark: validation Dice within a wall-clock budget on Hippocampus, nnU-Net v2 (two plans) vs autoseg.

Reproduce (from the repository root, on a quiet machine; about 5.5 hours for the three budgets):

    .venv/bin/python bench/time_to_dice.py --budgets 10m 30m 60m \\
        --json bench/out/time_to_dice.json --plot bench/out/time_to_dice.png

Smoke test (the first 30 cases, a 2-minute budget, a 2-iteration nnU-Net warm-up; about 25
minutes on a loaded 2-core machine, Dice near 0, nothing meaningful):

    .venv/bin/python bench/time_to_dice.py --budgets 2m --subset 30 --reference-budget 2m \\
        --nnunet-warmup 2 --workspace /tmp/time_to_dice_smoke

``--methods a b c`` runs a subset of the methods; ``--workspace DIR`` keeps everything there
(default bench/out/time_to_dice, which must be new or empty); ``--reuse`` picks up the set-up and
the successful runs of an interrupted invocation in that workspace; ``--report-only`` makes the
table, JSON and plot from the runs already recorded there (any method and budget not recorded is
listed and left out; nothing is trained).

Data: the Decathlon Task04_Hippocampus (208 labelled cases, or the first ``--subset``), fold 0
of autoseg's fixed 5-fold split (``splits.json``, written by autoseg's own ``get_split``),
copied to nnU-Net as ``splits_final.json`` so that all three methods train on the same cases and
are validated on the same cases.

Methods, for every budget, one after the other in this order:
(a) nnU-Net v2 (2.8.1, $NNUNET_VENV) 3d_fullres, its default plans (``nnUNetv2_plan_and_preprocess``),
    its plain ``nnUNetTrainer`` through its Python API on the CPU, poly schedule fitted to the budget
    from a short warm-up (bench/nnunet_budget_train.py says how); then ``perform_actual_validation()``.
    Its budget covers trainer set-up, warm-up and ``run_training()``; the final validation runs
    AFTER the budget, timed on its own (the generous choice for nnU-Net: its whole budget trains).
(b) the same trainer with the plans edited by hand for a CPU: batch 2, ``features_per_stage`` halved
    (16-32-64-128 on Hippocampus); same fitting, same validation.
(c) autoseg: ``autoseg plan_and_preprocess --device-profile cpu -c 3d_fullres``, then ``autoseg train
    3d_fullres 0 --time-budget B``: the schedule is fitted by autoseg itself and the budget INCLUDES
    its final validation.
Threads: torch on ``--threads`` (2) threads for nnU-Net; autoseg uses one per core (2 here);
``OMP_NUM_THREADS`` is set to ``--threads`` for all. Augmentation: ``nnUNet_n_proc_DA=1``;
autoseg's default number of augmentation workers (1 on 2 cores). Each run records its torch
version (the two venvs may differ). Planning/preprocessing is done once, before the budgets, and
timed separately (not part of any budget).

Evaluation: the three validation folders are scored by the same code, ``autoseg evaluate -ref
GT -pred FOLDER`` with GT = autoseg's ``preprocessed/Dataset004_Hippocampus/gt_segmentations``
(the raw labels); reported per method and budget: mean foreground Dice (mean of the class means),
Dice per class, seconds per iteration (warm-up measurement, and training wall / iterations done),
iterations done, the schedule, training wall, validation wall and total wall (s).

"Time to reach (b)'s 30-minute Dice": the reference is (b)'s Dice at ``--reference-budget`` (30m);
for each method, the smallest budget of the grid at which its Dice reaches it. It is bounded by
the grid: the true time lies between the previous budget of the grid and this one.

Outputs: the JSON (``--json``; also ``WORKSPACE/time_to_dice.json``), a markdown table printed,
and a PNG plot (``--plot``; default ``WORKSPACE/time_to_dice.png``) of Dice against total wall time
(training + final validation) for all three.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CommandFailed, add_task_option, machine_info, markdown_table, measure,  # noqa: E402
                    nnunet_bin, require_folder, run_untimed, write_json)
from plan_and_preprocess import (DATASET_ID, NNUNET_DATASET,  # noqa: E402
                                 make_decathlon_copy, nnunet_env, run_nnunet)

log = logging.getLogger("bench.time_to_dice")

REPO = Path(__file__).resolve().parents[1]
CONFIGURATION = "3d_fullres"
FOLD = 0
METHODS = {
    "a": "nnU-Net v2, default plans",
    "b": "nnU-Net v2, plans edited for CPU (batch 2, half width)",
    "c": "autoseg, cpu profile, --time-budget",
}
NNUNET_TRAINER_SCRIPT = Path(__file__).resolve().parent / "nnunet_budget_train.py"
NNUNET_FOLD_DIR = {"a": "nnUNetTrainer__nnUNetPlans__3d_fullres", "b": "nnUNetTrainer__nnUNetPlansCPU__3d_fullres"}


def parse_budget(text: str) -> float:
    """``"10m"`` -> 600.0 s, ``"1h"`` -> 3600.0, ``"90s"``/``"90"`` -> 90.0 (autoseg's own parser)."""
    from autoseg.units import parse_duration

    return parse_duration(text)


# ---------------------------------------------------------------------------------------------- set-up

def prepare(work: Path, data: Path, subset: int | None, methods: list[str], autoseg: Path, num_processes: int,
            reuse: bool) -> dict:
    """Decathlon copy, autoseg's cpu plans and preprocessing, the fixed split, and (for a/b) nnU-Net's.

    Returns paths and the (untimed-budget) set-up measurements. With ``reuse``, steps whose outputs
    exist are skipped."""
    setup_json = work / "setup.json"
    if reuse and setup_json.is_file():
        setup = json.loads(setup_json.read_text())
        if "autoseg" in setup and ("nnunet" in setup or not {"a", "b"} & set(methods)):
            return setup
    else:
        setup = {}
    task = work / "msd" / data.name
    if not task.is_dir():
        task = make_decathlon_copy(data, work / "msd", subset)
    base = work / "autoseg" / "base"
    pre = base / "preprocessed" / NNUNET_DATASET
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "autoseg" not in setup:
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        log.info("autoseg: convert_msd + plan_and_preprocess --device-profile cpu ...")
        run_untimed([autoseg, "convert_msd", "-i", task, "--root", base, "-np", str(num_processes)],
                    log_path=logs / "autoseg_convert.log")
        m = measure([autoseg, "plan_and_preprocess", "-d", str(DATASET_ID), "--root", base, "-np",
                     str(num_processes), "--device-profile", "cpu", "-c", CONFIGURATION],
                    log_path=logs / "autoseg_plan_and_preprocess.log")
        # the fixed split, made by the function autoseg train uses (it keeps an existing splits.json)
        run_untimed([autoseg.with_name("python"), "-c",
                     f"from autoseg.training.splits import get_split; get_split({str(pre)!r}, 0)"],
                    log_path=logs / "autoseg_split.log")
        plans = json.loads((pre / "plans.json").read_text())["configurations"][CONFIGURATION]
        torch_version = subprocess.run([autoseg.with_name("python"), "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True).stdout.strip()
        setup["autoseg"] = {"root": str(base), "plan_and_preprocess": m.__dict__, "torch": torch_version,
                            "plans": {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                                      "features_per_stage": plans["network"]["features_per_stage"]}}
        setup["task"] = str(task)
        setup["gt"] = str(pre / "gt_segmentations")
        splits = json.loads((pre / "splits.json").read_text())
        setup["val_ids"] = splits[FOLD]["val"]
        setup["num_train"] = len(splits[FOLD]["train"])
        labels = json.loads((pre / "dataset.json").read_text())["labels"]
        setup["class_names"] = {str(v): k for k, v in labels.items() if v}
        write_json(setup, setup_json)
    if {"a", "b"} & set(methods) and "nnunet" not in setup:
        nn_base = work / "nnunet"
        shutil.rmtree(nn_base, ignore_errors=True)
        log.info("nnU-Net: convert + plan_and_preprocess -c 3d_fullres ...")
        r = run_nnunet(Path(setup["task"]), nn_base, num_processes, (CONFIGURATION,))
        nn_pre = nn_base / "nnUNet_preprocessed" / NNUNET_DATASET
        splits = json.loads((pre / "splits.json").read_text())
        nn_cases = {p.name.split(".")[0] for p in (nn_pre / "nnUNetPlans_3d_fullres").glob("*.pkl")}
        split_cases = set(splits[FOLD]["train"]) | set(splits[FOLD]["val"])
        if nn_cases != split_cases:
            raise SystemExit(f"nnU-Net's preprocessed cases differ from autoseg's split: only in nnU-Net "
                             f"{sorted(nn_cases - split_cases)[:5]}, only in the split {sorted(split_cases - nn_cases)[:5]}")
        write_json(splits, nn_pre / "splits_final.json")
        plans = json.loads((nn_pre / "nnUNetPlans.json").read_text())["configurations"][CONFIGURATION]
        setup["nnunet"] = {"base": str(nn_base), "plan_and_preprocess": r["measurement"].__dict__,
                           "default_plans": {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                                             "features_per_stage": plans["architecture"]["arch_kwargs"][
                                                 "features_per_stage"]}}
        write_json(setup, setup_json)
    return setup


# ---------------------------------------------------------------------------------------------- runs

def run_nnunet_method(method: str, budget: str, budget_s: float, setup: dict, work: Path, threads: int,
                      epochs: int, warmup: int) -> dict:
    """(a) or (b) for one budget: a fresh nnUNet_results folder, train within the budget, validate."""
    nn_base = Path(setup["nnunet"]["base"])
    results = work / "nnunet" / f"results_{method}_{budget}"
    shutil.rmtree(results, ignore_errors=True)
    env = dict(nnunet_env(nn_base), nnUNet_results=str(results), nnUNet_n_proc_DA="1",
               OMP_NUM_THREADS=str(threads))
    results.mkdir(parents=True)
    out = results / "run.json"
    m = measure([nnunet_bin() / "python", NNUNET_TRAINER_SCRIPT, "--dataset", NNUNET_DATASET, "--configuration",
                 CONFIGURATION, "--fold", str(FOLD), "--budget-s", str(budget_s),
                 "--plans", "default" if method == "a" else "cpu", "--epochs", str(epochs), "--warmup", str(warmup),
                 "--threads", str(threads), "--result", out],
                env=env, log_path=work / "logs" / f"{method}_{budget}.log")
    r = json.loads(out.read_text())
    return {
        "plans": {k: r[k] for k in ("patch_size", "batch_size", "features_per_stage")},
        "s_per_it_warmup": r["s_per_it_warmup"], "iterations": r["iterations_done"],
        "schedule": {k: r["schedule"][k] for k in ("num_epochs", "num_iterations_per_epoch",
                                                   "num_val_iterations_per_epoch")},
        "epochs_done": r["epochs_done"], "warmup_iterations": len(r["warmup_step_s"]),
        "training_wall_s": r["training_wall_s"], "validation_wall_s": r["validation_wall_s"],
        "command_wall_s": m.wall_s, "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "validation_in_budget": False, "validation_folder": r["validation_folder"],
        "threads": r["threads"], "augmentation_workers": int(r["n_proc_DA"]), "torch": r["torch"],
        "own_validation_dice": r["nnunet_own_foreground_mean"].get("Dice"), "log": m.log,
    }


def _log_lines(path: Path, prefix: str) -> list[str]:
    """The messages (timestamps stripped) of ``path`` that start with ``prefix``."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        message = line.split(" ", 2)[-1] if line[:4].isdigit() else line  # "YYYY-MM-DD HH:MM:SS,ms message"
        if message.startswith(prefix):
            found.append(message)
    return found


def parse_autoseg_log(path: Path) -> dict:
    """Warm-up s/it, iterations done, validation and total seconds from an autoseg training.log."""
    import re

    out: dict = {}
    for msg in _log_lines(path, "time budget "):
        hit = re.match(r"time budget (\d+) s: ([\d.]+) s per iteration", msg)
        if hit:
            out["s_per_it_warmup"] = float(hit.group(2))
    for msg in _log_lines(path, "training done:"):
        out["iterations"] = int(re.search(r"\((\d+) iterations\)", msg).group(1))
    for msg in _log_lines(path, "final validation took"):
        hit = re.match(r"final validation took (\d+) s \(estimated (\d+) s\); total (\d+) s", msg)
        out.update(validation_wall_s=float(hit.group(1)), validation_estimate_s=float(hit.group(2)),
                   total_s=float(hit.group(3)))
    out["epochs_done"] = len(_log_lines(path, "epoch "))
    return out


def run_autoseg_method(budget: str, budget_s: float, setup: dict, work: Path, autoseg: Path, threads: int,
                       num_workers: int | None) -> dict:
    """(c) for one budget: its own results folder beside the shared raw/preprocessed data."""
    base = Path(setup["autoseg"]["root"])
    root = work / "autoseg" / f"budget_{budget}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in ("raw", "preprocessed"):
        (root / name).symlink_to(base / name)
    cmd = [autoseg, "train", CONFIGURATION, str(FOLD), "-d", str(DATASET_ID), "--root", root,
           "--time-budget", budget]
    if num_workers is not None:
        cmd += ["-nw", str(num_workers)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    m = measure(cmd, env=env, log_path=work / "logs" / f"c_{budget}.log")
    fold = root / "results" / NNUNET_DATASET / CONFIGURATION / "default" / f"fold_{FOLD}"
    from autoseg.training.train_config import load_train_config  # either layout of train_config.json

    tc = load_train_config(fold / "train_config.json")
    parsed = parse_autoseg_log(fold / "training.log")
    own = json.loads((fold / "validation" / "summary.json").read_text())
    plans = json.loads((fold / "plans.json").read_text())["configurations"][CONFIGURATION]
    workers = tc.sampling.num_workers
    if workers is None:
        from autoseg.training.dataloader import default_num_workers  # what the trainer used (0: inline)

        workers = default_num_workers()
    total = parsed.get("total_s", m.wall_s)
    return {
        "plans": {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                  "features_per_stage": plans["network"]["features_per_stage"]},
        "s_per_it_warmup": parsed.get("s_per_it_warmup"), "iterations": parsed.get("iterations"),
        "schedule": {k: getattr(tc.schedule, k) for k in ("num_epochs", "num_iterations_per_epoch",
                                                          "num_val_iterations_per_epoch", "num_iterations")},
        "time_budget_s": tc.schedule.time_budget_s, "epochs_done": parsed.get("epochs_done"),
        "training_wall_s": total - parsed.get("validation_wall_s", 0.0),
        "validation_wall_s": parsed.get("validation_wall_s"),
        "validation_estimate_s": parsed.get("validation_estimate_s"),
        "command_wall_s": m.wall_s, "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "validation_in_budget": True, "validation_folder": str(fold / "validation"),
        "threads": os.cpu_count(), "augmentation_workers": workers, "torch": setup["autoseg"].get("torch"),
        "own_validation_dice": own["foreground_mean"]["dice"], "log": m.log,
    }


def evaluate(method: str, budget: str, record: dict, setup: dict, work: Path, autoseg: Path) -> dict:
    """Score one validation folder with ``autoseg evaluate`` against autoseg's gt_segmentations."""
    out = work / "eval" / f"{method}_{budget}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_untimed([autoseg, "evaluate", "-ref", setup["gt"], "-pred", record["validation_folder"], "-d",
                 str(DATASET_ID), "--root", setup["autoseg"]["root"], "-o", out],
                log_path=work / "logs" / f"eval_{method}_{budget}.log")
    summary = json.loads(out.read_text())
    cases = sorted(c["case_id"] for c in summary["per_case"])
    if cases != sorted(setup["val_ids"]):
        raise SystemExit(f"{record['validation_folder']} holds {len(cases)} cases, not the {len(setup['val_ids'])} "
                         "validation cases of fold 0")
    return {"mean_dice": summary["foreground_mean"]["dice"],
            "class_dice": {k: v["dice"] for k, v in summary["mean"].items()},
            "num_val_cases": summary["num_cases"], "evaluation": str(out)}


def run_one(method: str, budget: str, setup: dict, work: Path, args) -> dict:
    budget_s = parse_budget(budget)
    log.info("(%s) %s, budget %s ...", method, METHODS[method], budget)
    started = time.perf_counter()
    if method == "c":
        rec = run_autoseg_method(budget, budget_s, setup, work, args.autoseg, args.threads, args.num_workers)
    else:
        rec = run_nnunet_method(method, budget, budget_s, setup, work, args.threads, args.nnunet_epochs,
                                args.nnunet_warmup)
    rec.update(method=method, name=METHODS[method], budget=budget, budget_s=budget_s)
    rec["total_wall_s"] = rec["training_wall_s"] + (rec["validation_wall_s"] or 0.0)
    rec["s_per_it_overall"] = rec["training_wall_s"] / rec["iterations"] if rec.get("iterations") else None
    rec.update(evaluate(method, budget, rec, setup, work, args.autoseg))
    log.info("(%s) %s: mean Dice %.4f, %s iterations, %.0f s training + %.0f s validation (%.0f s in all)",
             method, budget, rec["mean_dice"], rec["iterations"], rec["training_wall_s"],
             rec["validation_wall_s"] or 0.0, time.perf_counter() - started)
    return rec


# ---------------------------------------------------------------------------------------------- report

def time_to_reference(records: list[dict], reference_budget: str) -> dict:
    """(b)'s Dice at ``reference_budget``, and per method the smallest budget of the grid reaching it.

    ``{"reference_dice": 0.85, "per_method": {"c": {"budget": "10m", "budget_s": 600.0}, "a": None}}``:
    None where no budget of the grid reaches it (or no reference was measured)."""
    ref = next((r for r in records if r["method"] == "b" and r["budget"] == reference_budget
                and r.get("mean_dice") is not None), None)
    out: dict = {"reference_method": "b", "reference_budget": reference_budget,
                 "reference_dice": ref["mean_dice"] if ref else None,
                 "note": "smallest budget of the measured grid at which the method's mean Dice reaches the reference; "
                         "the true time lies between the previous grid point and this one",
                 "per_method": {}}
    for method in sorted({r["method"] for r in records}):
        reached = sorted((r["budget_s"], r["budget"]) for r in records
                         if r["method"] == method and ref and r.get("mean_dice") is not None
                         and r["mean_dice"] >= ref["mean_dice"])
        out["per_method"][method] = {"budget": reached[0][1], "budget_s": reached[0][0]} if reached else None
    return out


def table(records: list[dict], class_names: dict[str, str]) -> str:
    classes = sorted(class_names, key=int)
    headers = (["method", "budget", "mean Dice"] + [f"Dice {class_names[c]}" for c in classes]
               + ["s/it (warm-up)", "s/it (overall)", "iterations", "epochs x it", "patch, batch", "features",
                  "training (s)", "validation (s)", "total (s)", "validation in budget"])
    rows = []
    for r in records:
        if r.get("error"):
            rows.append([r["method"], r["budget"], "failed"] + [None] * (len(headers) - 3))
            continue
        s = r["schedule"]
        dice = [r["mean_dice"]] + [r["class_dice"].get(c) for c in classes]
        rows.append([r["method"], r["budget"]] + [None if d is None else f"{d:.4f}" for d in dice]
                    + [r["s_per_it_warmup"], r["s_per_it_overall"], r["iterations"],
                       f"{s['num_epochs']} x {s['num_iterations_per_epoch']}",
                       f"{'x'.join(map(str, r['plans']['patch_size']))}, {r['plans']['batch_size']}",
                       "-".join(map(str, r["plans"]["features_per_stage"])),
                       round(r["training_wall_s"]), round(r["validation_wall_s"] or 0),
                       round(r["total_wall_s"]), "yes" if r["validation_in_budget"] else "no (after)"])
    return markdown_table(headers, rows)


def plot(records: list[dict], ttr: dict, path: Path) -> None:
    """Mean Dice against total wall time (training + final validation), one line per method: the
    whole 0-1 range on the left, and on the right the same lines zoomed to the runs above 0.5 Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    useful = [r["mean_dice"] for r in records if not r.get("error") and r["mean_dice"] > 0.5]
    for ax, zoom in zip(axes, (False, True)):
        for method, marker in (("a", "s"), ("b", "^"), ("c", "o")):
            pts = sorted((r["total_wall_s"] / 60, r["mean_dice"], r["budget"]) for r in records
                         if r["method"] == method and not r.get("error"))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"({method}) {METHODS[method]}")
            for x, y, b in pts:
                ax.annotate(b, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if ttr.get("reference_dice") is not None:
            ax.axhline(ttr["reference_dice"], color="grey", linestyle=":", linewidth=1,
                       label=f"(b) at {ttr['reference_budget']}: {ttr['reference_dice']:.3f}")
        ax.set_xlabel("wall time: training + final validation (min)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        if zoom and useful:
            margin = max(0.005, 0.15 * (max(useful) - min(useful)))
            ax.set_ylim(min(useful) - margin, max(useful) + margin)
            ax.set_title("zoomed to the runs above 0.5", fontsize=9)
        else:
            ax.set_ylim(0, 1)
            ax.set_ylabel("validation mean Dice (fold 0)")
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Hippocampus 3d_fullres on this CPU: Dice within a time budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", nargs="+", default=["10m", "30m", "60m"], help="wall-clock budgets (10m, 1h, 90s)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=sorted(METHODS),
                   help="a: nnU-Net default plans, b: nnU-Net CPU-edited plans, c: autoseg (default: all)")
    p.add_argument("--reference-budget", default="30m", help="budget of (b) whose Dice the others must reach")
    add_task_option(p, "--data")
    p.add_argument("--subset", type=int, default=None, help="only the first N training cases (smoke tests)")
    p.add_argument("--workspace", type=Path, default=REPO / "bench" / "out" / "time_to_dice",
                   help="folder for all data, runs and logs (default: %(default)s)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the set-up and the successful runs found in --workspace (else it must be new or empty)")
    p.add_argument("--report-only", action="store_true",
                   help="table, JSON and plot from the runs recorded in --workspace; train nothing")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2 = this machine's cores)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="autoseg augmentation workers (default: autoseg's own default)")
    p.add_argument("--nnunet-epochs", type=int, default=20, help="target epochs of nnU-Net's fitted schedule")
    p.add_argument("--nnunet-warmup", type=int, default=5, help="nnU-Net warm-up iterations (first one untimed)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="processes for preprocessing")
    p.add_argument("--autoseg", type=Path, default=Path(sys.executable).with_name("autoseg"),
                   help="the autoseg executable (default: beside this Python)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot (default: WORKSPACE/time_to_dice.png)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    budgets = sorted(dict.fromkeys(args.budgets), key=parse_budget)
    work = args.workspace.resolve()
    if args.report_only and not (work / "setup.json").is_file():
        p.error(f"--report-only needs the runs of an earlier invocation; {work / 'setup.json'} not found")
    if work.exists() and any(work.iterdir()) and not (args.reuse or args.report_only):
        p.error(f"--workspace {work} is not empty; give a new folder, delete it, or pass --reuse")
    if {"a", "b"} & set(args.methods) and not args.report_only:
        nnunet_bin()  # stops here, saying how to make it, where nnU-Net's venv is missing
    if not args.report_only:
        args.data = require_folder(args.data, "--data")
    work.mkdir(parents=True, exist_ok=True)

    setup = (json.loads((work / "setup.json").read_text()) if args.report_only else
             prepare(work, args.data, args.subset, args.methods, args.autoseg, args.num_processes, args.reuse))
    result = {"benchmark": "time_to_dice", "configuration": CONFIGURATION, "fold": FOLD, "data": str(args.data),
              "subset": args.subset, "num_train_cases": setup["num_train"], "num_val_cases": len(setup["val_ids"]),
              "budgets": budgets, "methods": {m: METHODS[m] for m in args.methods}, "threads": args.threads,
              "machine": machine_info(), "command": " ".join(sys.argv), "setup": setup, "runs": []}
    records_dir = work / "records"
    for budget in budgets:
        for method in args.methods:
            path = records_dir / f"{method}_{budget}.json"
            rec = json.loads(path.read_text()) if (args.reuse or args.report_only) and path.is_file() else None
            if rec is not None and not rec.get("error"):
                log.info("(%s) %s: reused %s", method, budget, path)
            elif args.report_only:
                log.info("(%s) %s: not recorded in %s; left out", method, budget, records_dir)
                continue
            else:
                try:
                    rec = run_one(method, budget, setup, work, args)
                except (CommandFailed, OSError, KeyError, ValueError) as exc:
                    log.error("(%s) %s failed: %s", method, budget, exc)
                    rec = {"method": method, "name": METHODS[method], "budget": budget,
                           "budget_s": parse_budget(budget), "error": str(exc)[-2000:]}
                write_json(rec, path)
            result["runs"].append(rec)
            write_json(result, work / "time_to_dice.json")  # partial results survive an interruption

    ok = [r for r in result["runs"] if not r.get("error")]
    ttr = time_to_reference(ok, args.reference_budget)
    result["time_to_reference"] = ttr
    plot_path = args.plot or work / "time_to_dice.png"
    if ok:
        plot(ok, ttr, plot_path)
        result["plot"] = str(plot_path)
    write_json(result, work / "time_to_dice.json")
    if args.json:
        write_json(result, args.json)

    print(json.dumps({k: v for k, v in result.items() if k not in ("setup", "runs")}, indent=1))
    print()
    print(table(result["runs"], setup["class_names"]))
    print()
    ref = ttr["reference_dice"]
    print(f"Time to reach (b)'s {args.reference_budget} Dice "
          f"({'n/a: not measured' if ref is None else f'{ref:.4f}'}), bounded by the budget grid {' '.join(budgets)}:")
    for method in args.methods:
        hit = ttr["per_method"].get(method)
        measured = [r["budget"] for r in ok if r["method"] == method]
        print(f"  ({method}) {METHODS[method]}: "
              + (f"<= {hit['budget']}" if hit else "n/a" if ref is None or not measured
                 else f"not reached within {measured[-1]} (measured: {' '.join(measured)})"))
    print(f"\nplot: {plot_path}" if ok else "\nno run succeeded; no plot")
    return 0 if len(ok) == len(result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
