"""Every bad-input case gets a clear message; all problems come together; nothing is written."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.dataset import DatasetError
from autoseg.integrity import verify_dataset_folder
from synthetic import write_nifti


def problems_of(folder) -> list[str]:
    with pytest.raises(DatasetError) as info:
        verify_dataset_folder(folder, num_processes=1)
    return info.value.problems


def edit_json(folder, **changes):
    d = json.loads((folder / "dataset.json").read_text())
    d.update(changes)
    for k, v in list(d.items()):
        if v is None:
            del d[k]
    (folder / "dataset.json").write_text(json.dumps(d))


def test_valid_dataset_passes(synth_dataset):
    spec = verify_dataset_folder(synth_dataset, num_processes=2)
    assert len(spec.training_cases()) == 6


def test_missing_image_and_missing_label(synth_dataset):
    (synth_dataset / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (synth_dataset / "labelsTr" / "case_002.nii.gz").unlink()
    found = problems_of(synth_dataset)
    assert any("case case_001: label exists but no image" in p for p in found)
    assert any("case case_002: images in imagesTr but no label" in p for p in found)
    assert any("numTraining is 6 but 5" in p for p in found)


def test_extra_file_and_bad_naming(synth_dataset):
    (synth_dataset / "imagesTr" / "notes.txt").write_text("x")
    found = problems_of(synth_dataset)
    assert any("imagesTr/notes.txt: unexpected file" in p for p in found)


def test_channel_count_mismatch(synth_dataset):
    edit_json(synth_dataset, channel_names={"0": "MRI", "1": "T2"})
    found = problems_of(synth_dataset)
    assert any("channel file(s) case_000_0001.nii.gz missing" in p for p in found) or \
        any("1 channel(s) found but dataset.json declares 2" in p for p in found)


def test_shape_and_geometry_mismatch(synth_dataset):
    lab = synth_dataset / "labelsTr" / "case_000.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lab)))
    write_nifti(arr[:-1], lab)
    img = synth_dataset / "labelsTr" / "case_001.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(img)))
    write_nifti(arr, img, spacing_zyx=(2.0, 1.0, 1.0))
    found = problems_of(synth_dataset)
    assert any("case case_000" in p and "disagree in shape" in p for p in found)
    assert any("case case_001" in p and "spacing" in p for p in found)


def test_undeclared_and_non_integer_labels(synth_dataset):
    lab = synth_dataset / "labelsTr" / "case_000.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lab)))
    arr[0, 0, 0] = 7
    write_nifti(arr, lab)
    write_nifti(arr.astype(np.float32) + 0.5, synth_dataset / "labelsTr" / "case_001.nii.gz")
    found = problems_of(synth_dataset)
    assert any("case case_000" in p and "value(s) [7] not declared" in p for p in found)
    assert any("case case_001" in p and "non-integer" in p for p in found)


@pytest.mark.parametrize("ending", [".mha", ".nii.gz"])  # SimpleITK alone reads NaN in NIfTI as 0
def test_nan_in_image(workspace, ending):
    from synthetic import make_dataset

    folder = make_dataset(workspace / "raw", file_ending=ending)
    p = folder / "imagesTr" / f"case_003_0000{ending}"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    write_nifti(arr, p)
    found = problems_of(folder)
    assert any("case case_003" in p and "2 NaN/inf" in p for p in found)


def test_corrupt_file(synth_dataset):
    (synth_dataset / "imagesTr" / "case_004_0000.nii.gz").write_bytes(b"garbage")
    found = problems_of(synth_dataset)
    assert any("case case_004" in p and "unreadable or corrupt" in p for p in found)


def test_cut_off_image_and_label(synth_dataset):
    # the image cut to 2/3 of its bytes: SimpleITK alone reads it with zeros in place of the rest; the
    # label (196 bytes) cut to half: too short to hold a header, SimpleITK itself refuses it
    image, label = synth_dataset / "imagesTr" / "case_002_0000.nii.gz", synth_dataset / "labelsTr" / "case_005.nii.gz"
    declared = 352 + int(np.prod(sitk.ReadImage(str(image)).GetSize())) * 4  # float32 voxels
    image.write_bytes(image.read_bytes()[: image.stat().st_size * 2 // 3])
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    found = problems_of(synth_dataset)
    assert len(found) == 2
    assert found[0].startswith(f"case case_002: {image}: the file is incomplete: its header declares {declared} bytes")
    assert found[1].startswith(f"case case_005: cannot read {label}")
    assert all(p.endswith("copy or re-export it again") for p in found)


def test_empty_dataset(synth_dataset):
    for p in (synth_dataset / "labelsTr").iterdir():
        p.unlink()
    for p in (synth_dataset / "imagesTr").iterdir():
        p.unlink()
    edit_json(synth_dataset, numTraining=0)
    assert any("the dataset is empty" in p for p in problems_of(synth_dataset))


def test_duplicate_case_ids(synth_dataset):
    for sub, name in (("imagesTr", "CASE_000_0000.nii.gz"), ("labelsTr", "CASE_000.nii.gz")):
        src = synth_dataset / sub / name.replace("CASE", "case")
        (synth_dataset / sub / name).write_bytes(src.read_bytes())
    edit_json(synth_dataset, numTraining=7)
    assert any("duplicate case id 'case_000'" in p for p in problems_of(synth_dataset))


@pytest.mark.parametrize("change,message", [
    (dict(labels=None), "missing key 'labels'"),
    (dict(labels={"background": 0, "a": "one"}), "label 'a' must map to an integer"),
    (dict(labels={"a": 1}), "labels must include background"),
    (dict(channel_names=[1]), "channel_names must be a non-empty object"),
    (dict(file_ending=".jpg"), "file_ending must be one of"),
    (dict(numTraining=-1), "numTraining must be a non-negative integer"),
    (dict(dataset={"x": "../../etc/passwd"}), "escapes the dataset folder"),
])
def test_malformed_dataset_json(synth_dataset, change, message):
    edit_json(synth_dataset, **change)
    assert any(message in p for p in problems_of(synth_dataset))


def test_invalid_json(synth_dataset):
    (synth_dataset / "dataset.json").write_text("{not json")
    assert any("is not valid JSON" in p for p in problems_of(synth_dataset))


def test_two_problems_reported_together_and_nothing_written(synth_dataset, workspace, capsys):
    (synth_dataset / "imagesTr" / "case_004_0000.nii.gz").write_bytes(b"garbage")
    (synth_dataset / "labelsTr" / "case_005.nii.gz").unlink()
    code = main(["plan_and_preprocess", "-d", "901", "--root", str(workspace), "-np", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "case case_004" in err and "case case_005" in err and "Nothing was written" in err
    assert not (workspace / "preprocessed").exists()
