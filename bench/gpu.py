"""Benchmark: autoseg against nnU-Net v2 on one GPU: training step, Dice within a time budget,
predict's fixed and per-case cost, peak GPU memory (issue 32).

On a machine with a CUDA GPU, from the repository root, as one command (the ``device`` tool runs
it in the repository root and brings back what it writes under $OUT; estimated at about 7 minutes
on an H100 with these budgets, not yet measured: no GPU has run it; ``--deadline-s`` keeps it
under 9 whatever happens):

    python3 bench/gpu.py --budget-s 120 --nnunet python3 --deadline-s 540 --out $OUT/gpu.json --logs $OUT/gpu_logs

On a CPU, autoseg only, tiny (what tests/bench/test_gpu.py runs, on a synthetic dataset):

    .venv/bin/python bench/gpu.py --raw RAW --device cpu --budget-s 15 --predict-cases 3 --disable-tta \\
        --autoseg-profile gpu-8gb --autoseg-set batch_size=1 --autoseg-set precision=fp32 --warmup-steps 2 \\
        --out bench/out/gpu_cpu.json

Data (``--raw``): a Decathlon task folder (``TaskXX_Name``, converted with ``autoseg
convert_msd``) or an nnU-Net v2 raw dataset (``DatasetXXX_Name``, linked as it is); default the
bundled demo data, ``autoseg/demo_data/Task04_Hippocampus`` (24 training cases, 6 held out with
labels). Both tools plan and train on the same raw files, one after the other, on the same device.

What runs, in order; every command a subprocess with a time limit and its log in ``--logs``:
1. Set-up: ``autoseg plan_and_preprocess -c 3d_fullres`` (autoseg's device profile for this GPU,
   or ``--autoseg-profile``) and ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` (its default
   plans), both timed; autoseg's fixed 5-fold split (``splits.json``) becomes nnU-Net's
   ``splits_final.json``, so both train fold 0 on the same cases and validate on the same cases.
2. Time to Dice: ``autoseg train 3d_fullres 0 --time-budget B`` (the schedule fitted by autoseg;
   its budget includes the final validation), then nnU-Net's plain ``nnUNetTrainer`` through its
   Python API within the same budget (bench/nnunet_budget_train.py: a poly schedule fitted after a
   warm-up of ``--warmup-steps`` steps; its validation runs after the budget, the generous choice;
   ``torch.compile`` as nnU-Net decides, its compilation inside the budget, unless ``--nnunet-compile``;
   off where nnU-Net's Python has no triton, which it needs on CUDA). Both validation folders are
   scored by ``autoseg evaluate`` against autoseg's ``gt_segmentations``: mean foreground Dice.
   Also kept: each epoch's end (seconds after the framework was imported) with its patch
   pseudo-Dice (each tool's own, from a few validation patches: the shape of the curve, not a
   Dice to compare across tools).
3. Training step, from the runs of 2 (every step of both is timed in-process: the tool's own step
   function, forward, loss, backward and optimizer, the batch already drawn, ended by a CUDA
   synchronisation): the median step after the first ``--warmup-steps`` (cuDNN's and torch.compile's
   first calls left out), the median iteration (one step's start to the next's: the wait for the
   batch included), batch, patch and precision.
4. Predict with each fold-0 model (``autoseg predict`` and ``nnUNetv2_predict``, each tool's
   defaults, mirroring TTA on): one case, then ``--predict-cases`` N cases (the held-out images,
   else the validation images, repeated under new names to make N); per case = (t_N - t_1) /
   (N - 1), fixed = t_1 - per case (process start, imports, model load); each time from process
   start to exit; with ``--repeats R`` the fastest of R. Where the held-out images have labels
   (``labelsTs``), both tools' predictions of them are scored too.
5. Peak GPU memory: ``torch.cuda.max_memory_allocated`` in each tool's process (training: before
   the final validation; predict: the whole run), and the largest ``memory.used`` nvidia-smi
   reports for the GPU while the command runs (CUDA context and torch's cache included), where
   nvidia-smi exists.

Ratios are nnU-Net / autoseg, as everywhere in docs/benchmarks.md (times and memory: above 1, autoseg
is faster or leaner; Dice: below 1, autoseg scores higher). The JSON (``--out``, written atomically after every phase, so a run cut
short keeps what it measured) holds everything; the markdown table is printed and kept in the JSON.

Limits: ``--deadline-s`` (wall seconds for the whole script) shortens every command's time limit
to what is left and skips a training that cannot finish its budget in time, saying so in
``errors``; a command past its limit is ended with everything it started (bench/common.py).

What the GPU machine needs: a Python with torch built for CUDA and autoseg's other requirements
(setup.py's ``install_requires``; the ONNX ones are optional), checked first: a missing one stops
the script (exit 2) with the list, written to the JSON too. autoseg itself comes from this
repository (installed or not: bench/gpu_worker.py). nnU-Net's side needs ``--nnunet PYTHON``, a
Python with nnunetv2 (2.x) and CUDA torch (``python3`` if the machine's own Python has it); where it
is absent or lacks something, autoseg's side runs alone and the JSON says why. A machine without
network cannot install anything: a missing pure-Python package can be carried as a folder made
here for the machine's Python version (the JSON's ``environment.autoseg.python``), e.g. ``pip
install --target bench/out/gpu_deps --no-deps PACKAGE`` (bench/out is not tracked), carried as an
ignored path (at most 64 MiB with everything else) and put first on the path:
``PYTHONPATH=bench/out/gpu_deps python3 bench/gpu.py ...``. A whole venv with CUDA torch is
gigabytes: it cannot be carried.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (CommandFailed, git_commit, machine_info, markdown_table, measure,  # noqa: E402
                    run_untimed, write_json)
from raw_datasets import raw_cases  # noqa: E402
from predict import split_cost  # noqa: E402

log = logging.getLogger("bench.gpu")

REPO = HERE.parent
WORKER = HERE / "gpu_worker.py"
NNUNET_TRAINER = HERE / "nnunet_budget_train.py"
DEMO_TASK = REPO / "autoseg" / "demo_data" / "Task04_Hippocampus"
CONFIGURATION = "3d_fullres"
FOLD = 0
WARMUP_STEPS = 10  # default --warmup-steps: autoseg's budget warm-up length; nnU-Net compiles in its first
OPTIONAL_REQUIREMENTS = {"onnx", "onnxruntime"}  # autoseg's ONNX backend, used on a CPU only
MODULE_OF = {"pillow": "PIL", "scikit-image": "skimage", "acvl-utils": "acvl_utils"}  # distribution -> module
AUTOSEG_IMPORTS = ("autoseg.preprocess.plan_and_preprocess", "autoseg.training.trainer", "autoseg.inference.predict",
                   "autoseg.postprocess.evaluate")
NNUNET_MODULES = ("torch", "nnunetv2", "dynamic_network_architectures", "batchgenerators", "acvl_utils", "SimpleITK",
                  "blosc2")
NNUNET_IMPORTS = ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                  "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunetv2.inference.predict_from_raw_data")
# time limits (s) of the commands; a training gets its budget plus TRAIN_EXTRA_S
LIMIT_S = {"probe": 300, "prepare": 900, "predict": 600, "evaluate": 300}
TRAIN_EXTRA_S = 600
TRAIN_START_RESERVE_S = 60  # a training is not started with less than its budget plus this left


class OutOfTime(RuntimeError):
    pass


class Deadline:
    """Wall seconds left of ``--deadline-s`` (unbounded without it)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def limit(self, wanted: float, what: str) -> float:
        """``wanted`` seconds for ``what``, shortened to what is left; OutOfTime with under 5 s left."""
        left = self.left()
        if left < 5:
            raise OutOfTime(f"{what}: not started, the --deadline-s is reached")
        return min(wanted, left)

    def require(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise OutOfTime(f"{what}: not started, it needs about {seconds:.0f} s and {self.left():.0f} s are left "
                            "before --deadline-s")


# ---------------------------------------------------------------------------------------------- pure parts

def autoseg_requirements(setup_py: Path = REPO / "setup.py") -> list[str]:
    """The modules of setup.py's ``install_requires``, the optional ONNX ones left out."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            names = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in ast.literal_eval(node.value)]
            return [MODULE_OF.get(n.lower(), n.replace("-", "_")) for n in names
                    if n.lower() not in OPTIONAL_REQUIREMENTS]
    raise SystemExit(f"{setup_py} has no install_requires list")


def detect_layout(folder: Path, dataset_id: int | None = None) -> tuple[str, int, str]:
    """``("decathlon" | "nnunet", dataset id, name)`` of a raw dataset folder; the id and name come
    from ``TaskXX_Name`` / ``DatasetXXX_Name`` unless ``dataset_id`` is given."""
    meta_path = folder / "dataset.json"
    expected = "a Decathlon task folder (TaskXX_Name) or an nnU-Net v2 raw dataset (DatasetXXX_Name)"
    if not meta_path.is_file():
        raise SystemExit(f"--raw {folder}: no dataset.json; expected {expected}")
    meta = json.loads(meta_path.read_text())
    if {"channel_names", "file_ending"} <= meta.keys():
        layout, pattern, form = "nnunet", r"Dataset(\d{3})_(.+)", "DatasetXXX_Name"
    elif {"modality", "training"} <= meta.keys():
        layout, pattern, form = "decathlon", r"Task(\d+)_(.+)", "TaskXX_Name"
    else:
        raise SystemExit(f"{meta_path} has neither the Decathlon keys (modality, training) nor nnU-Net v2's "
                         f"(channel_names, file_ending); expected {expected}")
    m = re.fullmatch(pattern, folder.name)
    if m is None and dataset_id is None:
        raise SystemExit(f"--raw {folder}: no dataset id in the folder name (expected {form}); pass --dataset-id")
    did = int(m.group(1)) if dataset_id is None else dataset_id
    if not 0 <= did <= 999:
        raise SystemExit(f"dataset id must be 0..999, found {did}")
    return layout, did, m.group(2) if m else folder.name


def predict_case_names(case_ids: list[str], n: int) -> list[tuple[str, str]]:
    """``n`` (name, source case) pairs: the cases in order under their own names, then again as
    copies: ``predict_case_names(["a", "b"], 5) == [("a", "a"), ("b", "b"), ("a_copy1", "a"),
    ("b_copy1", "b"), ("a_copy2", "a")]``."""
    if not case_ids:
        raise ValueError("no cases to predict")
    out = []
    for k in range(n):
        source, copy = case_ids[k % len(case_ids)], k // len(case_ids)
        out.append((source if copy == 0 else f"{source}_copy{copy}", source))
    return out


def step_summary(step_s: list[float], step_start_s: list[float], skip: int = WARMUP_STEPS) -> dict:
    """Median step and median iteration (a step's start to the next one's) after the first ``skip``
    steps: ``step_summary([9, 1, 2, 3], [0, 9, 10.5, 13], skip=1)`` gives a 2 s step and a 2 s
    iteration (1.5 and 2.5: the waits for the batches)."""
    steady = step_s[skip:]
    periods = [b - a for a, b in zip(step_start_s[skip:], step_start_s[skip + 1:])]
    return {"step_s_median": statistics.median(steady) if steady else None,
            "iteration_s_median": statistics.median(periods) if periods else None,
            "steps_timed": len(steady), "steps_left_out": min(skip, len(step_s))}


def _saved(train_config: dict, path: str):
    """One setting of a fold's train_config.json by its section path ("runtime.precision"), in either
    layout (``saved_setting``; autoseg from this repository where it is not installed)."""
    from gpu_worker import use_repository_autoseg

    use_repository_autoseg()
    from autoseg.training.train_config import saved_setting

    return saved_setting(train_config, path)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` where both are numbers and ``b`` is not 0 (called as nnU-Net / autoseg)."""
    if a is None or b is None or not b or isinstance(a, str) or isinstance(b, str):
        return None
    return a / b


# ---------------------------------------------------------------------------------------------- commands

def worker(python: str, mode: str, record: Path, *args) -> list[str]:
    return [python, str(WORKER), mode, "--record", str(record), "--", *map(str, args)]


class GpuMemorySampler:
    """The largest ``memory.used`` (MiB) nvidia-smi reports for GPU 0 every 200 ms while the block
    runs, and the first value (before the command started); both None without nvidia-smi or on the CPU."""

    def __init__(self, device: str):
        self.exe = shutil.which("nvidia-smi") if device == "cuda" else None
        self.values: list[float] = []

    def __enter__(self):
        self.proc = None
        if self.exe:
            self.proc = subprocess.Popen([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "200"], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.values.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)

    def result(self) -> dict:
        return {"nvidia_smi_peak_mb": max(self.values) if self.values else None,
                "nvidia_smi_before_mb": self.values[0] if self.values else None}


class Bench:
    """One run of the benchmark: the folders, the tools' Pythons and the commands."""

    def __init__(self, args: argparse.Namespace, work: Path, deadline: Deadline):
        self.args, self.work, self.deadline = args, work, deadline
        self.logs, self.records = work / "logs", work / "records"
        for folder in (self.logs, self.records, work / "eval", work / "predict"):
            folder.mkdir(parents=True, exist_ok=True)
        self.ws = work / "autoseg"
        self.nn_base = work / "nnunet"
        self.nnunet_python: str | None = None
        self.data: dict = {}

    def record(self, name: str) -> Path:
        return self.records / f"{name}.json"

    def untimed(self, cmd: list[str], name: str, limit: str, env=None) -> None:
        run_untimed(cmd, env=env, log_path=self.logs / f"{name}.log",
                    timeout_s=self.deadline.limit(LIMIT_S[limit], name))

    def timed(self, cmd: list[str], name: str, limit_s: float, env=None) -> dict:
        """Run ``cmd`` (CommandFailed on a failure or timeout); its wall time, memory and GPU samples."""
        with GpuMemorySampler(self.args.device) as smi:
            m = measure(cmd, env=env, log_path=self.logs / f"{name}.log", timeout_s=self.deadline.limit(limit_s, name))
        return {"wall_s": m.wall_s, "peak_tree_rss_mb": m.peak_tree_rss_mb, **smi.result()}

    def nnunet_env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (self.nn_base / name).mkdir(parents=True, exist_ok=True)
            env[name] = str(self.nn_base / name)
        if self.args.device == "cpu":
            env["nnUNet_n_proc_DA"] = "1"  # a small CPU; on a GPU machine nnU-Net's own default
        if self.args.nnunet_compile != "auto":
            env["nnUNet_compile"] = "true" if self.args.nnunet_compile == "on" else "false"
        return env

    # ------------------------------------------------------------------------------------ environment

    def probe(self, python: str, name: str, modules, imports, versions=()) -> dict:
        cmd = [python, str(WORKER), "probe", "--record", str(self.record(name)), "--modules", *modules,
               "--imports", *imports, "--versions", *versions]
        self.untimed(cmd, name, "probe")
        return json.loads(self.record(name).read_text())

    def check_environment(self) -> tuple[dict, list[str]]:
        """autoseg's Python (this one) and nnU-Net's: what they hold. Returns the probes and the
        problems that stop the benchmark; nnU-Net's problems only drop its side (``skipped``)."""
        a = self.probe(sys.executable, "probe_autoseg", autoseg_requirements(), AUTOSEG_IMPORTS)
        problems = [f"autoseg's Python ({sys.executable}) lacks the module(s) {', '.join(a['missing'])}"] \
            if a["missing"] else []
        problems += [f"autoseg's Python cannot import {m}: {e}" for m, e in a.get("import_errors", {}).items()]
        if self.args.device == "cuda" and not a["missing"] and not a["cuda_available"]:
            problems.append(f"torch {a['torch']} in {sys.executable} sees no CUDA GPU (a CPU-only build, or no "
                            "driver); use --device cpu for a smoke test")
        found = {"autoseg": a, "nnunet": self.check_nnunet()}
        return found, problems

    def check_nnunet(self) -> dict:
        if not self.args.nnunet:
            return {"skipped": "no --nnunet PYTHON given: autoseg's side only"}
        python = shutil.which(self.args.nnunet) or self.args.nnunet
        if not Path(python).is_file():
            return {"skipped": f"--nnunet {self.args.nnunet}: no such Python"}
        try:
            n = self.probe(python, "probe_nnunet", NNUNET_MODULES, NNUNET_IMPORTS, ("nnunetv2", "triton"))
        except CommandFailed as exc:
            return {"skipped": f"--nnunet {python} could not be probed: {str(exc)[-500:]}"}
        reason = (f"lacks the module(s) {', '.join(n['missing'])}" if n["missing"] else
                  f"cannot import {', '.join(n['import_errors'])}" if n.get("import_errors") else
                  f"its torch {n['torch']} sees no CUDA GPU" if self.args.device == "cuda" and not n["cuda_available"]
                  else None)
        if reason:
            return dict(n, skipped=f"nnU-Net's Python {python} {reason}: autoseg's side only")
        self.nnunet_python = python
        if (self.args.device == "cuda" and self.args.nnunet_compile == "auto" and not n["versions"].get("triton")
                and os.environ.get("nnUNet_compile") is None):
            self.args.nnunet_compile = "off"  # torch.compile needs triton on CUDA: nnU-Net would fail at its first step
            n["compile_note"] = "triton is not installed in nnU-Net's Python: its torch.compile turned off"
        return n

    # ------------------------------------------------------------------------------------ set-up

    def prepare_autoseg(self) -> dict:
        """The raw dataset in autoseg's workspace, its plans and preprocessing (timed), the split."""
        args = self.args
        layout, did, name = detect_layout(args.raw, args.dataset_id)
        folder = f"Dataset{did:03d}_{name}"
        (self.ws / "raw").mkdir(parents=True, exist_ok=True)
        if layout == "decathlon":
            self.untimed(worker(sys.executable, "autoseg", self.record("convert"), "convert_msd", "-i", args.raw,
                                "-d", did, "--root", self.ws, "-np", args.processes), "autoseg_convert", "prepare")
        else:
            (self.ws / "raw" / folder).symlink_to(args.raw.resolve())
        profile = ["--device-profile", args.autoseg_profile] if args.autoseg_profile else []
        plan = self.timed(worker(sys.executable, "autoseg", self.record("autoseg_plan"), "plan_and_preprocess", "-d",
                                 did, "--root", self.ws, "-c", CONFIGURATION, "-np", args.processes, *profile),
                          "autoseg_plan_and_preprocess", LIMIT_S["prepare"])
        pre = self.ws / "preprocessed" / folder
        self.untimed(worker(sys.executable, "split", self.record("split"), pre), "autoseg_split", "prepare")
        split = json.loads(self.record("split").read_text())
        raw = self.ws / "raw" / folder
        _, cases = raw_cases(raw)
        labels_ts = next((d for d in (raw / "labelsTs", args.raw / "labelsTs") if d.is_dir()), None)
        self.data = {"source": str(args.raw), "layout": layout, "dataset_id": did, "dataset": folder,
                     "raw": str(raw), "preprocessed": str(pre), "gt": str(pre / "gt_segmentations"),
                     "train_ids": split["train"], "val_ids": split["val"],
                     "heldout_ids": [c.case_id for c in cases if c.part == "Ts"],
                     "heldout_labels": str(labels_ts) if labels_ts else None}
        return {"plan_and_preprocess": plan, "device_profile": args.autoseg_profile or "autoseg's detection",
                "num_training": len(split["train"]) + len(split["val"])}

    def prepare_nnunet(self) -> dict:
        """The same raw files linked for nnU-Net, its plans and preprocessing (timed), autoseg's split."""
        d, env = self.data, self.nnunet_env()
        (self.nn_base / "nnUNet_raw" / d["dataset"]).symlink_to(Path(d["raw"]).resolve())
        plan = self.timed(worker(self.nnunet_python, "nnunet", self.record("nnunet_plan"), "nnUNetv2_plan_and_preprocess",
                                 "-d", d["dataset_id"], "-c", CONFIGURATION, "-np", self.args.processes,
                                 "-npfp", self.args.processes), "nnunet_plan_and_preprocess", LIMIT_S["prepare"], env)
        nn_pre = self.nn_base / "nnUNet_preprocessed" / d["dataset"]
        nn_cases = {p.name.split(".")[0] for p in (nn_pre / f"nnUNetPlans_{CONFIGURATION}").glob("*.pkl")}
        split_cases = set(d["train_ids"]) | set(d["val_ids"])
        if nn_cases != split_cases:
            raise RuntimeError(f"nnU-Net preprocessed other cases than autoseg's split holds: only nnU-Net "
                               f"{sorted(nn_cases - split_cases)[:5]}, only the split {sorted(split_cases - nn_cases)[:5]}")
        shutil.copyfile(Path(d["preprocessed"]) / "splits.json", nn_pre / "splits_final.json")
        return {"plan_and_preprocess": plan}

    # ------------------------------------------------------------------------------------ training

    def train_autoseg(self) -> dict:
        args, d = self.args, self.data
        self.deadline.require(args.budget_s + TRAIN_START_RESERVE_S, "autoseg's training")
        rec = self.record("autoseg_train")
        run = self.timed(worker(sys.executable, "autoseg", rec, "train", CONFIGURATION, FOLD, "-d", d["dataset_id"],
                                "--root", self.ws, "--device", args.device, "--time-budget", f"{args.budget_s:g}s",
                                *[a for kv in args.autoseg_set for a in ("--set", kv)]),
                         "autoseg_train", args.budget_s + TRAIN_EXTRA_S)
        r = json.loads(rec.read_text())
        fold = self.ws / "results" / d["dataset"] / CONFIGURATION / "default" / f"fold_{FOLD}"
        plans = json.loads((fold / "plans.json").read_text())["configurations"][CONFIGURATION]
        tc = json.loads((fold / "train_config.json").read_text())
        return self._training_record(run, r, fold / "validation", {
            "patch_size": plans["patch_size"], "batch_size": _saved(tc, "sampling.batch_size") or plans["batch_size"],
            "features_per_stage": plans["network"]["features_per_stage"], "precision": _saved(tc, "runtime.precision"),
            "validation_in_budget": True, "augmentation_workers": _saved(tc, "sampling.num_workers"),
            "torch": r.get("torch")})

    def train_nnunet(self) -> dict:
        args, d = self.args, self.data
        self.deadline.require(args.budget_s + TRAIN_START_RESERVE_S, "nnU-Net's training")
        rec = self.record("nnunet_train")
        run = self.timed([self.nnunet_python, str(NNUNET_TRAINER), "--dataset", d["dataset"], "--configuration",
                          CONFIGURATION, "--fold", str(FOLD), "--budget-s", f"{args.budget_s:g}", "--plans", "default",
                          "--device", args.device, "--warmup", str(max(2, args.warmup_steps)), "--result", str(rec)],
                         "nnunet_train", args.budget_s + TRAIN_EXTRA_S, self.nnunet_env())
        r = json.loads(rec.read_text())
        return self._training_record(run, r, Path(r["validation_folder"]), {
            "patch_size": r["patch_size"], "batch_size": r["batch_size"], "features_per_stage": r["features_per_stage"],
            "precision": r["precision"], "compiled": r["compiled"], "validation_in_budget": False,
            "augmentation_workers": r["n_proc_DA"] or "nnU-Net's default", "torch": r["torch"],
            "schedule": r["schedule"]})

    def _training_record(self, run: dict, r: dict, validation: Path, plans: dict) -> dict:
        out = dict(plans, **step_summary(r["step_s"], r["step_start_s"], self.args.warmup_steps),
                   iterations=len(r["step_s"]),
                   command_wall_s=run["wall_s"], validation_wall_s=r["validation_wall_s"],
                   peak_gpu_mb_training=r["peak_gpu_mb_training"], peak_gpu_mb=r.get("peak_gpu_mb"),
                   nvidia_smi_peak_mb=run["nvidia_smi_peak_mb"], nvidia_smi_before_mb=run["nvidia_smi_before_mb"],
                   epochs=r["epochs"], validation_folder=str(validation))
        out["training_wall_s"] = run["wall_s"] - (r["validation_wall_s"] or 0.0)
        return out

    def evaluate(self, name: str, predictions: Path, reference: Path, expected: list[str] | None) -> dict:
        """Mean foreground Dice of ``predictions`` by ``autoseg evaluate`` (the same code for both tools)."""
        out = self.work / "eval" / f"{name}.json"
        self.untimed(worker(sys.executable, "autoseg", self.record(f"eval_{name}"), "evaluate", "-ref", reference,
                            "-pred", predictions, "-d", self.data["dataset_id"], "--root", self.ws, "-o", out),
                     f"evaluate_{name}", "evaluate")
        s = json.loads(out.read_text())
        cases = sorted(c["case_id"] for c in s["per_case"])
        if expected is not None and cases != sorted(expected):
            raise RuntimeError(f"{predictions} holds {len(cases)} cases, not the {len(expected)} expected")
        return {"dice": s["foreground_mean"]["dice"], "dice_per_class": {k: v["dice"] for k, v in s["mean"].items()},
                "cases": len(cases)}

    # ------------------------------------------------------------------------------------ predict

    def predict_inputs(self, n: int) -> tuple[Path, Path, list[str]]:
        """Folders ``in_1`` and ``in_N`` of links to the held-out images (else the validation
        images), repeated under new names up to ``n``; and the cases predicted under their own names."""
        d = self.data
        _, cases = raw_cases(d["raw"])
        ids = d["heldout_ids"] or d["val_ids"]
        by_id = {c.case_id: c for c in cases if c.case_id in set(ids)}
        ending = json.loads((Path(d["raw"]) / "dataset.json").read_text())["file_ending"]
        folders = (self.work / "predict" / "in_1", self.work / "predict" / f"in_{n}")
        names = predict_case_names(sorted(by_id), n)
        for folder, chosen in zip(folders, (names[:1], names)):
            folder.mkdir()
            for name, source in chosen:
                for c, image in enumerate(by_id[source].images):
                    (folder / f"{name}_{c:04d}{ending}").symlink_to(image.resolve())
        return folders[0], folders[1], [name for name, source in names if name == source]

    def predict_command(self, tool: str, inp: Path, out: Path, record: Path) -> tuple[list[str], dict | None]:
        d, args = self.data, self.args
        tta = ["--disable_tta"] if args.disable_tta else []
        if tool == "autoseg":
            return worker(sys.executable, "autoseg", record, "predict", "-i", inp, "-o", out, "-d", d["dataset_id"],
                          "--root", self.ws, "-c", CONFIGURATION, "-f", FOLD, "--device", args.device, *tta), None
        small = ["-npp", "1", "-nps", "1"] if args.device == "cpu" else []  # nnU-Net's defaults on a GPU machine
        return worker(self.nnunet_python, "nnunet", record, "nnUNetv2_predict", "-i", inp, "-o", out, "-d",
                      d["dataset_id"], "-c", CONFIGURATION, "-f", FOLD, "-device", args.device,
                      "--disable_progress_bar", *small, *tta), self.nnunet_env()

    def time_predict(self, tools: list[str]) -> dict:
        """Each tool on 1 and on N images, ``--repeats`` times (interleaved); the fastest counts. A
        tool that fails (or meets the deadline) is dropped from then on, its error under ``failed``."""
        n = self.args.predict_cases
        in_1, in_n, own_names = self.predict_inputs(n)
        ending = json.loads((Path(self.data["raw"]) / "dataset.json").read_text())["file_ending"]
        runs: dict = {tool: {1: [], n: []} for tool in tools}
        failed: dict[str, str] = {}
        for r in range(self.args.repeats):
            for count, inp in ((1, in_1), (n, in_n)):
                for tool in [t for t in tools if t not in failed]:
                    try:
                        runs[tool][count].append(self.predict_once(tool, inp, count, f"{tool}_predict_{count}_r{r}",
                                                                   ending))
                    except (CommandFailed, OutOfTime, RuntimeError, OSError, ValueError) as exc:
                        log.error("predict, %s failed: %s", tool, exc)
                        failed[tool] = str(exc)[-3000:]
        out = {"n": n, "inputs": "held-out images" if self.data["heldout_ids"] else "validation images",
               "distinct_images": len(own_names), "tta": not self.args.disable_tta, "failed": failed}
        for tool in [t for t in tools if t not in failed]:
            t_1, t_n = (min(m["wall_s"] for m in runs[tool][c]) for c in (1, n))
            per_case, fixed = split_cost(t_1, t_n, n)
            every = runs[tool][1] + runs[tool][n]
            out[tool] = {"t_1_s": t_1, "t_N_s": t_n, "per_case_s": per_case, "fixed_s": fixed,
                         "peak_gpu_mb": _max(m["peak_gpu_mb"] for m in every),
                         "nvidia_smi_peak_mb": _max(m["nvidia_smi_peak_mb"] for m in every),
                         "peak_tree_rss_mb": max(m["peak_tree_rss_mb"] for m in every), "runs": runs[tool]}
            if self.data["heldout_labels"] and self.data["heldout_ids"]:
                try:
                    out[tool]["heldout"] = self.score_heldout(tool, self.work / "predict" / f"{tool}_predict_{n}_r0",
                                                              own_names, ending)
                except (CommandFailed, OutOfTime, RuntimeError, OSError) as exc:
                    failed[f"{tool} held-out Dice"] = str(exc)[-3000:]
        return out

    def predict_once(self, tool: str, inp: Path, count: int, name: str, ending: str) -> dict:
        """One timed predict run of ``tool`` on the ``count`` images of ``inp``; checks all were written."""
        out = self.work / "predict" / name
        cmd, env = self.predict_command(tool, inp, out, self.record(name))
        m = self.timed(cmd, name, LIMIT_S["predict"], env)
        written = len(list(out.glob(f"*{ending}"))) if out.is_dir() else 0
        if written != count:
            raise RuntimeError(f"{tool} wrote {written} of {count} segmentations; see {name}.log")
        m["peak_gpu_mb"] = json.loads(self.record(name).read_text()).get("peak_gpu_mb")
        return m

    def score_heldout(self, tool: str, predictions: Path, names: list[str], ending: str) -> dict:
        """Dice of the held-out cases predicted under their own names, against ``labelsTs``."""
        labels = Path(self.data["heldout_labels"])
        chosen = self.work / "predict" / f"{tool}_heldout"
        chosen.mkdir()
        for name in names:
            if (labels / f"{name}{ending}").is_file():
                (chosen / f"{name}{ending}").symlink_to((predictions / f"{name}{ending}").resolve())
        return self.evaluate(f"{tool}_heldout", chosen, labels, None)


def nvidia_smi_info() -> list[str] | None:
    """nvidia-smi's line per GPU: name, driver version, memory (None without nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"nvidia-smi failed: {exc}"]
    return done.stdout.strip().splitlines() or [done.stderr.strip()[-300:]]


def _max(values) -> float | None:
    found = [v for v in values if v is not None]
    return max(found) if found else None


# ---------------------------------------------------------------------------------------------- report

ROWS = (  # (label, section, key); section "train", "predict" or "setup"
    ("plan_and_preprocess (s)", "setup", "plan_and_preprocess_s"),
    ("training step, median after warm-up (s)", "train", "step_s_median"),
    ("iteration incl. waiting for the batch, median (s)", "train", "iteration_s_median"),
    ("batch x patch", "train", "batch_patch"),
    ("precision", "train", "precision"),
    ("torch.compile", "train", "compiled"),
    ("iterations within the budget", "train", "iterations"),
    ("training command (s)", "train", "training_wall_s"),
    ("final validation (s)", "train", "validation_wall_s"),
    ("validation Dice, fold 0", "train", "dice"),
    ("peak GPU memory, training (MB, torch)", "train", "peak_gpu_mb_training"),
    ("peak GPU memory, training (MB, nvidia-smi)", "train", "nvidia_smi_peak_mb"),
    ("predict: per case (s)", "predict", "per_case_s"),
    ("predict: fixed cost (s)", "predict", "fixed_s"),
    ("predict: N cases (s)", "predict", "t_N_s"),
    ("predict: peak GPU memory (MB, torch)", "predict", "peak_gpu_mb"),
    ("held-out Dice", "predict", "heldout_dice"),
)


def table(result: dict) -> str:
    """The markdown table: one row per measure, autoseg, nnU-Net v2 and nnU-Net / autoseg."""
    def value(tool: str, section: str, key: str):
        part = (result.get(section) or {}).get(tool) or {}
        if key == "batch_patch" and part.get("batch_size") is not None:
            return f"{part['batch_size']} x {'x'.join(map(str, part['patch_size']))}"
        if key == "heldout_dice":
            return (part.get("heldout") or {}).get("dice")
        if key == "plan_and_preprocess_s":
            return (part.get("plan_and_preprocess") or {}).get("wall_s")
        return part.get(key)

    rows = []
    for label, section, key in ROWS:
        a, b = value("autoseg", section, key), value("nnunet", section, key)
        if a is None and b is None:
            continue
        if key == "t_N_s":
            label = f"predict: {result['predict']['n']} cases (s)"
        rows.append([label, _fmt(a), _fmt(b), _fmt(ratio(b, a))])
    return markdown_table(["GPU benchmark", "autoseg", "nnU-Net v2", "nnU-Net / autoseg"], rows)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return v


def header(result: dict) -> str:
    m, gpu = result.get("machine", {}), (result.get("environment") or {}).get("autoseg") or {}
    return (f"{result['started']}, {gpu.get('gpu') or result['device']}, torch {gpu.get('torch')} (CUDA "
            f"{gpu.get('torch_cuda')}), CPU {m.get('cpu')} ({m.get('cores')} cores), commit {result['commit']}, "
            f"{result['data'].get('dataset', '?')} fold {FOLD}, budget {result['budget_s']:g} s: `{result['command']}`")


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, default=DEMO_TASK,
                   help="Decathlon task or nnU-Net v2 raw dataset folder (default: the bundled demo data)")
    p.add_argument("--dataset-id", type=int, default=None, help="dataset id where the folder name holds none")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke test (default cuda)")
    p.add_argument("--nnunet", default=None, metavar="PYTHON",
                   help="a Python with nnunetv2 (a path, or a name on the PATH); without it, autoseg's side only")
    p.add_argument("--budget-s", type=float, default=300.0, help="training budget of each tool in seconds (300)")
    p.add_argument("--predict-cases", type=int, default=20, help="N images of the predict timing (>= 2; 20)")
    p.add_argument("--repeats", type=int, default=1, help="predict runs of each size; the fastest counts (1)")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                   help="first training steps left out of the step medians, and nnU-Net's warm-up before it fits "
                        "its schedule (at least 2 there) (default %(default)s)")
    p.add_argument("--disable-tta", action="store_true", help="predict without mirroring (both tools)")
    p.add_argument("--autoseg-profile", default=None, choices=("cpu", "gpu-8gb", "gpu-24gb", "gpu-40gb"),
                   help="autoseg's device profile (default: autoseg's detection, by the GPU's memory)")
    p.add_argument("--autoseg-set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to autoseg train as --set (a smoke test's smaller batch; a benchmark leaves "
                        "autoseg's defaults)")
    p.add_argument("--nnunet-compile", choices=("auto", "on", "off"), default="auto",
                   help="nnU-Net's torch.compile (auto: nnU-Net's default, on for CUDA, or $nnUNet_compile)")
    p.add_argument("-np", "--processes", type=int, default=min(8, os.cpu_count() or 1),
                   help="preprocessing processes of both tools (default: the cores, at most 8)")
    p.add_argument("--deadline-s", type=float, default=None, help="wall seconds for the whole script")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu.json", help="the JSON (%(default)s)")
    p.add_argument("--logs", type=Path, default=None, help="copy every command's log here")
    p.add_argument("--work", type=Path, default=None, help="work folder, kept (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.predict_cases < 2:
        p.error("--predict-cases must be at least 2 (the fixed cost needs runs of two sizes)")
    if args.budget_s <= 0 or args.repeats < 1 or args.warmup_steps < 0:
        p.error("--budget-s must be positive, --repeats at least 1 and --warmup-steps at least 0")
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        p.error(f"--work {args.work} is not empty; give a new or empty folder")
    args.raw = args.raw.resolve()
    return args


def run_phase(result: dict, out: Path, phase: str, tool: str | None, action) -> bool:
    """``result[phase][tool] = action()`` (``result[phase]`` without a tool); a failure goes to
    ``result["errors"]``; the JSON is written either way. Returns whether it worked."""
    log.info("== %s%s ...", phase, f": {tool}" if tool else "")
    try:
        value = action()
        if tool is None:
            result[phase] = value
        else:
            result.setdefault(phase, {})[tool] = value
        ok = True
    except (CommandFailed, OutOfTime, RuntimeError, OSError, KeyError, ValueError, TypeError) as exc:
        log.error("%s, %s failed: %s", phase, tool, exc)
        result["errors"].append({"phase": phase, "tool": tool, "error": str(exc)[-3000:]})
        ok = False
    write_json(result, out)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    deadline = Deadline(args.deadline_s)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work, deadline)
    result = {"benchmark": "gpu", "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(sys.argv), "commit": git_commit(), "device": args.device,
              "budget_s": args.budget_s, "configuration": CONFIGURATION, "fold": FOLD, "warmup_steps": args.warmup_steps,
              "machine": dict(machine_info(), nvidia_smi=nvidia_smi_info()), "data": {}, "errors": [],
              "status": "running"}
    try:
        return run(bench, result, args)
    finally:
        if args.logs:
            shutil.copytree(bench.logs, args.logs, dirs_exist_ok=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run(bench: Bench, result: dict, args: argparse.Namespace) -> int:
    out = args.out
    try:
        result["environment"], problems = bench.check_environment()
    except CommandFailed as exc:
        result["environment"], problems = {}, [f"autoseg's Python could not be probed: {str(exc)[-1500:]}"]
    if problems:
        result.update(status="missing requirements", errors=[{"phase": "environment", "error": p} for p in problems])
        write_json(result, out)
        print("bench/gpu.py cannot run here:\n  - " + "\n  - ".join(problems) + "\n(see the docstring: what the "
              "machine needs)", file=sys.stderr)
        return 2
    tools = ["autoseg"] + (["nnunet"] if bench.nnunet_python else [])
    if not bench.nnunet_python:
        log.warning("nnU-Net v2 not run: %s", result["environment"]["nnunet"]["skipped"])
    ok = run_phase(result, out, "setup", "autoseg", bench.prepare_autoseg)
    result["data"] = bench.data
    if ok and "nnunet" in tools and not run_phase(result, out, "setup", "nnunet", bench.prepare_nnunet):
        tools.remove("nnunet")
    trained = []
    for tool in tools if ok else []:
        if run_phase(result, out, "train", tool, bench.train_autoseg if tool == "autoseg" else bench.train_nnunet):
            trained.append(tool)
            record = result["train"][tool]
            run_phase(result, out, "validation", tool, lambda: bench.evaluate(
                tool, Path(record["validation_folder"]), Path(bench.data["gt"]), bench.data["val_ids"]))
            record.update((result.get("validation") or {}).get(tool) or {})
    if trained and run_phase(result, out, "predict", None, lambda: bench.time_predict(trained)):
        result["errors"] += [{"phase": "predict", "tool": tool, "error": error}
                             for tool, error in result["predict"]["failed"].items()]
    result["status"] = "complete" if not result["errors"] and len(tools) == 2 else \
        "autoseg only" if not result["errors"] else "partial"
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())  # another job on the machine shows here
    result["table_markdown"] = header(result) + "\n\n" + table(result)
    write_json(result, out)
    print("\n" + result["table_markdown"])
    if result["errors"]:
        print("\nerrors:\n" + "\n".join(f"  - {e.get('phase')} {e.get('tool', '')}: {e['error'][-300:]}"
                                         for e in result["errors"]), file=sys.stderr)
    print(f"\n{out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
