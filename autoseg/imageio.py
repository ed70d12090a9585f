"""Reading and writing images while keeping their geometry exactly.

Array convention (used everywhere in autoseg): an image is a float32 array of shape
``(C, Z, Y, X)``, channels first, then the spatial axes in the order SimpleITK's
``GetArrayFromImage`` returns them (slowest axis first). Spacing is in mm in the same
order, so a NIfTI of size (x=35, y=51, z=24) with spacing (1.0, 0.9, 3.0) becomes an
array of shape ``(1, 24, 51, 35)`` with spacing ``(3.0, 0.9, 1.0)``.

2D images (.png/.tif/.tiff/.bmp) become ``(C, 1, H, W)`` with spacing ``(999.0, 1.0, 1.0)``:
a single slice whose out-of-plane spacing is so large that nothing is ever resampled
or pooled along it. Example: a 640 x 480 RGB PNG becomes an array of shape
``(3, 1, 480, 640)``. RGB(A) images are read as 3 (4) channels; a palette image (PIL mode
'P') is expanded to its colours, except as a label, where its palette indices are the class
values. BMP, palette, grey + alpha and 1-bit images are read with Pillow (SimpleITK reads 8-bit
grey BMPs as RGB and cannot read the others faithfully); everything else with SimpleITK.

Every file is read to its last byte and its voxels must be finite: a file that ends before the
size its header declares, or an image holding NaN or infinite values, raises ``ImageReadError``.
SimpleITK refuses such files itself except NIfTI, whose reader (nifticlib) pads a cut-off file
with zeros and turns NaN/inf into 0 without a word; NIfTI files are therefore also decompressed
here and their stored voxels checked (``_check_nifti_payload``).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

NATURAL_2D_ENDINGS = (".png", ".tif", ".tiff", ".bmp")
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_ENDINGS = SITK_ENDINGS + NATURAL_2D_ENDINGS
FAKE_2D_SPACING = 999.0
# Pillow modes read with Pillow: palette, grey + alpha (SimpleITK cannot read them) and 1-bit
# (SimpleITK turns 0/1 into 0/255, or into RGBA for TIFF)
_PIL_MODES = ("P", "PA", "LA", "La", "1")


class ImageReadError(ValueError):
    """An image file could not be read or has an unexpected layout."""


# NIfTI datatype codes whose components are IEEE floats (float32, float64, complex64, complex128)
_NIFTI_FLOAT_COMPONENTS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
_CORRUPT_FIX = "the file is unreadable or corrupt: copy or re-export it again"


def _decompress_gzip(raw: bytes) -> tuple[bytes, bool]:
    """Decompress every gzip member of ``raw``; return (data, complete). ``complete`` is False when
    the stream ends before its last member's end (a cut-off file); raises ``zlib.error`` on a
    broken stream."""
    parts, complete = [], True
    while raw:
        d = zlib.decompressobj(wbits=31)
        parts.append(d.decompress(raw))
        if not d.eof:
            complete = False
            break
        raw = d.unused_data
    return b"".join(parts), complete


def _nifti_layout(header: bytes) -> tuple[str, int, int, int, int] | None:
    """(byte order, vox_offset, number of voxel components, bytes per component, datatype) from a
    NIfTI-1 or NIfTI-2 header, or None when ``header`` is neither."""
    for order in "<>":
        (size,) = struct.unpack(order + "i", header[:4]) if len(header) >= 4 else (0,)
        if size == 348 and len(header) >= 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
        elif size == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        count = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(7, dims[0]))]], dtype=np.int64))
        return order, max(offset, size + 4), count, bitpix // 8, datatype
    return None


def _check_nifti_payload(path: Path) -> int:
    """Read a NIfTI file (.nii or .nii.gz) to its last byte; return how many stored voxel values
    are NaN or infinite (0 for integer data).

    Raises ``ImageReadError`` naming the file, the size its header declares and the size found
    when the file ends early. Example: a float32 image of 40 x 30 x 20 voxels declares 352 + 24000
    x 4 = 96352 bytes; cut to half of its compressed bytes it decompresses to about 48000."""
    raw = path.read_bytes()
    gz = raw[:2] == b"\x1f\x8b"
    try:
        data, complete = _decompress_gzip(raw) if gz else (raw, True)
    except zlib.error as exc:
        raise ImageReadError(f"cannot read {path}: broken gzip stream ({exc}); {_CORRUPT_FIX}") from None
    layout = _nifti_layout(data[:540])
    if layout is None:
        return 0  # SimpleITK read it, so it is not NIfTI-1/2 as this parser knows them: leave it be
    order, offset, count, itemsize, datatype = layout
    expected = offset + count * itemsize
    if len(data) < expected or not complete:
        stream = "decompressed stream" if gz else "file"
        raise ImageReadError(
            f"{path}: the file is incomplete: its header declares {expected} bytes ({offset} of header and "
            f"{count} values of {itemsize} byte(s)), but the {stream} "
            + (f"holds {len(data)}" if complete else f"ends after {len(data)} (the gzip stream is cut off)")
            + "; it was probably cut off while being copied or written: copy or re-export it again"
        )
    if datatype not in _NIFTI_FLOAT_COMPONENTS:
        return 0
    component = np.dtype(order + _NIFTI_FLOAT_COMPONENTS[datatype])
    values = np.frombuffer(data, component, count * itemsize // component.itemsize, offset)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _non_finite_error(path: Path, bad: int, total: int) -> ImageReadError:
    return ImageReadError(
        f"{path}: holds {bad} NaN/inf voxel(s) of {total}; expected finite values everywhere: replace them "
        "(e.g. with the image's minimum) and save the file again"
    )


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


def natural_2d_geometry(height: int, width: int) -> ImageGeometry:
    """The geometry of a PNG/TIFF/BMP picture of ``height`` x ``width`` pixels (no physical one)."""
    return ImageGeometry(spacing=(FAKE_2D_SPACING, 1.0, 1.0), origin=(0.0, 0.0),
                         direction=(1.0, 0.0, 0.0, 1.0), shape=(1, height, width), is_2d=True)


def _pil_mode(path: Path) -> str | None:
    """Pillow's mode of ``path`` ('L', 'RGB', 'P', ...) from its header, or None if Pillow cannot open it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:  # not Pillow's format (e.g. an exotic TIFF): SimpleITK reads it
        return None


def _read_with_pil(path: Path, palette_as_indices: bool) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 2D image with Pillow as (C, 1, H, W); a 1-bit image gives 0/1."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(f"{path}: holds {im.n_frames} images; expected one 2D image per file")
            if im.mode in ("P", "PA") and not palette_as_indices:  # as labels, the indices are kept
                palette = np.asarray(im.getpalette() or [0, 0, 0], np.int64).reshape(-1, 3)
                grey = bool(np.all(palette == palette[:, :1]))
                transparent = im.mode == "PA" or "transparency" in im.info
                im = im.convert("LA" if grey and transparent else "L" if grey else
                                "RGBA" if transparent else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot read {path}: {exc}; {_CORRUPT_FIX}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if mode == "PA" and palette_as_indices:  # index + alpha: the index is the class
        arr = arr[..., 0]
    arr = arr[None, None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)[:, None]
    return arr, natural_2d_geometry(arr.shape[2], arr.shape[3])


def _read_one(path: Path, palette_as_indices: bool = False) -> tuple[np.ndarray, ImageGeometry]:
    """Read one file as (C, Z, Y, X); C > 1 only for vector/RGB pixels.

    ``palette_as_indices``: return a palette image's indices (one channel) instead of its
    colours; used for label images.
    """
    import SimpleITK as sitk

    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    if file_ending(path) in NATURAL_2D_ENDINGS:
        mode = _pil_mode(path)
        if file_ending(path) == ".bmp" or mode in _PIL_MODES:
            return _read_with_pil(path, palette_as_indices)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ImageReadError(f"cannot read {path}: {first}; {_CORRUPT_FIX}") from None
    payload_bad = _check_nifti_payload(path) if file_ending(path) in (".nii.gz", ".nii") else 0
    return from_sitk(img, path, file_ending(path) in NATURAL_2D_ENDINGS, payload_bad)


def from_sitk(img, path: str | os.PathLike = "image", natural_2d: bool = False,
              known_bad: int = 0) -> tuple[np.ndarray, ImageGeometry]:
    """A SimpleITK image (read from ``path``, or made in memory) as (C, Z, Y, X) and its geometry,
    refused when it holds NaN/inf (``known_bad``: such values found in the file beforehand) or has
    another dimension than 2 or 3. ``natural_2d``: a PNG/TIFF/BMP picture (no physical geometry)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)
    bad = known_bad
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad += int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _non_finite_error(path, bad, arr.size)
    n_comp = img.GetNumberOfComponentsPerPixel()
    is_2d = natural_2d
    if is_2d:
        if img.GetDimension() != 2:
            raise ImageReadError(
                f"{path}: expected one 2D image, found a {img.GetDimension()}D stack of size "
                f"{img.GetSize()}; save each 2D image as its own file, or a 3D stack as NIfTI (.nii.gz)"
            )
        arr = arr[None, None] if n_comp == 1 else np.moveaxis(arr, -1, 0)[:, None]
        return arr, natural_2d_geometry(arr.shape[2], arr.shape[3])
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


def read_layout(paths: Sequence[str | os.PathLike]) -> tuple[int, bool]:
    """(number of channels, whether 2D) of one case's channel files, from their headers: what
    ``read_image`` would return as ``image.shape[0]`` and ``geometry.is_2d``, without reading the
    voxels of medical formats (natural 2D files are small and read whole: their channels depend on
    the palette). Raises ``ImageReadError`` for a file whose header cannot be read.

    Example: ``case_0000.nii.gz`` (3D) and ``case_0001.nii.gz`` (3D) -> (2, False); one RGB
    ``case_0000.png`` -> (3, True)."""
    import SimpleITK as sitk

    channels, is_2d = 0, False
    for p in map(Path, paths):
        if file_ending(p) in NATURAL_2D_ENDINGS:
            channels += _read_one(p)[0].shape[0]
            is_2d = True
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise ImageReadError(f"cannot read {p}: {first}; {_CORRUPT_FIX}") from None
        channels += reader.GetNumberOfComponents()
        is_2d = reader.GetDimension() == 2
    return channels, is_2d


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
    """Read a label map as an int16 array of shape ``(1, Z, Y, X)`` holding class indices.

    2D label images must hold the class indices 0..N as grey values (8 or 16 bit). Also
    accepted: an 8-bit palette PNG/BMP/TIFF (its palette indices are the classes), a grey
    image with a fully opaque alpha channel, and an RGB image whose three channels are equal
    (a grey image saved as RGB). A truly coloured label image raises ``ImageReadError``
    naming the colours found and how to convert them; so do non-integer values.
    """
    path = Path(path)
    arr, geom = _read_one(path, palette_as_indices=True)
    arr = _as_index_map(arr, path, natural_2d=file_ending(path) in NATURAL_2D_ENDINGS)
    if not np.issubdtype(arr.dtype, np.integer):  # float-typed labels are legal when they hold integers
        fractional = arr != np.round(arr)
        if fractional.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(arr[fractional])[:4])
            raise ImageReadError(
                f"{path}: label values must be integers (class indices), found {int(fractional.sum())} voxel(s) "
                f"with non-integer values such as {shown}; save the label map with the class index of each voxel "
                "(e.g. np.rint(label).astype(np.uint8)), not interpolated or resampled values"
            )
    low, high = (arr.min(), arr.max()) if arr.size else (0, 0)
    if low < np.iinfo(np.int16).min or high > np.iinfo(np.int16).max:
        raise ImageReadError(
            f"{path}: label values must be class indices from {np.iinfo(np.int16).min} to "
            f"{np.iinfo(np.int16).max}, found values from {low:g} to {high:g}; store the class index of each voxel"
        )
    return arr.astype(np.int16), geom


def _as_index_map(arr: np.ndarray, path: Path, natural_2d: bool) -> np.ndarray:
    """Reduce a (C, ...) label array to one channel where that loses nothing, else raise."""
    if natural_2d and arr.shape[0] in (2, 4) and arr[-1].min() == arr[-1].max() > 0:  # opaque alpha
        arr = arr[:-1]
    if natural_2d and arr.shape[0] == 3 and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2]):
        arr = arr[:1]  # a grey label saved as RGB
    if arr.shape[0] == 1:
        return arr
    colours = np.unique(arr.reshape(arr.shape[0], -1).T, axis=0)
    shown = ", ".join(str(tuple(int(v) for v in c)) for c in colours[:8])
    more = f" and {len(colours) - 8} more" if len(colours) > 8 else ""
    raise ImageReadError(
        f"{path}: label images must have one channel holding the class indices 0..N as grey values "
        f"(0 background, 1 the first class, ...), found {arr.shape[0]} channels: an RGB-coloured label "
        f"image with {len(colours)} colours {shown}{more}. Convert it by mapping each colour to its "
        "class index and saving a single-channel 8-bit image, e.g. in Python: "
        "rgb = np.asarray(PIL.Image.open(f).convert('RGB')); lab = np.zeros(rgb.shape[:2], np.uint8); "
        "lab[(rgb == (255, 0, 0)).all(-1)] = 1  # one line per class colour; "
        "PIL.Image.fromarray(lab).save(f). An 8-bit palette PNG whose indices are the classes is accepted as is"
    )


def to_sitk(array: np.ndarray, geometry: ImageGeometry, natural_2d_file: bool = False):
    """A ``(Z, Y, X)`` array with ``geometry`` as a SimpleITK image (a 2D image without its leading
    slice axis). ``natural_2d_file``: for a PNG/TIFF/BMP file (integers as uint8 or uint16, no
    spacing)."""
    import SimpleITK as sitk

    if array.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) array, got shape {array.shape}")
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    if geometry.is_2d:
        arr2 = array[0]
        if natural_2d_file and np.issubdtype(arr2.dtype, np.integer):
            arr2 = arr2.astype(np.uint8 if arr2.min() >= 0 and arr2.max() <= 255 else np.uint16)
        img = sitk.GetImageFromArray(arr2)
        if not natural_2d_file:
            img.SetSpacing(tuple(reversed(geometry.spacing[1:])))
    else:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(reversed(geometry.spacing)))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` array with ``geometry`` atomically (temp file + rename).

    The format follows ``path``'s ending. 2D images are written without their leading
    singleton slice axis; integer arrays are written as uint8 in 2D formats when they fit.
    """
    import SimpleITK as sitk

    path = Path(path)
    ending = file_ending(path)
    img = to_sitk(array, geometry, natural_2d_file=ending in NATURAL_2D_ENDINGS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{ending}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
