"""Benchmark: ``predict`` of nnU-Net v2 vs autoseg, per-case time, fixed cost and peak memory.

Reproduce (from the repository root, on a quiet machine):

    .venv/bin/python bench/predict.py --json bench/out/predict.json

Smoke test: ``--subset 10 -n 2`` (plans from 10 training cases, 2 images to predict).

Set-up (untimed), in a temporary folder, on the same Decathlon copy as
bench/plan_and_preprocess.py (first ``--subset`` training cases, default all):
- nnU-Net v2: ``nnUNetv2_plan_and_preprocess -c 3d_fullres``; then, in $NNUNET_VENV, its
  plain ``nnUNetTrainer`` is built from those plans on the CPU, ``initialize()``d (randomly
  initialised weights, no training) and saved with ``save_checkpoint`` as
  ``nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/
  checkpoint_final.pth`` beside copies of ``plans.json`` and ``dataset.json`` (the layout its
  predictor reads); the mirroring axes are set as its training would set them, so TTA mirrors
  over all three axes.
- autoseg: ``autoseg plan_and_preprocess -c 3d_fullres`` (default gpu-8gb profile: the same U-Net
  as nnU-Net's plan, patch 40x56x40, features 32..256), then ``autoseg train 3d_fullres 0 --set
  schedule.num_epochs=1 --set schedule.num_iterations_per_epoch=1 --set
  schedule.num_val_iterations_per_epoch=1`` (one iteration: a practically untrained network of the
  planned architecture).
- Input images: the LAST ``-n`` cases of the source dataset.json's training list (so they are not
  in a small ``--subset``), linked as ``{case}_0000.nii.gz`` into an N-image and a 1-image folder.

Timed (each in a fresh output folder, tools interleaved), without and with mirroring TTA:
    nnUNetv2_predict -i IN -o OUT -d 4 -c 3d_fullres -f 0 -npp 1 -nps 1 -device cpu [--disable_tta]
    autoseg predict -i IN -o OUT -d 4 --root R -c 3d_fullres -f 0 --device cpu --precision auto [--disable_tta]
    autoseg predict ... --precision fp32 [--disable_tta]       (unless --no-fp32)
    autoseg predict ... --backend onnx / torch [--disable_tta]  (with --backends)
autoseg's ``auto`` precision is bf16 on CPUs that run it faster (AMX); nnU-Net predicts in fp32 on
a CPU, so the fp32 run is the equal-arithmetic comparison. On a CPU in fp32 autoseg's ``auto``
backend picks, per run, ONNX Runtime (torch not imported) or torch, whichever its export record's
timings say is faster for the run's number of forward passes (the export is made once in the
set-up, untimed); its 1-image and N-image runs may then use different backends, so its per-case
and fixed split mixes them. ``--backends`` adds each backend on its own. Both use all CPU cores for torch (each sets its thread count to the core count on the CPU).
With ``--repeats R`` each run is repeated R times and the fastest counts (memory: the largest).
From t_1 (1 image) and t_N (N images): per case = (t_N - t_1) / (N - 1), fixed = t_1 - per case
(process start, imports, model loading, worker start). Peak RSS (MB) is from the N-image run:
summed over the process tree, sampled every 50 ms, and the largest single process (see
bench/common.py). Ratios are nnU-Net / autoseg (> 1: autoseg is faster / leaner).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_task_option, autoseg_executable, machine_info, markdown_table, measure,  # noqa: E402
                    nnunet_bin, ratio, require_folder, run_untimed, write_json)
from plan_and_preprocess import (DATASET_ID, NNUNET_DATASET, make_decathlon_copy, nnunet_env, run_autoseg,  # noqa: E402
                                 run_nnunet)

log = logging.getLogger("bench.predict")

CONFIGURATION = "3d_fullres"

# Runs inside $NNUNET_VENV: a randomly initialised nnU-Net checkpoint in the predictor's layout.
NNUNET_CHECKPOINT_SCRIPT = r"""
import json, os, shutil, sys
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

configuration, dataset = sys.argv[1], sys.argv[2]
pre = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
with open(os.path.join(pre, "nnUNetPlans.json")) as f:
    plans = json.load(f)
with open(os.path.join(pre, "dataset.json")) as f:
    dataset_json = json.load(f)
plans["continue_training"] = False  # the trainer pops this key (run_training sets it)
trainer = nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
trainer.initialize()
trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the TTA mirror axes
os.makedirs(trainer.output_folder, exist_ok=True)
shutil.copyfile(os.path.join(pre, "nnUNetPlans.json"), os.path.join(trainer.output_folder_base, "plans.json"))
shutil.copyfile(os.path.join(pre, "dataset.json"), os.path.join(trainer.output_folder_base, "dataset.json"))
trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
print("checkpoint written:", trainer.output_folder, "mirror axes:", trainer.inference_allowed_mirroring_axes)
"""


def make_nnunet_checkpoint(base: Path) -> None:
    """Write a randomly initialised fold_0/checkpoint_final.pth for nnU-Net under ``base``."""
    script = base / "make_checkpoint.py"
    script.write_text(NNUNET_CHECKPOINT_SCRIPT)
    run_untimed([nnunet_bin() / "python", script, CONFIGURATION, NNUNET_DATASET], env=nnunet_env(base),
                log_path=base / "logs" / "nnunet_checkpoint.log")


def train_autoseg_one_iteration(root: Path) -> None:
    run_untimed([autoseg_executable(), "train", CONFIGURATION, "0", "-d", str(DATASET_ID), "--root", root,
                 "--set", "schedule.num_epochs=1", "--set", "schedule.num_iterations_per_epoch=1",
                 "--set", "schedule.num_val_iterations_per_epoch=1", "--device", "cpu"],
                log_path=root / "logs" / "autoseg_train.log")


def make_input_folders(data: Path, parent: Path, n: int) -> tuple[Path, Path]:
    """Folders ``in_1`` and ``in_N`` of ``{case}_0000.nii.gz`` links to the last ``n`` training images."""
    training = json.loads((data / "dataset.json").read_text())["training"]
    if len(training) < n:
        raise ValueError(f"-n {n} asks for more images than {data} has ({len(training)})")
    chosen = [data / e["image"] for e in training[-n:]]
    folders = (parent / "in_1", parent / f"in_{n}")
    for folder, images in zip(folders, (chosen[:1], chosen)):
        folder.mkdir(parents=True, exist_ok=True)
        for img in images:
            name = img.name[: -len(".nii.gz")]
            (folder / f"{name}_0000.nii.gz").symlink_to(img.resolve())
    return folders


def nnunet_predict_cmd(inp: Path, out: Path, tta: bool) -> list:
    cmd = [nnunet_bin() / "nnUNetv2_predict", "-i", inp, "-o", out, "-d", str(DATASET_ID), "-c", CONFIGURATION,
           "-f", "0", "-npp", "1", "-nps", "1", "-device", "cpu", "--disable_progress_bar"]
    return cmd + ([] if tta else ["--disable_tta"])


def autoseg_predict_cmd(inp: Path, out: Path, root: Path, tta: bool, precision: str = "auto",
                        backend: str = "auto") -> list:
    cmd = [autoseg_executable(), "predict", "-i", inp, "-o", out, "-d", str(DATASET_ID), "--root", root,
           "-c", CONFIGURATION,
           "-f", "0", "--device", "cpu", "--precision", precision, "--backend", backend]
    return cmd + ([] if tta else ["--disable_tta"])


# extra autoseg runs: results key -> (column name, precision, backend)
EXTRA_ARMS = {"autoseg_fp32": ("autoseg fp32", "fp32", "auto"),
              "autoseg_onnx": ("autoseg onnx backend", "auto", "onnx"),
              "autoseg_torch": ("autoseg torch backend", "auto", "torch")}


def split_cost(t_1: float, t_n: float, n: int) -> tuple[float, float]:
    """(per-case seconds, fixed seconds) from the wall times for 1 and ``n`` images."""
    per_case = (t_n - t_1) / (n - 1)
    return per_case, t_1 - per_case


def time_tool(name: str, cmd_for, inputs: tuple[Path, Path], n: int, out_parent: Path, env=None,
              repeats: int = 1) -> dict:
    """Run ``cmd_for(in, out)`` on 1 and on ``n`` images, ``repeats`` times each; check every case was
    written. Times are the minimum over the repeats, memory the maximum."""
    runs: dict[int, list] = {1: [], n: []}
    for r in range(repeats):
        for count, inp in zip((1, n), inputs):
            out = out_parent / f"{name}_{count}_r{r}"
            m = measure(cmd_for(inp, out), env=env, log_path=out_parent / f"{name}_{count}_r{r}.log")
            written = len(list(out.glob("*.nii.gz")))
            if written != count:
                raise RuntimeError(f"{name} wrote {written} of {count} segmentations; see {m.log}")
            runs[count].append(m)
    t_1, t_n = (min(m.wall_s for m in runs[c]) for c in (1, n))
    per_case, fixed = split_cost(t_1, t_n, n)
    if fixed < 0:
        log.warning("%s: negative fixed cost (%.2f s): the timings are noisy; use more images or --repeats",
                    name, fixed)
    every = runs[1] + runs[n]
    return {"t_1_s": t_1, "t_N_s": t_n, "per_case_s": per_case, "fixed_s": fixed,
            "peak_tree_rss_mb": max(m.peak_tree_rss_mb for m in every),
            "max_single_rss_mb": max(m.max_single_rss_mb for m in every),
            "runs": {str(c): v for c, v in runs.items()}}


def table_rows(results: dict) -> list[list]:
    """Rows: measure, nnU-Net, autoseg (its defaults), nnU-Net / autoseg, and for each extra arm
    measured (``EXTRA_ARMS``: autoseg in fp32, nnU-Net's arithmetic on a CPU; autoseg through
    torch) its value and nnU-Net / it."""
    rows = []
    extras = [k for k in EXTRA_ARMS if results.get(k)]
    for tta in ("no_tta", "tta"):
        a, b = results["nnunet"][tta], results["autoseg"][tta]
        for key, label in (("per_case_s", "per case (s)"), ("fixed_s", "fixed cost (s)"),
                           ("t_N_s", f"total, {results['n']} images (s)"),
                           ("peak_tree_rss_mb", "peak RSS, process tree (MB)"),
                           ("max_single_rss_mb", "max single-process RSS (MB)")):
            row = [f"{'TTA' if tta == 'tta' else 'no TTA'}: {label}", a[key], b[key], ratio(a[key], b[key])]
            for k in extras:
                c = results[k][tta]
                row += [c[key], ratio(a[key], c[key])]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_option(p, "--data")
    p.add_argument("--subset", type=int, default=None, help="plan from the first N training cases only (smoke tests)")
    p.add_argument("-n", "--num-images", type=int, default=10, help="images to predict (>= 2; default 10)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="processes for the set-up preprocessing")
    p.add_argument("--repeats", type=int, default=1, help="runs of each measurement; the fastest counts (default 1)")
    p.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir, deleted)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--no-fp32", action="store_true",
                   help="skip the extra autoseg run in fp32 (by default autoseg runs in the precision it picks "
                        "here, bf16 on CPUs with AMX, and once more in fp32, nnU-Net's CPU arithmetic)")
    p.add_argument("--backends", action="store_true",
                   help="also time autoseg with --backend onnx and with --backend torch (its default, auto, "
                        "picks one per run on a CPU in fp32)")
    args = p.parse_args(argv)
    args.data = require_folder(args.data, "--data")
    if args.num_images < 2:
        p.error("-n must be at least 2 (the fixed cost needs two runs of different sizes)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if work.exists() and any(work.iterdir()):
        p.error(f"--workdir {work} is not empty; give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    n = args.num_images
    try:
        task = make_decathlon_copy(args.data, work / "msd", args.subset)
        log.info("set-up: nnU-Net plan_and_preprocess + random checkpoint ...")
        nn_base, as_root = work / "nnunet", work / "autoseg"
        run_nnunet(task, nn_base, args.num_processes, (CONFIGURATION,))
        make_nnunet_checkpoint(nn_base)
        log.info("set-up: autoseg plan_and_preprocess + 1-iteration training ...")
        run_autoseg(task, as_root, args.num_processes, (CONFIGURATION,))
        train_autoseg_one_iteration(as_root)
        inputs = make_input_folders(args.data, work / "inputs", n)
        # untimed: the ONNX export of the checkpoint, made by the first predict with the onnx backend
        run_untimed(autoseg_predict_cmd(inputs[0], work / "outputs" / "warm_up", as_root, False),
                    log_path=work / "warm_up.log")
        arms = [k for k, on in (("autoseg_fp32", not args.no_fp32), ("autoseg_onnx", args.backends),
                                ("autoseg_torch", args.backends)) if on]
        results: dict = {"nnunet": {}, "autoseg": {}, **{k: {} for k in arms}}
        env = nnunet_env(nn_base)
        for tta in (False, True):
            key = "tta" if tta else "no_tta"
            log.info("timing predict (%s) ...", key)
            results["nnunet"][key] = time_tool(f"nnunet_{key}", lambda i, o: nnunet_predict_cmd(i, o, tta), inputs,
                                               n, work / "outputs", env, args.repeats)
            results["autoseg"][key] = time_tool(f"autoseg_{key}", lambda i, o: autoseg_predict_cmd(i, o, as_root, tta),
                                                inputs, n, work / "outputs", repeats=args.repeats)
            for arm in arms:
                _, precision, backend = EXTRA_ARMS[arm]
                results[arm][key] = time_tool(
                    f"{arm}_{key}", lambda i, o: autoseg_predict_cmd(i, o, as_root, tta, precision, backend), inputs,
                    n, work / "outputs", repeats=args.repeats)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["n"] = n
    rows = table_rows(results)
    result = {"benchmark": "predict", "configuration": CONFIGURATION, "data": str(args.data),
              "subset": args.subset, "num_images": n, "repeats": args.repeats, "machine": machine_info(),
              "nnunet": results["nnunet"], "autoseg": results["autoseg"],
              **{k: results.get(k) for k in EXTRA_ARMS},
              "ratios_nnunet_over_autoseg": {r[0]: r[3] for r in rows}}
    for i, k in enumerate(k for k in EXTRA_ARMS if results.get(k)):
        result[f"ratios_nnunet_over_{k}"] = {r[0]: r[5 + 2 * i] for r in rows}
    print(json.dumps(result, indent=2, default=lambda o: o.__dict__))
    print()
    header = ["predict 3d_fullres", "nnU-Net v2", "autoseg (defaults)", "nnU-Net / autoseg"]
    for k in EXTRA_ARMS:
        if results.get(k):
            header += [EXTRA_ARMS[k][0], f"nnU-Net / {EXTRA_ARMS[k][0]}"]
    print(markdown_table(header, rows))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
