"""dataset.json's explicit file list (nnU-Net v2's "dataset" key) in place of the folder convention."""
import json

import pytest

from autoseg.dataset import DatasetError, load_dataset
from autoseg.integrity import verify_dataset_folder
from synthetic import make_dataset, relist_files


def test_the_listed_files_are_the_training_cases(workspace):
    folder = make_dataset(workspace / "raw", num_cases=3)
    relist_files(folder)
    spec = verify_dataset_folder(folder, num_processes=1)
    cases = spec.training_cases()
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002"]
    assert cases[1].images == (folder / "scans" / "t1_case_001.nii.gz",)
    assert cases[1].label == folder / "masks" / "case_001_seg.nii.gz"


def test_every_missing_listed_file_is_named_at_once(workspace):
    folder = make_dataset(workspace / "raw", num_cases=3)
    relist_files(folder, drop_from_disk=("scans/t1_case_000.nii.gz", "masks/case_002_seg.nii.gz"))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["numTraining"] = 5
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as err:
        verify_dataset_folder(folder, num_processes=1)
    assert err.value.problems == [
        f"case case_000: dataset.json lists scans/t1_case_000.nii.gz, not found in {folder}",
        f"case case_002: dataset.json lists masks/case_002_seg.nii.gz, not found in {folder}",
        "dataset.json: numTraining is 5 but 'dataset' lists 3 cases; set numTraining to 3",
    ]


@pytest.mark.parametrize("entry, expected", [
    ({"images": ["../elsewhere/a_0000.nii.gz"], "label": "masks/a.nii.gz"},
     "path '../elsewhere/a_0000.nii.gz' in 'dataset' escapes the dataset folder"),
    ({"image": "scans/a.nii.gz", "label": "masks/a.nii.gz"},
     "'dataset' entry 'a' must be {\"images\": [paths, one per channel], \"label\": path}"),
    ({"images": ["scans/a.nii"], "label": "masks/a.nii.gz"}, "names ['scans/a.nii'], which do not end in"),
])
def test_a_malformed_file_list_is_refused_with_what_was_found(workspace, entry, expected):
    folder = make_dataset(workspace / "raw", num_cases=1)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["dataset"] = {"a": entry}
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    assert expected in str(err.value)
