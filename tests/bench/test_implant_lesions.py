"""bench/data/implant_lesions.py on a tiny Decathlon-layout dataset: blobs where and how big they should
be, anatomy kept, seeded, and the planner flags the implanted class and not the anatomy."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "data"))

from implant_lesions import LESION, build, swap_test_blobs  # noqa: E402
from synthetic import ellipsoid_case, write_nifti  # noqa: E402

from autoseg.dataset import load_dataset  # noqa: E402
from autoseg.fingerprint import extract_fingerprint  # noqa: E402
from autoseg.planners.experiment import plan_experiment  # noqa: E402


def decathlon_task(root: Path, n: int = 12, shape=(30, 40, 34)) -> Path:
    task = root / "Task04_Tiny"
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        img, lab = ellipsoid_case(shape, rng, background_value=1.0)
        write_nifti(img, task / "imagesTr" / f"tiny_{i:03d}.nii.gz")
        write_nifti(lab, task / "labelsTr" / f"tiny_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/tiny_{i:03d}.nii.gz", "label": f"./labelsTr/tiny_{i:03d}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "outer", "2": "inner"}, "training": training}))
    return task


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_implanted_dataset(tmp_path):
    task = decathlon_task(tmp_path)
    folder = build(task, tmp_path / "ws", dataset_id=990, seed=3, test_fraction=0.25)
    again = build(task, tmp_path / "ws2", dataset_id=990, seed=3, test_fraction=0.25)
    manifest = json.loads((folder / "implants.json").read_text())["cases"]
    assert manifest == json.loads((again / "implants.json").read_text())["cases"]  # seeded
    parts = {p: [m for m in manifest if m["part"] == p] for p in ("Tr", "Ts")}
    assert len(parts["Tr"]) == 9 and len(parts["Ts"]) == 3
    assert sum(bool(m["blobs"]) for m in parts["Tr"]) == 3 and sum(bool(m["blobs"]) for m in parts["Ts"]) == 1
    assert len(list((folder / "imagesTs").iterdir())) == 3 and len(list((folder / "labelsTs").iterdir())) == 3
    from scipy import ndimage

    for m in manifest:
        case, part = m["case"], m["part"]
        lab = read(folder / f"labels{part}" / f"{case}.nii.gz")
        original = read(task / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(lab[lab != LESION], original[lab != LESION])  # anatomy kept
        assert not (original[lab == LESION]).any()  # blobs only on background
        comps, n = ndimage.label(lab == LESION, np.ones((3, 3, 3)))
        assert n == len(m["blobs"]) and n <= 3
        for b in m["blobs"]:
            assert 4 <= b["voxels"] <= 150 and 1.0 <= b["contrast"] <= 3.0
        image = read(folder / f"images{part}" / f"{case}_0000.nii.gz")
        source = read(task / "imagesTr" / f"{case}.nii.gz")
        if m["blobs"]:
            assert (image[lab == LESION] > source[lab == LESION]).all()  # brighter
        else:
            assert np.array_equal(image, source)
    spec = load_dataset(folder)
    plans = plan_experiment(extract_fingerprint(spec, num_processes=1))
    small = plans.configuration("3d_fullres").small_classes
    # the outer ellipsoid (~10% of the image) is not flagged; the blobs are. (The synthetic inner
    # ellipsoid, a few voxels in radius, is flagged too: ~0.2% of the patch, below the 0.5% rule.)
    assert LESION in small and 1 not in small


def test_swap_test_blobs(tmp_path):
    """The held-out cases with blobs come back as the source had them; the others gain blobs on
    their background, anatomy kept; a second swap into the same folder is refused."""
    task = decathlon_task(tmp_path, n=8)
    folder = build(task, tmp_path / "ws", dataset_id=990, seed=3, test_fraction=0.5)  # 4 held out
    manifest = {m["case"]: m for m in json.loads((folder / "implants.json").read_text())["cases"]}
    out = tmp_path / "swap"
    written = swap_test_blobs(task, folder, out, seed=1)
    held_out = sorted(c for c, m in manifest.items() if m["part"] == "Ts")
    assert sorted(written["removed"] + written["added"]) == held_out
    assert written["removed"] == [c for c in held_out if manifest[c]["blobs"]] and len(written["removed"]) == 1
    for case in written["removed"]:
        assert np.array_equal(read(out / "removed/images" / f"{case}_0000.nii.gz"), read(task / "imagesTr" / f"{case}.nii.gz"))
        assert np.array_equal(read(out / "removed/labels" / f"{case}.nii.gz"), read(task / "labelsTr" / f"{case}.nii.gz"))
    for case in written["added"]:
        lab = read(out / "added/labels" / f"{case}.nii.gz")
        original = read(task / "labelsTr" / f"{case}.nii.gz")
        assert (lab == LESION).sum() >= 4  # at least one blob
        assert np.array_equal(lab[lab != LESION], original[lab != LESION]) and not original[lab == LESION].any()
        image, source = read(out / "added/images" / f"{case}_0000.nii.gz"), read(task / "imagesTr" / f"{case}.nii.gz")
        assert (image[lab == LESION] > source[lab == LESION]).all()
        assert np.array_equal(image[original > 0], source[original > 0])  # the anatomy's voxels untouched
    with pytest.raises(SystemExit, match="exists"):
        swap_test_blobs(task, folder, out, seed=1)
