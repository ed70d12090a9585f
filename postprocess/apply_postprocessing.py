"""``autoseg apply_postprocessing``: a selection's postprocessing applied to a folder of segmentations.

The command's file handling; the steps themselves are ``postprocess/components.py`` and the
selection that names them ``postprocess/selection.py``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from autoseg.errors import UserFacingError, output_folder
from autoseg.imageio import SUPPORTED_ENDINGS, read_label, write_image
from autoseg.paths import Workspace
from autoseg.postprocess.components import apply_postprocessing
from autoseg.postprocess.selection import Selection, load_selection
from autoseg.serialization import load_json_as

log = logging.getLogger(__name__)


def cli_apply_postprocessing(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.root)
    if args.selection:
        selection = load_json_as(Selection, args.selection)
    else:
        selection = load_selection(ws.results_dataset(args.dataset))
    postprocessing = selection.postprocessing
    out = output_folder(args.output)
    count = 0
    for path in sorted(Path(args.input).iterdir()):
        if path.name.startswith(".") or not path.name.endswith(SUPPORTED_ENDINGS):
            continue
        seg, geom = read_label(path)
        probs = None
        if postprocessing.needs_probabilities:
            case_id = path.name[: -len(next(e for e in SUPPORTED_ENDINGS if path.name.endswith(e)))]
            npz = path.with_name(case_id + ".npz")
            if not npz.is_file():
                raise UserFacingError(f"{npz} not found: the selected postprocessing gates classes on the softmax "
                                      "probability; predict with --save_probabilities so each segmentation has "
                                      "its {case}.npz beside it")
            with np.load(npz) as z:
                probs = z["probabilities"].astype(np.float32)
        write_image(apply_postprocessing(seg[0], postprocessing, probs).astype(np.uint8), geom, out / path.name)
        count += 1
    log.info("postprocessed %d segmentations into %s", count, out)
    return 0
