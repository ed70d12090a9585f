"""Benchmark: what the training augmentation costs per batch on this CPU, transform by transform.

Reproduce (a preprocessed 3d configuration, e.g. the Hippocampus cpu plan of bench/time_to_dice.py):

    python bench/augmentation.py --preprocessed WS/preprocessed/Dataset004_Hippocampus \\
        --json bench/out/augmentation.json [--set order_data=3 ...] [--set backend=batchgenerators] [--threads 2]

Builds batches exactly as the trainer's workers do on a CPU (``BatchSource.batch``, the
augmentation settings resolved as for CPU training) with one thread, as a worker runs (``--threads 2``:
as batches built inline between steps on a 2-core machine), and
reports: seconds per batch without augmentation (sampling only), with it, and each transform's
time, measured by running the transforms one by one on separately drawn batches of the same
size (so their sum need not match the whole). ``--set`` changes ``AugmentationConfig`` fields
(e.g. ``order_data=3``, nnU-Net's) to compare variants in one invocation (each ``--set`` group is
one extra row; comma-separate several fields).
The trainer's step runs on the same cores as these workers, so every second here is taken from
the network on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def parse_variant(text: str) -> dict[str, str]:
    """``"order_data=1,scale_range=0.8,1.2"`` -> {field: value text}; a comma starts a new field only
    before ``name=``, so tuple values keep theirs. Values are parsed by ``apply_overrides``."""
    return dict(item.split("=", 1) for item in re.split(r",(?=\w+=)", text) if item)


def augmentation_for(overrides: dict[str, str]):
    """The ``AugmentationConfig`` CPU training uses, with ``overrides`` applied (checked as ``--set`` is)."""
    from autoseg.training.augmentation import resolve_order_data
    from autoseg.training.train_config import TrainConfig, apply_overrides

    cfg = apply_overrides(TrainConfig(), {f"augmentation.{k}": v for k, v in overrides.items()})
    return resolve_order_data(cfg.augmentation, "cpu")


def measure(preprocessed: Path, configuration: str, overrides: dict[str, str], aug, batches: int, seed: int,
            threads: int = 1) -> dict:
    import torch

    from autoseg.plans import load_plans
    from autoseg.preprocess.storage import list_cases
    from autoseg.training.augmentation import build_transforms
    from autoseg.training.dataloader import BatchSampling, BatchSource
    from autoseg.training.network import deep_supervision_scales

    torch.set_num_threads(threads)
    plans = load_plans(preprocessed / "plans.json")
    cp = plans.configuration(configuration)
    folder = preprocessed / cp.preprocessed_name
    scales = deep_supervision_scales(cp)
    cases = list_cases(folder)
    sampling = BatchSampling(cp.batch_size, 0.33, seed)
    plain = BatchSource(folder, cases, cp, sampling, None, scales)
    augmented = BatchSource(folder, cases, cp, sampling, aug, scales)

    def per_batch(source) -> float:
        source.batch(0)  # loads lazily-built state (transforms) untimed
        started = time.perf_counter()
        for i in range(1, batches + 1):
            source.batch(i)
        return (time.perf_counter() - started) / batches

    plain_s, augmented_s = per_batch(plain), per_batch(augmented)
    # transform by transform on sampled (not yet augmented) batches of the augmented source's size
    transforms = build_transforms(aug, cp.patch_size).transforms
    costs = {type(t).__name__ + (f"[{k}]" if sum(type(u) is type(t) for u in transforms) > 1 else ""): 0.0
             for k, t in enumerate(transforms)}
    names = list(costs)
    sampler = BatchSource(folder, cases, cp, sampling)
    sampler.sample_size = augmented.sample_size
    for i in range(1, batches + 1):
        raw = sampler.batch(i)
        batch = {"data": raw["data"], "seg": raw["target"].astype(np.float32)}
        np.random.seed(i)
        random.seed(i)
        for name, t in zip(names, transforms):
            started = time.perf_counter()
            batch = t(**batch)
            costs[name] += time.perf_counter() - started
    return {"overrides": overrides, "backend": aug.backend, "threads": threads, "order_data": aug.order_data, "batch_size": cp.batch_size,
            "patch_size": list(cp.patch_size), "sample_size": list(augmented.sample_size), "sampling_only_s": plain_s, "with_augmentation_s": augmented_s,
            "per_transform_s": {k: v / batches for k, v in costs.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed/DatasetXXX folder")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="variants", action="append", default=[], metavar="FIELD=V[,FIELD=V]",
                   help="an AugmentationConfig variant to measure as well (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: as a worker process; 2: inline on a 2-core machine)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    variants = [parse_variant(v) for v in ["", *args.variants]]
    configs = [augmentation_for(v) for v in variants]  # every --set checked before the first measurement
    rows = [measure(args.preprocessed, args.configuration, v, aug, args.batches, args.seed, args.threads)
            for v, aug in zip(variants, configs)]
    for r in rows:
        label = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "the trainer's defaults on a CPU"
        label += f" (image spline order {r['order_data']}; "
        label += f"{'batchgenerators' if r['backend'] == 'batchgenerators' else 'as the trainer'}; {r['threads']} thread(s))"
        print(f"\n{label}: batch {r['batch_size']}, patch {r['patch_size']} (sampled {r['sample_size']})")
        print(f"  sampling only {r['sampling_only_s'] * 1000:.1f} ms/batch, with augmentation "
              f"{r['with_augmentation_s'] * 1000:.1f} ms/batch")
        for name, s in sorted(r["per_transform_s"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:40s} {s * 1000:7.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"benchmark": "augmentation", "preprocessed": str(args.preprocessed),
                                   "configuration": args.configuration, "batches": args.batches, "rows": rows},
                                  indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
