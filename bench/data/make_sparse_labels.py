"""Derive a sparsely annotated dataset: a few slices of each training label kept, the rest "ignore".

    python bench/data/make_sparse_labels.py --source WS/raw/Dataset201_Hippocampus --root WS
    autoseg plan_and_preprocess -d 204 --root WS --time-budget 10m
    autoseg train 3d_fullres 0 -d 204 --root WS --time-budget 10m
    autoseg predict -i WS/raw/Dataset204_HippocampusSparse/imagesTs -o WS/pred204 -d 204 --root WS -c 3d_fullres -f 0
    autoseg evaluate -ref WS/raw/Dataset204_HippocampusSparse/labelsTs -pred WS/pred204 -d 204 --root WS

writes ``WS/raw/Dataset204_HippocampusSparse/``: the source's images and split unchanged; in every
training label only ``--fraction`` (default 10%) of the slices along the first array axis (the
image's z axis as stored) keep their labels, at least one slice, evenly spaced from a random
offset drawn from ``--seed`` and the case id; every other voxel gets the ignore value (the highest
label value + 1), and ``dataset.json`` declares ``"ignore"`` with that value, as nnU-Net v2 reads
sparse annotation. The held-out labels (labelsTs) stay dense: the model is scored on whole volumes.
The suite (bench/suite.py) builds it as dataset 204 from its Hippocampus split 201.
"""
from __future__ import annotations

import logging
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
from raw_datasets import building_folder, derivation_parser, raw_cases, run_derivation, write_derived_meta  # noqa: E402

log = logging.getLogger("bench.make_sparse_labels")


def kept_slices(num_slices: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction * num_slices)`` slice indices (at least 1), evenly spaced from a random offset."""
    k = min(num_slices, max(1, int(round(fraction * num_slices))))
    step = num_slices / k
    offset = rng.uniform(0, step)
    return np.unique(np.floor(offset + step * np.arange(k)).astype(int).clip(0, num_slices - 1))


def sparsify(label: np.ndarray, slices: np.ndarray, ignore: int) -> np.ndarray:
    """``label`` with every slice (first axis) not in ``slices`` set to ``ignore``."""
    out = np.full_like(label, ignore)
    out[slices] = label[slices]
    return out


def build(source: Path, root: Path, dataset_id: int = 204, fraction: float = 0.1, seed: int = 0,
          name: str | None = None) -> Path:
    """Write ``root/raw/Dataset{id}_{name}`` from the densely labelled raw dataset ``source``; return it."""
    import SimpleITK as sitk

    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], found {fraction}")
    meta, cases = raw_cases(source)
    if "ignore" in meta["labels"]:
        raise ValueError(f"{source} already has an ignore label")
    ignore = max(meta["labels"].values()) + 1
    name = name or f"{meta.get('name', source.name.split('_', 1)[-1])}Sparse"
    final = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{name}"
    ending = meta["file_ending"]
    annotated = total = 0
    with building_folder(final, ("imagesTr", "labelsTr", "imagesTs", "labelsTs")) as tmp:
        for case in cases:
            for path in case.images:
                shutil.copyfile(path, tmp / f"images{case.part}" / path.name)
            if case.label is None:
                continue
            target = tmp / f"labels{case.part}" / f"{case.case_id}{ending}"
            if case.part == "Ts":
                shutil.copyfile(case.label, target)
                continue
            image = sitk.ReadImage(str(case.label))
            label = sitk.GetArrayFromImage(image)
            rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
            sparse = sparsify(label, kept_slices(label.shape[0], fraction, rng), ignore)
            annotated += int((sparse != ignore).sum())
            total += sparse.size
            out = sitk.GetImageFromArray(sparse)
            out.CopyInformation(image)
            sitk.WriteImage(out, str(target), True)
        out_meta = dict(meta, name=name, labels={**meta["labels"], "ignore": ignore},
                        description=f"{meta.get('name', source.name)} with {fraction:.0%} of each training label's "
                                    f"slices (first array axis) annotated, the rest 'ignore' ({ignore}); "
                                    f"bench/data/make_sparse_labels.py --fraction {fraction} --seed {seed}")
        write_derived_meta(tmp, out_meta)
    log.info("wrote %s: %.1f%% of the training voxels annotated", final, 100 * annotated / max(1, total))
    return final


def main(argv: list[str] | None = None) -> int:
    p = derivation_parser(__doc__.splitlines()[0], "densely labelled raw dataset folder", 204,
                          "the source's name + 'Sparse'")
    p.add_argument("--fraction", type=float, default=0.1, help="share of each training label's slices kept")
    args = p.parse_args(argv)
    return run_derivation(args.source, lambda: build(args.source, args.root, args.dataset_id, args.fraction, args.seed, args.name))


if __name__ == "__main__":
    sys.exit(main())
