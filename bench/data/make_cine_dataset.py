"""A synthetic shallow, anisotropic cine-MRI dataset: short-axis stacks of the heart (ACDC-like).

Each case is one cardiac phase as a short-axis stack of 8-12 thick slices (spacing 10 mm in 80% of
the cases, 6.5-9.5 mm in the others) at 1.25-1.75 mm in-plane, about 170-300 x 190-330 voxels
(z, y, x), with the labels of the ACDC challenge: 1 right-ventricle cavity (RV), 2 left-ventricle
myocardium (MYO), 3 left-ventricle cavity (LV). What makes it like real cine MRI and not easy:

- nested structures: the LV blood pool inside a ring of myocardium, the RV a crescent wrapped
  around the septum; dark papillary muscles inside the bright LV cavity belong to the LV label;
- anatomy that changes along the long axis: the cavities shrink towards the apex (the last slices
  show a myocardium cap without cavity, the RV ends earlier), and the stack may start above the
  base, where bright atria and the aorta (unlabelled, as bright as the ventricles' blood) sit;
- thick slices: each slice averages its anatomy over 80% of its spacing (partial volume at base and
  apex) while the label is drawn from its centre plane, as an annotator draws it;
- breath-hold misregistration: the heart is shifted in-plane by a few mm from slice to slice;
- slice-to-slice intensity variation (gain of each slice drawn apart) and a smooth coil bias field;
- background clutter: chest wall with bright fat, dark lungs with bright vessels, the descending
  aorta, spine, liver in the lower slices; the heart sits at a different place, angle and size in
  every case, and half the cases are end-systolic (smaller cavities, thicker walls);
- Rician noise, intensities scaled by an arbitrary factor per case (as a scanner's units are).

Everything is drawn from ``--seed``: the same arguments write identical files. Raw layout (nnU-Net
v2): ``ROOT/raw/Dataset130_CineSynth/{imagesTr,labelsTr,imagesTs,labelsTs}`` and ``dataset.json``.

Commands (WS is an autoseg workspace; 160 training and 40 held-out cases, about a minute):

    python bench/data/make_cine_dataset.py --root WS
    autoseg plan_and_preprocess -d 130 --root WS --time-budget 30m
    autoseg train 3d_fullres 0 -d 130 --root WS --time-budget 30m
    autoseg predict -i WS/raw/Dataset130_CineSynth/imagesTs -o WS/pred -d 130 --root WS -c 3d_fullres -f 0
    autoseg evaluate -ref WS/raw/Dataset130_CineSynth/labelsTs -pred WS/pred -d 130 --root WS

A small version for tests: ``--num-train 6 --num-test 2 --scale 0.25`` (about 10 x 60 x 60 voxels,
the same anatomy at 4x the in-plane spacing).
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

NAME = "CineSynth"
LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
# relative signal of a balanced SSFP cine image (blood bright, myocardium dark)
BLOOD, MYOCARDIUM, FAT, MUSCLE, LIVER, LUNG, BONE, TISSUE = 1.0, 0.22, 0.85, 0.3, 0.38, 0.05, 0.45, 0.33
SUBPLANES = 5  # planes averaged across a slice's thickness


@dataclass(frozen=True)
class Heart:
    """The heart of one case, in mm: the LV's long axis runs from ``base_z`` (t = 0) to the apex
    (t = 1) at ``base_z + length``, through ``centre`` (y, x) at the base, drifting by ``tilt``
    (mm in-plane per mm along z)."""

    centre: tuple[float, float]
    tilt: tuple[float, float]
    base_z: float
    length: float
    cavity_r: float  # LV cavity radius at the base
    wall: float  # myocardium thickness
    ellipticity: float  # short / long semi-axis of the LV in-plane
    angle: float  # orientation of the LV's in-plane ellipse (radians)
    harmonics: tuple[tuple[float, float], ...]  # radius perturbation: (amplitude, phase) of 2nd, 3rd order
    rv_angle: float  # direction from the LV centre towards the RV
    rv_long: float  # RV semi-axes at the base, along and across the septum
    rv_short: float
    rv_end: float  # the RV ends at this t
    papillary: tuple[tuple[float, float], ...]  # (angle, radius) of the papillary muscles
    blood: float  # blood signal of this case (flow and coil differences)


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int]  # (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    first_z: float  # z of the first slice's centre (mm)
    heart: Heart
    body: tuple[float, float]  # chest semi-axes (y, x) mm
    shifts: np.ndarray  # (slices, 2): the heart's in-plane shift in each slice (mm)
    gains: np.ndarray  # (slices,): each slice's gain


def draw_case(rng: np.random.Generator, scale: float = 1.0) -> Case:
    dz = 10.0 if rng.random() < 0.8 else float(rng.uniform(6.5, 9.5))
    sp = float(rng.uniform(1.25, 1.75)) / scale
    fov_y = float(rng.uniform(290, 370))
    fov_x = fov_y * float(rng.uniform(1.0, 1.2))
    shape = (0, int(round(fov_y / sp)), int(round(fov_x / sp)))
    body = (fov_y * rng.uniform(0.32, 0.38), fov_x * rng.uniform(0.38, 0.44))
    systole = rng.random() < 0.5
    cavity = rng.uniform(20, 28) * (rng.uniform(0.6, 0.8) if systole else 1.0)
    wall = rng.uniform(7, 10) * (rng.uniform(1.2, 1.45) if systole else 1.0)
    length = float(rng.uniform(70, 95))
    # the stack starts 0-18 mm above the base and covers the apex give or take half a slice
    first_z = -float(rng.uniform(0, 18))
    slices = int(np.clip(round((length - first_z + rng.uniform(-5, 5)) / dz) + 1, 6, 14))
    shape = (slices, shape[1], shape[2])
    centre = (float(rng.uniform(-0.3, 0.0) * body[0]), float(rng.uniform(0.0, 0.2) * body[1]))
    first_muscle = float(rng.uniform(0, 2 * np.pi))
    heart = Heart(
        centre=centre, tilt=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
        base_z=0.0, length=length, cavity_r=float(cavity), wall=float(wall),
        ellipticity=float(rng.uniform(0.82, 1.0)), angle=float(rng.uniform(0, np.pi)),
        harmonics=tuple((float(rng.uniform(0, 0.06)), float(rng.uniform(0, 2 * np.pi))) for _ in range(2)),
        rv_angle=float(rng.uniform(1.0, 1.35) * np.pi), rv_long=float(rng.uniform(34, 46)),
        rv_short=float(rng.uniform(13, 21) * (0.75 if systole else 1.0)), rv_end=float(rng.uniform(0.65, 0.85)),
        papillary=((first_muscle, float(rng.uniform(2.5, 4.5))),
                   (first_muscle + float(rng.uniform(0.5, 0.8) * np.pi), float(rng.uniform(2.5, 4.5)))),
        blood=float(rng.uniform(0.85, 1.15)))
    shifts = rng.normal(0, 1.8, (slices, 2))
    gains = rng.uniform(0.85, 1.15, slices)
    return Case(shape, (dz, sp, sp), first_z, heart, body, shifts, gains)


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    u = (yy - cy) * c + (xx - cx) * s
    v = -(yy - cy) * s + (xx - cx) * c
    return (u / ry) ** 2 + (v / rx) ** 2 <= 1


def _lv_radius_scale(h: Heart, yy, xx, cy, cx):
    """The LV's in-plane shape: an ellipse with low-order wobble, as a radius factor per pixel."""
    theta = np.arctan2(yy - cy, xx - cx) - h.angle
    wobble = 1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(h.harmonics))
    stretch = np.sqrt(np.cos(theta) ** 2 + (np.sin(theta) / h.ellipticity) ** 2)
    return np.hypot(yy - cy, xx - cx) * stretch / wobble


def heart_plane(case: Case, z: float, yy, xx, shift) -> tuple[np.ndarray, np.ndarray]:
    """(signal, label) of the heart and great vessels in the plane at ``z`` mm; signal NaN outside them."""
    h = case.heart
    t = (z - h.base_z) / h.length
    cy = h.centre[0] + h.tilt[0] * (z - h.base_z) + shift[0]
    cx = h.centre[1] + h.tilt[1] * (z - h.base_z) + shift[1]
    signal = np.full(yy.shape, np.nan, np.float32)
    label = np.zeros(yy.shape, np.uint8)
    blood = BLOOD * h.blood
    if t < 0:  # above the base: atria and aorta, unlabelled but as bright as the ventricles' blood
        grow = min(1.0, -t / 0.12)
        la = _ellipse(yy, xx, cy + 10, cx + 8, 22 * grow + 4, 28 * grow + 4, h.angle)
        ra = _ellipse(yy, xx, cy - 8, cx - 35, 18 * grow + 3, 22 * grow + 3, h.angle)
        aorta = _ellipse(yy, xx, cy - 25, cx - 10, 13, 13)
        wall = _ellipse(yy, xx, cy + 10, cx + 8, 22 * grow + 7, 28 * grow + 7, h.angle)
        signal[wall] = MYOCARDIUM * 1.2
        signal[la | ra | aorta] = blood
        return signal, label
    r = _lv_radius_scale(h, yy, xx, cy, cx)
    outer = (h.cavity_r + h.wall) * np.sqrt(max(0.0, 1 - t ** 2))
    inner = h.cavity_r * np.sqrt(max(0.0, 1 - (t / 0.88) ** 2))
    myo = r <= outer
    cavity = r <= inner
    if h.rv_end > t:
        taper = np.sqrt(max(0.0, 1 - (t / h.rv_end) ** 2))
        # an ellipse across the septum (short axis towards the LV) that overlaps the LV: without the
        # LV and its wall it is a crescent
        across, along = h.rv_short * taper + 2.0, h.rv_long * (0.55 + 0.45 * taper)
        d = outer + 0.25 * across
        ay, ax = cy + d * np.sin(h.rv_angle), cx + d * np.cos(h.rv_angle)
        turn = np.pi / 2 - h.rv_angle
        rv_all = _ellipse(yy, xx, ay, ax, across + 3.0, along + 3.0, turn)  # with its thin free wall
        rv = _ellipse(yy, xx, ay, ax, across, along, turn) & (r > outer + 1.5)
        signal[rv_all & ~myo] = MYOCARDIUM * 1.1
        signal[rv] = blood
        label[rv] = 1
    signal[myo] = MYOCARDIUM
    label[myo] = 2
    if inner > 0:
        signal[cavity] = blood
        label[cavity] = 3
        if 0.2 < t < 0.75:  # papillary muscles: dark, inside the cavity, labelled LV
            for angle, radius in h.papillary:
                py = cy + 0.6 * inner * np.sin(angle)
                px = cx + 0.6 * inner * np.cos(angle)
                muscle = _ellipse(yy, xx, py, px, radius, radius) & cavity
                signal[muscle] = MYOCARDIUM * 1.3
    return signal, label


def background_plane(case: Case, z: float, yy, xx, rng_field) -> np.ndarray:
    """The chest around the heart at ``z`` mm (fat, muscle, lungs with vessels, aorta, spine, liver)."""
    by, bx = case.body
    img = np.zeros(yy.shape, np.float32)
    img[_ellipse(yy, xx, 0, 0, by, bx)] = FAT
    img[_ellipse(yy, xx, 0, 0, by - 10, bx - 12)] = MUSCLE
    img[_ellipse(yy, xx, 0, 0, by - 22, bx - 25)] = TISSUE
    lung_ry, lung_rx = 0.55 * by, 0.3 * bx
    for side in (-1, 1):
        lung = _ellipse(yy, xx, 0.15 * by, side * 0.55 * bx, lung_ry, lung_rx)
        img[lung] = LUNG
    for vy, vx, vr in rng_field["vessels"]:
        img[_ellipse(yy, xx, vy * by, vx * bx, vr, vr)] = BLOOD * 0.7
    img[_ellipse(yy, xx, 0.55 * by, 0.12 * bx, 11, 11)] = BLOOD * 0.95  # descending aorta
    img[_ellipse(yy, xx, 0.78 * by, 0.0, 16, 16)] = BONE  # vertebra
    liver_t = (z - case.heart.base_z) / case.heart.length
    if liver_t > 0.55:  # the diaphragm: liver rising into the lower slices
        grow = min(1.0, (liver_t - 0.55) / 0.4)
        img[_ellipse(yy, xx, 0.15 * by, -0.4 * bx, 0.6 * by * grow + 1, 0.45 * bx * grow + 1)] = LIVER
    return img


def make_case(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, label uint8) of ``case.shape``."""
    from scipy import ndimage

    nz, ny, nx = case.shape
    dz, sy, sx = case.spacing
    yy, xx = np.meshgrid((np.arange(ny) - (ny - 1) / 2) * sy, (np.arange(nx) - (nx - 1) / 2) * sx, indexing="ij")
    field = {"vessels": [(rng.uniform(-0.3, 0.5), rng.choice([-1, 1]) * rng.uniform(0.3, 0.7), rng.uniform(1.5, 4))
                         for _ in range(int(rng.integers(6, 14)))]}
    # coil bias: brighter towards the anterior chest wall and one side, smooth
    bias = np.exp(rng.uniform(-0.35, -0.1) * yy / (ny * sy / 2) + rng.uniform(-0.2, 0.2) * xx / (nx * sx / 2)
                  - rng.uniform(0.0, 0.25) * (yy ** 2 + xx ** 2) / ((ny * sy / 2) ** 2))
    texture = ndimage.gaussian_filter(rng.standard_normal((nz, ny, nx)).astype(np.float32), (0, 2.0, 2.0))
    texture /= max(float(texture.std()), 1e-6)
    sigma = float(rng.uniform(0.03, 0.07))
    image = np.zeros(case.shape, np.float32)
    label = np.zeros(case.shape, np.uint8)
    offsets = (np.arange(SUBPLANES) - (SUBPLANES - 1) / 2) / SUBPLANES * 0.8 * dz
    for k in range(nz):
        zc = case.first_z + k * dz
        planes = []
        for off in offsets:
            z = zc + off
            plane = background_plane(case, z, yy, xx, field)
            signal, _ = heart_plane(case, z, yy, xx, case.shifts[k])
            inside = ~np.isnan(signal)
            plane[inside] = signal[inside]
            planes.append(plane)
        _, label[k] = heart_plane(case, zc, yy, xx, case.shifts[k])
        plane = np.mean(planes, 0)
        plane *= 1 + 0.06 * texture[k] * (plane > LUNG)  # tissue texture, not in air and lungs
        plane = ndimage.gaussian_filter(plane, 0.6 / max(1.0, sy / 1.5))  # the scanner's point spread
        image[k] = plane * bias * case.gains[k]
    real = image + rng.normal(0, sigma, image.shape)
    imag = rng.normal(0, sigma, image.shape)
    image = np.sqrt(real ** 2 + imag ** 2) * rng.uniform(200, 1500)
    return np.clip(np.rint(image), 0, 32767).astype(np.int16), label


def make_dataset(root: str | Path, dataset_id: int = 130, num_train: int = 160, num_test: int = 40,
                 scale: float = 1.0, seed: int = 0) -> Path:
    """Write ``raw/Dataset{id}_CineSynth`` under the workspace ``root``; return its folder. Training
    cases go to imagesTr/labelsTr, held-out ones to imagesTs/labelsTs. Each case has a generator of
    its own (``seed``, case index), so a case does not depend on how many come before it."""
    folder = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{NAME}"
    for i in range(num_train + num_test):
        rng = np.random.default_rng([seed, i])
        test = i >= num_train
        cid = f"cine_{i:03d}"
        case = draw_case(rng, scale)
        image, label = make_case(case, rng)
        write_nifti(image, case.spacing, folder / ("imagesTs" if test else "imagesTr") / f"{cid}_0000.nii.gz")
        write_nifti(label, case.spacing, folder / ("labelsTs" if test else "labelsTr") / f"{cid}.nii.gz")
        counts = np.bincount(label.ravel(), minlength=4)
        log.info("%s: shape %s spacing %s, voxels RV %d MYO %d LV %d", cid, case.shape,
                 tuple(round(s, 2) for s in case.spacing), *counts[1:])
    (folder / "dataset.json").write_text(json.dumps({
        "name": NAME, "channel_names": {"0": "cineMRI"}, "labels": LABELS,
        "numTraining": num_train, "file_ending": ".nii.gz",
        "description": f"bench/data/make_cine_dataset.py --num-train {num_train} --num-test {num_test} "
                       f"--scale {scale} --seed {seed}",
    }, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="autoseg workspace root (the dataset goes to ROOT/raw)")
    p.add_argument("-d", "--dataset-id", type=int, default=130)
    p.add_argument("--num-train", type=int, default=160, help="training cases (default 160)")
    p.add_argument("--num-test", type=int, default=40, help="held-out cases with labels (default 40)")
    p.add_argument("--scale", type=float, default=1.0, help="in-plane voxels per axis relative to full size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = make_dataset(args.root, args.dataset_id, args.num_train, args.num_test, args.scale, args.seed)
    log.info("wrote %s", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
