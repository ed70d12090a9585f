"""Convert a Medical Segmentation Decathlon task into the nnU-Net v2 raw layout.

``Task04_Hippocampus/`` (``modality`` and ``labels`` as index -> name, 4D images for
multi-channel tasks) becomes ``raw/Dataset004_Hippocampus/`` with one 3D file per channel
(``{case}_0000.nii.gz``, ``{case}_0001.nii.gz``...) and a v2 ``dataset.json``. The new folder
is built under a temporary name and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from multiprocessing import get_context
from pathlib import Path

from autoseg.device import pool_size
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace, dataset_folder_name

log = logging.getLogger(__name__)
_TASK_RE = re.compile(r"^Task(\d+)_(.+)$")


def _split_channels(src: Path, dst_dir: Path, case_id: str) -> None:
    """Write ``src`` as one 3D file per channel into ``dst_dir``."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        n = size[3]
        for c in range(n):
            extractor = sitk.ExtractImageFilter()
            extractor.SetSize(size[:3] + [0])
            extractor.SetIndex([0, 0, 0, c])
            sitk.WriteImage(extractor.Execute(img), str(dst_dir / f"{case_id}_{c:04d}.nii.gz"))
    elif img.GetNumberOfComponentsPerPixel() > 1:
        for c in range(img.GetNumberOfComponentsPerPixel()):
            comp = sitk.VectorIndexSelectionCast(img, c)
            sitk.WriteImage(comp, str(dst_dir / f"{case_id}_{c:04d}.nii.gz"))
    else:
        shutil.copyfile(src, dst_dir / f"{case_id}_0000.nii.gz")


def _case_id(path: str) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def _convert_one(job: tuple[str, Path, Path, Path | None, Path]) -> None:
    case_id, image, out_images, label, out_labels = job
    _split_channels(image, out_images, case_id)
    if label is not None:
        shutil.copyfile(label, out_labels / f"{case_id}.nii.gz")


def convert_msd(task_dir: str | Path, raw_root: str | Path, dataset_id: int | None = None,
                num_processes: int | None = None) -> Path:
    """Convert ``task_dir`` (Decathlon layout) into ``raw_root/DatasetXXX_Name``; return it."""
    task_dir = Path(task_dir)
    m = _TASK_RE.match(task_dir.name)
    meta_path = task_dir / "dataset.json"
    if not meta_path.is_file():
        raise UserFacingError(f"{task_dir} has no dataset.json; expected a Decathlon task folder such as Task04_Hippocampus/")
    meta = json.loads(meta_path.read_text())
    missing = [k for k in ("modality", "labels", "training") if k not in meta]
    if missing:
        raise UserFacingError(f"{meta_path}: missing Decathlon key(s) {missing}; is this a Decathlon task?")
    if dataset_id is None:
        if not m:
            raise UserFacingError(f"cannot take a dataset id from folder name '{task_dir.name}' (expected TaskXX_Name); pass -d ID")
        dataset_id = int(m.group(1))
    name = m.group(2) if m else task_dir.name
    out = Path(raw_root) / dataset_folder_name(dataset_id, name)
    if out.exists():
        raise UserFacingError(f"{out} already exists; remove it or choose another id with -d")

    tmp = out.with_name(f".{out.name}.converting{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (tmp / sub).mkdir(parents=True)
    jobs = []
    for entry in meta["training"]:
        image, label = task_dir / entry["image"], task_dir / entry["label"]
        if Path(entry["image"]).name.startswith("._"):
            continue
        jobs.append((_case_id(entry["image"]), image, tmp / "imagesTr", label, tmp / "labelsTr"))
    test_dir = task_dir / "imagesTs"
    if test_dir.is_dir():
        (tmp / "imagesTs").mkdir()
        for p in sorted(test_dir.glob("*.nii.gz")):
            if not p.name.startswith("._"):
                jobs.append((_case_id(p.name), p, tmp / "imagesTs", None, tmp / "labelsTr"))
    try:
        n = pool_size(num_processes, len(jobs))
        if n == 1:
            for j in jobs:
                _convert_one(j)
        else:
            with get_context("fork").Pool(n) as pool:
                pool.map(_convert_one, jobs, chunksize=max(1, len(jobs) // (4 * n)))
        labels = {str(v): int(k) for k, v in meta["labels"].items()}
        dataset_json = {
            "name": name,
            "description": meta.get("description", ""),
            "reference": meta.get("reference", ""),
            "licence": meta.get("licence", ""),
            "channel_names": {str(k): v for k, v in meta["modality"].items()},
            "labels": dict(sorted(labels.items(), key=lambda kv: kv[1])),
            "numTraining": len(meta["training"]),
            "file_ending": ".nii.gz",
            "converted_from": str(task_dir),
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cli_convert_msd(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.root)
    out = convert_msd(args.input, ws.raw, args.dataset_id, args.num_processes)
    log.info("converted %s -> %s", args.input, out)
    return 0
