"""When 3d_lowres and the cascade are planned: ``--force-lowres`` through the CLI, and the automatic
trigger on the geometry of bench/data/make_cascade_dataset.py."""
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.fingerprint_types import CaseFingerprint, load_fingerprint
from autoseg.planners.experiment import LOWRES_TRIGGER, plan_experiment

REPO = Path(__file__).resolve().parents[2]
FINGERPRINT = Path(__file__).parent / "data" / "hippocampus_fingerprint.json"
NAME = "Dataset901_Synth"


def _generator():
    spec = importlib.util.spec_from_file_location("make_cascade_dataset", REPO / "bench" / "data" / "make_cascade_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", ["plan_and_preprocess", "plan"])
def test_force_lowres_on_the_command_line(synth_dataset, workspace, command):
    r = str(workspace)
    if command == "plan":
        assert main(["fingerprint", "-d", "901", "-np", "1", "--root", r]) == 0
    base = [command, "-d", "901", "--root", r, "--device-profile", "gpu-8gb"] + (["-np", "1"] if command != "plan" else [])
    plans_path = workspace / "preprocessed" / NAME / "plans.json"
    assert main(base) == 0
    assert set(json.loads(plans_path.read_text())["configurations"]) == {"2d", "3d_fullres"}
    assert main(base + ["--force-lowres"]) == 0
    configs = json.loads(plans_path.read_text())["configurations"]
    assert set(configs) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    assert configs["3d_lowres"]["spacing"] == [2.0, 2.0, 2.0] and configs["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert configs["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    if command == "plan_and_preprocess":  # the cascade shares the 3d_fullres data; no folder of its own
        folders = {p.name for p in (workspace / "preprocessed" / NAME).iterdir() if p.is_dir()}
        assert folders == {"2d", "3d_fullres", "3d_lowres", "gt_segmentations"}
        assert len(list((workspace / "preprocessed" / NAME / "3d_lowres").glob("*.json"))) == 6


@pytest.mark.parametrize("profile", ["gpu-8gb", "cpu"])
def test_trigger_fires_on_the_cascade_benchmark_geometry(profile):
    gen = _generator()
    fp = load_fingerprint(FINGERPRINT)

    def fingerprint(scale):
        cases = []
        for i in range(10):
            g = gen.case_geometry(np.random.default_rng(i), scale)
            cases.append(CaseFingerprint(f"c{i}", g.shape, g.spacing, g.shape, {}, {}))
        return dataclasses.replace(fp, cases=tuple(cases))

    plans = plan_experiment(fingerprint(1.0), profile)
    full = plans.configuration("3d_fullres")
    assert math.prod(full.patch_size) / math.prod(full.median_shape) < LOWRES_TRIGGER
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans.configurations)
    tiny = plan_experiment(fingerprint(0.25), profile)  # the smoke-test version needs --force-lowres
    assert "3d_lowres" not in tiny.configurations


def test_generator_is_seeded_and_labels_a_small_organ(tmp_path):
    gen = _generator()
    a = gen.make_dataset(tmp_path / "a", num_cases=2, num_test=1, scale=0.25, seed=3)
    b = gen.make_dataset(tmp_path / "b", num_cases=2, num_test=1, scale=0.25, seed=3)
    assert sorted(p.name for p in (a / "imagesTs").iterdir()) == ["test_000_0000.nii.gz"]
    for rel in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_001.nii.gz", "labelsTs/test_000.nii.gz"):
        x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / rel))) for f in (a, b))
        assert np.array_equal(x, y)
    label = sitk.ReadImage(str(a / "labelsTr" / "case_000.nii.gz"))
    arr = sitk.GetArrayFromImage(label)
    assert set(np.unique(arr)) <= {0, 1, 2} and 0 < (arr > 0).mean() < 0.02  # a small organ
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(a / "imagesTr" / "case_000_0000.nii.gz")))
    assert image.dtype == np.int16 and image.min() == -1000  # air around the body
    assert json.loads((a / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
