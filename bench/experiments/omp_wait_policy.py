"""Experiment: training-step time with OpenMP's threads spinning or sleeping while they wait, on a
quiet machine and beside another CPU-bound job.

torch's CPU kernels run on OpenMP (libgomp); between parallel regions its threads spin for a while
before they sleep (``OMP_WAIT_POLICY`` unset or ACTIVE). When another process holds one of the
cores, the thread that shares its core falls behind, and the others spin at every barrier waiting
for it. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once.

Reproduce (from the repository root; nothing else running):

    python bench/experiments/omp_wait_policy.py --json bench/out/omp_wait_policy.json

For each setting (policy unset or PASSIVE with all threads; policy unset with one thread fewer) and
each load (quiet; one busy-loop process at nice 19, as a low-priority job; one at nice 0), a fresh
process times a training step (forward, deep-supervised Dice+CE,
backward, SGD) of a U-Net with all of the machine's threads: the Hippocampus cpu plan (patch
40 x 56 x 40, batch 2, 16-32-64-128) in fp32 and, where the CPU has bf16 instructions, in bf16;
and the cine plan of bench/data/make_cine_dataset.py (patch 12 x 64 x 80, anisotropic kernels, width 8)
in bf16 channels-last. Reported: the median of 7 steps after 2 untimed ones.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "hippocampus 16 fp32": dict(features=(16, 32, 64, 128), kernels=((3, 3, 3),) * 4,
                                strides=((1, 1, 1),) + ((2, 2, 2),) * 3, patch=(40, 56, 40), precision="fp32",
                                layout="contiguous"),
    "hippocampus 16 bf16": dict(features=(16, 32, 64, 128), kernels=((3, 3, 3),) * 4,
                                strides=((1, 1, 1),) + ((2, 2, 2),) * 3, patch=(40, 56, 40), precision="bf16",
                                layout="contiguous"),
    "cine 8 bf16 channels-last": dict(features=(8, 16, 32, 64, 80),
                                      kernels=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                                      strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)),
                                      patch=(12, 64, 80), precision="bf16", layout="channels_last"),
}


def time_case(name: str, threads: int | None = None) -> float:
    """Median seconds of one training step of ``CASES[name]`` in this process (``threads``: torch
    threads; None: as many as the machine has)."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from autoseg.device import autocast_dtype, torch_memory_format
    from autoseg.plans import NetworkPlan
    from autoseg.training.loss import build_loss
    from autoseg.training.network import UNet

    case = CASES[name]
    plan = NetworkPlan(dim=3, features_per_stage=case["features"], kernel_sizes=case["kernels"],
                       strides=case["strides"])
    torch.manual_seed(0)
    layout = torch_memory_format(case["layout"], 3)
    net = UNet(plan, 1, 4, deep_supervision=True).to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 1, *case["patch"]).contiguous(memory_format=layout)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    loss_fn = build_loss("dice_ce", False, 1.0, 1.0, len(shapes))
    targets = [torch.randint(0, 4, (2, 1, *s)) for s in shapes]
    dtype = autocast_dtype(case["precision"])

    def step() -> float:
        started = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(net(x), targets)
        loss.backward()
        opt.step()
        return time.perf_counter() - started

    for _ in range(2):
        step()
    times = sorted(step() for _ in range(7))
    return times[len(times) // 2]


def _measure(name: str, policy: str | None, threads: int | None) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--one", name] + (["--threads", str(threads)] if threads else []),
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="+", default=None, help="subset of the cases (default all)")
    args = p.parse_args()
    if args.one:
        print(time_case(args.one, args.threads))
        return 0
    import torch

    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    names = [n for n in (args.cases or CASES) if bf16 or "bf16" not in n]
    all_threads = os.cpu_count() or 1
    results = []
    for load, nice in (("quiet", None), ("one busy process at nice 19", 19), ("one busy process at nice 0", 0)):
        burner = None
        if nice is not None:
            burner = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
            time.sleep(1)
        try:
            for name in names:
                for policy, threads in ((None, None), ("PASSIVE", None), (None, max(1, all_threads - 1))):
                    seconds = _measure(name, policy, threads)
                    results.append({"load": load, "case": name, "OMP_WAIT_POLICY": policy or "unset",
                                    "threads": threads or all_threads, "seconds_per_step": round(seconds, 4)})
                    print(f"{load:28s} {name:26s} {policy or 'unset':8s} {threads or all_threads} threads "
                          f"{seconds:.3f} s", flush=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from autoseg.device import cpu_identity

        Path(args.json).write_text(json.dumps({"cpu": cpu_identity(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
