"""Make a small, realistic 2D dataset: synthetic retinal OCT B-scans with 7 labelled layers.

Each image is one B-scan (rows = depth, columns = A-scans), 8-bit grey PNG by default, with a
grey-value label PNG (0 background, 1..7 the layers from the inner retina outwards). Seeded:
the same arguments always give the same files. Raw layout (nnU-Net v2)::

    ROOT/raw/Dataset120_SynthOCT/
      dataset.json  imagesTr/oct_000_0000.png  labelsTr/oct_000.png   (training)
                    imagesTs/oct_060_0000.png  labelsTs/oct_060.png   (held out)

Full run (from the repository root; WS is any empty folder; 192 x 256 scans)::

    python bench/data/make_2d_dataset.py --root WS
    autoseg plan_and_preprocess -d 120 --root WS --device-profile cpu
    autoseg train_all -d 120 --root WS --time-budget 2h        # 5 folds of 2d (the only configuration)
    autoseg find_best_config -d 120 --root WS
    autoseg predict -i WS/raw/Dataset120_SynthOCT/imagesTs -o WS/pred_ts -d 120 --root WS
    autoseg evaluate -ref WS/raw/Dataset120_SynthOCT/labelsTs -pred WS/pred_ts -d 120 --root WS

Smoke test of the same chain (about 2 minutes of CPU time): make the dataset with
``--num-train 10 --num-test 4``, replace ``train_all`` by
``autoseg train 2d 0 -d 120 --root WS --set schedule.num_epochs=2 --set schedule.num_iterations_per_epoch=5
--set schedule.num_val_iterations_per_epoch=2`` and run ``find_best_config`` with ``-f 0``.
``--rgb`` writes pseudo-colour RGB scans (one 3-channel file per case; dataset.json declares
R, G, B) to exercise the RGB path; ``--file-ending .tif`` or ``.bmp`` the other 2D formats.
Label distances (HD95, NSD) of natural 2D images are in pixels: their spacing is 1.

How a scan is made (all lengths in pixels of a 192-row scan, scaled with ``--height``):
- the retinal pigment epithelium (RPE) lies on a smooth, tilted, slightly curved line; the
  layers are stacked upwards from it with thicknesses that vary smoothly along the scan and
  between scans (+-15%);
- in 60% of the scans the fovea is in view: the inner layers (RNFL, GCL+IPL, INL) thin out to
  almost nothing at its centre and the outer nuclear layer thickens, which makes the pit;
  the RNFL thickens towards the optic-nerve side;
- reflectivity per layer as in real OCT (RNFL, OPL and the photoreceptor/RPE band bright,
  INL and ONL dark, choroid medium with dark vessel lumens), a thin bright ellipsoid-zone line,
  retinal vessels in the RNFL that cast dark shadows on everything below them, and signal
  attenuation with depth;
- multiplicative speckle (gamma-distributed intensity, i.e. averaged exponential speckle of
  1.5-4 frames), an additive noise floor, then log compression to 8 bit with the noise floor
  near black and a random dynamic range, as OCT devices display.
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
from PIL import Image
from scipy import ndimage

log = logging.getLogger("bench.make_2d_dataset")

LAYERS = ("RNFL", "GCL_IPL", "INL", "OPL", "ONL", "photoreceptors_RPE", "choroid")
# relative intensity (linear, before speckle) of background and of each layer
REFLECTIVITY = np.array([0.002, 0.85, 0.45, 0.14, 0.55, 0.11, 0.75, 0.32], np.float32)
# thickness of each layer in pixels at 192 rows, away from the fovea
THICKNESS = np.array([9.0, 14.0, 8.0, 5.0, 14.0, 10.0, 22.0])


def _smooth_curve(rng: np.random.Generator, width: int, amplitude: float, scale: float) -> np.ndarray:
    """A smooth random curve over ``width`` columns: Gaussian-filtered noise, std ``amplitude``."""
    raw = ndimage.gaussian_filter1d(rng.normal(0, 1, width + 200), scale, mode="reflect")[100:-100]
    return amplitude * raw / max(float(raw.std()), 1e-6)


def make_scan(rng: np.random.Generator, height: int = 192, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic B-scan: (image uint8 (H, W), label uint8 (H, W) with values 0..7)."""
    s = height / 192.0
    x = np.arange(width, dtype=np.float64)
    xc = (x - width / 2) / width  # -0.5 .. 0.5

    # the RPE line (bottom of the photoreceptor band): tilt, curvature, gentle undulation
    rpe = (height * rng.uniform(0.58, 0.70) + height * rng.uniform(-0.12, 0.12) * xc
           + height * rng.uniform(0.0, 0.25) * xc ** 2 + _smooth_curve(rng, width, 1.5 * s, width / 8))
    thickness = THICKNESS * s * rng.uniform(0.85, 1.15, len(THICKNESS))
    per_layer = [thickness[k] * (1 + _smooth_curve(rng, width, 0.08, width / 6)) for k in range(len(LAYERS))]
    if rng.uniform() < 0.6:  # the fovea is in view
        centre = width * rng.uniform(0.35, 0.65)
        pit = np.exp(-0.5 * ((x - centre) / (width * rng.uniform(0.07, 0.11))) ** 2)
        for k, keep in ((0, 0.05), (1, 0.08), (2, 0.2), (3, 0.6)):  # inner layers thin out
            per_layer[k] = per_layer[k] * (1 - (1 - keep) * pit)
        per_layer[4] = per_layer[4] * (1 + 0.7 * pit)  # the outer nuclear layer thickens
        nasal = rng.choice([-1.0, 1.0])  # the optic-nerve side: thicker RNFL
        per_layer[0] = per_layer[0] * (1 + 0.6 * np.clip(nasal * (x - centre) / width * 2, 0, None))
    # boundaries, top to bottom: ILM, then the bottom of each layer; the photoreceptor band
    # (layer 5) ends at the RPE line, the choroid below it
    above = np.cumsum([per_layer[k] for k in range(5, -1, -1)], axis=0)[::-1]  # top of layers 0..5 above the RPE
    tops = [rpe - above[k] for k in range(6)] + [rpe, rpe + per_layer[6]]
    bounds = np.clip(np.stack(tops), 1, height - 1)  # (8, W): top of layers 1..7, then bottom of choroid

    rows = np.arange(height, dtype=np.float64)[:, None] + 0.5
    label = (rows >= bounds[:, None, :]).sum(0).astype(np.uint8)  # 0 above ILM, k in layer k
    label[label == 8] = 0  # below the choroid: sclera, background

    refl = REFLECTIVITY[label].astype(np.float64)
    refl[(label == 0) & (rows >= bounds[-1])] = 0.04  # sclera: dim, not as dark as the vitreous
    ez = np.abs(rows - (rpe - per_layer[5] * 0.45)) < 0.9 * s  # the ellipsoid-zone line
    refl[ez] = 0.95
    refl *= 1 + 0.25 * ndimage.gaussian_filter(rng.normal(0, 1, refl.shape), (1.0, 6.0)) * (label > 0)  # striation
    choroid = label == 7
    lumens = ndimage.gaussian_filter(rng.normal(0, 1, refl.shape), 2.5 * s) > 0.12
    refl[choroid & lumens] *= 0.35
    for _ in range(rng.integers(2, 6)):  # retinal vessels: a bright spot in the RNFL and a shadow below
        col = int(rng.integers(0, width))
        half = max(1, int(round(rng.uniform(1.0, 2.5) * s)))
        cols = slice(max(0, col - half), min(width, col + half + 1))
        top = int(bounds[0, col] + per_layer[0][col] * 0.5)
        refl[top:, cols] *= rng.uniform(0.25, 0.5)
        refl[max(0, top - half):top + 1, cols] = 0.9
    depth = np.clip(rows - bounds[0][None, :], 0, None)
    refl *= np.exp(-depth / (height * rng.uniform(0.5, 0.9)))  # attenuation with depth
    refl = ndimage.gaussian_filter(refl, 0.6)

    looks = rng.uniform(1.5, 4.0)  # frames averaged: gamma(looks) speckle with mean 1
    floor = 0.0015
    signal = refl * rng.gamma(looks, 1.0 / looks, refl.shape) + rng.exponential(floor, refl.shape)
    db = 10 * np.log10(signal)
    top_db = np.percentile(db, 99.7) + rng.uniform(-1, 1)
    low_db = 10 * np.log10(floor) + rng.uniform(2, 5)  # the noise floor maps to (almost) black
    image = np.clip((db - low_db) / (top_db - low_db), 0, 1)
    return (image * 255).round().astype(np.uint8), label


def pseudo_colour(grey: np.ndarray) -> np.ndarray:
    """A 'hot'-like colour map of an 8-bit image: (H, W) -> (H, W, 3) uint8."""
    v = grey.astype(np.float32) / 255.0
    rgb = np.stack([np.clip(1.6 * v, 0, 1), np.clip(1.6 * v - 0.5, 0, 1), np.clip(3.0 * v - 2.0, 0, 1)], -1)
    return (rgb * 255).round().astype(np.uint8)


def make_dataset(root: Path, num_train: int = 60, num_test: int = 20, seed: int = 0, height: int = 192,
                 width: int = 256, dataset_id: int = 120, rgb: bool = False, file_ending: str = ".png",
                 overwrite: bool = False) -> Path:
    """Write ``root/raw/DatasetXXX_SynthOCT`` (atomically: a temp folder renamed) and return it."""
    name = f"Dataset{dataset_id:03d}_SynthOCT"
    final = Path(root) / "raw" / name
    if final.exists() and not overwrite:
        raise SystemExit(f"{final} exists; pass --overwrite to replace it or choose another --dataset-id")
    tmp = final.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(num_train + num_test)):
        image, label = make_scan(np.random.default_rng(child), height, width)
        split = "Tr" if i < num_train else "Ts"
        cid = f"oct_{i:03d}"
        Image.fromarray(pseudo_colour(image) if rgb else image).save(tmp / f"images{split}" / f"{cid}_0000{file_ending}")
        Image.fromarray(label).save(tmp / f"labels{split}" / f"{cid}{file_ending}")
    meta = {
        "name": "SynthOCT",
        "description": f"synthetic retinal OCT B-scans, bench/data/make_2d_dataset.py --seed {seed}",
        "channel_names": {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "OCT"},
        "labels": {"background": 0, **{layer: k + 1 for k, layer in enumerate(LAYERS)}},
        "numTraining": num_train,
        "file_ending": file_ending,
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("autoseg_data"), help="workspace folder (raw/ is made in it)")
    p.add_argument("--num-train", type=int, default=60)
    p.add_argument("--num-test", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=192, help="rows (depth) per scan, pixels")
    p.add_argument("--width", type=int, default=256, help="columns (A-scans) per scan, pixels")
    p.add_argument("--dataset-id", type=int, default=120)
    p.add_argument("--rgb", action="store_true", help="pseudo-colour RGB scans instead of grey")
    p.add_argument("--file-ending", default=".png", choices=(".png", ".tif", ".bmp"))
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = make_dataset(args.root, args.num_train, args.num_test, args.seed, args.height, args.width,
                          args.dataset_id, args.rgb, args.file_ending, args.overwrite)
    log.info("wrote %s: %d training and %d held-out scans of %d x %d", folder, args.num_train, args.num_test,
             args.height, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
