"""Preprocessed cases on disk: blosc2-compressed arrays plus a JSON of properties.

Per case in ``preprocessed/<dataset>/<configuration>/``:
``{case}.data.b2`` (float32 (C, Z, Y, X)), ``{case}.seg.b2`` (int8 (1, Z, Y, X)),
``{case}.loc.npz`` (sampled voxel coordinates per foreground class, and of annotated voxels
under ``ANNOTATED`` where the dataset has an ignore label) and ``{case}.json``
(``CaseProperties``). Each file is written under a temporary name and renamed; the JSON is
written last, so a case counts as present only when it is complete.

Class locations: up to ``MAX_LOCATIONS`` voxels per class, drawn uniformly without
replacement with a seed made from the case id (all of them for smaller classes), so even a
single-voxel lesion can be centred in a patch during oversampling.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from autoseg.serialization import load_json_as, save_json

MAX_LOCATIONS = 10_000
ANNOTATED = -1  # class_locations key of annotated voxels (datasets with an ignore label)


@dataclass(frozen=True)
class CaseProperties:
    case_id: str
    geometry: dict  # the original ImageGeometry as JSON (autoseg.imageio.ImageGeometry.to_json)
    crop_bbox: tuple[tuple[int, int], ...]  # in the original array, hi exclusive
    shape_after_crop: tuple[int, ...]
    spacing_after_crop: tuple[float, ...]  # = original spacing
    shape_after_resample: tuple[int, ...]
    spacing_after_resample: tuple[float, ...]
    signature: str = ""  # raw files + plan hash; equal signature = up to date


@dataclass
class PreprocessedCase:
    data: np.ndarray
    seg: Optional[np.ndarray]
    properties: CaseProperties
    class_locations: dict[int, np.ndarray]


def sample_class_locations(seg: np.ndarray, labels: list[int], seed: int,
                           ignore: Optional[int] = None) -> dict[int, np.ndarray]:
    """Up to ``MAX_LOCATIONS`` voxel coordinates (N, 3) per foreground label of ``seg`` (1, ...); with
    an ``ignore`` label also under ``ANNOTATED`` (-1) those of annotated voxels, background included,
    so that patches are drawn where there is something to learn (the ignore value is no class)."""
    rng = np.random.default_rng(seed)
    out = {}
    s = seg[0]

    def draw(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if idx.size > MAX_LOCATIONS:
            idx = np.sort(rng.choice(idx, MAX_LOCATIONS, replace=False))
        return np.stack(np.unravel_index(idx, s.shape), 1).astype(np.int32)

    for label in labels:
        if label != 0 and label != ignore:
            out[label] = draw(s == label)
    if ignore is not None:
        out[ANNOTATED] = draw(s != ignore)
    return out


def case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def _write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


# blosc2 is imported in the functions that use it: predict needs ``CaseProperties`` but not the
# 0.15 s that importing blosc2 takes.


def save_case(folder: str | Path, case_id: str, data: np.ndarray, seg: np.ndarray | None,
              properties: CaseProperties, class_locations: dict[int, np.ndarray]) -> None:
    import blosc2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{case_id}.json").unlink(missing_ok=True)  # the case is incomplete until rewritten
    _write_bytes(folder / f"{case_id}.data.b2", blosc2.pack_array2(np.ascontiguousarray(data, np.float32)))
    if seg is not None:
        _write_bytes(folder / f"{case_id}.seg.b2", blosc2.pack_array2(np.ascontiguousarray(seg, np.int8)))
    tmp = folder / f".{case_id}.loc.tmp{os.getpid()}.npz"
    np.savez(tmp, **{str(k): v for k, v in class_locations.items()})
    os.replace(tmp, folder / f"{case_id}.loc.npz")
    save_json(properties, folder / f"{case_id}.json")


def load_properties(folder: str | Path, case_id: str) -> CaseProperties:
    return load_json_as(CaseProperties, Path(folder) / f"{case_id}.json")


def load_case(folder: str | Path, case_id: str, with_seg: bool = True) -> PreprocessedCase:
    import blosc2

    folder = Path(folder)
    props = load_properties(folder, case_id)
    data = blosc2.unpack_array2((folder / f"{case_id}.data.b2").read_bytes())
    seg_path = folder / f"{case_id}.seg.b2"
    seg = blosc2.unpack_array2(seg_path.read_bytes()) if with_seg and seg_path.is_file() else None
    loc_path = folder / f"{case_id}.loc.npz"
    locations = {}
    if loc_path.is_file():
        with np.load(loc_path) as z:
            locations = {int(k): z[k] for k in z.files}
    return PreprocessedCase(data, seg, props, locations)


def list_cases(folder: str | Path) -> list[str]:
    """Ids of the complete cases in ``folder`` (those with a properties JSON)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.startswith("."))
