"""Derive a BraTS-like region dataset: a nested lesion implanted in each case of a two-channel set.

    python bench/data/make_regions.py --source WS/raw/Dataset203_HippocampusTwoChannel --root WS
    python bench/data/make_regions.py --source WS/raw/Dataset203_HippocampusTwoChannel --root WS -d 206 --as-labels
    python bench/regions.py --root WS     # both trained at the same budget, scored per region

writes ``WS/raw/Dataset205_LesionRegions/`` (or with ``--as-labels`` ``Dataset206_LesionLabels/``):
the source's cases and split, each with one lesion made of three nested parts, as BraTS's tumours:
- edema (label 1): an irregular blob (an ellipsoid of radii about 5-8 voxels, its surface
  roughened by smoothed noise), placed in the middle 40% of each axis;
- tumour core: a rough blob of 55-70% of those radii inside it, off-centre; its outer shell, 1
  voxel thick (2 in 30% of the cases), is the enhancing rim (label 3) and its inside necrosis
  (label 2). 15% of the cases have no enhancing rim (all core is necrosis), 15% a solid
  enhancing core (no necrosis);
- the intensities need both channels: channel 0 (T1-like) darkens edema a little and necrosis
  much and brightens the enhancing rim; channel 1 (FLAIR-like) brightens edema most, the core
  less (shifts in units of each channel's 1st-99th percentile range, smoothed, with noise).
The source's labels are dropped: the lesion is the only foreground. ``dataset.json`` declares the
regions as nnU-Net v2 reads BraTS: ``"whole tumor": [1, 2, 3]``, ``"tumor core": [2, 3]``,
``"enhancing tumor": 3`` with ``regions_class_order`` [1, 2, 3]; with ``--as-labels`` the same files
declare plain labels (edema 1, necrosis 2, enhancing 3), so one model of each kind can be trained
on identical data and both scored per region. Everything is drawn from ``--seed`` and the case id.
"""
from __future__ import annotations

import logging
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
from raw_datasets import building_folder, derivation_parser, raw_cases, run_derivation, write_derived_meta  # noqa: E402

log = logging.getLogger("bench.make_regions")

REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
PLAIN_LABELS = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
# intensity shifts per part, in units of the channel's 1st-99th percentile range: (edema, necrosis, enhancing)
SHIFTS = {0: (-0.10, -0.35, 0.45), 1: (0.35, 0.15, 0.20)}
NO_RIM, SOLID = 0.15, 0.15  # shares of cases without an enhancing rim / without necrosis


def rough_blob(shape, centre, radii, roughness: float, rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid of ``radii`` (voxels) at ``centre`` whose surface is moved by up to about
    ``roughness`` of the radius by smoothed noise."""
    from scipy.ndimage import gaussian_filter

    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij", sparse=True)
    d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
    noise = gaussian_filter(rng.normal(0, 1, shape), 2.0)
    noise /= max(noise.std(), 1e-8)
    return d + roughness * noise < 1.0


def lesion(shape: tuple[int, ...], radius: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """The label map (uint8) of one case's lesion: edema 1, necrosis 2, enhancing rim 3."""
    from scipy.ndimage import binary_erosion

    centre = [rng.uniform(0.3, 0.7) * n for n in shape]
    r = rng.uniform(*radius)
    radii = [r * rng.uniform(0.8, 1.2) for _ in shape]
    whole = rough_blob(shape, centre, radii, 0.2, rng)
    shift = rng.normal(0, 0.2, len(shape)) * np.asarray(radii)
    core_radii = [q * rng.uniform(0.55, 0.7) for q in radii]
    core = rough_blob(shape, np.asarray(centre) + shift, core_radii, 0.15, rng) & binary_erosion(whole, iterations=1)
    out = np.where(whole, 1, 0).astype(np.uint8)
    kind = rng.uniform()
    if kind < NO_RIM:
        out[core] = 2
    elif kind < NO_RIM + SOLID:
        out[core] = 3
    else:
        inner = binary_erosion(core, iterations=1 if rng.uniform() < 0.7 else 2)
        out[core] = 3
        out[inner] = 2
    return out


def implant(image: np.ndarray, label: np.ndarray, shifts: tuple[float, float, float],
            rng: np.random.Generator) -> np.ndarray:
    """``image`` (float) with the lesion's intensity shifts added, in units of its percentile range."""
    from scipy.ndimage import gaussian_filter

    x = image.astype(np.float32)
    lo, hi = np.percentile(x, [1, 99])
    scale = float(hi - lo) or 1.0
    add = np.zeros(x.shape, np.float32)
    for value, s in zip((1, 2, 3), shifts):
        add[label == value] = s * scale
    add = gaussian_filter(add, 0.7)
    texture = rng.normal(0, 0.05 * scale, x.shape).astype(np.float32) * (label > 0)
    return x + add + texture


def build(source: Path, root: Path, dataset_id: int = 205, seed: int = 0, as_labels: bool = False,
          radius: tuple[float, float] = (5.0, 8.0), name: str | None = None) -> Path:
    """Write ``root/raw/Dataset{id}_{name}`` from the two-channel raw dataset ``source``; return it."""
    import SimpleITK as sitk

    meta, cases = raw_cases(source)
    if len(meta["channel_names"]) != 2:
        raise ValueError(f"{source}: expected two channels, found {meta['channel_names']} "
                         "(make one with bench/data/make_multichannel.py)")
    name = name or ("LesionLabels" if as_labels else "LesionRegions")
    final = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{name}"
    ending = meta["file_ending"]
    voxels = np.zeros(4)
    with building_folder(final, ("imagesTr", "labelsTr", "imagesTs", "labelsTs")) as tmp:
        for case in cases:
            first = sitk.ReadImage(str(case.images[0]))
            shape = first.GetSize()[::-1]
            rng = np.random.default_rng([seed, 2, zlib.crc32(case.case_id.encode())])
            label = lesion(shape, radius, rng)
            voxels += np.bincount(label.ravel(), minlength=4)
            for c, path in enumerate(case.images):
                image = first if c == 0 else sitk.ReadImage(str(path))
                out = sitk.GetImageFromArray(implant(sitk.GetArrayFromImage(image), label, SHIFTS[c], rng))
                out.CopyInformation(image)
                sitk.WriteImage(out, str(tmp / f"images{case.part}" / path.name), True)
            lab = sitk.GetImageFromArray(label)
            lab.CopyInformation(first)
            sitk.WriteImage(lab, str(tmp / f"labels{case.part}" / f"{case.case_id}{ending}"), True)
        labels = PLAIN_LABELS if as_labels else REGION_LABELS
        out_meta = dict(meta, name=name, channel_names={"0": "T1", "1": "FLAIR"}, labels=labels,
                        numTraining=sum(c.part == "Tr" for c in cases),
                        description=f"{meta.get('name', source.name)} with a nested lesion implanted per case "
                                    f"(edema 1, necrosis 2, enhancing rim 3); bench/data/make_regions.py --seed {seed}"
                                    + (" --as-labels" if as_labels else ""))
        if not as_labels:
            out_meta["regions_class_order"] = [1, 2, 3]
        write_derived_meta(tmp, out_meta)
    share = voxels / voxels.sum()
    log.info("wrote %s: %d cases; voxel shares edema %.2f%%, necrosis %.2f%%, enhancing %.2f%%", final, len(cases),
             100 * share[1], 100 * share[2], 100 * share[3])
    return final


def main(argv: list[str] | None = None) -> int:
    p = derivation_parser(__doc__.splitlines()[0], "two-channel raw dataset folder", 205,
                          "LesionRegions, or LesionLabels with --as-labels")
    p.add_argument("--as-labels", action="store_true", help="declare plain labels instead of regions")
    args = p.parse_args(argv)
    return run_derivation(args.source, lambda: build(args.source, args.root, args.dataset_id, args.seed,
                                                     args.as_labels, name=args.name))


if __name__ == "__main__":
    sys.exit(main())
