"""Benchmark: peak memory of ``autoseg predict`` on one large CT (512 x 512 x 400, 3 foreground classes).

Reproduce (from the repository root; about 10 minutes on this 2-core machine):

    .venv/bin/python bench/predict_large.py --root /tmp/predict_large --json bench/out/predict_large.json

Smoke test: ``--shape 100 128 128``.

Set-up (untimed), in the workspace ``--root``:
1. a training set of 6 CT-like cases from bench/data/make_cascade_dataset.py (``--train-scale`` 0.5:
   about 100 x 145 x 145 voxels at about 2.2 x 1.65 x 1.65 mm), with a third class added: the
   spine (voxels over 300 HU outside the organ) is label 3, so the model has 3 foreground classes
   (organ, lesion, bone);
2. ``autoseg plan_and_preprocess -c 3d_fullres --device-profile gpu-8gb`` (the GPU-class plan:
   nnU-Net-sized network and patch) and ``autoseg train 3d_fullres 0`` for one iteration (a
   practically untrained network: memory does not depend on the weights);
3. the test image: the same anatomy generator at ``--shape`` (z y x, default 400 512 512) and
   ``--spacing`` (default 1.0 x 0.8 x 0.8 mm), int16, written as .nii.gz.

Timed: ``autoseg predict -i IN -o OUT -d ID -c 3d_fullres -f 0 --disable_tta`` (mirroring does
not change the memory, only the time: the same accumulators are reused for each mirrored pass).
Recorded: wall time, peak RSS summed over the process tree and of the largest single process
(sampled every 50 ms, bench/common.py), the image size before and after resampling to the plan's
spacing. The issue's target: within 6 GB peak RSS.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "data")]  # common, and the data generators
from common import machine_info, measure, run_untimed, write_json  # noqa: E402
from make_cascade_dataset import CaseGeometry, case_geometry, make_case  # noqa: E402
from nifti import write_nifti  # noqa: E402

log = logging.getLogger("bench.predict_large")
DATASET_ID = 961
NAME = f"Dataset{DATASET_ID}_LargeCT"
BONE_LABEL, BONE_HU = 3, 300


def with_bone(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``label`` with the spine (voxels over ``BONE_HU`` not yet labelled) as class 3."""
    out = label.copy()
    out[(image > BONE_HU) & (label == 0)] = BONE_LABEL
    return out


def make_training_set(root: Path, num_cases: int, scale: float, seed: int) -> Path:
    folder = root / "raw" / NAME
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        geometry = case_geometry(rng, scale)
        image, label = make_case(geometry, rng)
        write_nifti(image, geometry.spacing, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_nifti(with_bone(image, label), geometry.spacing, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "name": "LargeCT", "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "lesion": 2, "bone": 3},
        "numTraining": num_cases, "file_ending": ".nii.gz",
        "description": f"bench/predict_large.py training set, scale {scale}, seed {seed}",
    }, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="workspace (created; reused if it holds the set-up)")
    p.add_argument("--shape", type=int, nargs=3, default=[400, 512, 512], help="test image z y x (voxels)")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.0, 0.8, 0.8], help="test image z y x (mm)")
    p.add_argument("--train-cases", type=int, default=6)
    p.add_argument("--train-scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    root = args.root.resolve()
    autoseg = [sys.executable, "-m", "autoseg.cli"]
    logs = root / "logs"
    fold = root / "results" / NAME / "3d_fullres" / "default" / "fold_0" / "checkpoint_final.pth"
    if not fold.is_file():
        log.info("training set and one-iteration model in %s ...", root)
        make_training_set(root, args.train_cases, args.train_scale, args.seed)
        run_untimed(autoseg + ["plan_and_preprocess", "-d", str(DATASET_ID), "--root", str(root), "-c", "3d_fullres",
                               "--device-profile", "gpu-8gb", "-np", "2"], log_path=logs / "plan.log")
        run_untimed(autoseg + ["train", "3d_fullres", "0", "-d", str(DATASET_ID), "--root", str(root),
                               "--set", "schedule.num_epochs=1", "--set", "schedule.num_iterations_per_epoch=1",
                               "--set", "schedule.num_val_iterations_per_epoch=1",
                               "--set", "validation.mirroring=false"],
                    log_path=logs / "train.log")

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    images = root / f"images_{'x'.join(map(str, shape))}"
    image_path = images / "large_0000.nii.gz"
    if not image_path.is_file():
        log.info("test image %s at %s mm ...", shape, spacing)
        image, _ = make_case(CaseGeometry(shape, spacing), np.random.default_rng(args.seed + 1))
        write_nifti(image, spacing, image_path)
        del image
    plans = json.loads((root / "preprocessed" / NAME / "plans.json").read_text())
    cp = plans["configurations"]["3d_fullres"]
    target = cp["spacing"]
    resampled = [int(round(n * s / t)) for n, s, t in zip(shape, spacing, target)]

    out = root / "predictions"
    run_untimed(["rm", "-rf", str(out)])
    log.info("timed: autoseg predict ...")
    m = measure(autoseg + ["predict", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "--root", str(root),
                           "-c", "3d_fullres", "-f", "0", "--disable_tta", "--device", "cpu"],
                log_path=logs / "predict.log")
    import SimpleITK as sitk

    written = sitk.ReadImage(str(out / "large.nii.gz"))
    labels = np.unique(sitk.GetArrayViewFromImage(written)).tolist()
    result = {
        "benchmark": "predict_large", "machine": machine_info(), "command": " ".join(sys.argv),
        "image_shape_zyx": shape, "image_spacing_zyx_mm": spacing, "num_foreground_classes": 3,
        "plan": {"spacing": target, "patch_size": cp["patch_size"],
                 "features_per_stage": cp["network"]["features_per_stage"]},
        "shape_at_plan_spacing": resampled,
        "wall_s": m.wall_s, "peak_tree_rss_mb": m.peak_tree_rss_mb, "max_single_rss_mb": m.max_single_rss_mb,
        "output_size_xyz": list(written.GetSize()), "output_labels": labels, "log": m.log,
    }
    print(json.dumps(result, indent=1))
    write_json(result, root / "predict_large.json")
    if args.json:
        write_json(result, args.json)
    ok = tuple(result["output_size_xyz"]) == tuple(reversed(shape))
    print(f"\npredict of a {' x '.join(map(str, reversed(shape)))} CT (x y z), 3 foreground classes: "
          f"{m.wall_s:.0f} s, peak RSS {m.peak_tree_rss_mb / 1024:.2f} GB (process tree), "
          f"{m.max_single_rss_mb / 1024:.2f} GB (largest process); output geometry {'ok' if ok else 'WRONG'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
