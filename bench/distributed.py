"""Benchmark: training on 2 gloo processes against 1 process with the same global batch, and
predict with 2 parts on 2 processes against 1 process, on this CPU (issue 32).

Reproduce (a workspace whose dataset is planned and preprocessed, e.g. Hippocampus with the cpu
profile of bench/time_to_dice.py), on a quiet machine:

    python bench/distributed.py --root WS -d 4 -c 3d_fullres --fold 0 \\
        --epochs 4 --iterations 25 --json bench/out/distributed.json

Training: the same fold trained twice from scratch with a fixed schedule (``--epochs`` x
``--iterations``, fp32, the planned batch, augmentation inline: ``-np 0``), once as ``autoseg
train`` and once as ``autoseg train --num-gpus 2 --device cpu`` (2 gloo processes, each with half
the cores' threads, each training on its half of the same seeded global batch). Each run gets a
workspace of its own whose ``raw`` and ``preprocessed`` are links to ``--root``'s. Reported: the
per-epoch training and validation losses of both and their largest relative difference (the
samples are the same: the difference comes from the order of the float sums, and grows with the
steps); iterations per second from the epochs' own times (``history.epoch_time``, patch validation
included, the final sliding-window validation not); the wall time of each command (start-up and
final validation included). The 2-process run's epoch 0 includes the process group's start.

Predict: the fold trained by the 1-process run predicts ``--cases`` images of the dataset's
imagesTr (torch backend, no mirroring) once as one ``autoseg predict`` and once as two processes
started together, ``--num-parts 2 --part-id 0`` and ``1``, each pinned to half the cores with
``taskset`` where there is one (as two machines would be), into one folder; the wall time until
both have ended, whether the two outputs hold the same cases, and the share of voxels whose
label differs (a pinned part runs fewer threads, whose float sums round differently: a few voxels
where two classes' probabilities nearly tie; 1-3 voxels per case on the tiny synthetic dataset).

Times in seconds. Prints a markdown table and writes ``--json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import machine_info, markdown_table, measure, write_json  # noqa: E402


def scratch_workspace(root: Path, into: Path) -> Path:
    """A workspace in ``into`` sharing ``root``'s raw and preprocessed data, with empty results."""
    into.mkdir(parents=True)
    for name in ("raw", "preprocessed"):
        (into / name).symlink_to((root / name).resolve())
    return into


def train_command(ws: Path, args: argparse.Namespace, processes: int) -> list[str]:
    cmd = [sys.executable, "-m", "autoseg.cli", "train", args.configuration, str(args.fold), "-d", args.dataset,
           "--root", str(ws), "--device", "cpu", "-np", "0",
           "--set", f"schedule.num_epochs={args.epochs}",
           "--set", f"schedule.num_iterations_per_epoch={args.iterations}",
           "--set", f"schedule.num_val_iterations_per_epoch={args.val_iterations}", "--set", "runtime.precision=fp32"]
    return cmd + (["--num-gpus", str(processes)] if processes > 1 else [])


def fold_dir(ws: Path, args: argparse.Namespace) -> Path:
    from autoseg.paths import Workspace

    return Workspace(ws).results_dataset(args.dataset) / args.configuration / "default" / f"fold_{args.fold}"


def train_run(root: Path, scratch: Path, args: argparse.Namespace, processes: int) -> dict:
    import torch

    ws = scratch_workspace(root, scratch / f"train_{processes}")
    m = measure(train_command(ws, args, processes), log_path=scratch / f"train_{processes}.log")
    state = torch.load(fold_dir(ws, args) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    h = state["history"]
    return {"processes": processes, "wall_s": m.wall_s, "iterations": state["iteration"],
            "train_s": float(sum(h["epoch_time"])), "iterations_per_s": state["iteration"] / sum(h["epoch_time"]),
            "train_loss": h["train_loss"], "val_loss": h["val_loss"], "workspace": str(ws)}


def relative_difference(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def predict_command(ws: Path, images: Path, out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autoseg.cli", "predict", "-i", str(images), "-o", str(out), "-d", args.dataset,
            "--root", str(ws), "-c", args.configuration, "-f", str(args.fold), "--backend", "torch",
            "--disable_tta", "--device", "cpu", *extra]


def pinned(cmd: list[str], part: int, parts: int) -> list[str]:
    """``cmd`` on its share of this process's cores (``taskset``), where there is one."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not shutil.which("taskset") or len(cores) < parts:
        return cmd
    mine = cores[part * len(cores) // parts:(part + 1) * len(cores) // parts]
    return ["taskset", "-c", ",".join(map(str, mine))] + cmd


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.iterdir())
            if not p.name.startswith(".")}


def predict_runs(ws: Path, scratch: Path, args: argparse.Namespace) -> dict:
    from autoseg.paths import Workspace

    raw = Workspace(ws).raw_dataset(args.dataset)
    images = scratch / "images"
    images.mkdir()
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (raw / "imagesTr").iterdir()})[:args.cases]
    for p in sorted((raw / "imagesTr").iterdir()):
        if p.name.rsplit("_", 1)[0] in cases:
            (images / p.name).symlink_to(p.resolve())
    one = measure(predict_command(ws, images, scratch / "pred_one", args), log_path=scratch / "predict_one.log")
    started = time.perf_counter()
    procs = [subprocess.Popen(pinned(predict_command(ws, images, scratch / "pred_two", args, "--num-parts", "2",
                                                     "--part-id", str(k)), k, 2),
                              stdout=open(scratch / f"predict_part{k}.log", "w"), stderr=subprocess.STDOUT)
             for k in range(2)]
    codes = [p.wait() for p in procs]
    two_s = time.perf_counter() - started
    a, b = labels_of(scratch / "pred_one"), labels_of(scratch / "pred_two")
    differing = sum(int((a[k] != b[k]).sum()) for k in a if k in b) / max(1, sum(a[k].size for k in a))
    return {"cases": len(cases), "one_process_s": one.wall_s, "two_parts_s": two_s, "exit_codes": codes,
            "same_cases": a.keys() == b.keys(), "voxels_differing": differing, "speedup": one.wall_s / two_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="workspace with the dataset planned and preprocessed")
    p.add_argument("-d", "--dataset", default="4")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--fold", default="0")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=5, help="patch-validation iterations per epoch")
    p.add_argument("--cases", type=int, default=20, help="images to predict")
    p.add_argument("--keep", action="store_true", help="keep the scratch workspaces (printed)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        one = train_run(args.root, scratch, args, 1)
        two = train_run(args.root, scratch, args, 2)
        predict = predict_runs(Path(one["workspace"]), scratch, args)
    finally:
        if args.keep:
            print(f"scratch workspaces kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "machine": machine_info(), "configuration": args.configuration, "fold": args.fold,
        "schedule": {"epochs": args.epochs, "iterations_per_epoch": args.iterations},
        "train": {"one_process": one, "two_processes": two,
                  "train_loss_max_relative_difference": relative_difference(two["train_loss"], one["train_loss"]),
                  "val_loss_max_relative_difference": relative_difference(two["val_loss"], one["val_loss"]),
                  "throughput_ratio": two["iterations_per_s"] / one["iterations_per_s"]},
        "predict": predict,
    }
    print(markdown_table(["run", "processes", "iterations/s", "wall s", "final train loss"],
                         [["train", 1, one["iterations_per_s"], one["wall_s"], one["train_loss"][-1]],
                          ["train", 2, two["iterations_per_s"], two["wall_s"], two["train_loss"][-1]]]))
    print(f"\nloss trajectories: largest relative difference {result['train']['train_loss_max_relative_difference']:.2e} "
          f"(train), {result['train']['val_loss_max_relative_difference']:.2e} (validation)")
    print(markdown_table(["predict", "cases", "wall s", "same cases written", "voxels differing"],
                         [["1 process", predict["cases"], predict["one_process_s"], True, 0.0],
                          ["2 parts, 2 processes", predict["cases"], predict["two_parts_s"], predict["same_cases"],
                           predict["voxels_differing"]]]))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
