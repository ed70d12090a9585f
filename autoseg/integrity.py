"""The integrity check that runs before anything is written.

Every problem is collected first, then reported together in one ``DatasetError``, so the
user fixes a broken dataset in one round instead of one error at a time.
"""
from __future__ import annotations

from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from autoseg.dataset import Case, DatasetError, DatasetSpec, group_channel_files, parse_dataset_json
from autoseg.device import pool_size
from autoseg.imageio import ImageReadError, _read_one, read_label


def verify_dataset_folder(folder: str | Path, num_processes: int | None = None) -> DatasetSpec:
    """Parse ``folder/dataset.json`` and check every file; return the spec or raise."""
    spec, problems = parse_dataset_json(folder)
    if problems:
        raise DatasetError(folder, problems)
    verify_dataset(spec, num_processes)
    return spec


def verify_dataset(spec: DatasetSpec, num_processes: int | None = None) -> None:
    """Check the files of ``spec``; raise ``DatasetError`` listing every problem."""
    problems = _check_layout(spec) if spec.file_list is None else _check_file_list(spec)
    cases = [c for c in spec.training_cases() if c.images and c.label.is_file() and all(p.is_file() for p in c.images)]
    if cases:
        n = pool_size(num_processes, len(cases))
        jobs = [(c, spec.num_channels, set(spec.label_values)) for c in cases]
        if n == 1:
            results = [_check_case(*j) for j in jobs]
        else:
            with get_context("fork").Pool(n) as pool:
                results = pool.starmap(_check_case, jobs, chunksize=max(1, len(jobs) // (4 * n)))
        for found in results:
            problems.extend(found)
    if problems:
        raise DatasetError(spec.folder, problems)


def _check_layout(spec: DatasetSpec) -> list[str]:
    """File-name level checks: missing, extra and duplicate files, counts."""
    problems: list[str] = []
    ending = spec.file_ending
    images_dir, labels_dir = spec.folder / "imagesTr", spec.folder / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            problems.append(f"folder {d} is missing; expected imagesTr/ and labelsTr/ in {spec.folder}")
    if problems:
        return problems
    label_files = [p for p in sorted(labels_dir.iterdir()) if not p.name.startswith(".")]
    label_ids = []
    for p in label_files:
        if p.name.endswith(ending):
            label_ids.append(p.name[: -len(ending)])
        else:
            problems.append(f"labelsTr/{p.name}: unexpected file; labels must be named {{case}}{ending}")
    groups = group_channel_files(images_dir, ending)
    grouped = {p for chans in groups.values() for p in chans.values()}
    for p in sorted(images_dir.iterdir()):
        if not p.name.startswith(".") and p not in grouped:
            problems.append(
                f"imagesTr/{p.name}: unexpected file; images must be named {{case}}_{{XXXX}}{ending} "
                "(XXXX = channel index, e.g. _0000)"
            )
    if not label_ids:
        problems.append(f"the dataset is empty: no {{case}}{ending} files in {labels_dir}")
    problems += _case_id_clashes(label_ids)
    for cid in label_ids:
        chans = groups.get(cid, {})
        if not chans:
            problems.append(f"case {cid}: label exists but no image; expected imagesTr/{cid}_0000{ending}")
        elif sorted(chans) != list(range(len(chans))):
            missing = sorted(set(range(max(chans) + 1)) - set(chans))
            problems.append(
                f"case {cid}: channel file(s) {', '.join(f'{cid}_{m:04d}{ending}' for m in missing)} missing "
                f"(found channels {sorted(chans)}; expected 0..{spec.num_channels - 1})"
            )
    for cid in sorted(set(groups) - set(label_ids)):
        problems.append(f"case {cid}: images in imagesTr but no label labelsTr/{cid}{ending}")
    if spec.num_training != len(label_ids):
        problems.append(
            f"dataset.json: numTraining is {spec.num_training} but {len(label_ids)} labelled cases "
            f"were found in labelsTr; set numTraining to {len(label_ids)}"
        )
    return problems


def _case_id_clashes(case_ids: list[str]) -> list[str]:
    """One problem per group of case ids that differ only in upper/lower case (their files would
    collide on a case-insensitive file system)."""
    lowered = Counter(cid.lower() for cid in case_ids)
    return [f"duplicate case id {low!r}: {[c for c in case_ids if c.lower() == low]} differ only in upper/lower case"
            for low, count in lowered.items() if count > 1]


def _check_file_list(spec: DatasetSpec) -> list[str]:
    """dataset.json's explicit file list: every listed file that is missing, duplicate case ids,
    numTraining (imagesTr/ and labelsTr/ are not searched: files there that the list leaves out are
    not used)."""
    problems: list[str] = []
    cases = spec.training_cases()
    for case in cases:
        missing = [p for p in case.images + (case.label,) if not p.is_file()]
        if missing:
            problems.append(f"case {case.case_id}: dataset.json lists "
                            f"{', '.join(str(p.relative_to(spec.folder) if p.is_relative_to(spec.folder) else p) for p in missing)}, "
                            f"not found in {spec.folder}")
    problems += _case_id_clashes([c.case_id for c in cases])
    if spec.num_training != len(cases):
        problems.append(f"dataset.json: numTraining is {spec.num_training} but 'dataset' lists {len(cases)} cases; "
                        f"set numTraining to {len(cases)}")
    return problems


def _check_case(case: Case, num_channels: int, allowed: set[int]) -> list[str]:
    """Read one case and report every problem found in it."""
    problems: list[str] = []
    geoms = []
    total_channels = 0
    channels_per_file: list[tuple[Path, int]] = []
    for path in case.images:
        try:  # read to the last byte; refuses cut-off files and NaN/inf voxels
            arr, geom = _read_one(path)
        except ImageReadError as exc:
            problems.append(f"case {case.case_id}: {exc}")
            continue
        total_channels += arr.shape[0]
        channels_per_file.append((path, arr.shape[0]))
        geoms.append((path, geom))
    if geoms and total_channels != num_channels and len(geoms) == len(case.images):
        multi = [(p.name, n) for p, n in channels_per_file if n > 1]
        if multi:
            name, n = multi[0]
            example = ", ".join(f'"{i}": "{c}"' for i, c in enumerate("RGBA"[:n] if n in (3, 4) else [f"channel{k}" for k in range(n)]))
            problems.append(
                f"case {case.case_id}: {total_channels} channel(s) found but dataset.json declares "
                f"{num_channels} in channel_names; imagesTr/{name} alone holds {n} (an RGB{'A' if n == 4 else ''} "
                f"image counts as {n} channels): declare one channel name per colour channel, e.g. "
                f'"channel_names": {{{example}}}'
            )
        else:
            problems.append(
                f"case {case.case_id}: {total_channels} channel(s) found but dataset.json declares "
                f"{num_channels} in channel_names; add the missing channel files or fix channel_names"
            )
    try:
        lab, lgeom = read_label(case.label)
    except ImageReadError as exc:
        problems.append(f"case {case.case_id}: {exc}")
        return problems
    values = set(np.unique(lab).astype(int).tolist())
    undeclared = sorted(values - allowed)
    if undeclared:
        problems.append(
            f"case {case.case_id}: label {case.label.name} holds value(s) {undeclared} not declared in "
            f"dataset.json labels (declared: {sorted(allowed)}); declare them or fix the label"
            + ("; a binary mask saved as 0/255? store the class indices 0/1 instead, e.g. mask // 255"
               if undeclared == [255] else "")
        )
    for path, geom in geoms:
        diffs = geom.matches(lgeom)
        if diffs:
            problems.append(
                f"case {case.case_id}: image {path.name} and label {case.label.name} disagree in "
                f"{'; '.join(diffs)}; they must share shape, spacing, origin and direction"
            )
    return problems
