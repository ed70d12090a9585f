"""Semi-real small-structure data: Hippocampus MRI with implanted bright blobs as a third class.

Reproduce (from the repository root; ~20 s for all 208 cases):

    python bench/data/implant_lesions.py --source $AUTOSEG_BENCH_DATA/Task04_Hippocampus --root /tmp/lesion_ws

writes ``/tmp/lesion_ws/raw/Dataset104_HippocampusLesions/`` in the raw (nnU-Net v2) layout that
``autoseg plan_and_preprocess -d 104 --root /tmp/lesion_ws`` reads: ``imagesTr/``, ``labelsTr/``, a
held-out ``imagesTs/`` with its references in ``labelsTs/``, ``dataset.json`` and
``implants.json`` (every blob: case, centre voxel (z, y, x), voxels, contrast). ``--max-cases N``
takes a seeded subset for quick runs.

``--swap-test OUT`` (after a build, same ``--root``, ``--dataset-id`` and ``--source``) writes the
held-out cases with their blobs swapped, to ask whether a trained model's anatomy depends on a blob
being in the image: ``OUT/removed/`` holds the cases that have blobs as the source had them (no
blobs), ``OUT/added/`` the cases without blobs with 1 to ``--max-blobs`` implanted (seeded by
``--seed``, anatomy kept), each with ``images/`` and ``labels/``.

What it does, seeded by ``--seed`` (same arguments, same files):
- the cases are shuffled; ``--test-fraction`` of them (default 0.2) form the held-out part;
- in ``round(--lesion-fraction x cases)`` of the cases of each part (default 1/3), drawn at
  random, it implants 1 to ``--max-blobs`` (default 3) blobs of label 3 ``lesion``,
  keeping the anatomy labels 1 and 2 untouched;
- a blob is irregular: a union of 2-4 balls (the first of radius 1.2-2.5 voxels, the others
  0.8-1.8 voxels at offsets up to the first radius), so 3-7 voxels across and about 10-150
  voxels; placed at a random position of the background at least 2 voxels from the image
  border, the anatomy and other blobs;
- a blob is bright: the image gains ``contrast x robust SD`` inside it, where the robust SD
  is the case's interquartile range / 1.349 and the contrast is drawn uniformly from
  ``--contrast`` (default 1.0 to 3.0: from barely visible in the tissue texture to obvious), with a
  soft edge (the mask blurred with a Gaussian of sigma 0.6 voxel: partial volume); the
  texture underneath is kept. Images keep their dtype (uint8 ones are clipped to 0..255).

Hippocampus: CC BY-SA 4.0, Antonelli et al., Nature Communications 2022; Simpson et al.,
arXiv:1902.09063.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
from common import add_task_option  # noqa: E402

log = logging.getLogger("implant_lesions")
LESION = 3


def blob_mask(rng: np.random.Generator) -> np.ndarray:
    """An irregular blob as a boolean array (a union of 2-4 balls), cropped to its bounding box."""
    r0 = rng.uniform(1.2, 2.5)
    balls = [(np.zeros(3), r0)]
    for _ in range(int(rng.integers(1, 4))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-9
        balls.append((direction * rng.uniform(0.5, 1.0) * r0, rng.uniform(0.8, 1.8)))
    half = int(np.ceil(max(np.abs(c).max() + r for c, r in balls))) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * 3, indexing="ij"), -1).astype(float)
    mask = np.zeros(grid.shape[:3], bool)
    for centre, radius in balls:
        mask |= ((grid - centre) ** 2).sum(-1) <= radius ** 2
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]


def implant(image: np.ndarray, label: np.ndarray, n_blobs: int, contrast: tuple[float, float],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Return (image, label, blobs) with ``n_blobs`` blobs of label 3 implanted; (z, y, x) arrays."""
    from scipy import ndimage

    out = image.astype(np.float64)
    lab = label.copy()
    q25, q75 = np.percentile(image, [25, 75])
    robust_sd = (q75 - q25) / 1.349 or float(image.std()) or 1.0
    blocked = ndimage.binary_dilation(lab > 0, np.ones((5, 5, 5), bool))  # 2 voxels from anatomy
    blobs = []
    for _ in range(n_blobs):
        for _attempt in range(100):
            mask = blob_mask(rng)
            room = np.array(lab.shape) - np.array(mask.shape) - 4
            if (room < 1).any():
                break
            lo = np.array([rng.integers(2, 2 + r) for r in room])
            box = tuple(slice(a, a + s) for a, s in zip(lo, mask.shape))
            if blocked[box][mask].any():
                continue
            c = float(rng.uniform(*contrast))
            full = np.zeros(lab.shape, bool)
            full[box] = mask
            soft = ndimage.gaussian_filter(full.astype(float), 0.6)
            soft = np.maximum(soft / max(soft.max(), 1e-9), full)  # 1 inside, smooth falloff outside
            out += c * robust_sd * soft
            lab[full] = LESION
            blocked |= ndimage.binary_dilation(full, np.ones((5, 5, 5), bool))
            centre = [int(round(v)) for v in np.argwhere(full).mean(0)]
            blobs.append({"centre_zyx": centre, "voxels": int(full.sum()), "contrast": round(c, 3)})
            break
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype), lab, blobs


def _write(arr: np.ndarray, reference, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.nii.gz")
    sitk.WriteImage(img, str(tmp))
    os.replace(tmp, path)


def dataset_folder(root: Path, dataset_id: int) -> Path:
    """Where ``build`` writes the dataset under the workspace ``root``."""
    return root / "raw" / f"Dataset{dataset_id:03d}_HippocampusLesions"


def _read_source_case(source: Path, case: str):
    """The Decathlon case's image and label as SimpleITK images and (z, y, x) arrays."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(source / "imagesTr" / f"{case}.nii.gz"))
    lab = sitk.ReadImage(str(source / "labelsTr" / f"{case}.nii.gz"))
    return img, lab, sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)


def _building_folder(folder: Path, subfolders: tuple[str, ...], alternative: str) -> Path:
    """An empty sibling of ``folder`` with ``subfolders``, to be renamed onto ``folder`` when
    complete; refuses an existing ``folder``."""
    if folder.exists():
        raise SystemExit(f"{folder} exists; remove it or {alternative}")
    tmp = folder.with_name(f".{folder.name}.building{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in subfolders:
        (tmp / sub).mkdir(parents=True)
    return tmp


def build(source: Path, out_root: Path, dataset_id: int = 104, seed: int = 0, test_fraction: float = 0.2,
          lesion_fraction: float = 1 / 3, max_blobs: int = 3, contrast: tuple[float, float] = (1.0, 3.0),
          max_cases: int | None = None) -> Path:
    """Write ``out_root/raw/Dataset{id:03d}_HippocampusLesions`` from the Decathlon task ``source``."""
    meta = json.loads((source / "dataset.json").read_text())
    cases = sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in meta["training"]
                   if not Path(e["image"]).name.startswith("._"))
    rng = np.random.default_rng(seed)
    cases = [cases[i] for i in rng.permutation(len(cases))]
    if max_cases:
        cases = cases[:max_cases]
    n_test = int(round(test_fraction * len(cases)))
    with_blobs = set()
    for part in (cases[:n_test], cases[n_test:]):  # the same fraction in both parts
        n = int(round(lesion_fraction * len(part)))
        with_blobs |= {part[i] for i in rng.permutation(len(part))[:n]}
    folder = dataset_folder(out_root, dataset_id)
    tmp = _building_folder(folder, ("imagesTr", "labelsTr", "imagesTs", "labelsTs"), "choose another --dataset-id")
    manifest = []
    try:
        for k, case in enumerate(cases):
            part = "Ts" if k < n_test else "Tr"
            img, lab, image, label = _read_source_case(source, case)
            case_rng = np.random.default_rng([seed, k])
            blobs = []
            if case in with_blobs:
                image, label, blobs = implant(image, label, int(case_rng.integers(1, max_blobs + 1)), contrast,
                                              case_rng)
            _write(image, img, tmp / f"images{part}" / f"{case}_0000.nii.gz")
            _write(label.astype(np.uint8), lab, tmp / f"labels{part}" / f"{case}.nii.gz")
            manifest.append({"case": case, "part": part, "blobs": blobs})
        n_train = len(cases) - n_test
        (tmp / "dataset.json").write_text(json.dumps({
            "name": "HippocampusLesions",
            "description": f"Task04_Hippocampus with implanted bright blobs (label 3), seed {seed}; "
                           "generated by bench/data/implant_lesions.py",
            "licence": "CC-BY-SA 4.0 (Hippocampus: Antonelli et al. 2022; Simpson et al. arXiv:1902.09063)",
            "channel_names": {"0": "MRI"},
            "labels": {"background": 0, "Anterior": 1, "Posterior": 2, "lesion": LESION},
            "numTraining": n_train,
            "file_ending": ".nii.gz",
        }, indent=2) + "\n")
        (tmp / "implants.json").write_text(json.dumps({
            "seed": seed, "lesion_fraction": lesion_fraction, "contrast": list(contrast), "cases": manifest,
        }, indent=1) + "\n")
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = [b["voxels"] for m in manifest for b in m["blobs"]]
    n_with = sum(bool(m["blobs"]) for m in manifest)
    log.info("wrote %s: %d training + %d test cases, %d with blobs (%.0f%%), %d blobs of %s voxels (median %s)",
             folder, len(cases) - n_test, n_test, n_with, 100 * n_with / max(1, len(cases)), len(sizes),
             f"{min(sizes)}-{max(sizes)}" if sizes else "-", int(np.median(sizes)) if sizes else "-")
    return folder


def swap_test_blobs(source: Path, folder: Path, out: Path, seed: int = 0, max_blobs: int = 3,
                    contrast: tuple[float, float] = (1.0, 3.0)) -> dict[str, list[str]]:
    """Write ``out/{removed,added}/{images,labels}`` from the held-out cases of ``folder`` (a
    ``build`` output): the cases with blobs as in ``source``, the others with blobs implanted."""
    manifest = json.loads((folder / "implants.json").read_text())["cases"]
    tmp = _building_folder(out, ("removed/images", "removed/labels", "added/images", "added/labels"),
                           "choose another output folder")
    written: dict[str, list[str]] = {"removed": [], "added": []}
    try:
        for k, entry in enumerate(manifest):
            if entry["part"] != "Ts":
                continue
            case = entry["case"]
            img, lab, image, label = _read_source_case(source, case)
            kind = "removed" if entry["blobs"] else "added"
            if kind == "added":
                rng = np.random.default_rng([seed, 1, k])  # not the build's stream for this case
                image, label, _ = implant(image, label, int(rng.integers(1, max_blobs + 1)), contrast, rng)
            _write(image, img, tmp / kind / "images" / f"{case}_0000.nii.gz")
            _write(label.astype(np.uint8), lab, tmp / kind / "labels" / f"{case}.nii.gz")
            written[kind].append(case)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s: %d held-out cases with their blobs removed, %d with blobs added", out,
             len(written["removed"]), len(written["added"]))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_option(p, "--source", what="Decathlon Task04_Hippocampus folder")
    p.add_argument("--root", type=Path, required=True, help="autoseg workspace root (writes ROOT/raw/...)")
    p.add_argument("--dataset-id", type=int, default=104)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--lesion-fraction", type=float, default=1 / 3)
    p.add_argument("--max-blobs", type=int, default=3)
    p.add_argument("--contrast", type=float, nargs=2, default=(1.0, 3.0), metavar=("LOW", "HIGH"),
                   help="blob brightness in robust SDs of the case's intensities")
    p.add_argument("--max-cases", type=int, default=None, help="a seeded subset of this many cases")
    p.add_argument("--swap-test", type=Path, metavar="OUT", default=None,
                   help="instead of building: write the built dataset's held-out cases with blobs removed "
                        "(OUT/removed) and added (OUT/added)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.source is None or not (args.source / "dataset.json").is_file():
        print(f"{args.source} is not a Decathlon task folder (no dataset.json); pass --source or set "
              "AUTOSEG_BENCH_DATA to the folder holding Task04_Hippocampus", file=sys.stderr)
        return 2
    if args.swap_test:
        folder = dataset_folder(args.root, args.dataset_id)
        if not (folder / "implants.json").is_file():
            print(f"{folder} has no implants.json: build the dataset first (the same command without "
                  f"--swap-test)", file=sys.stderr)
            return 2
        swap_test_blobs(args.source, folder, args.swap_test, args.seed, args.max_blobs, tuple(args.contrast))
        return 0
    build(args.source, args.root, args.dataset_id, args.seed, args.test_fraction, args.lesion_fraction,
          args.max_blobs, tuple(args.contrast), args.max_cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
