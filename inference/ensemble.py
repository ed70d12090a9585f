"""``autoseg ensemble``: average the saved probabilities of several prediction folders."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.imageio import ImageGeometry, write_image

log = logging.getLogger(__name__)


def ensemble_folders(input_dirs: list[str | Path], output_dir: str | Path, file_ending: str = ".nii.gz",
                     save_probabilities: bool = False) -> list[str]:
    """Average ``{case}.npz`` probabilities of the cases present in every folder; write argmax maps.

    The geometry comes from the ``{case}.json`` sidecar written with the probabilities.
    Returns the case ids written.
    """
    from autoseg.inference.validation import save_probabilities as save_probs

    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise UserFacingError("ensembling needs at least two folders")
    sets = [{p.name[:-4] for p in d.glob("*.npz") if not p.name.startswith(".")} for d in dirs]
    cases = sorted(set.intersection(*sets))
    if not cases:
        raise UserFacingError(f"no case has probabilities in all of {', '.join(map(str, dirs))}; "
                              "predict with --save_probabilities first")
    out = Path(output_dir)
    for case in cases:
        probs = None
        for d in dirs:
            with np.load(d / f"{case}.npz") as z:
                p = z["probabilities"].astype(np.float32)
            probs = p if probs is None else probs + p
        probs /= len(dirs)
        geometry = ImageGeometry.from_json(json.loads((dirs[0] / f"{case}.json").read_text()))
        write_image(probs.argmax(0).astype(np.uint8), geometry, out / f"{case}{file_ending}")
        if save_probabilities:
            save_probs(out / case, probs, geometry)
    return cases


def cli_ensemble(args: argparse.Namespace) -> int:
    cases = ensemble_folders(args.input, args.output, save_probabilities=args.save_probabilities)
    log.info("ensembled %d cases into %s", len(cases), args.output)
    return 0
