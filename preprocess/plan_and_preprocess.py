"""``autoseg plan_and_preprocess``: integrity check -> fingerprint -> plans -> preprocessed data.

Each stage is also its own command (``fingerprint``, ``plan``, ``preprocess``); this one
runs them in order. The integrity check always runs first and stops everything, before a
single file is written, if the raw dataset has any problem.
"""
from __future__ import annotations

import argparse
import logging
import time

from autoseg.paths import Workspace

log = logging.getLogger(__name__)


def cli_plan_and_preprocess(args: argparse.Namespace) -> int:
    from autoseg.fingerprint import cli_fingerprint
    from autoseg.planners.experiment import cli_plan
    from autoseg.preprocess.run import cli_preprocess

    ws = Workspace.resolve(args.root)
    args.dataset = ws.dataset_name(args.dataset)
    started = time.perf_counter()
    for stage in (cli_fingerprint, cli_plan, cli_preprocess):
        code = stage(args)
        if code:
            return code
    log.info("plan_and_preprocess of %s done in %.1f s (%s)", args.dataset,
             time.perf_counter() - started, ws.preprocessed_dataset(args.dataset))
    return 0
