"""``autoseg preprocess``: every training case through ``preprocess_case``, in parallel.

Each worker reads one case once and writes it for every requested configuration; workers
receive file paths, never arrays, so memory stays at a few cases' worth. A case whose stored
signature (raw file sizes and times, the configuration's plan, the intensity statistics)
matches is skipped, so a rerun only redoes what changed; ``clean`` redoes everything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from multiprocessing import get_context
from pathlib import Path

from autoseg.dataset import Case, load_dataset
from autoseg.device import pool_size
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.plans import Plans, load_plans
from autoseg.serialization import to_jsonable

log = logging.getLogger(__name__)


def case_signature(case: Case, plans: Plans, configuration: str) -> str:
    h = hashlib.sha1()
    for p in case.images + ((case.label,) if case.label else ()):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    cfg = to_jsonable(plans.configuration(configuration))
    cfg.pop("name"), cfg.pop("previous_stage"), cfg.pop("next_stage"), cfg.pop("batch_size")
    h.update(json.dumps([cfg, to_jsonable(plans.intensity_properties), plans.labels], sort_keys=True).encode())
    return h.hexdigest()


def _is_up_to_date(folder: Path, case_id: str, signature: str) -> bool:
    from autoseg.preprocess.storage import load_properties

    try:
        return load_properties(folder, case_id).signature == signature
    except (FileNotFoundError, ValueError):
        return False


def _process_case(job: tuple[Case, Plans, list[tuple[str, Path, str]]]) -> str:
    import dataclasses

    from autoseg.imageio import read_image, read_label
    from autoseg.preprocess.preprocessor import preprocess_case
    from autoseg.preprocess.storage import case_seed, sample_class_locations, save_case

    case, plans, targets = job
    image, geometry = read_image(case.images)
    seg, _ = read_label(case.label)
    for configuration, folder, signature in targets:
        data, seg_p, props = preprocess_case(image, geometry, plans, configuration, seg, case.case_id)
        props = dataclasses.replace(props, signature=signature)
        locations = sample_class_locations(seg_p, list(plans.foreground_labels), case_seed(case.case_id),
                                           plans.ignore_label)
        save_case(folder, case.case_id, data, seg_p, props, locations)
    return case.case_id


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file():
        a, b = src.stat(), dst.stat()
        if a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime):
            return
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def preprocess_dataset(workspace: Workspace, dataset: str, configurations: list[str] | None = None,
                       num_processes: int | None = None, clean: bool = False) -> None:
    """Preprocess every training case of ``dataset`` for ``configurations`` (default: all planned)."""
    from tqdm import tqdm

    name = workspace.dataset_name(dataset)
    out_root = workspace.preprocessed / name
    plans_path = out_root / "plans.json"
    if not plans_path.is_file():
        raise UserFacingError(f"{plans_path} not found; run 'autoseg plan -d {dataset}' first")
    plans = load_plans(plans_path)
    spec = load_dataset(workspace.raw / name)
    wanted = configurations or list(plans.configurations)
    folders: dict[str, str] = {}  # preprocessed folder -> configuration producing it
    for c in wanted:
        folders.setdefault(plans.configuration(c).preprocessed_name, c)
    cases = spec.training_cases()
    jobs, skipped = [], 0
    for case in cases:
        targets = []
        for folder_name, configuration in folders.items():
            folder = out_root / folder_name
            signature = case_signature(case, plans, configuration)
            if clean or not _is_up_to_date(folder, case.case_id, signature):
                targets.append((configuration, folder, signature))
        if targets:
            jobs.append((case, plans, targets))
        else:
            skipped += 1
    gt = out_root / "gt_segmentations"
    gt.mkdir(parents=True, exist_ok=True)
    for case in cases:
        _copy_if_changed(case.label, gt / f"{case.case_id}{spec.file_ending}")  # named by case (file lists)
    _copy_if_changed(spec.folder / "dataset.json", out_root / "dataset.json")
    if skipped:
        log.info("%d of %d cases already up to date", skipped, len(cases))
    if not jobs:
        return
    n = pool_size(num_processes, len(jobs))
    bar = tqdm(total=len(jobs), desc=f"preprocess {'+'.join(folders)}", unit="case", disable=None)
    if n == 1:
        for j in jobs:
            _process_case(j)
            bar.update()
    else:
        with get_context("fork").Pool(n, maxtasksperchild=200) as pool:
            for _ in pool.imap_unordered(_process_case, jobs, chunksize=2):
                bar.update()
    bar.close()


def cli_preprocess(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.root)
    preprocess_dataset(ws, args.dataset, args.configurations, args.num_processes, args.clean)
    log.info("preprocessed data in %s", ws.preprocessed_dataset(args.dataset))
    return 0
