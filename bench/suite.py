"""Regression suite: every dataset end to end through autoseg's CLI under one time budget, one table.

Full run (hours; run it on a quiet machine, from the repository root, with autoseg's venv):

    .venv/bin/python bench/suite.py --root WS --budget 10m --nnunet-venv $NNUNET_VENV \\
        --json bench/out/suite.json --markdown bench/out/suite.md

Smoke test of every dataset (tiny sizes, a 1-minute budget; about 20 minutes on 2 busy cores, 3 more
with ``--nnunet-venv``):

    .venv/bin/python bench/suite.py --quick --root /tmp/suite_quick

Options: ``--datasets hippocampus,cine,...`` (default all: hippocampus, cine, hippocampus_thick,
two_channel, hippocampus_sparse, oct2d, ct_cascade, lesions), ``--configurations
oct2d=2d,ct_cascade=3d_lowres`` (the configuration trained per dataset; default 3d_fullres for 3D
data, 2d for 2D data),
``--skip-existing`` (resume: reuse the steps an earlier run with the same settings finished),
``--plan-only`` (only both tools' plan_and_preprocess: planning times at a new commit without
retraining; use its own WS, since a fresh start deletes the dataset's results/),
``--nnunet-venv DIR`` (also time nnU-Net v2's plan_and_preprocess; made by ``bash
bench/setup_nnunet.sh DIR``), ``-np N`` (worker processes of both tools' plan_and_preprocess,
default 2), ``--timeout-factor F`` (scales every step's timeout). WS is the suite's own
workspace: without ``--skip-existing`` each dataset's ``preprocessed/``, ``results/`` and
``suite_pred/`` folders are deleted and redone.

For each dataset, in this order (all commands' output goes to ``WS/suite/<dataset>/logs/``):
1. the raw dataset ``WS/raw/DatasetXXX_Name`` (nnU-Net v2 layout, imagesTr/labelsTr/imagesTs/
   labelsTs, dataset.json), made by a seeded generator; skipped when it exists and
   ``WS/suite/<dataset>/make.json`` records the same arguments (else remade from scratch):
   - ``hippocampus`` [201]: the Decathlon Task04_Hippocampus (``--source``, default under
     ``$AUTOSEG_BENCH_DATA``; ``--quick``: its first 24 cases) converted by ``autoseg convert_msd``,
     then a seeded hold-out (bench/hippocampus_cv.py's ``hold_out``) of 40 cases (quick: 4) moved to imagesTs/labelsTs;
   - ``hippocampus_thick`` [202]: that split re-sliced to 4 mm along the first array axis
     (bench/data/make_thick_slices.py); ``two_channel`` [203]: that split with a synthetic second
     contrast (bench/data/make_multichannel.py); ``hippocampus_sparse`` [204]: that split with 10% of
     each training label's slices annotated and the rest "ignore", scored on dense held-out labels
     (bench/data/make_sparse_labels.py);
   - ``cine`` [130]: bench/data/make_cine_dataset.py, 160 + 40 cases (quick: 6 + 2 at ``--scale
     0.25``; skipped, saying so, while that file is missing);
     ``oct2d`` [120]: bench/data/make_2d_dataset.py, 60 + 20 scans of 192 x 256 (quick: 10 + 3 of
     96 x 128); ``ct_cascade`` [960]: bench/data/make_cascade_dataset.py, 10 + 2 full-size volumes
     (quick: 6 + 1 at scale 0.25; its steps get 3x the timeouts, and its prediction with the
     default mirroring is the slowest step of the suite); ``lesions`` [104]:
     bench/data/implant_lesions.py on the Decathlon cases (40 of 208 held out; quick: 4 of 24);
2. ``autoseg plan_and_preprocess -d ID --root WS -np N --time-budget BUDGET`` (no device profile:
   the machine's own, the cpu one here, which times candidate widths for the budget), measured by
   bench/common.py's ``measure``: wall time and peak RSS summed over the process tree (sampled
   every 50 ms);
3. ``autoseg train CONFIG 0 -d ID --root WS --time-budget BUDGET`` (the budget includes the final
   validation); measured the same way;
4. what fold 0 really trained, read from ``WS/results/<dataset>/CONFIG/default/fold_0/``:
   ``plans.json`` (patch, target spacing, batch, width = ``features_per_stage[0]``) and
   ``train_config.json`` (precision, batch override), both written after training re-fitted the
   width to its budget; the iterations trained from ``training.log`` ("training done ... (N
   iterations)"; else ``checkpoint_final.pth``'s ``iteration``); the validation mean foreground
   Dice from ``validation/summary.json``; the planning's step timings from
   ``WS/preprocessed/<dataset>/throughput.json`` (into the JSON only);
5. ``autoseg predict -i imagesTs -o WS/suite_pred/<dataset> -d ID --root WS -c CONFIG -f 0``
   (measured; seconds per case = wall time / held-out cases, so it includes the process start,
   the model load and, where predict picks ONNX Runtime, the checkpoint's one-time export), then
   ``autoseg evaluate -ref labelsTs -pred ... -d ID --root WS``; from its ``summary.json``: the
   mean foreground Dice, the Dice per class (means over cases) and, for ``lesions``, the
   lesion-wise F1 of the lesion class (pooled over cases);
6. with ``--nnunet-venv``: nnU-Net v2's ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres 2d -np N
   -npfp N --verify_dataset_integrity`` (``-c 2d`` for 2D data) on the same raw folder, symlinked
   into a temporary ``nnUNet_raw`` (``nnUNet_preprocessed``/``nnUNet_results`` temporary too,
   ``nnUNet_def_n_proc=N``: bench/plan_and_preprocess.py's ``nnunet_env``), measured the same way
   and deleted afterwards. The ratio is nnU-Net's time / autoseg's (> 1: autoseg is faster); its
   peak RSS has a column too. Its integrity check is included as autoseg's always runs; autoseg
   preprocesses every configuration it plans (3d_lowres too where the cascade is planned), nnU-Net
   the ones named.
Every command has a timeout; a failing step marks the dataset failed (the table says which step;
the JSON and the log hold the message) and the suite goes on with the next dataset. An nnU-Net
failure is recorded in its column and does not fail the dataset.

Outputs: the table (markdown) printed, ``--markdown OUT.md`` (the table under a header: date, CPU
model, whether ``amx_tile`` and ``avx512_bf16`` are among its flags, commit, command), and
``--json OUT.json`` (everything above per dataset, machine and settings); ``WS/suite/results.json``
always. Timings are only comparable between runs on the same quiet machine.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CommandFailed, Measurement, add_task_option, git_commit, machine_info, measure,  # noqa: E402
                    require_folder, run_untimed, write_json)
from steps import fold_facts  # noqa: E402
from suite_datasets import (DATASETS, FOLD, VARIANT, Context, DatasetDef, Skipped,  # noqa: E402
                            StepFailed, raw_folder)
from suite_report import markdown_report  # noqa: E402

log = logging.getLogger("bench.suite")

# ---------------------------------------------------------------------------------------------- state

@dataclass
class DatasetRun:
    """The record of one dataset in this run (and, with --skip-existing, the earlier run's steps)."""

    definition: DatasetDef
    configuration: str
    folder: Path  # WS/suite/<key>
    record: dict = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def step_done(self, step: str) -> dict | None:
        entry = self.record.get("steps", {}).get(step)
        return entry if entry and entry.get("ok") else None

    def save_step(self, step: str, result: dict) -> None:
        self.record.setdefault("steps", {})[step] = dict(result, ok=True)
        write_json(self.record, self.folder / "state.json")


def _settings(ctx: Context, d: DatasetDef, configuration: str) -> dict:
    settings = {"make": d.make_args(ctx), "budget_s": ctx.budget_s, "configuration": configuration,
                "num_processes": ctx.num_processes}
    return dict(settings, plan_only=True) if ctx.plan_only else settings


def ensure_raw(ctx: Context, d: DatasetDef, made: dict[str, Path]) -> Path:
    """Make ``d``'s raw dataset unless it exists with the same arguments; return its folder."""
    if d.key in made:
        return made[d.key]
    for dep in d.depends_on:
        ensure_raw(ctx, DATASETS[dep], made)
    args = d.make_args(ctx)
    state_dir = ctx.root / "suite" / d.key
    marker = state_dir / "make.json"
    folder = raw_folder(ctx.root, d.dataset_id)
    recorded = json.loads(marker.read_text()) if marker.is_file() else None
    if folder is not None and recorded == args:
        log.info("[%s] raw dataset %s exists with the same arguments: kept", d.key, folder.name)
        made[d.key] = folder
        return folder
    if folder is not None:
        log.info("[%s] %s was made with other arguments (or by something else): made anew", d.key, folder.name)
        shutil.rmtree(folder)
    marker.unlink(missing_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    log.info("[%s] making raw dataset %d ...", d.key, d.dataset_id)
    started = time.perf_counter()
    try:
        d.make(ctx, args, state_dir / "logs" / "make.log")
    except CommandFailed as e:
        raise StepFailed("make", str(e)) from e
    folder = raw_folder(ctx.root, d.dataset_id)
    if folder is None:
        raise StepFailed("make", f"the generator wrote no {ctx.root}/raw/Dataset{d.dataset_id:03d}_* folder")
    write_json(args, marker)
    log.info("[%s] wrote %s in %.0f s", d.key, folder, time.perf_counter() - started)
    made[d.key] = folder
    return folder


# ---------------------------------------------------------------------------------------------- reading results

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fold_directory(ctx: Context, folder: str, configuration: str) -> Path:
    return ctx.root / "results" / folder / configuration / VARIANT / f"fold_{FOLD}"


def trained_plan(fold_dir: Path, configuration: str) -> dict:
    """What the fold trained: patch, spacing, batch, width and precision from its own files."""
    plans = _read_json(fold_dir / "plans.json")
    from autoseg.training.train_config import saved_setting  # either layout of train_config.json

    cfg = _read_json(fold_dir / "train_config.json") or {}
    if not plans or configuration not in plans.get("configurations", {}):
        raise StepFailed("train", f"{fold_dir}/plans.json is missing or has no '{configuration}'")
    c = plans["configurations"][configuration]
    return {"configuration": configuration, "patch_size": c["patch_size"], "spacing": c["spacing"],
            "batch_size": saved_setting(cfg, "sampling.batch_size") or c["batch_size"],
            "features_per_stage": c["network"]["features_per_stage"],
            "width": c["network"]["features_per_stage"][0], "precision": saved_setting(cfg, "runtime.precision"),
            "memory_format": saved_setting(cfg, "runtime.memory_format"),
            "optimizer": saved_setting(cfg, "optim.optimizer"),
            "time_budget_s": saved_setting(cfg, "schedule.time_budget_s"),
            "device_profile": plans.get("device_profile")}


def iterations_trained(ctx: Context, fold_dir: Path) -> int | None:
    """Iterations the fold trained: the last "training done" line of training.log, else the final
    checkpoint's ``iteration`` (read by the autoseg venv's torch in a child process)."""
    logged = fold_facts(fold_dir)["iterations"]
    if logged is not None:
        return logged
    ckpt = fold_dir / "checkpoint_final.pth"
    if not ckpt.is_file():
        return None
    try:
        out = subprocess.run([ctx.python, "-c", "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', "
                              "weights_only=True)['iteration'])", str(ckpt)], capture_output=True, text=True,
                             timeout=ctx.timeout("query"))
        return int(out.stdout.strip()) if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def throughput_summary(pre: Path, configuration: str) -> dict | None:
    """The planning's step timings for ``configuration`` (throughput.json), when it was written."""
    report = _read_json(pre / "throughput.json")
    if not report:
        return None
    c = report.get("configurations", {}).get(configuration)
    return {"chosen_width": c.get("chosen_base_features") if c else None,
            "precision": c.get("precision") if c else None,
            "candidates": [{k: cand.get(k) for k in ("base_features", "seconds_per_step", "precision",
                                                      "memory_format")} for cand in c.get("candidates", [])] if c else [],
            "timing_s": report.get("timing_s"), "contention": report.get("contention"), "cpu": report.get("cpu")}


def held_out_scores(summary: dict, labels: dict[str, int], lesion_label: str | None) -> dict:
    """Mean foreground Dice, Dice per class name and (for a lesion class) its pooled lesion F1."""
    names = {str(v): k for k, v in labels.items()}
    per_class = {names.get(k, k): v.get("dice") for k, v in summary.get("mean", {}).items()}
    out = {"dice": summary.get("foreground_mean", {}).get("dice"), "dice_per_class": per_class,
           "num_cases": summary.get("num_cases")}
    if lesion_label is not None and lesion_label in labels:
        pooled = summary.get("pooled", {}).get(str(labels[lesion_label]), {})
        out["lesion_f1"] = pooled.get("lesion_f1")
        out["lesion_recall"] = pooled.get("lesion_recall")
        out["lesion_precision"] = pooled.get("lesion_precision")
    return out


def _measurement(m: Measurement) -> dict:
    return {"wall_s": m.wall_s, "peak_tree_rss_mb": m.peak_tree_rss_mb, "max_single_rss_mb": m.max_single_rss_mb,
            "log": m.log}


def _count_images(folder: Path, ending: str) -> int:
    return len([p for p in folder.glob(f"*_0000{ending}") if not p.name.startswith(".")]) if folder.is_dir() else 0


# ---------------------------------------------------------------------------------------------- steps

def _step(run: DatasetRun, ctx: Context, step: str, fn: Callable[[], dict]) -> dict:
    """Reuse ``step`` from an earlier run (--skip-existing) or run ``fn`` and record it."""
    done = run.step_done(step) if ctx.skip_existing else None
    if done is not None:
        log.info("[%s] %s: reused from the earlier run", run.definition.key, step)
        return done
    log.info("[%s] %s ...", run.definition.key, step)
    try:
        result = fn()
    except CommandFailed as e:
        raise StepFailed(step, str(e)) from e
    run.save_step(step, result)
    return result


def run_dataset(ctx: Context, d: DatasetDef, configuration: str, made: dict[str, Path]) -> dict:
    """All steps of one dataset; returns its record (``status`` ok, failed or skipped)."""
    folder_state = ctx.root / "suite" / d.key
    run = DatasetRun(d, configuration, folder_state)
    settings = _settings(ctx, d, configuration)
    earlier = _read_json(folder_state / "state.json")
    if ctx.skip_existing and earlier and earlier.get("settings") == settings:
        run.record = earlier
    run.record.update({"key": d.key, "dataset_id": d.dataset_id, "settings": settings})
    run.record.setdefault("steps", {})
    result = {"key": d.key, "dataset_id": d.dataset_id, "configuration": configuration, "status": "ok",
              "settings": settings}
    try:
        raw = ensure_raw(ctx, d, made)
    except Skipped as e:
        log.warning("[%s] skipped: %s", d.key, e)
        return dict(result, status="skipped", error=str(e))
    except StepFailed as e:
        log.error("[%s] failed at %s: %s", d.key, e.step, e.message)
        return dict(result, status="failed", failed_step=e.step, error=e.message)
    result["raw"] = str(raw)
    if not run.record["steps"]:  # a fresh start: nothing of an earlier run may leak into this one
        for stale in (ctx.root / "preprocessed" / raw.name, ctx.root / "results" / raw.name,
                      ctx.root / "suite_pred" / d.key):
            shutil.rmtree(stale, ignore_errors=True)
        for old_log in run.logs.glob("*.log"):  # the make step's log stays: its dataset may have been kept
            if old_log.name != "make.log":
                old_log.unlink()
    write_json(run.record, folder_state / "state.json")
    try:
        autoseg_steps(ctx, run, raw, result)
    except StepFailed as e:
        log.error("[%s] failed at %s: %s", d.key, e.step, e.message)
        result.update(status="failed", failed_step=e.step, error=e.message)
    if ctx.nnunet_venv is not None:
        try:
            result["nnunet"] = _step(run, ctx, "nnunet", lambda: nnunet_plan_and_preprocess(ctx, d, raw, run.logs))
        except StepFailed as e:
            log.error("[%s] nnU-Net plan_and_preprocess failed: %s", d.key, e.message)
            result["nnunet"] = {"error": e.message}
    return result


def autoseg_steps(ctx: Context, run: DatasetRun, raw: Path, result: dict) -> None:
    d, configuration = run.definition, run.configuration
    ident = ["-d", str(d.dataset_id), "--root", str(ctx.root)]
    pre = ctx.root / "preprocessed" / raw.name
    fold_dir = fold_directory(ctx, raw.name, configuration)
    pred = ctx.root / "suite_pred" / d.key
    meta = json.loads((raw / "dataset.json").read_text())

    def plan() -> dict:
        shutil.rmtree(pre, ignore_errors=True)
        m = measure([ctx.autoseg, "plan_and_preprocess", *ident, "-np", str(ctx.num_processes),
                     "--time-budget", ctx.budget], log_path=run.logs / "plan_and_preprocess.log",
                    timeout_s=ctx.timeout("plan", d.timeout_scale))
        plans = _read_json(pre / "plans.json") or {}
        return dict(_measurement(m), planned=sorted(plans.get("configurations", {})))

    result["plan_and_preprocess"] = _step(run, ctx, "plan", plan)
    planned = result["plan_and_preprocess"].get("planned") or []
    if configuration not in planned:
        raise StepFailed("plan", f"'{configuration}' was not planned (planned: {', '.join(planned) or 'nothing'}); "
                                 f"pass --configurations {d.key}=<one of them>")
    result["throughput"] = throughput_summary(pre, configuration)
    if ctx.plan_only:  # the plan as planned (training may still re-check the width and precision)
        c = (_read_json(pre / "plans.json") or {}).get("configurations", {}).get(configuration, {})
        result["plan"] = {"configuration": configuration, "patch_size": c.get("patch_size"),
                          "spacing": c.get("spacing"), "batch_size": c.get("batch_size"),
                          "width": (c.get("network", {}).get("features_per_stage") or [None])[0],
                          "precision": (result["throughput"] or {}).get("precision")}
        return

    def train() -> dict:
        shutil.rmtree(fold_dir, ignore_errors=True)
        m = measure([ctx.autoseg, "train", configuration, str(FOLD), *ident, "--time-budget", ctx.budget],
                    log_path=run.logs / "train.log", timeout_s=ctx.timeout("train"))
        return _measurement(m)

    result["train"] = _step(run, ctx, "train", train)
    result["plan"] = trained_plan(fold_dir, configuration)
    result["iterations"] = iterations_trained(ctx, fold_dir)
    validation = _read_json(fold_dir / "validation" / "summary.json")
    result["validation_dice"] = validation.get("foreground_mean", {}).get("dice") if validation else None

    images, labels = raw / "imagesTs", raw / "labelsTs"
    n_cases = _count_images(images, meta["file_ending"])
    if n_cases == 0 or not labels.is_dir():
        raise StepFailed("predict", f"{raw} has no held-out images with labels (imagesTs/labelsTs)")

    def predict() -> dict:
        shutil.rmtree(pred, ignore_errors=True)
        m = measure([ctx.autoseg, "predict", "-i", images, "-o", pred, *ident, "-c", configuration, "-f", str(FOLD)],
                    log_path=run.logs / "predict.log", timeout_s=ctx.timeout("predict", d.timeout_scale))
        return dict(_measurement(m), cases=n_cases, s_per_case=m.wall_s / n_cases)

    result["predict"] = _step(run, ctx, "predict", predict)

    def evaluate() -> dict:
        run_untimed([ctx.autoseg, "evaluate", "-ref", labels, "-pred", pred, *ident],
                    log_path=run.logs / "evaluate.log", timeout_s=ctx.timeout("evaluate", d.timeout_scale))
        summary = _read_json(pred / "summary.json")
        if summary is None:
            raise StepFailed("evaluate", f"autoseg evaluate wrote no {pred}/summary.json")
        return held_out_scores(summary, meta["labels"], d.lesion_label)

    result["held_out"] = _step(run, ctx, "evaluate", evaluate)


def nnunet_plan_and_preprocess(ctx: Context, d: DatasetDef, raw: Path, logs: Path) -> dict:
    """nnU-Net v2's plan_and_preprocess on ``raw`` (symlinked into temporary nnU-Net folders), measured."""
    from plan_and_preprocess import count_cases, nnunet_env

    binary = ctx.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"
    if not binary.is_file():
        raise StepFailed("nnunet", f"{binary} not found; make the venv with 'bash bench/setup_nnunet.sh "
                                   f"{ctx.nnunet_venv}'")
    configurations = ("2d",) if d.dim == 2 else ("3d_fullres", "2d")
    base = Path(tempfile.mkdtemp(prefix=f"nnunet_{d.key}_", dir=ctx.root / "suite"))
    try:
        env = nnunet_env(base, ctx.nnunet_venv)
        (base / "nnUNet_raw" / raw.name).symlink_to(raw.resolve(), target_is_directory=True)
        m = measure([binary, "-d", str(d.dataset_id), "-c", *configurations, "-np", str(ctx.num_processes),
                     "-npfp", str(ctx.num_processes), "--verify_dataset_integrity"], env=env,
                    log_path=logs / "nnunet_plan_and_preprocess.log",
                    timeout_s=ctx.timeout("nnunet", d.timeout_scale))
        out = base / "nnUNet_preprocessed" / raw.name
        plans = _read_json(out / "nnUNetPlans.json") or {}
        planned = {}
        for name, c in plans.get("configurations", {}).items():
            if "patch_size" in c:
                planned[name] = {"patch_size": c["patch_size"], "spacing": c.get("spacing"),
                                 "batch_size": c.get("batch_size"),
                                 "width": c.get("architecture", {}).get("arch_kwargs", {})
                                 .get("features_per_stage", [None])[0]}
        return dict(_measurement(m), configurations=list(configurations), plans=planned,
                    cases={c: count_cases(out / f"nnUNetPlans_{c}", "*.pkl") for c in configurations})
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- main

def parse_selection(text: str | None) -> list[str]:
    if not text:
        return list(DATASETS)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    for name in chosen:
        if name not in DATASETS:
            close = difflib.get_close_matches(name, DATASETS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SystemExit(f"unknown dataset '{name}'; {hint}available: {', '.join(DATASETS)}")
    return chosen


def parse_configurations(text: str | None, chosen: list[str]) -> dict[str, str]:
    out = {k: DATASETS[k].default_configuration for k in chosen}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in DATASETS or value not in ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"):
            raise SystemExit(f"--configurations: expected DATASET=CONFIG with DATASET one of {', '.join(DATASETS)} "
                             f"and CONFIG one of 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres; found '{item}'")
        if key in out:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="the suite's autoseg workspace (raw/, preprocessed/, ...)")
    p.add_argument("--budget", default=None, help="training time per dataset, e.g. 10m (default 10m; 1m with --quick)")
    p.add_argument("--datasets", default=None, help=f"comma list (default all: {','.join(DATASETS)})")
    p.add_argument("--configurations", default=None, help="per-dataset override, e.g. ct_cascade=3d_lowres,oct2d=2d")
    p.add_argument("--nnunet-venv", type=Path, default=None, help="nnU-Net v2 venv: also time its plan_and_preprocess")
    p.add_argument("--json", type=Path, default=None, help="write every result to this JSON file")
    p.add_argument("--markdown", type=Path, default=None, help="write the table with a header to this file")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse the finished steps of an earlier run with the same settings (resume)")
    p.add_argument("--plan-only", action="store_true",
                   help="only plan_and_preprocess (and nnU-Net's with --nnunet-venv): re-measure planning times")
    p.add_argument("--quick", action="store_true", help="tiny datasets and a 1-minute budget: a smoke test")
    add_task_option(p, "--source", what="Decathlon Task04_Hippocampus folder")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="worker processes of both tools' plan_and_preprocess (default 2)")
    p.add_argument("--timeout-factor", type=float, default=1.0, help="multiply every step's timeout by this")
    p.add_argument("--autoseg", type=Path, default=Path(sys.executable).with_name("autoseg"),
                   help="the autoseg executable (default: beside this Python); generators run with the python "
                        "beside it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from autoseg.units import parse_duration
    from autoseg.errors import UserFacingError

    budget = args.budget or ("1m" if args.quick else "10m")
    try:
        budget_s = parse_duration(budget, option="--budget")
    except UserFacingError as e:
        p.error(str(e))
    if not args.autoseg.is_file():
        p.error(f"{args.autoseg} not found: run this with autoseg's venv python (.venv/bin/python) or pass --autoseg")
    if args.nnunet_venv is not None and not (args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess").is_file():
        p.error(f"{args.nnunet_venv} has no bin/nnUNetv2_plan_and_preprocess; make it with "
                f"'bash bench/setup_nnunet.sh {args.nnunet_venv}'")
    chosen = parse_selection(args.datasets)
    configurations = parse_configurations(args.configurations, chosen)
    root = args.root.resolve()
    (root / "suite").mkdir(parents=True, exist_ok=True)
    ctx = Context(root=root, autoseg=args.autoseg.absolute(), python=args.autoseg.absolute().with_name("python"),
                  source=require_folder(args.source, "--source").resolve(), quick=args.quick, budget=budget,
                  budget_s=budget_s,
                  num_processes=args.num_processes, timeout_factor=args.timeout_factor,
                  nnunet_venv=args.nnunet_venv.absolute() if args.nnunet_venv else None,
                  skip_existing=args.skip_existing, plan_only=args.plan_only)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([sys.executable, *sys.argv] if argv is None else ["bench/suite.py", *argv])
    machine, commit = machine_info(), git_commit()
    log.info("suite: %s, budget %s, workspace %s, commit %s", ", ".join(chosen), budget, root, commit)

    made: dict[str, Path] = {}
    results = []
    report = {"benchmark": "suite", "started": started, "command": command, "commit": commit, "machine": machine,
              "budget": budget, "budget_s": budget_s, "quick": args.quick, "root": str(root), "results": results}
    for key in chosen:
        t0 = time.perf_counter()
        results.append(run_dataset(ctx, DATASETS[key], configurations[key], made))
        results[-1]["suite_wall_s"] = time.perf_counter() - t0
        log.info("[%s] %s in %.0f s", key, results[-1]["status"], results[-1]["suite_wall_s"])
        write_json(report, root / "suite" / "results.json")  # after each dataset: a crash keeps what was done
    report["machine_after"] = {"loadavg_1_5_15": machine_info()["loadavg_1_5_15"]}
    write_json(report, root / "suite" / "results.json")
    if args.json:
        write_json(report, args.json)
    text = markdown_report(results, machine, commit, command, started)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print()
    print(text)
    return 0 if all(r["status"] != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
