"""bench/experiments/confusion.py: voxel confusion matrices of prediction folders against references."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "experiments"))

from confusion import confusion, main, per_label  # noqa: E402


def write(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(folder / name))


def test_confusion_counts_reference_rows_against_predicted_columns(tmp_path, capsys):
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, 0, :2] = 1  # two voxels of label 1
    ref[0, 1, :3] = 2  # three of label 2
    pred = ref.copy()
    pred[0, 0, 1] = 2  # one label-1 voxel predicted 2
    pred[0, 3, 3] = 1  # one background voxel predicted 1
    write(tmp_path / "ref", "a.nii.gz", ref)
    write(tmp_path / "pred", "a.nii.gz", pred)
    write(tmp_path / "ref", "b.nii.gz", ref)
    write(tmp_path / "pred", "b.nii.gz", ref)  # a perfect second case
    counts = confusion(tmp_path / "ref", tmp_path / "pred", ["a.nii.gz", "b.nii.gz"], 3)
    assert counts.tolist() == [[21, 1, 0], [0, 3, 1], [0, 0, 6]]
    labels = per_label(counts)
    # label 1: TP 3, FP 1, FN 1 -> 6 / 8; label 2: TP 6, FP 1, FN 0 -> 12 / 13
    assert labels[1] == {"dice": pytest.approx(0.75), "fp": 1, "fn": 1, "fn_to": {2: 1}}
    assert labels[2]["dice"] == pytest.approx(12 / 13) and labels[2]["fn_to"] == {}
    assert main([str(tmp_path / "ref"), str(tmp_path / "pred")]) == 0
    assert "label 1: Dice 0.7500 (pooled), FP 1, FN 1 (1 to 2)" in capsys.readouterr().out


def test_a_prediction_without_reference_is_refused(tmp_path):
    write(tmp_path / "ref", "a.nii.gz", np.zeros((2, 2, 2)))
    write(tmp_path / "pred", "c.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(SystemExit, match="1 predicted cases have no reference in .*c.nii.gz"):
        main([str(tmp_path / "ref"), str(tmp_path / "pred")])
