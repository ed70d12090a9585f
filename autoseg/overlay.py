"""Overlay pictures: a slice of an image with a segmentation coloured over it, as PNG.

``autoseg overlay`` writes one PNG per case of a folder of segmentations, as nnU-Net's
``plot_overlay_pngs`` does: the axial slice (axis 0 of the ``(Z, Y, X)`` array) holding the most
foreground, the first channel of the image in grey, each label value filled in its own colour and,
with ``--reference``, the reference labels drawn as outlines in the same colours. ``autoseg report``
uses the same pictures for its best and worst cases.

Example: a case with image ``(1, 40, 64, 64)`` and a segmentation whose label 1 covers most voxels on
slice 17 gives a picture of slice 17, 64 x 64 pixels scaled up (nearest neighbour, in-plane spacing
kept) to at least ``MIN_SIDE`` pixels on its longer side.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from autoseg.errors import UserFacingError, output_folder

log = logging.getLogger(__name__)

MIN_SIDE = 256  # pictures are scaled up to at least this many pixels on their longer side
FILL_ALPHA = 0.45  # opacity of a filled label
# one colour per label value 1, 2, ... (cycled): well apart from each other and from grey
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 128, 128))


def label_colour(value: int) -> tuple[int, int, int]:
    """The RGB colour of label ``value`` (>= 1) in every picture."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def busiest_slice(mask: np.ndarray) -> int:
    """The index along axis 0 of ``mask`` (Z, Y, X; any non-zero counts) with the most foreground
    voxels; the middle slice when there is none."""
    counts = (mask != 0).reshape(mask.shape[0], -1).sum(1)
    return int(counts.argmax()) if counts.any() else mask.shape[0] // 2


def grey(slice2d: np.ndarray) -> np.ndarray:
    """A 2D intensity slice as uint8 grey values, its 0.5-99.5 percentiles stretched to 0-255."""
    finite = slice2d[np.isfinite(slice2d)]
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(slice2d.shape, np.uint8)
    scaled = (np.nan_to_num(slice2d, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2D boolean ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def overlay_rgb(image2d: np.ndarray, fill: Optional[np.ndarray] = None, lines: Optional[np.ndarray] = None,
                spacing: tuple[float, float] = (1.0, 1.0), min_side: int = MIN_SIDE) -> np.ndarray:
    """An RGB picture (H', W', 3) uint8 of a 2D slice: ``image2d`` in grey, the label values of
    ``fill`` (2D ints, 0 nothing) blended in their colours, those of ``lines`` drawn as outlines.

    The picture is scaled up by nearest neighbour so that its longer side has at least ``min_side``
    pixels and a pixel keeps the aspect of ``spacing`` (row, column spacing in mm)."""
    rgb = np.repeat(grey(np.asarray(image2d, np.float32))[..., None], 3, axis=2).astype(np.float32)
    if fill is not None:
        for value in np.unique(fill[fill > 0]):
            where = fill == value
            rgb[where] = (1 - FILL_ALPHA) * rgb[where] + FILL_ALPHA * np.array(label_colour(value), np.float32)
    if lines is not None:
        for value in np.unique(lines[lines > 0]):
            rgb[outline(lines == value)] = label_colour(value)
    return _scale_up(rgb.round().astype(np.uint8), spacing, min_side)


def _scale_up(rgb: np.ndarray, spacing: tuple[float, float], min_side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    sy, sx = (float(s) if s and np.isfinite(s) and s > 0 else 1.0 for s in spacing)
    height, width = h * sy / min(sy, sx), w * sx / min(sy, sx)
    factor = max(1.0, min_side / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.NEAREST))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``rgb`` to ``path`` as PNG atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(png_bytes(rgb))
    os.replace(tmp, path)


def case_overlay(image: np.ndarray, seg: np.ndarray, reference: Optional[np.ndarray] = None,
                 spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The overlay of one case: ``image`` (C, Z, Y, X), ``seg`` and ``reference`` (Z, Y, X) label maps,
    ``spacing`` (z, y, x) in mm. The slice is the one with the most foreground in ``seg`` (with a
    reference: in either); the first channel is shown."""
    z = busiest_slice(seg if reference is None else (seg != 0) | (reference != 0))
    return overlay_rgb(image[0, z], seg[z], None if reference is None else reference[z], tuple(spacing[-2:]))


def _cases(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` by case id (file name without its ending); other files are skipped."""
    from autoseg.imageio import SUPPORTED_ENDINGS, file_ending

    if not folder.is_dir():
        raise UserFacingError(f"the {what} folder {folder} does not exist; give the folder holding the {what}")
    return {p.name[: -len(file_ending(p))]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_ENDINGS)}


def _pair(images: Path, segmentations: Path, reference: Optional[Path]) -> list[tuple[str, list[Path], Path,
                                                                                        Optional[Path]]]:
    """(case, channel files, segmentation, reference) per case; every mismatch listed in one error."""
    from autoseg.dataset import group_channel_files
    from autoseg.imageio import file_ending

    segs = _cases(segmentations, "segmentations")
    if not segs:
        raise UserFacingError(f"no segmentations in {segmentations}; expected {{case}}.nii.gz (or .png, ...) files")
    ending = file_ending(next(iter(segs.values())))
    if not images.is_dir():
        raise UserFacingError(f"the images folder {images} does not exist; give the folder of {{case}}_0000{ending} "
                              "files the segmentations were made from")
    channels = group_channel_files(images, ending)
    refs = _cases(reference, "reference labels") if reference is not None else {}
    problems = []
    no_image = sorted(set(segs) - set(channels))
    if no_image:
        problems.append(f"{len(no_image)} segmentation(s) without an image in {images} (expected "
                        f"{no_image[0]}_0000{ending}): {', '.join(no_image)}")
    no_seg = sorted(set(channels) - set(segs))
    if no_seg:
        problems.append(f"{len(no_seg)} image(s) without a segmentation in {segmentations} (expected "
                        f"{no_seg[0]}{ending}): {', '.join(no_seg)}")
    if reference is not None:
        no_ref = sorted(set(segs) - set(refs))
        if no_ref:
            problems.append(f"{len(no_ref)} segmentation(s) without a reference in {reference}: {', '.join(no_ref)}")
    if problems:
        raise UserFacingError("cannot pair the cases: " + "; ".join(problems)
                              + ". Give folders that hold the same cases")
    return [(case, [channels[case][k] for k in sorted(channels[case])], segs[case], refs.get(case)) for case in segs]


def write_overlays(images: str | os.PathLike, segmentations: str | os.PathLike, out: str | os.PathLike,
                   reference: str | os.PathLike | None = None) -> list[Path]:
    """One overlay PNG ``out/{case}.png`` per segmentation ``{case}{ending}`` of ``segmentations``, over the
    case's first image channel ``images/{case}_0000{ending}`` (with ``reference``: its labels as outlines).

    The cases are paired before anything is written (``UserFacingError`` listing every case without its
    image, segmentation or reference); a case whose image, segmentation and reference differ in shape is
    skipped, the others written, and then one ``UserFacingError`` names the skipped ones. Returns the PNGs."""
    from autoseg.imageio import read_image, read_label

    pairs = _pair(Path(images), Path(segmentations), None if reference is None else Path(reference))
    inputs = [Path(p).resolve() for p in (images, segmentations, reference) if p is not None]
    if Path(out).resolve() in inputs:
        raise UserFacingError(f"the output folder {out} is one of the input folders; {{case}}.png pictures could "
                              "overwrite PNG images or labels there: give another folder")
    out = output_folder(out)
    written, mismatched = [], []
    for case, channel_files, seg_path, ref_path in pairs:
        image, geometry = read_image(channel_files)
        seg = read_label(seg_path)[0][0]
        ref = read_label(ref_path)[0][0] if ref_path is not None else None
        shapes = {"image": image.shape[1:], "segmentation": seg.shape, **({"reference": ref.shape} if ref is not None
                                                                            else {})}
        if len(set(shapes.values())) > 1:
            mismatched.append(f"{case} (" + ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items()) + ")")
            continue
        target = out / f"{case}.png"
        write_png(case_overlay(image, seg, ref, geometry.spacing), target)
        written.append(target)
    if mismatched:
        raise UserFacingError(f"{len(mismatched)} case(s) not drawn, their image and labels differ in shape (z, y, x): "
                              f"{'; '.join(mismatched)}; were they made from other images? {len(written)} "
                              f"overlay(s) written to {out}")
    return written


def cli_overlay(args: argparse.Namespace) -> int:
    written = write_overlays(args.input, args.segmentations, args.output, args.reference)
    log.info("%d overlay(s) written to %s", len(written), args.output)
    return 0
