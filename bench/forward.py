"""Benchmark: one inference forward pass of the U-Net in each way autoseg could run it on a CPU.

    python bench/forward.py --json bench/out/forward.json            # Hippocampus-sized networks
    python bench/forward.py --features 32 64 128 256 --patch 40 56 40 --repeats 20

For each network width (base features 8, 16, 32 by default: 4 stages, features doubling, the
Hippocampus 3d_fullres patch 40 x 56 x 40, batch 1 unless ``--batch``, 3 classes) it times, in one process, the
median of ``--repeats`` calls after 3 untimed ones:

- ``fp32``: the network as trained, eval mode, ``torch.no_grad`` (nnU-Net's CPU forward);
- ``fp32_channels_last``: the same with weights and input in channels-last memory format;
- ``fp32_fused``: ``inference.fast_forward.fuse_norm_activation`` (each InstanceNorm + LeakyReLU
  as one module of plain reductions), contiguous layout;
- ``fp32_fused_channels_last``: that, channels-last (what predict runs in bf16, here in fp32);
- ``fp32_onednn``: ``use_onednn_convolutions`` (every convolution through oneDNN, whatever the
  batch); ``fp32_onednn_fused`` (what predict runs on an x86 CPU in fp32) and
  ``fp32_onednn_fused_channels_last``: that with the fused norm, contiguous or channels-last;
- ``bf16_fused_channels_last``: the bf16 path ``inference_forward`` uses on AMX CPUs (only where
  ``cpu_bf16_is_faster``: elsewhere bf16 is emulated, many times slower);
- with ``--train``: ``train_fp32`` and ``train_fp32_channels_last``, one SGD step (forward,
  cross-entropy, backward, update) of a training-mode copy, per call;
- ``onnxruntime_fp32`` (when onnxruntime is installed): the network exported to ONNX as predict
  exports it (``inference.onnx_backend``), run by ONNX Runtime on all cores, numpy in and out;
- ``fp32_mirrored_batch`` (batch 1 only): the 8 mirror-TTA copies as one batch of 8, per copy
  (the sliding window runs them as 8 calls of batch 1).

Each variant's largest absolute difference from ``fp32`` logits is printed beside its time.
Run it on a quiet machine: it measures milliseconds.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from autoseg.device import cpu_bf16_is_faster
from autoseg.plans import NetworkPlan
from autoseg.training.network import UNet
from autoseg.inference.fast_forward import _channels_last, fuse_norm_activation, use_onednn_convolutions


def median_ms(fn, x: torch.Tensor, repeats: int, warmup: int = 3, grad: bool = False) -> float:
    """Median milliseconds of ``fn(x)`` over ``repeats`` calls after ``warmup`` untimed ones
    (without autograd unless ``grad``)."""
    with torch.set_grad_enabled(grad):
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def variants(net: torch.nn.Module, bf16: bool, x: torch.Tensor) -> dict[str, object]:
    fused = fuse_norm_activation(net).eval()
    cl = torch.channels_last_3d
    net_cl = copy.deepcopy(net).eval().to(memory_format=cl)
    fused_cl = fuse_norm_activation(net).eval().to(memory_format=cl)
    onednn = use_onednn_convolutions(net).eval()
    onednn_fused = use_onednn_convolutions(fused).eval()
    onednn_fused_cl = use_onednn_convolutions(fused_cl).eval()
    out = {
        "fp32": lambda x: net(x),
        "fp32_channels_last": lambda x: net_cl(_channels_last(x)),
        "fp32_fused": lambda x: fused(x),
        "fp32_fused_channels_last": lambda x: fused_cl(_channels_last(x)),
        "fp32_onednn": lambda x: onednn(x),
        "fp32_onednn_fused": lambda x: onednn_fused(x),
        "fp32_onednn_fused_channels_last": lambda x: onednn_fused_cl(_channels_last(x)),
    }
    if bf16:
        fused_bf16 = fuse_norm_activation(net).eval().to(torch.bfloat16).to(memory_format=cl)
        out["bf16_fused_channels_last"] = lambda x: fused_bf16(_channels_last(x.to(torch.bfloat16))).float()
    onnx = onnx_forward(net, x)
    if onnx is not None:
        out["onnxruntime_fp32"] = onnx
    return out


def onnx_forward(net: torch.nn.Module, x: torch.Tensor):
    """``net`` exported for inputs shaped like ``x`` to a temporary ONNX file as predict exports
    it, run by ONNX Runtime (None without onnxruntime)."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from autoseg.inference.onnx_backend import _session, export_graph

    path = Path(tempfile.mkdtemp(prefix="forward_onnx_")) / "net.onnx"
    export_graph(net, x, path)
    session = _session(path)
    return lambda inp: torch.from_numpy(session(inp.numpy()))


def mirrored_batch(net: torch.nn.Module):
    """The 8 mirror images of a batch-1 input as one batch; returns per-copy time when timed / 8."""
    axes = [combo for r in range(4) for combo in itertools.combinations((2, 3, 4), r)]

    def run(x: torch.Tensor):
        batch = torch.cat([torch.flip(x, a) if a else x for a in axes])
        return net(batch)

    return run


def train_step_ms(net: torch.nn.Module, x: torch.Tensor, channels_last: bool, repeats: int) -> float:
    """Median time of one SGD step (forward, cross-entropy against fixed random labels, backward,
    update) of a copy of ``net`` in fp32, contiguous or channels-last."""
    net = copy.deepcopy(net).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = _channels_last(x)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    target = torch.randint(0, 3, (x.shape[0],) + tuple(x.shape[2:]), generator=torch.Generator().manual_seed(0))

    def step(inp: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(inp), target).backward()
        opt.step()

    return median_ms(step, x, repeats, warmup=2, grad=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32], help="base features (4 stages, doubling)")
    p.add_argument("--features", type=int, nargs="+", default=None, help="one explicit list of features per stage")
    p.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="samples per call (times are per call)")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--train", action="store_true",
                   help="also time an fp32 training step (SGD, cross-entropy), contiguous and channels-last")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bf16 = cpu_bf16_is_faster()
    stage_lists = ([tuple(args.features)] if args.features
                   else [tuple(w * 2 ** i for i in range(4)) for w in args.widths])
    x = torch.randn(args.batch, 1, *args.patch)
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16}, "
          f"patch {tuple(args.patch)}, batch {args.batch}, median of {args.repeats}")
    for features in stage_lists:
        n = len(features)
        plan = NetworkPlan(3, features, ((3, 3, 3),) * n, ((1, 1, 1),) + ((2, 2, 2),) * (n - 1))
        net = UNet(plan, 1, args.classes, deep_supervision=False).eval()
        with torch.no_grad():
            reference = net(x)
        row = {"features": list(features)}
        for name, fn in variants(net, bf16, x).items():
            with torch.no_grad():
                diff = float((fn(x).float() - reference).abs().max())
            row[name] = {"ms": median_ms(fn, x, args.repeats), "max_abs_diff": diff}
        if args.batch == 1:
            row["fp32_mirrored_batch"] = {"ms": median_ms(mirrored_batch(net), x, max(3, args.repeats // 4)) / 8,
                                          "max_abs_diff": None}
        if args.train:
            for name, cl in (("train_fp32", False), ("train_fp32_channels_last", True)):
                row[name] = {"ms": train_step_ms(net, x, cl, max(3, args.repeats // 2)), "max_abs_diff": None}
        results.append(row)
        print(f"features {features}:")
        for name, r in row.items():
            if name != "features":
                diff = "" if r["max_abs_diff"] is None else f"  (max |diff| {r['max_abs_diff']:.2e})"
                print(f"  {name:28s} {r['ms']:8.1f} ms{diff}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "native_bf16": bf16, "patch": args.patch, "batch": args.batch,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
