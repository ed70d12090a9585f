"""Derive a thick-slice dataset: every case of a raw dataset re-sliced to FACTOR-times thicker slices.

    python bench/data/make_thick_slices.py --source WS/raw/Dataset201_Hippocampus --root WS
    autoseg plan_and_preprocess -d 202 --root WS --time-budget 10m
    autoseg train 3d_fullres 0 -d 202 --root WS --time-budget 10m
    autoseg predict -i WS/raw/Dataset202_HippocampusThick/imagesTs -o WS/pred202 -d 202 --root WS -c 3d_fullres -f 0
    autoseg evaluate -ref WS/raw/Dataset202_HippocampusThick/labelsTs -pred WS/pred202 -d 202 --root WS

writes ``WS/raw/Dataset202_HippocampusThick/`` with the source's split unchanged (imagesTr/labelsTr,
imagesTs/labelsTs: held-out cases are scored against their own re-sliced labels). On the
Decathlon Hippocampus (1 mm isotropic) the default ``--factor 4`` gives 4 x 1 x 1 mm voxels
(z, y, x), about 6-11 slices per case. The suite (bench/suite.py) builds it as dataset 202 from
its Hippocampus split 201.

How one case is re-sliced, along the first numpy axis of ``sitk.GetArrayFromImage`` (SimpleITK's
last index axis, "z"); the other two axes are kept as they are:
- the slices are taken in groups of ``--factor`` consecutive ones, starting at a phase offset of
  0 .. factor-1 slices drawn per case from ``--seed`` and the case id (a real thick-slice
  acquisition starts wherever the slab was placed); the slices before the offset and the
  remainder at the end that does not fill a whole group are dropped;
- image: the mean of each group (a thick slice averages its thickness: block averaging, which is
  the anti-aliasing filter of this down-sampling), written as float32;
- label: a majority vote within each group per (y, x); a tie goes to the LOWER label (so a 2:2 tie
  between background and a structure is background, a 2:2 tie between classes 1 and 2 is 1);
- geometry: spacing along z multiplied by ``factor``, direction kept, origin moved to the centre
  of the first thick slice (origin + direction_z x spacing_z x (offset + (factor - 1) / 2)).
Channels of a multi-channel case are all re-sliced with the same offset. Same arguments, same files.
"""
from __future__ import annotations

import logging
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
from raw_datasets import building_folder, derivation_parser, raw_cases, run_derivation, write_derived_meta  # noqa: E402

log = logging.getLogger("bench.make_thick_slices")

NAME_SUFFIX = "Thick"


def case_offset(case_id: str, factor: int, seed: int) -> int:
    """Phase offset (slices skipped at the start) of ``case_id``: 0 .. factor-1, from seed and id."""
    return int(np.random.default_rng([seed, zlib.crc32(case_id.encode())]).integers(0, factor))


def thick_groups(depth: int, factor: int, offset: int) -> int:
    """Number of whole groups of ``factor`` slices in ``depth`` slices after skipping ``offset``."""
    return max(0, (depth - offset) // factor)


def average_slices(array: np.ndarray, factor: int, offset: int) -> np.ndarray:
    """(Z, Y, X) -> (n, Y, X) float32: the mean of each group of ``factor`` slices from ``offset``.

    ``average_slices(np.arange(8.)[:, None, None], 4, 0)[:, 0, 0]`` is ``[1.5, 5.5]``."""
    n = thick_groups(array.shape[0], factor, offset)
    block = array[offset:offset + n * factor].astype(np.float64)
    return block.reshape(n, factor, *array.shape[1:]).mean(axis=1).astype(np.float32)


def majority_slices(label: np.ndarray, factor: int, offset: int) -> np.ndarray:
    """(Z, Y, X) -> (n, Y, X) labels: the most frequent label of each group of ``factor`` slices;
    ties go to the lower label. With factor 4, votes (0, 0, 2, 2) give 0, (1, 2, 2, 0) give 2."""
    n = thick_groups(label.shape[0], factor, offset)
    block = label[offset:offset + n * factor].reshape(n, factor, *label.shape[1:])
    values = np.unique(block)
    counts = np.stack([(block == v).sum(axis=1) for v in values])  # (V, n, Y, X), values ascending
    return values[counts.argmax(axis=0)].astype(label.dtype)  # argmax takes the first (lowest) of a tie


def thick_geometry(image, factor: int, offset: int):
    """(spacing, origin) of the re-sliced SimpleITK ``image`` (x, y, z order, as SimpleITK has them)."""
    spacing = list(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = spacing[2] * (offset + (factor - 1) / 2.0)
    origin = np.array(image.GetOrigin()) + direction[:, 2] * shift
    spacing[2] *= factor
    return tuple(spacing), tuple(float(v) for v in origin)


def _write(array: np.ndarray, reference, factor: int, offset: int, path: Path) -> None:
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array)
    spacing, origin = thick_geometry(reference, factor, offset)
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    out.SetDirection(reference.GetDirection())
    sitk.WriteImage(out, str(path), True)


def build(source: Path, root: Path, dataset_id: int = 202, factor: int = 4, seed: int = 0,
          name: str | None = None) -> Path:
    """Write ``root/raw/Dataset{id}_{name}`` from the raw dataset folder ``source``; return it."""
    import SimpleITK as sitk

    if factor < 2:
        raise SystemExit(f"--factor must be at least 2, found {factor}")
    meta, cases = raw_cases(source)
    if not meta["file_ending"].endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        raise SystemExit(f"{source}: expected 3D volumes (.nii.gz, .nrrd, .mha), found {meta['file_ending']}")
    name = name or f"{meta.get('name', source.name.split('_', 1)[-1])}{NAME_SUFFIX}"
    final = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{name}"
    ending = meta["file_ending"]
    depths = []
    with building_folder(final, ("imagesTr", "labelsTr", "imagesTs", "labelsTs")) as tmp:
        for case in cases:
            offset = case_offset(case.case_id, factor, seed)
            for channel, path in enumerate(case.images):
                image = sitk.ReadImage(str(path))
                array = sitk.GetArrayFromImage(image)
                if array.ndim != 3:
                    raise SystemExit(f"{path}: expected a 3D image, found shape {array.shape}")
                if thick_groups(array.shape[0], factor, offset) < 1:
                    raise SystemExit(f"{path}: {array.shape[0]} slices make no group of {factor} after an offset of "
                                     f"{offset}; use a smaller --factor")
                _write(average_slices(array, factor, offset), image, factor, offset,
                       tmp / f"images{case.part}" / f"{case.case_id}_{channel:04d}{ending}")
            if case.label is not None:
                label = sitk.ReadImage(str(case.label))
                thick = majority_slices(sitk.GetArrayFromImage(label), factor, offset)
                _write(thick, label, factor, offset, tmp / f"labels{case.part}" / f"{case.case_id}{ending}")
                depths.append(thick.shape[0])
        out_meta = dict(meta, name=name, numTraining=sum(c.part == "Tr" for c in cases),
                        description=f"{meta.get('name', source.name)} re-sliced to {factor}x thicker slices along "
                                    f"the first array axis (block mean; label majority, ties to the lower label); "
                                    f"bench/data/make_thick_slices.py --factor {factor} --seed {seed}")
        write_derived_meta(tmp, out_meta)
    log.info("wrote %s: %d training + %d held-out cases, %d-%d thick slices", final,
             out_meta["numTraining"], len(cases) - out_meta["numTraining"], min(depths, default=0),
             max(depths, default=0))
    return final


def main(argv: list[str] | None = None) -> int:
    p = derivation_parser(__doc__.splitlines()[0], "raw dataset folder to re-slice", 202,
                          "the source's name + 'Thick'")  # --seed draws each case's phase offset
    p.add_argument("--factor", type=int, default=4, help="slices averaged into one (default 4: 1 mm -> 4 mm)")
    args = p.parse_args(argv)
    return run_derivation(args.source, lambda: build(args.source, args.root, args.dataset_id, args.factor, args.seed, args.name))


if __name__ == "__main__":
    sys.exit(main())
