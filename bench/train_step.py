"""Benchmark: one training iteration of the Hippocampus 3d_fullres plan, nnU-Net v2 vs autoseg.

Reproduce (from the repository root, on a quiet machine):

    .venv/bin/python bench/train_step.py --json bench/out/train_step.json
    .venv/bin/python bench/train_step.py --plans cpu --json bench/out/train_step_cpu.json

Smoke test: ``--iterations 3 --warmup 1 --subset 10``. Same batch for both: ``--batch-size 2``.

What it measures (seconds per iteration, mean over ``--iterations`` after ``--warmup``
untimed ones; torch on ``--threads`` threads, default 2 = this machine's cores):
(a) peak: this machine's fp32 matmul rate, best of repeated 2048x2048 @ 2048x2048 products
    (2 * 2048**3 FLOP each), in GFLOP/s: the ceiling the steps below are compared with; also the
    bf16 rate (the ceiling of a bf16 step: AMX on this machine's CPU).
(b) nnU-Net v2 (a subprocess in $NNUNET_VENV): its plain ``nnUNetTrainer`` built on the CPU from
    its own 3d_fullres plans (patch and batch from the plans), ``initialize()``d, then
    ``trainer.train_step(batch)`` (forward, deep-supervised Dice+CE loss, backward, grad clipping,
    SGD step): "raw" on one fixed random batch, and "with data" on batches from its real
    ``get_dataloaders()`` pipeline (augmentation in ``nnUNet_n_proc_DA=1`` background process).
    Its plans and preprocessed data are made in a temp dir with ``nnUNetv2_plan_and_preprocess
    -c 3d_fullres`` from the Decathlon copy (first ``--subset`` cases; default all 208, which sets
    the batch size as in a real run: both planners cap the batch at 5% of the dataset's voxels).
(c) autoseg (in this process): ``build_network`` + ``build_loss`` from the plans in
    ``--autoseg-preprocessed`` (``--plans default``: gpu-8gb profile, the same U-Net as nnU-Net's;
    ``--plans cpu``: the cpu profile), the trainer's own step function, "raw" on one fixed batch
    and "with data" on ``BatchSource``/``iterate`` batches (augmentation in 1 worker process), in the
    precision ``autoseg train`` picks here (``--precision auto``: bf16 autocast where the CPU runs it
    faster than fp32; nnU-Net v2 trains in fp32 on a CPU).
FLOPs of one step: ``torch.utils.flop_counter.FlopCounterMode`` around forward + loss + backward
(convolutions and matmuls; elementwise ops, norms and the optimizer are not counted). Achieved
GFLOP/s = FLOPs / seconds per iteration; also given as a percentage of (a). Ratios are
nnU-Net / autoseg (> 1: autoseg is faster per iteration; per-iteration work differs when the
batch sizes differ, so compare GFLOP/s and seconds per sample too).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_task_option, machine_info, markdown_table, nnunet_bin, ratio,  # noqa: E402
                    require_folder, run_untimed, write_json)
from plan_and_preprocess import NNUNET_DATASET, make_decathlon_copy, nnunet_env, run_nnunet  # noqa: E402

log = logging.getLogger("bench.train_step")

CONFIGURATION = "3d_fullres"
PLAN_PROFILES = {"default": "", "cpu": " --device-profile cpu"}  # --plans: the autoseg plans it names

# Runs inside $NNUNET_VENV: argv = configuration, dataset, iterations, warmup, threads, batch size
# (0: as planned), result path.
NNUNET_STEP_SCRIPT = r"""
import json, os, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

configuration, dataset, iterations, warmup, threads, batch_size, result_path = sys.argv[1:]
iterations, warmup, threads, batch_size = int(iterations), int(warmup), int(threads), int(batch_size)
torch.set_num_threads(threads)
pre = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
with open(os.path.join(pre, "nnUNetPlans.json")) as f:
    plans = json.load(f)
with open(os.path.join(pre, "dataset.json")) as f:
    dataset_json = json.load(f)
plans["continue_training"] = False  # the trainer pops this key (run_training sets it)
if batch_size:
    plans["configurations"][configuration]["batch_size"] = batch_size
trainer = nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
trainer.initialize()
trainer.network.train()
dl_tr, dl_val = trainer.get_dataloaders()
real = next(dl_tr)
patch = list(trainer.configuration_manager.patch_size)
batch_size = real["data"].shape[0]

# one fixed batch with the real batch's shapes: random image, random labels
fixed = {"data": torch.randn_like(real["data"].float()),
         "target": [torch.randint(0, trainer.label_manager.num_segmentation_heads, t.shape).to(t.dtype)
                    for t in real["target"]]}

def step_flops(batch):
    with FlopCounterMode(display=False) as counter:
        out = trainer.network(batch["data"])
        loss = trainer.loss(out, batch["target"])
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()

flops = step_flops(fixed)

def timed(get_batch):
    for _ in range(warmup):
        trainer.train_step(get_batch())
    started = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(get_batch())
    return (time.perf_counter() - started) / iterations

raw_s = timed(lambda: fixed)
data_s = timed(lambda: next(dl_tr))
for dl in (dl_tr, dl_val):
    if hasattr(dl, "_finish"):
        dl._finish()
with open(result_path, "w") as f:
    json.dump({"patch_size": patch, "batch_size": batch_size, "flops_per_step": flops,
               "raw_step_s": raw_s, "step_with_data_s": data_s,
               "torch": torch.__version__, "threads": torch.get_num_threads()}, f)
print(json.dumps({"raw_step_s": raw_s, "step_with_data_s": data_s}))
"""


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 10, dtype: str = "fp32") -> float:
    """Best matmul rate (GFLOP/s) of ``repeats`` ``n x n`` products on ``threads`` threads, in fp32 or bf16."""
    import torch

    torch.set_num_threads(threads)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def nnunet_train_step(data: Path, work: Path, subset: int | None, iterations: int, warmup: int, threads: int,
                      num_processes: int, batch_size: int | None = None) -> dict:
    """Set up nnU-Net's plans and data in ``work`` and time its step in its own venv."""
    task = make_decathlon_copy(data, work / "msd", subset)
    base = work / "nnunet"
    run_nnunet(task, base, num_processes, (CONFIGURATION,))
    script, result = base / "train_step.py", base / "train_step.json"
    script.write_text(NNUNET_STEP_SCRIPT)
    env = dict(nnunet_env(base), nnUNet_n_proc_DA="1", OMP_NUM_THREADS=str(threads))
    run_untimed([nnunet_bin() / "python", script, CONFIGURATION, NNUNET_DATASET, str(iterations), str(warmup),
                 str(threads), str(batch_size or 0), result], env=env, log_path=base / "logs" / "nnunet_train_step.log")
    return json.loads(result.read_text())


def autoseg_train_step(preprocessed: Path, iterations: int, warmup: int, threads: int, num_workers: int = 1,
                       batch_size: int | None = None, precision: str = "auto",
                       memory_format: str = "contiguous") -> dict:
    """Time autoseg's training step on ``preprocessed`` (a preprocessed/DatasetXXX folder), in this process,
    in ``precision`` (auto: what ``autoseg train`` would use on this machine), network and batches in
    ``memory_format`` (contiguous or channels_last)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from autoseg.device import autocast_dtype, resolve_precision, torch_memory_format
    from autoseg.plans import load_plans
    from autoseg.preprocess.storage import list_cases
    from autoseg.training.dataloader import BatchSampling, BatchSource, downsample_seg, iterate
    from autoseg.training.loss import build_loss
    from autoseg.training.network import build_network, deep_supervision_scales
    from autoseg.training.train_config import TrainConfig
    from autoseg.training.steps import train_step  # the exact step the trainer runs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TrainConfig().with_(optim=dict(optimizer="sgd", initial_lr=1e-2))  # nnU-Net's, as in the step compared
    plans = load_plans(preprocessed / "plans.json")
    cp = plans.configuration(CONFIGURATION)
    scales = deep_supervision_scales(cp)
    layout = torch_memory_format(memory_format, cp.network.dim)
    net = build_network(plans, CONFIGURATION, deep_supervision=True).to(memory_format=layout)
    net.train()
    loss_fn = build_loss(cfg.loss.name, cp.batch_dice, cfg.loss.ce_weight, cfg.loss.dice_weight, len(scales))
    optim = cfg.optim
    opt = torch.optim.SGD(net.parameters(), lr=optim.initial_lr, momentum=optim.momentum, nesterov=optim.nesterov,
                          weight_decay=optim.weight_decay)
    batch = batch_size or cp.batch_size
    folder = preprocessed / cp.preprocessed_name
    source = BatchSource(folder, list_cases(folder), cp,
                         BatchSampling(batch, cfg.sampling.oversample_foreground_percent, cfg.seed), cfg.augmentation,
                         scales)
    rng = np.random.default_rng(0)
    shape = (batch, len(plans.channel_names), *cp.patch_size)
    labels = rng.integers(0, plans.num_classes, (batch, 1, *cp.patch_size)).astype(np.int16)
    fixed = {"data": torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)),
             "target": [torch.from_numpy(downsample_seg(labels, s)) for s in scales]}
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(fixed["data"]), fixed["target"]).backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    device = torch.device("cpu")
    precision = resolve_precision(precision, device)
    amp = autocast_dtype(precision)

    def timed(get_batch) -> float:
        for _ in range(warmup):
            train_step(net, loss_fn, opt, None, get_batch(), device, optim.grad_clip, amp, layout)
        started = time.perf_counter()
        for _ in range(iterations):
            train_step(net, loss_fn, opt, None, get_batch(), device, optim.grad_clip, amp, layout)
        return (time.perf_counter() - started) / iterations

    raw_s = timed(lambda: fixed)
    batches = iterate(source, 0, warmup + iterations, num_workers)
    data_s = timed(lambda: next(batches))
    return {"patch_size": list(cp.patch_size), "batch_size": batch, "flops_per_step": flops,
            "raw_step_s": raw_s, "step_with_data_s": data_s, "precision": precision, "memory_format": memory_format,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(), "preprocessed": str(preprocessed)}


def add_rates(r: dict, peak: float, bf16_peak: float | None = None) -> dict:
    """Add GFLOP/s, % of the fp32 peak (and of the bf16 peak for a bf16 step) and seconds per sample
    for both step kinds."""
    gflop = r["flops_per_step"] / 1e9
    out = dict(r, gflop_per_step=gflop)
    for kind in ("raw_step", "step_with_data"):
        s = r[f"{kind}_s"]
        out[f"{kind}_gflops"] = gflop / s
        out[f"{kind}_pct_of_peak"] = 100 * gflop / s / peak
        if r.get("precision") == "bf16" and bf16_peak:
            out[f"{kind}_pct_of_bf16_peak"] = 100 * gflop / s / bf16_peak
        out[f"{kind}_s_per_sample"] = s / r["batch_size"]
    return out


def table_rows(nn: dict | None, au: dict | None) -> list[list]:
    rows = []
    for key, label in (("batch_size", "batch size"), ("gflop_per_step", "GFLOP per step (fwd+bwd)"),
                       ("raw_step_s", "raw step (s/it)"), ("raw_step_gflops", "raw step GFLOP/s"),
                       ("raw_step_pct_of_peak", "raw step % of fp32 matmul peak"),
                       ("raw_step_pct_of_bf16_peak", "raw step % of bf16 matmul peak"),
                       ("raw_step_s_per_sample", "raw step (s/sample)"),
                       ("step_with_data_s", "step with data loading (s/it)"),
                       ("step_with_data_gflops", "step with data GFLOP/s"),
                       ("step_with_data_pct_of_peak", "step with data % of fp32 matmul peak"),
                       ("step_with_data_pct_of_bf16_peak", "step with data % of bf16 matmul peak"),
                       ("step_with_data_s_per_sample", "step with data (s/sample)")):
        a = nn.get(key) if nn else None
        b = au.get(key) if au else None
        rows.append([label, a, b, ratio(a, b) if key.endswith("_s") or key.endswith("_sample") else None])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20, help="timed iterations per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both tools (default 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="same batch for both tools (default: each tool's planned batch size)")
    p.add_argument("--plans", choices=sorted(PLAN_PROFILES), default="default",
                   help="which autoseg plans --autoseg-preprocessed holds, for the report (nnU-Net always uses "
                        "its own default plans)")
    p.add_argument("--autoseg-preprocessed", type=Path, default=None,
                   help="autoseg's preprocessed/Dataset004_Hippocampus folder (needed unless --only nnunet)")
    add_task_option(p, "--data", what="Decathlon task for nnU-Net's set-up")
    p.add_argument("--subset", type=int, default=None, help="nnU-Net set-up from the first N cases only (smoke tests)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="processes for nnU-Net's preprocessing")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autoseg's step (auto: as autoseg train would choose here; nnU-Net runs fp32 on a CPU)")
    p.add_argument("--memory-format", choices=("contiguous", "channels_last"), default="contiguous",
                   help="autoseg's network and batches in this layout (autoseg train picks the one timed "
                        "faster at planning, throughput.json)")
    p.add_argument("--only", choices=("nnunet", "autoseg"), default=None, help="run one tool only")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    preprocessed = args.autoseg_preprocessed
    if args.only != "nnunet" and not (preprocessed and (preprocessed / "plans.json").is_file()):
        p.error(f"no autoseg plans.json in {preprocessed}; make one with 'autoseg plan_and_preprocess -d 4 "
                f"--root ROOT -c 3d_fullres{PLAN_PROFILES[args.plans]}' and pass "
                "--autoseg-preprocessed ROOT/preprocessed/Dataset004_Hippocampus")
    if args.only != "autoseg":
        args.data = require_folder(args.data, "--data")

    peak = matmul_peak_gflops(args.threads)
    bf16_peak = matmul_peak_gflops(args.threads, dtype="bf16")
    log.info("matmul peak on %d threads: fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s", args.threads, peak, bf16_peak)
    nn = au = None
    if args.only in (None, "nnunet"):
        work = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
        try:
            log.info("nnU-Net: plan_and_preprocess + timed steps ...")
            nn = add_rates(nnunet_train_step(args.data, work, args.subset, args.iterations, args.warmup,
                                             args.threads, args.num_processes, args.batch_size), peak)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.only in (None, "autoseg"):
        log.info("autoseg: timed steps on %s ...", preprocessed)
        au = add_rates(autoseg_train_step(preprocessed, args.iterations, args.warmup, args.threads,
                                          batch_size=args.batch_size, precision=args.precision,
                                          memory_format=args.memory_format), peak, bf16_peak)
    rows = table_rows(nn, au)
    result = {"benchmark": "train_step", "configuration": CONFIGURATION, "autoseg_plans": args.plans,
              "iterations": args.iterations, "warmup": args.warmup, "threads": args.threads,
              "batch_size_override": args.batch_size,
              "subset_for_nnunet": args.subset, "machine": machine_info(), "matmul_peak_gflops": peak,
              "bf16_matmul_peak_gflops": bf16_peak,
              "nnunet": nn, "autoseg": au,
              "ratios_nnunet_over_autoseg": {r[0]: r[3] for r in rows if r[3] is not None}}
    print(json.dumps(result, indent=2))
    print()
    print(f"matmul peak, {args.threads} threads: fp32 {peak:.1f} GFLOP/s, bf16 {bf16_peak:.1f} GFLOP/s\n")
    print(markdown_table([f"train step 3d_fullres ({args.plans} plans for autoseg)", "nnU-Net v2", "autoseg",
                          "nnU-Net / autoseg"], rows))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
