"""Experiment: what a trained fold's sliding-window validation costs and scores with fewer mirror
copies and with inference tiles larger than the training patch.

Reproduce (a trained fold of any dataset; on a quiet machine):

    python bench/experiments/validation_variants.py --root WS -d 130 -c 3d_fullres -f 0 --json OUT.json

For every variant the fold's own validation cases are predicted from their preprocessed arrays
exactly as the final validation does (Gaussian-weighted sliding window, step 0.5, the precision the
fold trained in), mapped back to the original geometry and scored against the references
(per-class Dice, mean over cases). Variants: ``mirror`` all axes (2 ** dim copies; the default),
``in-plane`` (the axes whose first-stage kernel is 3, that is without the thick-slice axis of
anisotropic data), ``none``; each with the training patch as the tile (``tile x1``) and with a tile
``--tile-factor`` times the patch on every in-plane axis (a fully convolutional network accepts
it; instance normalisation then sees a larger field than in training). Reported: seconds for all
cases (network and blending; reading and export included) and mean Dice per class and overall.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _tile(patch, factor: float, kernels0, stride) -> tuple[int, ...]:
    """The patch with its in-plane axes (kernel 3 at the first stage) scaled by ``factor``, rounded
    to the network's total stride."""
    out = []
    for p, k, s in zip(patch, kernels0, stride):
        size = p * factor if k == 3 and factor != 1 else p
        out.append(int(np.ceil(size / s) * s))
    return tuple(out)


def main() -> int:
    import torch

    from autoseg.device import usable_cpus
    from autoseg.imageio import read_label
    from autoseg.inference.fast_forward import inference_forward
    from autoseg.inference.sliding_window import predict_volume
    from autoseg.paths import Workspace
    from autoseg.postprocess.metrics import case_metrics
    from autoseg.preprocess.preprocessor import export_to_original
    from autoseg.preprocess.storage import load_case
    from autoseg.training.checkpoint import load_trained_model
    from autoseg.training.splits import get_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--variant", default="default")
    p.add_argument("--tile-factor", type=float, default=2.0)
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(usable_cpus())
    ws = Workspace.resolve(args.root)
    name = ws.dataset_name(args.dataset)
    fold_dir = ws.results_dataset(name) / args.configuration / args.variant / f"fold_{args.fold}"
    model = load_trained_model(fold_dir, "checkpoint_final", "cpu")
    plans, cfg = model.plans, model.configuration
    _, val_ids = get_split(ws.preprocessed / name, args.fold)
    val_ids = val_ids[:args.max_cases] if args.max_cases else val_ids
    data_dir = ws.preprocessed / name / cfg.preprocessed_name
    gt_dir = ws.preprocessed / name / "gt_segmentations"
    labels = sorted(v for v in plans.labels.values() if v)
    forward = inference_forward(model.network, model.train_config.runtime.precision, torch.device("cpu"))
    kernels0, stride = cfg.network.kernel_sizes[0], cfg.network.total_stride
    dim = cfg.network.dim
    in_plane = tuple(a for a in range(dim) if kernels0[a] == 3)
    cases = [(c, load_case(data_dir, c, with_seg=False)) for c in val_ids]
    refs = {c: read_label(gt_dir / f"{c}{plans.file_ending}")[0][0] for c in val_ids}
    results = []
    for tile_factor in (1.0, args.tile_factor):
        tile = _tile(cfg.patch_size, tile_factor, kernels0, stride) if dim == 3 else tuple(cfg.patch_size)
        for mirror_name, axes in (("all", tuple(range(dim))), ("in-plane", in_plane), ("none", ())):
            if dim == 2 and tile_factor != 1:
                continue
            started = time.perf_counter()
            dice = {k: [] for k in labels}
            for case_id, case in cases:
                if dim == 3:
                    from autoseg.inference.sliding_window import sliding_window_predict

                    probs = sliding_window_predict(forward, case.data, tile, plans.num_classes, 0.5, True, axes)
                else:
                    probs = predict_volume(forward, case.data, tile, plans.num_classes, 0.5, bool(axes))
                seg, _ = export_to_original(probs.cpu().numpy(), case.properties, plans, cfg.name)
                metrics = case_metrics(refs[case_id], seg[0] if seg.ndim == 4 else seg, labels, (1.0,) * 3,
                                       1.0, surface=False)
                for k in labels:
                    if not np.isnan(metrics[k]["dice"]):
                        dice[k].append(metrics[k]["dice"])
            seconds = time.perf_counter() - started
            per_class = {k: float(np.mean(v)) for k, v in dice.items()}
            row = {"tile": list(tile), "tile_factor": tile_factor, "mirror": mirror_name, "mirror_axes": list(axes),
                   "seconds": round(seconds, 1), "cases": len(cases), "dice": per_class,
                   "mean_dice": float(np.mean(list(per_class.values())))}
            results.append(row)
            print(f"tile {tile} mirror {mirror_name:8s} {seconds:7.1f} s  mean Dice {row['mean_dice']:.4f}  "
                  + " ".join(f"{k}: {v:.4f}" for k, v in per_class.items()), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"fold": str(fold_dir), "patch": list(cfg.patch_size),
                                               "precision": model.train_config.runtime.precision, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
