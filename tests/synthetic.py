"""Tiny synthetic datasets in nnU-Net v2 raw layout, for tests.

Each case is a noisy volume with one bright ellipsoid (label 1) and, inside or beside it,
a smaller one (label 2). Everything is seeded, so a test can rely on exact values.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def ellipsoid_case(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    num_classes: int = 2,
    background_value: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image float32, label uint8) of ``shape`` (z, y, x)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    img = rng.normal(background_value, 0.3, size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    centre = [rng.uniform(0.35, 0.65) * s for s in shape]
    radii = [max(1.5, rng.uniform(0.15, 0.25) * s) for s in shape]
    d = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii))
    lab[d <= 1] = 1
    img[d <= 1] += 2.0
    if num_classes >= 2:
        d2 = sum(((g - c) / (r * 0.5)) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii))
        lab[d2 <= 1] = 2
        img[d2 <= 1] += 1.5
    return img, lab


def write_nifti(arr: np.ndarray, path: Path, spacing_zyx=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=None) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_dataset(
    root: Path,
    name: str = "Dataset901_Synth",
    num_cases: int = 6,
    shape: tuple[int, int, int] = (16, 20, 18),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    channels: tuple[str, ...] = ("MRI",),
    num_classes: int = 2,
    seed: int = 0,
    file_ending: str = ".nii.gz",
    vary_shape: bool = True,
) -> Path:
    """Write a raw dataset to ``root/name`` and return its folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(num_cases):
        cid = f"case_{i:03d}"
        s = tuple(int(v + (rng.integers(-2, 3) if vary_shape else 0)) for v in shape)
        img, lab = ellipsoid_case(s, rng, num_classes)
        for c, ch in enumerate(channels):
            scale = 100.0 if ch.upper() == "CT" else 1.0
            write_nifti(img * scale + c, folder / "imagesTr" / f"{cid}_{c:04d}{file_ending}", spacing)
        write_nifti(lab, folder / "labelsTr" / f"{cid}{file_ending}", spacing)
    labels = {"background": 0, "outer": 1}
    if num_classes >= 2:
        labels["inner"] = 2
    dataset_json = {
        "name": name.split("_", 1)[1],
        "channel_names": {str(i): ch for i, ch in enumerate(channels)},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": file_ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def make_png_dataset(root: Path, name: str = "Dataset902_SynthPNG", num_cases: int = 6,
                     shape: tuple[int, int] = (48, 40), rgb: bool = False, seed: int = 0,
                     rgb_as_channel_files: bool = False, file_ending: str = ".png") -> Path:
    """A 2D dataset of grey or RGB images with grey-value label images (0..2), e.g. PNGs.

    RGB cases are one file ``{case}_0000.png`` holding three channels, or with
    ``rgb_as_channel_files`` three grey files ``_0000``..``_0002``; either way dataset.json
    declares the channels R, G, B.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(num_cases):
        img, lab = ellipsoid_case((1,) + tuple(shape), rng)
        grey = np.clip((img[0] + 1) * 60, 0, 255).astype(np.uint8)
        cid = f"case_{i:03d}"
        if rgb and rgb_as_channel_files:
            for c, arr in enumerate((grey, 255 - grey, grey // 2)):
                sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / "imagesTr" / f"{cid}_{c:04d}{file_ending}"))
        elif rgb:
            arr = np.stack([grey, 255 - grey, grey // 2], -1)
            sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(folder / "imagesTr" / f"{cid}_0000{file_ending}"))
        else:
            sitk.WriteImage(sitk.GetImageFromArray(grey), str(folder / "imagesTr" / f"{cid}_0000{file_ending}"))
        sitk.WriteImage(sitk.GetImageFromArray(lab[0]), str(folder / "labelsTr" / f"{cid}{file_ending}"))
    dataset_json = {
        "name": name.split("_", 1)[1],
        "channel_names": {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"},
        "labels": {"background": 0, "outer": 1, "inner": 2},
        "numTraining": num_cases,
        "file_ending": file_ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def plan_and_preprocess_cpu(root: str, dataset_id: int = 901, network: str = "plain") -> None:
    """plan_and_preprocess --force-lowres with the cpu profile's plans, minus the step timing that
    ``autoseg plan`` adds on that profile (slow on a loaded machine; widths are not tested here)."""
    from autoseg.cli import main
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.paths import Workspace
    from autoseg.planners.experiment import plan_experiment
    from autoseg.plans import save_plans

    assert main(["fingerprint", "-d", str(dataset_id), "-np", "1", "--root", root]) == 0
    pre = Workspace(Path(root)).preprocessed_dataset(dataset_id)
    save_plans(plan_experiment(load_fingerprint(pre / "fingerprint.json"), "cpu", force_lowres=True, network=network),
               pre / "plans.json")
    assert main(["preprocess", "-d", str(dataset_id), "-np", "1", "--root", root]) == 0


def relist_files(folder, drop_from_disk=()):
    """Move every case's files out of imagesTr/labelsTr into scans/ and masks/ under other names and
    list them in dataset.json; delete the files named in ``drop_from_disk`` afterwards."""
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "scans").mkdir()
    (folder / "masks").mkdir()
    entries = {}
    for label in sorted((folder / "labelsTr").glob("*.nii.gz")):
        cid = label.name[: -len(".nii.gz")]
        shutil.move(folder / "imagesTr" / f"{cid}_0000.nii.gz", folder / "scans" / f"t1_{cid}.nii.gz")
        shutil.move(label, folder / "masks" / f"{cid}_seg.nii.gz")
        entries[cid] = {"images": [f"scans/t1_{cid}.nii.gz"], "label": f"masks/{cid}_seg.nii.gz"}
    shutil.rmtree(folder / "imagesTr")
    shutil.rmtree(folder / "labelsTr")
    meta["dataset"] = entries
    (folder / "dataset.json").write_text(json.dumps(meta))
    for name in drop_from_disk:
        (folder / name).unlink()
    return entries
