"""The 5-fold cross-validation split, shared by every configuration of a dataset.

Stored as ``preprocessed/<dataset>/splits.json``: ``[{"train": [...], "val": [...]}, ...]``.
Created once with a fixed seed; a file edited by the user is respected (and validated).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.imageio import file_ending
from autoseg.serialization import save_json

N_FOLDS = 5


def make_splits(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = 12345) -> list[dict]:
    """Shuffle ``case_ids`` with ``seed`` and deal them into ``n_folds`` validation sets."""
    ids = sorted(case_ids)
    if len(ids) < n_folds:
        raise UserFacingError(f"{len(ids)} cases cannot be split into {n_folds} folds; train fold 'all' instead")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, n_folds)
    return [{"train": sorted(ids[j] for f in folds[:k] + folds[k + 1:] for j in f),
             "val": sorted(ids[j] for j in folds[k])} for k in range(n_folds)]


def _known_cases(dataset_dir: Path) -> list[str]:
    gt = dataset_dir / "gt_segmentations"
    ids = []
    for p in sorted(gt.iterdir()) if gt.is_dir() else []:
        if not p.name.startswith("."):
            ids.append(p.name[: -len(file_ending(p))])
    return ids


def get_split(dataset_dir: str | Path, fold: int | str, case_ids: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of ``fold`` (0-4, or 'all': every case in both)."""
    dataset_dir = Path(dataset_dir)
    ids = sorted(case_ids) if case_ids is not None else _known_cases(dataset_dir)
    if str(fold) == "all":
        return list(ids), list(ids)
    path = dataset_dir / "splits.json"
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserFacingError(f"{path} is not valid JSON ({exc}); fix it or delete it to regenerate") from None
        _validate(splits, set(ids), path)
    else:
        splits = make_splits(ids)
        save_json(splits, path)
    k = int(fold)
    if not 0 <= k < len(splits):
        raise UserFacingError(f"fold {fold} does not exist: {path} has folds 0-{len(splits) - 1} (or use 'all')")
    return list(splits[k]["train"]), list(splits[k]["val"])


def _validate(splits, known: set[str], path: Path) -> None:
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise UserFacingError(f"{path} must be a list of {{\"train\": [...], \"val\": [...]}} objects")
    for k, s in enumerate(splits):
        unknown = sorted((set(s["train"]) | set(s["val"])) - known) if known else []
        if unknown:
            raise UserFacingError(
                f"{path}: fold {k} names case(s) {unknown[:5]} that are not in the preprocessed dataset; "
                "fix the file or delete it to regenerate"
            )
