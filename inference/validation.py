"""Cross-validation predictions of a trained fold: ``fold_dir/validation/``.

For each validation case: the preprocessed case is predicted with the sliding window (Gaussian
weighting, mirror TTA), mapped back to the original geometry and written as
``{case}{ending}`` plus ``{case}.npz`` (softmax or region sigmoid maps, float16, key
``probabilities``; ``regions_class_order`` beside region maps) and a
``{case}.json`` geometry sidecar, which ensembling needs. ``summary.json`` compares them with
the reference labels copied into ``preprocessed/<dataset>/gt_segmentations``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from autoseg.imageio import ImageGeometry, write_image
from autoseg.paths import Workspace
from autoseg.serialization import save_json

log = logging.getLogger(__name__)


def save_probabilities(path_stem: Path, probabilities: np.ndarray, geometry: ImageGeometry,
                       regions_class_order=None) -> None:
    """``{stem}.npz`` (float16 probabilities) and ``{stem}.json`` (geometry), atomically. A
    region-based model's sigmoid maps are saved with their ``regions_class_order`` (key of that
    name), so that ``load_probabilities_as_labels`` turns them into labels with nothing else given."""
    import os

    tmp = path_stem.with_name(f".{path_stem.name}.tmp{os.getpid()}.npz")
    extra = {} if regions_class_order is None else {"regions_class_order": np.asarray(regions_class_order, np.int64)}
    np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16), **extra)
    os.replace(tmp, path_stem.with_name(path_stem.name + ".npz"))
    save_json(geometry.to_json(), path_stem.with_name(path_stem.name + ".json"))


def load_probabilities(path: Path) -> tuple[np.ndarray, list[int] | None]:
    """The float32 probabilities of a ``{case}.npz`` and its regions_class_order (None: softmax)."""
    with np.load(path) as z:
        order = z["regions_class_order"].tolist() if "regions_class_order" in z.files else None
        return z["probabilities"].astype(np.float32), order


def validate_fold(fold_dir: str | Path, model, ws: Workspace, dataset: str, val_ids: list[str],
                  device="cpu", step_size: float = 0.5, mirror: bool = True, precision: str = "fp32",
                  mirror_axes=None) -> dict:
    """Predict ``val_ids`` with ``model`` (``precision``: a resolved one, see ``autoseg.device``;
    ``mirror_axes``: the axes mirrored when ``mirror``, None for every axis), write the segmentations,
    probabilities and ``summary.json`` under ``fold_dir/validation``."""
    import torch
    from tqdm import tqdm

    from autoseg.inference.fast_forward import inference_forward
    from autoseg.inference.sliding_window import predict_volume
    from autoseg.postprocess.evaluate import evaluate_folder
    from autoseg.preprocess.preprocessor import export_to_original
    from autoseg.preprocess.storage import load_case

    fold_dir = Path(fold_dir)
    out = fold_dir / "validation"
    out.mkdir(parents=True, exist_ok=True)
    plans, cfg = model.plans, model.configuration
    data_dir = ws.preprocessed_dataset(dataset) / cfg.preprocessed_name
    net = inference_forward(model.network, precision, torch.device(device))
    from autoseg.training.cascade import validation_inputs

    add_inputs = validation_inputs(ws, dataset, model, fold_dir, val_ids)  # cascade: the lowres masks
    for case_id in tqdm(val_ids, desc="validation", unit="case", disable=None):
        case = load_case(data_dir, case_id, with_seg=False)
        data = case.data if add_inputs is None else add_inputs(case_id, case.data)
        probs = predict_volume(net, data, cfg.patch_size, plans.num_classes, step_size, mirror, device,
                               mirror_axes, sigmoid=plans.regions is not None)
        seg, full = export_to_original(probs.cpu().numpy(), case.properties, plans, cfg.name)
        geometry = ImageGeometry.from_json(case.properties.geometry)
        write_image(seg, geometry, out / f"{case_id}{plans.file_ending}")
        save_probabilities(out / case_id, full, geometry, plans.regions_class_order)
    return evaluate_folder(ws.preprocessed_dataset(dataset) / "gt_segmentations", out, list(plans.scored_classes),
                           plans.file_ending, out / "summary.json", case_ids=val_ids, ignore_label=plans.ignore_label,
                           regions=plans.regions)

