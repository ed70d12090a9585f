"""A shallow, thick-slice dataset (a small version of bench/data/make_cine_dataset.py) through plan,
time-budgeted training, predict and evaluate on the cpu profile."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "data"))

from make_cine_dataset import make_dataset  # noqa: E402


@pytest.mark.slow
def test_a_shallow_thick_slice_dataset_end_to_end(tmp_path):
    ws = tmp_path / "ws"
    raw = make_dataset(ws, 130, num_train=6, num_test=2, scale=0.5, seed=1)  # about 3 x 3 x 10 mm
    root = ["--root", str(ws)]
    assert main(["plan_and_preprocess", "-d", "130", "-np", "2", "--device-profile", "cpu", "--time-budget", "1m",
                 *root]) == 0
    pre = ws / "preprocessed" / "Dataset130_CineSynth"
    plans = json.loads((pre / "plans.json").read_text())
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}  # no lowres stage for a small image
    full = plans["configurations"]["3d_fullres"]
    assert full["spacing"][0] > 3 * full["spacing"][1]
    assert full["patch_size"][0] >= full["median_shape"][0]  # the whole stack in every patch
    assert full["network"]["kernel_sizes"][0] == [1, 3, 3]
    timed = json.loads((pre / "throughput.json").read_text())["configurations"]
    assert set(timed) == {"2d", "3d_fullres"} and all(t["precision"] in ("fp32", "bf16") for t in timed.values())

    assert main(["train", "3d_fullres", "0", "-d", "130", "--time-budget", "25s", *root]) == 0
    fold = ws / "results" / "Dataset130_CineSynth" / "3d_fullres" / "default" / "fold_0"
    log = (fold / "training.log").read_text()
    assert "final validation mirrors" in log and (fold / "validation" / "summary.json").is_file()
    saved = json.loads((fold / "train_config.json").read_text())
    assert saved["validation"]["mirror_axes"] in (None, [1, 2], [])  # every axis, the in-plane ones, or none

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "130", "-c", "3d_fullres", "-f", "0",
                 *root]) == 0
    for case in ("cine_006", "cine_007"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == image.GetSize() and pred.GetSpacing() == pytest.approx(image.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out), "-d", "130", *root]) == 0
    assert set(json.loads((out / "summary.json").read_text())["mean"]) == {"1", "2", "3"}
