"""Training the cascade: ``3d_lowres`` cross-validation masks as extra inputs of ``3d_cascade_fullres``.

Inputs. The cascade network sees the image channels plus one channel per foreground label of
the lowres segmentation, put on the fullres grid by ``previous_stage_to_grid`` (the crop and
label resampling of preprocessing), the same function ``autoseg predict`` uses.

Where the masks come from. Every finished lowres fold writes the segmentations of its
validation cases in the original geometry (``fold_j/validation/{case}{ending}``): exactly
what the lowres stage hands the cascade at predict time. Training the cascade converts them
on demand and caches the result in ``results/<dataset>/3d_lowres/<variant>/predicted_next_stage/``
(``{case}.seg.b2`` plus ``{case}.json`` naming its source; rebuilt when the source file or the
preprocessed case changes).

No leakage. A case's mask always comes from the lowres fold whose validation set (in
``splits.json``) holds it, never from a lowres model that trained on the case: for cascade
fold k the training cases get the masks of the other lowres folds and the validation cases
those of lowres fold k. Any cascade fold therefore needs the lowres folds that hold its cases
out (all five for the standard split), and a clear error names the missing ones. Fold ``all``
trains on every case with the same cross-validation masks, not with lowres fold ``all``: that
model trained on every case and would hand the cascade near-perfect masks it never gets at
test time.

Augmentation. At test time the lowres mask is imperfect, so during training each sample's
mask channels are perturbed after the spatial augmentation (probabilities in
``AugmentationConfig``, defaults as nnU-Net): with ``p_previous_stage_morphology`` every
label's mask is dilated, eroded, opened or closed with a ball of random radius, and with
``p_previous_stage_remove_component`` every label loses one random connected component
smaller than ``previous_stage_max_component_fraction`` of the patch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import blosc2
import numpy as np
from scipy import ndimage

from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.plans import Plans
from autoseg.preprocess.previous_stage import one_hot, previous_stage_labels, previous_stage_to_grid
from autoseg.serialization import save_json
from autoseg.training.augmentation import AugmentationConfig
from autoseg.training.dataloader import BatchSampling, BatchSource, downsample_seg
from autoseg.training.splits import get_split

log = logging.getLogger(__name__)
CACHE_FOLDER = "predicted_next_stage"


@dataclass(frozen=True)
class PreviousStage:
    """The lowres masks of a set of cases, ready on the fullres grid in ``folder``."""

    configuration: str  # the previous stage, e.g. "3d_lowres"
    variant: str
    folder: Path
    labels: tuple[int, ...]  # foreground labels: one input channel each


def previous_stage_variant(train_config, variant: str) -> str:
    """The lowres variant feeding a cascade trained as ``variant`` (``previous_stage_variant`` or the same)."""
    return getattr(train_config, "previous_stage_variant", None) or variant


def heldout_folds(splits: list[dict], case_ids: list[str], splits_path: Path | str = "splits.json") -> dict[str, int]:
    """For each case, the first fold whose ``val`` list holds it: the lowres model that did not train on it."""
    owner: dict[str, int] = {}
    for k, s in enumerate(splits):
        for c in s["val"]:
            owner.setdefault(c, k)
    orphans = [c for c in case_ids if c not in owner]
    if orphans:
        raise UserFacingError(
            f"case(s) {orphans[:5]} are in no fold's validation set in {splits_path}, so no 3d_lowres model "
            "held them out and the cascade has no leak-free mask for them; give every case a validation fold "
            "(or delete splits.json to regenerate it)")
    return {c: owner[c] for c in case_ids}


def find_previous_stage_segmentations(ws: Workspace, dataset: str, plans: Plans, configuration: str, variant: str,
                                      case_ids: list[str], fold) -> dict[str, Path]:
    """The lowres cross-validation segmentation file of every case in ``case_ids``.

    Raises ``UserFacingError`` naming the lowres folds that are missing (or lack cases) and the
    command that trains (or re-validates) them.
    """
    name = ws.dataset_name(dataset)
    prev = plans.configuration(configuration).previous_stage
    preprocessed = ws.preprocessed / name
    get_split(preprocessed, 0)  # writes splits.json if it does not exist yet, and validates it
    splits = preprocessed / "splits.json"
    owner = heldout_folds(json.loads(splits.read_text()), case_ids, splits)
    base = ws.results / name / prev / variant
    needed = sorted(set(owner.values()))
    missing: list[int] = []
    incomplete: dict[int, list[str]] = {}
    sources: dict[str, Path] = {}
    for k in needed:
        folder = base / f"fold_{k}" / "validation"
        if not (folder / "summary.json").is_file():
            missing.append(k)
            continue
        for c in (c for c in case_ids if owner[c] == k):
            path = folder / f"{c}{plans.file_ending}"
            if path.is_file():
                sources[c] = path
            else:
                incomplete.setdefault(k, []).append(c)
    if missing or incomplete:
        v = "" if variant == "default" else f" --variant {variant}"
        parts = []
        if missing:
            parts.append(f"missing: fold(s) {missing} (no finished validation in {base}/fold_K/validation); "
                         f"train them with 'autoseg train {prev} {' '.join(map(str, missing))} -d {name}{v}'")
        for k, cases in incomplete.items():
            parts.append(f"fold {k} has no validation segmentation of case(s) {cases[:5]}; validate it again "
                         f"with 'autoseg train {prev} {k} -d {name}{v} --val'")
        raise UserFacingError(
            f"{configuration} fold {fold} is fed the {prev} cross-validation segmentations (each case from the {prev} "
            f"fold that held it out), so it needs {prev} ('{variant}') folds {needed}; " + "; ".join(parts))
    return sources


def _source_signature(source: Path, case_signature: str) -> dict:
    st = source.stat()
    return {"source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "case_signature": case_signature}


def prepare_previous_stage(ws: Workspace, dataset: str, plans: Plans, configuration: str, variant: str,
                           case_ids: list[str], fold) -> PreviousStage:
    """Find the lowres masks of ``case_ids`` and cache them on the fullres grid (only what changed)."""
    from tqdm import tqdm

    from autoseg.imageio import read_label
    from autoseg.preprocess.storage import load_properties

    name = ws.dataset_name(dataset)
    cfg = plans.configuration(configuration)
    case_ids = list(dict.fromkeys(case_ids))  # fold 'all' trains and validates on the same cases
    sources = find_previous_stage_segmentations(ws, name, plans, configuration, variant, case_ids, fold)
    data_dir = ws.preprocessed / name / cfg.preprocessed_name
    folder = ws.results / name / cfg.previous_stage / variant / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    todo = []
    for c in case_ids:
        props = load_properties(data_dir, c)
        signature = _source_signature(sources[c], props.signature)
        try:
            stored = json.loads((folder / f"{c}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            stored = None
        if stored != signature or not (folder / f"{c}.seg.b2").is_file():
            todo.append((c, props, signature))
    for c, props, signature in tqdm(todo, desc=f"{cfg.previous_stage} masks", unit="case", disable=None):
        seg, _ = read_label(sources[c])
        grid = previous_stage_to_grid(seg[0], props, plans, configuration)
        (folder / f"{c}.json").unlink(missing_ok=True)  # incomplete until the JSON is rewritten
        tmp = folder / f".{c}.seg.b2.tmp{os.getpid()}"
        tmp.write_bytes(blosc2.pack_array2(np.ascontiguousarray(grid)))
        os.replace(tmp, folder / f"{c}.seg.b2")
        save_json(signature, folder / f"{c}.json")
    if todo:
        log.info("%d %s mask(s) put on the %s grid in %s", len(todo), cfg.previous_stage, configuration, folder)
    return PreviousStage(cfg.previous_stage, variant, folder, tuple(previous_stage_labels(plans)))


def load_previous_stage(folder: Path, case_id: str) -> np.ndarray:
    """The cached mask (1, z, y, x) int8 of ``case_id``."""
    return blosc2.unpack_array2((Path(folder) / f"{case_id}.seg.b2").read_bytes())


def _morphology(mask: np.ndarray, op: int, radius: float, sampling: np.ndarray) -> np.ndarray:
    """Dilate (0), erode (1), open (2) or close (3) ``mask`` with a ball of ``radius`` (in ``sampling`` units).

    Distance transforms make the cost independent of the radius.
    """
    def dilate(m):
        return m | (ndimage.distance_transform_edt(~m, sampling=sampling) <= radius) if m.any() else m

    def erode(m):
        return ndimage.distance_transform_edt(m, sampling=sampling) > radius if not m.all() else m

    if op == 0:
        return dilate(mask)
    if op == 1:
        return erode(mask)
    if op == 2:
        return dilate(erode(mask))
    return erode(dilate(mask))


def augment_previous_stage(masks: np.ndarray, rng: np.random.Generator, aug: AugmentationConfig,
                           voxel_size: tuple[float, ...]) -> np.ndarray:
    """Perturb one sample's one-hot mask channels (K, *spatial); see the module docstring.

    ``voxel_size``: the patch's spacing relative to its finest axis (radii count voxels of that axis).
    """
    out = masks.copy()
    sampling = np.asarray(voxel_size, float)
    if rng.random() < aug.p_previous_stage_morphology:
        for k in range(out.shape[0]):
            op = int(rng.integers(4))
            radius = float(rng.uniform(*aug.previous_stage_radius))
            out[k] = _morphology(out[k] > 0.5, op, radius, sampling)
    if rng.random() < aug.p_previous_stage_remove_component:
        structure = np.ones((3,) * (out.ndim - 1), bool)
        for k in range(out.shape[0]):
            components, n = ndimage.label(out[k] > 0.5, structure)
            if not n:
                continue
            sizes = np.bincount(components.ravel())[1:]
            small = np.flatnonzero(sizes < aug.previous_stage_max_component_fraction * components.size) + 1
            if small.size:
                out[k][components == small[rng.integers(small.size)]] = 0
    return out


class CascadeBatchSource(BatchSource):
    """``BatchSource`` whose batches also carry the previous stage's one-hot mask as input channels.

    The mask rides along as a second label channel through patch sampling and the spatial
    augmentation (so it is rotated, scaled and mirrored with the image and spared the
    intensity transforms), then becomes one-hot channels after the image channels.
    """

    def __init__(self, folder, case_ids, cfg, sampling: BatchSampling, augmentation=None, ds_scales=None, *,
                 previous: PreviousStage):
        self.previous = previous
        self.cascade_scales = ds_scales
        spacing = np.asarray(cfg.spacing[-cfg.network.dim:], float)
        self.voxel_size = tuple(spacing / spacing.min())
        super().__init__(folder, case_ids, cfg, sampling, augmentation, None)

    def _load(self, case_id: str):
        case = super()._load(case_id)
        prev = load_previous_stage(self.previous.folder, case_id)
        if prev.shape[1:] != case.seg.shape[1:]:
            raise UserFacingError(f"{self.previous.folder}/{case_id}.seg.b2 has shape {prev.shape[1:]}, the "
                                  f"preprocessed case {case.seg.shape[1:]}; delete {self.previous.folder} to rebuild it")
        return dataclasses.replace(case, seg=np.concatenate([case.seg, prev.astype(case.seg.dtype)]))

    def batch(self, i: int) -> dict:
        b = super().batch(i)
        seg = b["target"]
        target = np.ascontiguousarray(seg[:, :1])
        masks = one_hot(seg[:, 1:], list(self.previous.labels), axis=1)
        if self.augmentation is not None and self.augmentation.enabled:
            rng = np.random.default_rng([self.seed, i, 1])  # its own stream: patch sampling is unchanged
            masks = np.stack([augment_previous_stage(m, rng, self.augmentation, self.voxel_size) for m in masks])
        data = np.concatenate([b["data"], masks], 1).astype(np.float32)
        if self.cascade_scales is not None:
            return {"data": data, "target": [downsample_seg(target, s) for s in self.cascade_scales]}
        return {"data": data, "target": target}


def cascade_batch_source(ws: Workspace, dataset: str, plans: Plans, configuration: str, variant: str, cfg,
                         case_ids: list[str], fold):
    """The trainer's hook: a ``BatchSource``-compatible constructor for a cascade configuration.

    Checks the lowres folds first (a clear error names the missing ones) and caches the masks.
    """
    prev = prepare_previous_stage(ws, dataset, plans, configuration, previous_stage_variant(cfg, variant),
                                  case_ids, fold)
    return functools.partial(CascadeBatchSource, previous=prev)


def validation_inputs(ws: Workspace, dataset: str, model, fold_dir: Path, case_ids: list[str]):
    """For ``validate_fold``: a function ``(case_id, data) -> data`` adding the mask channels (cascade),
    or None for a configuration without a previous stage."""
    cfg = model.configuration
    if not cfg.previous_stage:
        return None
    variant = previous_stage_variant(model.train_config, Path(fold_dir).parent.name)
    prev = prepare_previous_stage(ws, dataset, model.plans, cfg.name, variant, case_ids, Path(fold_dir).name[5:])

    def add(case_id: str, data: np.ndarray) -> np.ndarray:
        return np.concatenate([data, one_hot(load_previous_stage(prev.folder, case_id), list(prev.labels))])

    return add
