"""Writing a generated volume as NIfTI, shared by the synthetic-volume generators."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    """``array`` (z, y, x) with ``spacing`` in mm in the same order, compressed, to ``path``
    (``.nii.gz``), written under a temporary name and renamed into place."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:-len('.nii.gz')]}.tmp.nii.gz")
    sitk.WriteImage(img, str(tmp), True)
    tmp.replace(path)
