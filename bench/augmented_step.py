"""Benchmark: a training iteration with inline augmentation, autoseg's transforms against batchgenerators'.

Reproduce (a preprocessed 3d configuration, e.g. the Hippocampus cpu plan of bench/time_to_dice.py):

    python bench/augmented_step.py --preprocessed WS/preprocessed/Dataset004_Hippocampus \\
        --rounds 4 --json bench/out/augmented_step.json

On a machine with two cores the trainer builds each batch inline, between training steps
(autoseg/training/dataloader.py, ``default_num_workers``), so a millisecond saved in augmentation is
a millisecond saved per iteration. This measures that in the loop itself: one network of the plans
(in ``--memory-format``), its deep-supervised loss and SGD, and two batch sources that differ only in
``AugmentationConfig.backend`` ("auto": autoseg's rotation/scaling and low-resolution transforms;
"batchgenerators": its own). The two alternate in blocks of ``--block`` iterations (the first
``--skip`` of each block untimed), ``--rounds`` times, so a machine whose speed drifts (shared
hosts) affects both alike. Reports milliseconds per iteration spent building the batch and in the
step, per backend and per round.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

BACKENDS = ("auto", "batchgenerators")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed/DatasetXXX folder")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--block", type=int, default=25, help="iterations per backend per round")
    p.add_argument("--skip", type=int, default=3, help="untimed iterations at the start of each block")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2 = this machine's cores)")
    p.add_argument("--memory-format", choices=("contiguous", "channels_last"), default="channels_last")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from autoseg.device import torch_memory_format
    from autoseg.plans import load_plans
    from autoseg.preprocess.storage import list_cases
    from autoseg.training.augmentation import AugmentationConfig, resolve_order_data
    from autoseg.training.dataloader import BatchSampling, BatchSource, iterate
    from autoseg.training.loss import build_loss
    from autoseg.training.network import build_network, deep_supervision_scales
    from autoseg.training.steps import train_step

    torch.set_num_threads(args.threads)
    plans = load_plans(args.preprocessed / "plans.json")
    cp = plans.configuration(args.configuration)
    folder = args.preprocessed / cp.preprocessed_name
    cases = list_cases(folder)
    scales = deep_supervision_scales(cp)
    layout = torch_memory_format(args.memory_format, len(cp.patch_size))
    net = build_network(plans, args.configuration, True).to(memory_format=layout)
    loss_fn = build_loss("dice_ce", cp.batch_dice, 1.0, 1.0, len(scales))
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    dev = torch.device("cpu")
    sources = {b: BatchSource(folder, cases, cp, BatchSampling(cp.batch_size, 0.33, 7),
                              resolve_order_data(AugmentationConfig(backend=b), "cpu"), scales)
               for b in BACKENDS}
    times = {b: {"batch": [], "step": []} for b in BACKENDS}
    rounds, iteration = [], 0
    for r in range(args.rounds):
        row = {}
        for backend, source in sources.items():
            batch_s, step_s = [], []
            for k in range(args.block):
                started = time.perf_counter()
                batch = next(iterate(source, iteration, 1, 0))
                built = time.perf_counter()
                train_step(net, loss_fn, opt, None, batch, dev, 12.0, None, layout)
                iteration += 1
                if k >= args.skip:
                    batch_s.append(built - started)
                    step_s.append(time.perf_counter() - built)
            times[backend]["batch"] += batch_s
            times[backend]["step"] += step_s
            row[backend] = {"batch_ms": 1000 * float(np.mean(batch_s)), "step_ms": 1000 * float(np.mean(step_s))}
        rounds.append(row)
        print(f"round {r}: " + ", ".join(f"{b} batch {v['batch_ms']:.1f} ms + step {v['step_ms']:.1f} ms"
                                         for b, v in row.items()), flush=True)
    summary = {b: {"batch_ms": 1000 * float(np.mean(t["batch"])), "step_ms": 1000 * float(np.mean(t["step"]))}
               for b, t in times.items()}
    for b, s in summary.items():
        s["iteration_ms"] = s["batch_ms"] + s["step_ms"]
        print(f"{b:16s} batch {s['batch_ms']:6.1f} ms  step {s['step_ms']:6.1f} ms  iteration {s['iteration_ms']:6.1f} ms")
    ratio = summary["batchgenerators"]["iteration_ms"] / summary["auto"]["iteration_ms"]
    print(f"iterations per second, auto / batchgenerators: {ratio:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"benchmark": "augmented_step", "preprocessed": str(args.preprocessed),
                                   "configuration": args.configuration, "batch_size": cp.batch_size,
                                   "patch_size": list(cp.patch_size), "memory_format": args.memory_format,
                                   "threads": args.threads, "rounds": rounds, "summary": summary,
                                   "speedup": ratio}, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
