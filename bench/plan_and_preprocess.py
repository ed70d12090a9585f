"""Benchmark: plan_and_preprocess of nnU-Net v2 vs autoseg on the same Decathlon task.

Reproduce (from the repository root, on a quiet machine):

    .venv/bin/python bench/plan_and_preprocess.py --json bench/out/plan_and_preprocess.json

Smoke test: add ``--subset 10`` (only the first 10 training cases).

What it measures, for each tool, in fresh temporary workspaces on the same data:
- nnU-Net v2 (from $NNUNET_VENV/bin, never imported here): untimed
  ``nnUNetv2_convert_MSD_dataset -i TASK -overwrite_id 4``, then timed
  ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres 2d -np 2 -npfp 2 --verify_dataset_integrity``
  with ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` in the temp dir and
  ``nnUNet_def_n_proc=2`` (so its integrity check and fingerprint use 2 processes, like autoseg's
  ``-np 2``; its default would be 8).
- autoseg (the ``autoseg`` beside the Python that runs this): untimed ``autoseg convert_msd -i TASK --root TMP``, then
  timed ``autoseg plan_and_preprocess -d 4 --root TMP -np 2 -c 3d_fullres 2d --device-profile gpu-8gb``
  (the plans that match nnU-Net's; the integrity check always runs).
Both timed commands include: integrity check, fingerprint, planning, preprocessing of 3d_fullres
and 2d. Reported: wall time (s), peak RSS summed over the process tree (MB, sampled every 50 ms),
the largest single-process RSS (MB), the number of preprocessed cases per configuration, and the
ratios nnU-Net / autoseg (> 1: autoseg is faster / leaner). See bench/common.py.

The Decathlon copy: TASK is a temp folder named like the source (``Task04_Hippocampus``) with
per-file symlinks to the source's imagesTr/labelsTr (only the first N cases with ``--subset N``),
an empty imagesTs/ (nnU-Net's converter requires it) and a dataset.json whose ``training`` list
and ``numTraining`` match the cases linked.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_task_option, autoseg_executable, machine_info, markdown_table, measure,  # noqa: E402
                    nnunet_bin, ratio, require_folder, run_untimed, write_json)

log = logging.getLogger("bench.plan_and_preprocess")

DATASET_ID = 4
NNUNET_DATASET = "Dataset004_Hippocampus"
CONFIGURATIONS = ("3d_fullres", "2d")


def make_decathlon_copy(data: Path, parent: Path, subset: int | None = None) -> Path:
    """A Decathlon task folder under ``parent`` linking to ``data``'s first ``subset`` cases (all if None).

    Returns ``parent / data.name``. Cases are taken in the order of ``dataset.json``'s ``training`` list.
    """
    meta = json.loads((data / "dataset.json").read_text())
    training = meta["training"][:subset] if subset else meta["training"]
    if not training:
        raise ValueError(f"{data}/dataset.json lists no training cases (subset={subset})")
    task = parent / data.name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True, exist_ok=True)
    for entry in training:
        for key in ("image", "label"):
            rel = Path(entry[key])
            (task / rel).symlink_to((data / rel).resolve())
    meta = dict(meta, training=training, numTraining=len(training), test=[], numTest=0)
    (task / "dataset.json").write_text(json.dumps(meta, indent=2))
    return task


def nnunet_env(base: Path, venv: Path | None = None) -> dict[str, str]:
    """Environment for nnU-Net commands: its three folders under ``base``, 2 default processes, its
    venv's ``bin`` (``venv``, else ``$NNUNET_VENV``) first on the PATH."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (base / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / name)
    env["nnUNet_def_n_proc"] = "2"
    env["PATH"] = f"{nnunet_bin(venv)}{os.pathsep}{env.get('PATH', '')}"
    return env


def count_cases(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def run_nnunet(task: Path, base: Path, num_processes: int, configurations: tuple[str, ...] = CONFIGURATIONS) -> dict:
    """Convert (untimed) and plan_and_preprocess (timed) with nnU-Net; ``base`` gets its folders."""
    env = nnunet_env(base)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    run_untimed([nnunet_bin() / "nnUNetv2_convert_MSD_dataset", "-i", task, "-overwrite_id", str(DATASET_ID),
                 "-np", str(num_processes)], env=env, log_path=logs / "nnunet_convert.log")
    m = measure([nnunet_bin() / "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *configurations,
                 "-np", str(num_processes), "-npfp", str(num_processes), "--verify_dataset_integrity"],
                env=env, log_path=logs / "nnunet_plan_and_preprocess.log")
    pre = base / "nnUNet_preprocessed" / NNUNET_DATASET
    return {"measurement": m, "cases": {c: count_cases(pre / f"nnUNetPlans_{c}", "*.pkl") for c in configurations}}


def run_autoseg(task: Path, root: Path, num_processes: int, configurations: tuple[str, ...] = CONFIGURATIONS,
                extra: tuple[str, ...] = ()) -> dict:
    """Convert (untimed) and plan_and_preprocess (timed) with autoseg in workspace ``root``."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_untimed([autoseg_executable(), "convert_msd", "-i", task, "--root", root, "-np", str(num_processes)],
                log_path=logs / "autoseg_convert.log")
    m = measure([autoseg_executable(), "plan_and_preprocess", "-d", str(DATASET_ID), "--root", root,
                 "-np", str(num_processes),
                 "-c", *configurations, "--device-profile", "gpu-8gb", *extra], log_path=logs / "autoseg_plan_and_preprocess.log")
    pre = root / "preprocessed" / NNUNET_DATASET
    return {"measurement": m, "cases": {c: count_cases(pre / c, "*.data.b2") for c in configurations}}


def summarise(nnunet: dict | None, autoseg: dict | None) -> tuple[list[str], list[list]]:
    """Markdown table headers and rows: one row per metric, columns nnU-Net, autoseg, ratio."""
    rows = []
    for key, label in (("wall_s", "wall time (s)"), ("peak_tree_rss_mb", "peak RSS, process tree (MB)"),
                       ("max_single_rss_mb", "max single-process RSS (MB)")):
        a = getattr(nnunet["measurement"], key) if nnunet else None
        b = getattr(autoseg["measurement"], key) if autoseg else None
        rows.append([label, a, b, ratio(a, b)])
    return ["plan_and_preprocess", "nnU-Net v2", "autoseg", "nnU-Net / autoseg"], rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_option(p, "--data")
    p.add_argument("--subset", type=int, default=None, help="use only the first N training cases (smoke tests)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for both tools")
    p.add_argument("--only", choices=("nnunet", "autoseg"), default=None, help="run one tool only")
    p.add_argument("--workdir", type=Path, default=None, help="keep the workspaces here (default: a temp dir, deleted)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.data = require_folder(args.data, "--data")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pp_"))
    if work.exists() and any(work.iterdir()):
        p.error(f"--workdir {work} is not empty; give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    try:
        task = make_decathlon_copy(args.data, work / "msd", args.subset)
        nnunet = autoseg = None
        if args.only in (None, "nnunet"):
            log.info("nnU-Net plan_and_preprocess ...")
            nnunet = run_nnunet(task, work / "nnunet", args.num_processes)
        if args.only in (None, "autoseg"):
            log.info("autoseg plan_and_preprocess ...")
            autoseg = run_autoseg(task, work / "autoseg", args.num_processes)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    headers, rows = summarise(nnunet, autoseg)
    result = {
        "benchmark": "plan_and_preprocess", "data": str(args.data), "subset": args.subset,
        "num_processes": args.num_processes, "machine": machine_info(),
        "nnunet": nnunet, "autoseg": autoseg,
        "ratios_nnunet_over_autoseg": {r[0]: r[3] for r in rows},
    }
    print(json.dumps(result, indent=2, default=lambda o: o.__dict__))
    print()
    print(markdown_table(headers, rows))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
