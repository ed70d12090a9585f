"""A region-based dataset (nnU-Net v2's dataset.json unchanged: a name mapped to a list of values,
with regions_class_order) through the whole CLI: plan_and_preprocess, train 3d_fullres, 2d,
3d_lowres and the cascade, find_best_config, predict and evaluate, on a tiny two-channel set whose
lesion (values 1 and 2) holds a core (value 2)."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.plans import load_plans
from synthetic import make_dataset, plan_and_preprocess_cpu

NAME = "Dataset906_Regions"
TINY = ["--set", "num_epochs=1", "--set", "num_iterations_per_epoch=3", "--set", "num_val_iterations_per_epoch=1",
        "--set", "validation_mirroring=false", "-nw", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_region_based_dataset_end_to_end(tmp_path, sparse):
    """``sparse``: the training labels hold the ignore value 3 outside four slices per case (the
    ignore label through 3d_lowres and the cascade as well)."""
    ws = tmp_path / "ws"
    raw = make_dataset(ws / "raw", name=NAME, num_cases=6, channels=("T1", "FLAIR"), seed=3)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lesion": [1, 2], "core": 2, **({"ignore": 3} if sparse else {})}
    meta["regions_class_order"] = [1, 2]
    (raw / "dataset.json").write_text(json.dumps(meta))
    dense = tmp_path / "dense"
    shutil.copytree(raw / "labelsTr", dense)
    if sparse:
        for path in sorted((raw / "labelsTr").glob("*.nii.gz")):
            image = sitk.ReadImage(str(path))
            lab = sitk.GetArrayFromImage(image)
            keep = np.linspace(3, lab.shape[0] - 4, 4).round().astype(int)
            out = np.full_like(lab, 3)
            out[keep] = lab[keep]
            written = sitk.GetImageFromArray(out)
            written.CopyInformation(image)
            sitk.WriteImage(written, str(path))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((raw / "imagesTr").glob("case_00[01]_*.nii.gz")):
        shutil.copy(path, inputs / path.name)
    root = str(ws)
    plan_and_preprocess_cpu(root, 906)
    pre = ws / "preprocessed" / NAME
    plans = load_plans(pre / "plans.json")
    assert plans.regions == ((1, (1, 2)), (2, (2,))) and plans.num_classes == 2
    assert set(plans.configurations) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    assert all(not c.small_classes for c in plans.configurations.values())
    cases = [f"case_{i:03d}" for i in range(6)]
    (pre / "splits.json").write_text(json.dumps([{"train": cases[3:], "val": cases[:3]},
                                                 {"train": cases[:3], "val": cases[3:]}]))
    for configuration, folds in (("3d_fullres", ["0"]), ("2d", ["0"]), ("3d_lowres", ["0", "1"]),
                                 ("3d_cascade_fullres", ["0"])):
        assert main(["train", configuration, *folds, "-d", "906", "--root", root, *TINY]) == 0
        fold = ws / "results" / NAME / configuration / "default" / "fold_0"
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        assert set(summary["mean"]) == {"1", "2"} and summary["regions"] == {"1": [1, 2], "2": [2]}
        assert summary.get("ignore_label") == (3 if sparse else None)
        with np.load(fold / "validation" / "case_000.npz") as z:
            probs, order = z["probabilities"].astype(np.float32), z["regions_class_order"].tolist()
        assert probs.shape[0] == 2 and order == [1, 2] and 0 <= probs.min() and probs.max() <= 1
        state = torch.load(fold / "checkpoint_final.pth", weights_only=True, map_location="cpu")
        heads = [v for k, v in state["network"].items() if k.startswith("heads.0.") and k.endswith("bias")]
        assert heads[0].shape == (2,)  # one sigmoid output per region, no background channel

    assert main(["find_best_config", "-d", "906", "-c", "3d_fullres", "2d", "3d_cascade_fullres", "-f", "0",
                 "--root", root]) == 0
    selection = json.loads((ws / "results" / NAME / "selection.json").read_text())
    assert "3d_fullres+2d" in selection["candidates"] and set(selection["candidates"]["2d"]) == {"1", "2", "mean"}
    assert selection["postprocessing"]["regions"] == [[1, [1, 2]], [2, [2]]]

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-d", "906", "--root", root,
                 "--save_probabilities"]) == 0
    for case in ("case_000", "case_001"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert set(np.unique(seg)) <= {0, 1, 2}  # never the ignore value
        with np.load(out / f"{case}.npz") as z:
            assert z["probabilities"].shape[0] == 2 and z["regions_class_order"].tolist() == [1, 2]
    # the same files with the steps around the network in worker processes (inference/overlap.py)
    pooled = tmp_path / "pooled"
    assert main(["predict", "-i", str(inputs), "-o", str(pooled), "-d", "906", "--root", root,
                 "--save_probabilities", "-nwp", "1", "-nwe", "1"]) == 0
    assert sorted(p.name for p in pooled.iterdir()) == sorted(p.name for p in out.iterdir())
    for case in ("case_000", "case_001"):
        assert (pooled / f"{case}.nii.gz").read_bytes() == (out / f"{case}.nii.gz").read_bytes()
        with np.load(out / f"{case}.npz") as a, np.load(pooled / f"{case}.npz") as b:
            assert np.array_equal(a["probabilities"], b["probabilities"])
    assert main(["evaluate", "-ref", str(dense), "-pred", str(out), "-d", "906", "--root", root]) == 0
    scores = json.loads((out / "summary.json").read_text())
    assert scores["regions"] == {"1": [1, 2], "2": [2]} and scores["num_cases"] == 2
