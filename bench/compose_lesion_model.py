"""One label from a second model: the segmentation of an anatomy model with the label's voxels
taken from a model trained on that label alone (the "separate lesion network" our users built).

    python bench/compose_lesion_model.py --main PLAIN/predictions --label-model LESION/predictions \
        --label 3 --out COMPOSED
    autoseg evaluate -ref RAW/labelsTs -pred COMPOSED -d 104 --root WS -o COMPOSED/summary.json

Per case (the same file names in both folders): the main model's labels, with its own voxels of
``--label`` set to background, and ``--label`` wherever the label model predicts it. The output keeps
the main prediction's geometry. Used for docs/benchmarks.md, "A separate network for the lesions".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def compose(main: np.ndarray, label_model: np.ndarray, label: int) -> np.ndarray:
    """``main`` with its ``label`` voxels cleared and ``label`` wherever ``label_model`` has it."""
    if main.shape != label_model.shape:
        raise ValueError(f"the two predictions differ in shape: {main.shape} and {label_model.shape}")
    out = np.where(main == label, 0, main).astype(main.dtype)
    out[label_model == label] = label
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--main", type=Path, required=True, help="folder of the anatomy model's predictions")
    p.add_argument("--label-model", type=Path, required=True, help="folder of the label model's predictions")
    p.add_argument("--label", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    files = sorted(f.name for f in args.main.glob("*.nii.gz"))
    missing = [f for f in files if not (args.label_model / f).is_file()]
    if not files or missing:
        sys.exit(f"expected the same .nii.gz cases in {args.main} and {args.label_model}; "
                 f"found {len(files)} in the first, missing from the second: {missing[:5]}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in files:
        a, b = sitk.ReadImage(str(args.main / name)), sitk.ReadImage(str(args.label_model / name))
        img = sitk.GetImageFromArray(compose(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b), args.label))
        img.CopyInformation(a)
        tmp = args.out / f".{name}.tmp.nii.gz"
        sitk.WriteImage(img, str(tmp))
        tmp.replace(args.out / name)
    print(f"composed {len(files)} cases into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
