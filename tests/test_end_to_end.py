"""One CPU run through every CLI command on a tiny synthetic dataset."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from synthetic import make_dataset


@pytest.mark.slow
def test_every_command_end_to_end(tmp_path):
    # a Decathlon-style task made from a synthetic dataset: 10 training cases, 2 held out
    src = make_dataset(tmp_path / "src", num_cases=12, shape=(20, 24, 22), seed=3)
    task = tmp_path / "Task09_Blobs"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    training = []
    for i in range(12):
        cid = f"case_{i:03d}"
        dst = "imagesTr" if i < 10 else "imagesTs"
        shutil.copy(src / "imagesTr" / f"{cid}_0000.nii.gz", task / dst / f"{cid}.nii.gz")
        if i < 10:
            shutil.copy(src / "labelsTr" / f"{cid}.nii.gz", task / "labelsTr" / f"{cid}.nii.gz")
            training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "outer", "2": "inner"},
        "training": training, "test": []}))
    root = ["--root", str(tmp_path / "ws")]
    ws = tmp_path / "ws"

    assert main(["convert_msd", "-i", str(task), *root]) == 0
    assert main(["plan_and_preprocess", "-d", "9", "-np", "2", "--device-profile", "cpu", "-c", "3d_fullres",
                 *root]) == 0
    pre = ws / "preprocessed" / "Dataset009_Blobs"
    assert {"fingerprint.json", "plans.json", "dataset.json"} <= {p.name for p in pre.iterdir()}
    assert len(list((pre / "3d_fullres").glob("*.json"))) == 10

    assert main(["train", "3d_fullres", "0", "-d", "Blobs", "-np", "1", "--set", "num_epochs=4",
                 "--set", "num_iterations_per_epoch=10", "--set", "num_val_iterations_per_epoch=2", *root]) == 0
    fold = ws / "results" / "Dataset009_Blobs" / "3d_fullres" / "default" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()

    assert main(["find_best_config", "-d", "9", "-c", "3d_fullres", "-f", "0", *root]) == 0
    selection = json.loads((ws / "results" / "Dataset009_Blobs" / "selection.json").read_text())
    assert selection["configurations"] == ["3d_fullres"]

    images = ws / "raw" / "Dataset009_Blobs" / "imagesTs"
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(images), "-o", str(out), "-d", "9", *root]) == 0
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in (10, 11):
        shutil.copy(src / "labelsTr" / f"case_{i:03d}.nii.gz", refs / f"case_{i:03d}.nii.gz")
        a = sitk.ReadImage(str(out / f"case_{i:03d}.nii.gz"))
        b = sitk.ReadImage(str(images / f"case_{i:03d}_0000.nii.gz"))
        assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert main(["evaluate", "-ref", str(refs), "-pred", str(out), "-d", "9", *root]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # chance level: the outer ellipsoid fills ~3% of a case, so a random guess scores ~0.03
    assert summary["mean"]["1"]["dice"] > 0.5

    archive = tmp_path / "model.zip"
    assert main(["export_model", "-d", "9", "-o", str(archive), *root]) == 0
    assert main(["import_model", str(archive), "--root", str(tmp_path / "elsewhere")]) == 0
    out2 = tmp_path / "pred2"
    assert main(["predict", "-i", str(images), "-o", str(out2), "-d", "9", "--root", str(tmp_path / "elsewhere")]) == 0
    for i in (10, 11):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"case_{i:03d}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out2 / f"case_{i:03d}.nii.gz")))
        assert np.array_equal(a, b)
