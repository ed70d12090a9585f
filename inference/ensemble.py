"""``autoseg ensemble``: average the saved probabilities of several prediction folders."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from autoseg.errors import UserFacingError, output_folder
from autoseg.imageio import ImageGeometry, write_image
from autoseg.labels import probabilities_to_labels

log = logging.getLogger(__name__)


def ensemble_folders(input_dirs: list[str | Path], output_dir: str | Path, file_ending: str = ".nii.gz",
                     save_probabilities: bool = False) -> list[str]:
    """Average ``{case}.npz`` probabilities of the cases present in every folder; write their label
    maps (argmax, or a region-based model's regions at 0.5, ``labels.probabilities_to_labels``).

    The geometry comes from the ``{case}.json`` sidecar written with the probabilities.
    Returns the case ids written.
    """
    from autoseg.inference.validation import load_probabilities, save_probabilities as save_probs

    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise UserFacingError("ensembling needs at least two folders")
    sets = [{p.name[:-4] for p in d.glob("*.npz") if not p.name.startswith(".")} for d in dirs]
    cases = sorted(set.intersection(*sets))
    if not cases:
        raise UserFacingError(f"no case has probabilities in all of {', '.join(map(str, dirs))}; "
                              "predict with --save_probabilities first")
    out = output_folder(output_dir)
    for case in cases:
        probs, orders = None, set()
        for d in dirs:
            p, order = load_probabilities(d / f"{case}.npz")
            orders.add(None if order is None else tuple(order))
            if probs is not None and p.shape != probs.shape or len(orders) > 1:
                raise UserFacingError(f"case {case}: the folders hold probabilities of different models ({p.shape[0]} "
                                      f"against {probs.shape[0]} outputs, regions {sorted(orders, key=str)}); "
                                      "ensemble predictions of one dataset's models only")
            probs = p if probs is None else probs + p
        probs /= len(dirs)
        order = orders.pop()
        geometry = ImageGeometry.from_json(json.loads((dirs[0] / f"{case}.json").read_text()))
        write_image(probabilities_to_labels(probs, order), geometry, out / f"{case}{file_ending}")
        if save_probabilities:
            save_probs(out / case, probs, geometry, order)
    return cases


def cli_ensemble(args: argparse.Namespace) -> int:
    cases = ensemble_folders(args.input, args.output, save_probabilities=args.save_probabilities)
    log.info("ensembled %d cases into %s", len(cases), args.output)
    return 0
