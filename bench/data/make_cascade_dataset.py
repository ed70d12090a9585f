"""A synthetic dataset for the cascade: large CT-like volumes with a small organ.

Each case is an int16 CT-like volume (Hounsfield units) of about 190-240 x 260-320 x 260-320
voxels (z, y, x) at 1.0-1.25 x 0.75-0.9 x 0.75-0.9 mm: air (-1000) around an elliptic body
of soft tissue (40 HU) with a fat rim (-100 HU) and a bony spine (400 HU) at the back. The
organ (label 1) is a small ellipsoid (radii 11-18 mm, about 0.2% of the voxels) of 110 HU in
the body's front right; in most cases it holds a lesion (label 2, 170 HU). An unlabelled
"distractor" of the same intensity and size sits at the mirrored position on the left, so
only context (where the spine and the body outline are) tells them apart: what a whole-image
low-resolution pass sees and a full-resolution patch may not. Correlated Gaussian noise
(sigma 25 HU). Everything is drawn from ``--seed``; the same arguments write identical files.

The automatic lowres trigger fires on it: the fullres patch covers well under a quarter of
the median image for the default (gpu-8gb) and cpu profiles, so ``plan_and_preprocess``
plans ``3d_lowres`` and ``3d_cascade_fullres`` without ``--force-lowres``.

Commands (ROOT is an autoseg workspace):

    python bench/data/make_cascade_dataset.py --root ROOT                 # 20 training + 5 test cases
    autoseg plan_and_preprocess -d 960 --root ROOT                   # plans 3d_lowres + cascade
    autoseg train 3d_lowres 0 1 2 3 4 -d 960 --root ROOT             # lowres CV masks first
    autoseg train 3d_cascade_fullres 0 1 2 3 4 -d 960 --root ROOT
    autoseg train 3d_fullres 0 1 2 3 4 -d 960 --root ROOT            # to compare
    autoseg find_best_config -d 960 --root ROOT
    autoseg predict -i ROOT/raw/Dataset960_CascadeSynth/imagesTs -o PRED -d 960 --root ROOT
    autoseg evaluate -ref ROOT/raw/Dataset960_CascadeSynth/labelsTs -pred PRED -d 960 --root ROOT

Tiny version for a smoke test (about 64 x 70 x 70 voxels, the same anatomy at 4x the
spacing; the trigger does not fire there, so plan with ``--force-lowres``):

    python bench/data/make_cascade_dataset.py --root ROOT --scale 0.25 --num-cases 6 --num-test 1
    autoseg plan_and_preprocess -d 960 --root ROOT --force-lowres --device-profile cpu
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by path (tests)
from nifti import write_nifti  # noqa: E402

log = logging.getLogger(__name__)

NAME = "CascadeSynth"
AIR, FAT, TISSUE, BONE, ORGAN, LESION = -1000.0, -100.0, 40.0, 400.0, 110.0, 170.0
NOISE_HU = 25.0


@dataclass(frozen=True)
class CaseGeometry:
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm


def case_geometry(rng: np.random.Generator, scale: float = 1.0) -> CaseGeometry:
    """Shape and spacing of one case; ``scale`` < 1 gives fewer, larger voxels over the same anatomy."""
    shape = (rng.integers(190, 241), rng.integers(260, 321), rng.integers(260, 321))
    spacing = (rng.uniform(1.0, 1.25), rng.uniform(0.75, 0.9))
    spacing = (spacing[0], spacing[1], spacing[1])
    return CaseGeometry(tuple(max(8, int(round(s * scale))) for s in shape),
                        tuple(float(sp / scale) for sp in spacing))


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def make_case(geometry: CaseGeometry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, label uint8) of ``geometry.shape``; coordinates in mm from the volume centre."""
    from scipy import ndimage

    shape, spacing = geometry.shape, geometry.spacing
    axes = [(np.arange(n) - (n - 1) / 2) * sp for n, sp in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    extent = [n * sp / 2 for n, sp in zip(shape, spacing)]  # half-size in mm
    body_r = (extent[0] * 1.2, extent[1] * rng.uniform(0.7, 0.8), extent[2] * rng.uniform(0.8, 0.9))
    image = np.full(shape, AIR, np.float32)
    image[_ellipsoid(grid, (0, 0, 0), body_r)] = FAT
    inner = tuple(r - 12.0 for r in body_r)
    image[_ellipsoid(grid, (0, 0, 0), inner)] = TISSUE
    spine_y = inner[1] * 0.7  # posterior (+y)
    spine = ((grid[1] - spine_y) ** 2 + grid[2] ** 2 <= 14.0 ** 2) & (np.abs(grid[0]) < extent[0])
    image[np.broadcast_to(spine, shape)] = BONE
    radii = tuple(rng.uniform(11, 18) * f for f in (rng.uniform(0.8, 1.2), 1.0, rng.uniform(0.8, 1.2)))
    centre = (rng.uniform(-0.3, 0.3) * extent[0], -rng.uniform(0.2, 0.45) * inner[1],
              -rng.uniform(0.25, 0.5) * inner[2])  # anterior (-y), patient right (-x)
    twin = (centre[0] + rng.uniform(-10, 10), centre[1] + rng.uniform(-10, 10), -centre[2])
    label = np.zeros(shape, np.uint8)
    organ = _ellipsoid(grid, centre, radii)
    image[organ] = ORGAN
    label[organ] = 1
    image[_ellipsoid(grid, twin, radii)] = ORGAN  # unlabelled distractor on the other side
    if rng.random() < 0.7:
        lesion_r = tuple(r * rng.uniform(0.3, 0.45) for r in radii)
        offset = tuple(c + rng.uniform(-0.3, 0.3) * r for c, r in zip(centre, radii))
        lesion = _ellipsoid(grid, offset, lesion_r) & organ
        image[lesion] = LESION
        label[lesion] = 2
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
    noise *= NOISE_HU / max(float(noise.std()), 1e-6)
    body = image > AIR
    image[body] += noise[body]
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def make_dataset(root: str | Path, dataset_id: int = 960, num_cases: int = 20, num_test: int = 5,
                 scale: float = 1.0, seed: int = 0) -> Path:
    """Write ``raw/Dataset{id}_CascadeSynth`` under the workspace ``root``; return its folder.

    Training cases go to imagesTr/labelsTr, test cases to imagesTs (and their labels to labelsTs).
    """
    folder = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{NAME}"
    rng = np.random.default_rng(seed)
    for i in range(num_cases + num_test):
        test = i >= num_cases
        cid = f"{'test' if test else 'case'}_{i - num_cases if test else i:03d}"
        geometry = case_geometry(rng, scale)
        image, label = make_case(geometry, rng)
        write_nifti(image, geometry.spacing, folder / ("imagesTs" if test else "imagesTr") / f"{cid}_0000.nii.gz")
        write_nifti(label, geometry.spacing, folder / ("labelsTs" if test else "labelsTr") / f"{cid}.nii.gz")
        log.info("%s: shape %s spacing %s, organ %d voxels", cid, geometry.shape,
                 tuple(round(s, 3) for s in geometry.spacing), int((label > 0).sum()))
    (folder / "dataset.json").write_text(json.dumps({
        "name": NAME, "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": num_cases, "file_ending": ".nii.gz",
        "description": f"bench/data/make_cascade_dataset.py --num-cases {num_cases} --num-test {num_test} "
                       f"--scale {scale} --seed {seed}",
    }, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="autoseg workspace root (the dataset goes to ROOT/raw)")
    p.add_argument("-d", "--dataset-id", type=int, default=960)
    p.add_argument("--num-cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--num-test", type=int, default=5, help="test cases with labels (default 5)")
    p.add_argument("--scale", type=float, default=1.0, help="voxels per axis relative to full size (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = make_dataset(args.root, args.dataset_id, args.num_cases, args.num_test, args.scale, args.seed)
    log.info("wrote %s", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
