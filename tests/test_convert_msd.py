import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.convert_msd import convert_msd
from autoseg.errors import UserFacingError
from autoseg.imageio import read_image
from autoseg.integrity import verify_dataset_folder


def make_task(root, n=2):
    task = root / "Task07_Multi"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "imagesTs").mkdir()
    training = []
    for i in range(n):
        arr = np.stack([np.full((3, 4, 5), 10 * c + i, np.float32) for c in range(2)])  # (C, Z, Y, X)
        img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr])
        img.SetSpacing((0.5, 0.6, 0.7, 1.0))
        sitk.WriteImage(img, str(task / "imagesTr" / f"m_{i}.nii.gz"))
        lab = sitk.GetImageFromArray(np.ones((3, 4, 5), np.uint8))
        lab.SetSpacing((0.5, 0.6, 0.7))
        sitk.WriteImage(lab, str(task / "labelsTr" / f"m_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/m_{i}.nii.gz", "label": f"./labelsTr/m_{i}.nii.gz"})
    sitk.WriteImage(img, str(task / "imagesTs" / "t_0.nii.gz"))
    meta = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"},
            "training": training, "test": ["./imagesTs/t_0.nii.gz"], "numTraining": n}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_4d_images_are_split_into_channels(tmp_path):
    out = convert_msd(make_task(tmp_path), tmp_path / "raw")
    assert out.name == "Dataset007_Multi"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert meta["labels"] == {"background": 0, "edema": 1} and meta["numTraining"] == 2
    data, geom = read_image([out / "imagesTr" / "m_1_0000.nii.gz", out / "imagesTr" / "m_1_0001.nii.gz"])
    assert data.shape == (2, 3, 4, 5)
    assert data[0].max() == 1 and data[1].max() == 11
    assert geom.spacing == pytest.approx((0.7, 0.6, 0.5))
    assert (out / "imagesTs" / "t_0_0001.nii.gz").is_file()
    verify_dataset_folder(out, num_processes=1)
    with pytest.raises(UserFacingError, match="already exists"):
        convert_msd(make_task(tmp_path / "again"), tmp_path / "raw")


@pytest.mark.realdata
def test_real_hippocampus_subset(shared_data, tmp_path):
    src = shared_data / "Task04_Hippocampus"
    task = tmp_path / "Task04_Hippocampus"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = meta["training"][:3]
    for e in meta["training"]:
        for key in ("image", "label"):
            (task / e[key]).symlink_to(src / e[key])
    (task / "dataset.json").write_text(json.dumps(meta))
    out = convert_msd(task, tmp_path / "raw", num_processes=1)
    spec = verify_dataset_folder(out, num_processes=1)
    assert spec.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert len(spec.training_cases()) == 3 and out.name == "Dataset004_Hippocampus"
