"""Reading and writing images while keeping their geometry exactly.

Array convention (used everywhere in autoseg): an image is a float32 array of shape
``(C, Z, Y, X)``, channels first, then the spatial axes in the order SimpleITK's
``GetArrayFromImage`` returns them (slowest axis first). Spacing is in mm in the same
order, so a NIfTI of size (x=35, y=51, z=24) with spacing (1.0, 0.9, 3.0) becomes an
array of shape ``(1, 24, 51, 35)`` with spacing ``(3.0, 0.9, 1.0)``.

2D images (.png/.tif/.bmp) become ``(C, 1, H, W)`` with spacing ``(999.0, 1.0, 1.0)``:
a single slice whose out-of-plane spacing is so large that nothing is ever resampled
or pooled along it. RGB(A) images are read as 3 (4) channels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

NATURAL_2D_ENDINGS = (".png", ".tif", ".tiff", ".bmp")
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_ENDINGS = SITK_ENDINGS + NATURAL_2D_ENDINGS
FAKE_2D_SPACING = 999.0


class ImageReadError(ValueError):
    """An image file could not be read or has an unexpected layout."""


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image lies in the world, enough to write a result back exactly.

    ``spacing`` is in array order (z, y, x) in mm. ``origin`` and ``direction`` are in
    SimpleITK's (x, y, z) convention, as stored in the file. ``is_2d`` marks natural 2D
    images, whose arrays carry a leading singleton slice axis.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    shape: tuple[int, ...]
    is_2d: bool = False

    def to_json(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.shape),
            "is_2d": self.is_2d,
        }

    @classmethod
    def from_json(cls, d: dict) -> "ImageGeometry":
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
            shape=tuple(int(v) for v in d["shape"]),
            is_2d=bool(d.get("is_2d", False)),
        )

    def matches(self, other: "ImageGeometry", tol: float = 1e-3) -> list[str]:
        """Return human-readable differences to ``other`` (empty when they agree)."""
        problems = []
        if self.shape != other.shape:
            problems.append(f"shape {self.shape} vs {other.shape}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=tol):
                problems.append(f"{name} {tuple(np.round(a, 4))} vs {tuple(np.round(b, 4))}")
        return problems


def file_ending(path: str | os.PathLike) -> str:
    """Return the supported ending of ``path`` ('.nii.gz', '.png', ...) or raise."""
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    raise ImageReadError(
        f"unsupported image file '{path}': expected one of {', '.join(SUPPORTED_ENDINGS)}"
    )


def _read_one(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read one file as (C, Z, Y, X); C > 1 only for vector/RGB pixels."""
    import SimpleITK as sitk

    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ImageReadError(f"cannot read {path}: {first}") from None
    arr = sitk.GetArrayFromImage(img)
    n_comp = img.GetNumberOfComponentsPerPixel()
    is_2d = file_ending(path) in NATURAL_2D_ENDINGS
    if is_2d:
        if img.GetDimension() != 2:
            raise ImageReadError(f"{path}: expected a 2D image, found {img.GetDimension()}D")
        arr = arr[None, None] if n_comp == 1 else np.moveaxis(arr, -1, 0)[:, None]
        geom = ImageGeometry(
            spacing=(FAKE_2D_SPACING, 1.0, 1.0),
            origin=tuple(img.GetOrigin()),
            direction=tuple(img.GetDirection()),
            shape=tuple(arr.shape[1:]),
            is_2d=True,
        )
        return arr, geom
    if img.GetDimension() == 2:  # a 2D medical image (e.g. a 2D .nii or .mha)
        spacing = (FAKE_2D_SPACING,) + tuple(float(s) for s in reversed(img.GetSpacing()))
        origin, direction = tuple(img.GetOrigin()), tuple(img.GetDirection())
        arr = arr[None, None] if n_comp == 1 else np.moveaxis(arr, -1, 0)[:, None]
        return arr, ImageGeometry(spacing, origin, direction, tuple(arr.shape[1:]), True)
    if img.GetDimension() != 3:
        raise ImageReadError(
            f"{path}: expected a 2D or 3D image, found {img.GetDimension()}D; split 4D "
            "images into one file per channel (autoseg convert_msd does this)"
        )
    arr = arr[None] if n_comp == 1 else np.moveaxis(arr, -1, 0)
    geom = ImageGeometry(
        spacing=tuple(float(s) for s in reversed(img.GetSpacing())),
        origin=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
        shape=tuple(arr.shape[1:]),
    )
    return arr, geom


def read_image(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channel files of one case into a float32 ``(C, Z, Y, X)`` array.

    All files must share shape and geometry; the first one's geometry is returned.
    """
    arrays, geom = [], None
    for p in paths:
        arr, g = _read_one(Path(p))
        if geom is None:
            geom = g
        elif g.shape != geom.shape:
            raise ImageReadError(
                f"{p}: shape {g.shape} differs from the first channel's {geom.shape}"
            )
        arrays.append(arr)
    if geom is None:
        raise ImageReadError("read_image needs at least one file")
    return np.concatenate(arrays, 0).astype(np.float32, copy=False), geom


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map as an int16 array of shape ``(1, Z, Y, X)``.

    Raises if the file has several components (e.g. an RGB-coloured PNG) or holds
    non-integer values.
    """
    arr, geom = _read_one(Path(path))
    if arr.shape[0] != 1:
        raise ImageReadError(
            f"{path}: label images must have one channel holding class indices 0..N, "
            f"found {arr.shape[0]} channels (an RGB-coloured label image?); save the "
            "labels as a single-channel grey image whose values are the class indices"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ImageReadError(f"{path}: label values must be integers, found non-integer values")
    return arr.astype(np.int16), geom


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` array with ``geometry`` atomically (temp file + rename).

    The format follows ``path``'s ending. 2D images are written without their leading
    singleton slice axis; integer arrays are written as uint8 in 2D formats when they fit.
    """
    import SimpleITK as sitk

    path = Path(path)
    ending = file_ending(path)
    if array.ndim != 3:
        raise ValueError(f"write_image expects a (Z, Y, X) array, got shape {array.shape}")
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    if geometry.is_2d:
        arr2 = array[0]
        if ending in NATURAL_2D_ENDINGS and np.issubdtype(arr2.dtype, np.integer):
            if arr2.min() >= 0 and arr2.max() <= 255:
                arr2 = arr2.astype(np.uint8)
            else:
                arr2 = arr2.astype(np.uint16)
        img = sitk.GetImageFromArray(arr2)
        if ending not in NATURAL_2D_ENDINGS:
            img.SetSpacing(tuple(reversed(geometry.spacing[1:])))
        img.SetOrigin(geometry.origin)
        img.SetDirection(geometry.direction)
    else:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(reversed(geometry.spacing)))
        img.SetOrigin(geometry.origin)
        img.SetDirection(geometry.direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{ending}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
