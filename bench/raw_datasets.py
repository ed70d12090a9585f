"""Raw datasets in the nnU-Net v2 layout, for the scripts that derive or split them (stdlib only).

``raw_cases`` lists a raw folder's cases (images per channel, label), ``building_folder`` builds a
new dataset beside its final place and renames it there only when complete, and
``derivation_parser``/``run_derivation`` are the command line and exit codes every derived-dataset
script of ``bench/data/`` shares.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence


@dataclass(frozen=True)
class RawCase:
    """One case of a raw dataset (nnU-Net v2 layout): its image file per channel and its label."""

    case_id: str
    part: str  # "Tr" (imagesTr/labelsTr) or "Ts" (imagesTs/labelsTs)
    images: tuple[Path, ...]  # {case}_0000{ending}, {case}_0001{ending}, ... in channel order
    label: Path | None  # None for a held-out case without labelsTs


def raw_cases(folder: str | Path) -> tuple[dict, list[RawCase]]:
    """``dataset.json`` and every case of the raw dataset ``folder``, training cases first.

    A training case must have its label; a held-out one (imagesTs) may lack it. Every channel
    that ``channel_names`` declares must be there; files starting with '.' are ignored."""
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    ending, channels = meta["file_ending"], len(meta["channel_names"])
    cases = []
    for part in ("Tr", "Ts"):
        image_dir, label_dir = folder / f"images{part}", folder / f"labels{part}"
        if not image_dir.is_dir():
            continue
        names = [p.name[: -len(ending)] for p in image_dir.iterdir()
                 if p.name.endswith(ending) and not p.name.startswith(".")]
        for case_id in sorted({n.rsplit("_", 1)[0] for n in names}):
            images = tuple(image_dir / f"{case_id}_{c:04d}{ending}" for c in range(channels))
            missing = [str(p) for p in images if not p.is_file()]
            label = label_dir / f"{case_id}{ending}"
            if not label.is_file():
                if part == "Tr":
                    missing.append(str(label))
                label = None
            if missing:
                raise ValueError(f"{folder}: case {case_id} lacks {', '.join(missing)}")
            cases.append(RawCase(case_id, part, images, label))
    return meta, cases


@contextmanager
def building_folder(final: str | Path, subfolders: Sequence[str] = ()) -> Iterator[Path]:
    """A new empty sibling of ``final`` (with ``subfolders``) to build in; renamed onto ``final``
    when the block ends without an error, removed when it raises. Refuses an existing ``final``."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} exists; remove it first or choose another dataset id")
    tmp = final.with_name(f".{final.name}.building{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for sub in subfolders:
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def write_derived_meta(folder: Path, meta: dict) -> None:
    """``folder/dataset.json`` of a dataset derived from another: ``meta`` without the source's
    ``converted_from`` (that record describes the source's conversion, not this dataset)."""
    meta = {k: v for k, v in meta.items() if k != "converted_from"}
    (Path(folder) / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def derivation_parser(description: str, source: str, dataset_id: int, default_name: str):
    """The command line every derived-dataset script shares: ``--source`` (``source`` says which
    raw dataset folder), ``--root``, ``-d/--dataset-id`` (default ``dataset_id``), ``--seed`` and
    ``--name`` (``default_name`` says its default); the script adds its own options."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--source", type=Path, required=True, help=f"{source} (nnU-Net v2 layout)")
    p.add_argument("--root", type=Path, required=True, help="autoseg workspace root (writes ROOT/raw/...)")
    p.add_argument("-d", "--dataset-id", type=int, default=dataset_id)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help=f"dataset name (default: {default_name})")
    return p


def run_derivation(source: Path, build: Callable[[], object]) -> int:
    """The end of a derived-dataset script's ``main`` (make_thick_slices.py, make_multichannel.py,
    make_sparse_labels.py): refuse a ``source`` without dataset.json, run ``build``, and turn its
    refusals (an existing target, bad arguments) into a message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (Path(source) / "dataset.json").is_file():
        print(f"{source} is not a raw dataset folder (no dataset.json)", file=sys.stderr)
        return 2
    try:
        build()
    except (FileExistsError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    return 0
