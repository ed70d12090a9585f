"""Planning for the compute the user has: network width chosen from measured training speed.

nnU-Net sizes every plan for an 8 GB GPU. On a CPU the same U-Net (Hippocampus: 32-256
features, batch 7) takes seconds per iteration, and within hours it sees too few batches to
learn anything (100 iterations in 18 minutes gave Dice 0.00 on this project's 2-core machine),
while the same patch with half the width and batch 2 reached 0.86 in 24 minutes (1,750
iterations). What a short budget buys is iterations, so on the ``cpu`` profile:

1. the patch is planned as usual (the memory rule of the profile, up to the median image):
   context is what segmentation accuracy depends on most, so it is the last thing given up;
2. for each candidate width (``base_features`` in ``CANDIDATE_WIDTHS``, narrowest first, features
   doubling per stage as usual) one training step (forward, deep-supervised loss, backward) of the
   planned batch is timed on this machine (``measure_step_seconds``, ~1-3 s per candidate), up to
   the first width that misses the target below (wider ones would only be slower);
3. the widest candidate that still trains ``MIN_ITERATIONS`` iterations within the per-fold
   budget is chosen (``choose_width``); if none does, the narrowest.

``MIN_ITERATIONS = 2500``: the hand-tuned nnU-Net run above was still improving at 1,750
iterations; autoseg's own Hippocampus runs reach 0.85 Dice at about 1,000 iterations and keep
improving to 3,000 (docs/benchmarks.md). Wider networks only pay off once enough iterations are
affordable. Measured on this project's 2-core machine (Hippocampus 3d_fullres, patch 40x56x40,
batch 2, raw step, busy machine): widths 32/24/16/8 took 1.29/1.06/0.42/0.28 s, so a 30-minute
budget gets the 16-wide network (~3,700 iterations; the 24-wide one would get ~1,500) and a
2-hour budget the 32-wide one (~4,800).
The measurements are written next to the plans (``throughput.json``), so the choice can be
checked and reproduced.

Each candidate's step is timed in both memory layouts, the usual contiguous one and channels-last
(``TIMED_MEMORY_FORMATS``), and the faster one counts and is recorded (``memory_format``); training on
the cpu uses it (``memory_format_for``). Which one wins depends on the CPU's oneDNN kernels and
the network, not on a rule we could write down: on this project's AVX2 machine (fp32) channels-last
made the Hippocampus 3d_fullres step 26% faster at width 8 (0.37 -> 0.28 s) and 15% at width 16
(0.86 -> 0.73 s), while the 2d step (batch 64) was 10-20% slower; on the AMX machine the fp32
16-wide 3d step was 12% slower channels-last (0.32 -> 0.36 s).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional

from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.planners.topology import fit_topology

CANDIDATE_WIDTHS = (32, 24, 16, 8)
TIMED_MEMORY_FORMATS = ("contiguous", "channels_last")
MIN_ITERATIONS = 2500
DEFAULT_FOLD_BUDGET_S = 1800.0
STEP_OVERHEAD = 1.15  # data loading, patch validation and checkpoints on top of the raw step

# (network, patch, batch) -> seconds per step in each memory layout timed, e.g. {"contiguous": 0.37}
StepTimer = Callable[[NetworkPlan, tuple[int, ...], int], dict[str, float]]


@dataclass(frozen=True)
class WidthMeasurement:
    base_features: int
    features_per_stage: tuple[int, ...]
    seconds_per_step: float  # in the faster layout
    iterations_in_budget: int
    memory_format: str = "contiguous"  # the faster layout
    seconds_by_memory_format: Optional[dict[str, float]] = None


def widen(cfg: ConfigurationPlan, base_features: int, max_features: int) -> ConfigurationPlan:
    """``cfg`` with a network of another width (same patch, spacing, strides and kernels)."""
    axes = cfg.spacing[1:] if cfg.network.dim == 2 else cfg.spacing
    _, net = fit_topology(tuple(cfg.patch_size), tuple(axes), base_features, max_features,
                          len(cfg.network.features_per_stage))
    return dataclasses.replace(cfg, network=net)


def choose_width(cfg: ConfigurationPlan, step_seconds: StepTimer, budget_s: float = DEFAULT_FOLD_BUDGET_S,
                 max_features_ratio: int = 10) -> tuple[ConfigurationPlan, list[WidthMeasurement]]:
    """The widest candidate network that trains ``MIN_ITERATIONS`` within ``budget_s`` (else the narrowest).

    Example with a fake timer of 0.02 s per base feature: widths 8, 16, 24, 32 take 0.16, 0.32,
    0.48, 0.64 s; 1800 s / (0.48 s * 1.15) = 3260 >= 2500, but 32 gives 2445, so 24 is chosen."""
    measured = []
    for width in sorted(CANDIDATE_WIDTHS):  # narrowest first; wider ones cost more, so stop at the first miss
        candidate = widen(cfg, width, width * max_features_ratio)
        by_format = step_seconds(candidate.network, tuple(candidate.patch_size), candidate.batch_size)
        fastest = min(by_format, key=by_format.get)
        seconds = by_format[fastest]
        measured.append(WidthMeasurement(width, candidate.network.features_per_stage, seconds,
                                         int(budget_s / (seconds * STEP_OVERHEAD)), fastest, dict(by_format)))
        if measured[-1].iterations_in_budget < MIN_ITERATIONS:
            break
    fitting = [m for m in measured if m.iterations_in_budget >= MIN_ITERATIONS]
    best = max(fitting, key=lambda m: m.base_features) if fitting else min(measured, key=lambda m: m.base_features)
    return widen(cfg, best.base_features, best.base_features * max_features_ratio), measured


def measure_step_seconds(net_plan: NetworkPlan, patch: tuple[int, ...], batch: int, in_channels: int = 1,
                         num_classes: int = 3, repeats: int = 2, precision: str = "fp32",
                         memory_formats: tuple[str, ...] = TIMED_MEMORY_FORMATS) -> dict[str, float]:
    """Seconds of one training step (forward, deep-supervised Dice+CE, backward, SGD) on random
    data, on this process' torch threads, computed in ``precision`` (fp32, or bf16 autocast as
    training uses where it is faster), with network and batch in each of ``memory_formats``: the
    best of ``repeats`` after one untimed step, per layout, e.g. ``{"contiguous": 0.37,
    "channels_last": 0.28}``."""
    return {fmt: _step_seconds(net_plan, patch, batch, in_channels, num_classes, repeats, precision, fmt)
            for fmt in memory_formats}


def _step_seconds(net_plan: NetworkPlan, patch: tuple[int, ...], batch: int, in_channels: int, num_classes: int,
                  repeats: int, precision: str, memory_format: str) -> float:
    import torch

    from autoseg.device import autocast_dtype, torch_memory_format

    from autoseg.training.loss import build_loss
    from autoseg.training.network import UNet

    torch.manual_seed(0)
    layout = torch_memory_format(memory_format, net_plan.dim)
    net = UNet(net_plan, in_channels, num_classes, deep_supervision=True).to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch, in_channels, *patch).contiguous(memory_format=layout)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    loss_fn = build_loss("dice_ce", False, 1.0, 1.0, len(shapes))
    targets = [torch.randint(0, num_classes, (batch, 1, *s)) for s in shapes]
    best = float("inf")
    for k in range(repeats + 1):
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast_dtype(precision), enabled=autocast_dtype(precision) is not None):
            loss = loss_fn(net(x), targets)
        loss.backward()
        opt.step()
        if k:
            best = min(best, time.perf_counter() - started)
    return best


def width_for_budget(candidates: list[dict], budget_s: float) -> int:
    """The base width ``choose_width`` would pick for ``budget_s`` from stored measurements
    (``throughput.json`` candidates: ``base_features`` and ``seconds_per_step``): the widest that
    trains ``MIN_ITERATIONS`` within the budget, else the narrowest measured.

    Example: steps of 0.16 s (width 16) and 0.45 s (width 32) give 32 for 30 minutes
    (1800 / (0.45 * 1.15) = 3478 iterations) but 16 for 10 minutes (32 would get 1159)."""
    fitting = [c for c in candidates if budget_s / (c["seconds_per_step"] * STEP_OVERHEAD) >= MIN_ITERATIONS]
    pool = fitting or candidates
    pick = max if fitting else min
    return int(pick(pool, key=lambda c: c["base_features"])["base_features"])


def fit_width_to_training_budget(plans, configuration: str, throughput: dict, budget_s: float, precision: str):
    """``plans`` with ``configuration``'s network re-chosen for a training budget of ``budget_s``
    per fold, from the steps measured at planning time (no new timing). Unchanged when the
    measurements do not cover it (another precision, no cpu planning), with the reason as the
    second return value. A cascade stage, whose network is its fullres stage's (see
    ``adapt_to_throughput``), uses that stage's timings (its extra one-hot input channels change
    only the first convolution)."""
    cfg = plans.configuration(configuration)
    report = _configuration_timings(throughput, plans, configuration)
    if not report:
        return plans, f"no step timings for {configuration} in throughput.json"
    mismatch = _precision_mismatch(throughput, precision)
    if mismatch:
        return plans, mismatch
    width = width_for_budget(report["candidates"], budget_s)
    if width == cfg.network.features_per_stage[0]:
        return plans, None
    return with_width(plans, configuration, width), None


def with_width(plans, configuration: str, base_features: int):
    """``plans`` with ``configuration``'s network ``widen``-ed to ``base_features`` first-stage
    features (at most 10x that deeper down), everything else kept."""
    configs = dict(plans.configurations)
    configs[configuration] = widen(configs[configuration], base_features, base_features * 10)
    return dataclasses.replace(plans, configurations=configs)


def memory_format_for(throughput: dict, plans, configuration: str,
                      precision: str) -> tuple[Optional[str], Optional[str]]:
    """The memory layout whose training step was faster at planning for ``configuration``'s network
    width (``throughput.json``; a cascade stage looks at its fullres stage's timings), and None; or
    None and the reason when they do not say (timed in another precision than the training's
    ``precision``, or that width's layouts not both timed: planned by an older autoseg, another
    profile, a width not measured)."""
    mismatch = _precision_mismatch(throughput, precision)
    if mismatch:
        return None, mismatch
    width = plans.configuration(configuration).network.features_per_stage[0]
    for c in (_configuration_timings(throughput, plans, configuration) or {}).get("candidates", []):
        if c["base_features"] == width and len(c.get("seconds_by_memory_format") or {}) > 1:
            return c["memory_format"], None
    return None, "this network width's step was not timed in both layouts (throughput.json)"


def _configuration_timings(throughput: dict, plans, configuration: str) -> Optional[dict]:
    """``configuration``'s entry of ``throughput.json``; for a cascade stage, whose network is its
    fullres stage's (``adapt_to_throughput``), that stage's entry when it has none of its own."""
    timed = throughput.get("configurations", {})
    cfg = plans.configuration(configuration)
    return timed.get(configuration) or (timed.get(cfg.preprocessed_name) if cfg.previous_stage else None)


def _precision_mismatch(throughput: dict, precision: str) -> Optional[str]:
    """Why timings of ``throughput.json`` do not describe a training in ``precision`` (None: they do)."""
    timed = throughput.get("precision", "fp32")
    return None if timed == precision else f"steps were timed in {timed}, training runs in {precision}"


def adapt_to_throughput(plans, step_seconds: StepTimer, budget_s: float = DEFAULT_FOLD_BUDGET_S):
    """``plans`` with every configuration's width chosen by ``choose_width``; also returns the
    measurements per configuration (JSON-ready). A cascade stage gets its fullres stage's network."""
    configs, report = dict(plans.configurations), {}
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage:
            continue
        configs[name], measured = choose_width(cfg, step_seconds, budget_s)
        report[name] = {"chosen_base_features": configs[name].network.features_per_stage[0],
                        "patch_size": list(cfg.patch_size), "batch_size": cfg.batch_size,
                        "candidates": [dataclasses.asdict(m) for m in measured]}
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage:
            source = configs.get(cfg.preprocessed_name, cfg)
            configs[name] = dataclasses.replace(cfg, network=source.network)
    return dataclasses.replace(plans, configurations=configs), {
        "fold_budget_s": budget_s, "min_iterations": MIN_ITERATIONS, "step_overhead": STEP_OVERHEAD,
        "configurations": report}


def detect_profile() -> str:
    """The device profile for this machine: a CUDA GPU by its memory, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        gb = torch.cuda.get_device_properties(0).total_memory / 1e9
        return "gpu-8gb" if gb < 20 else "gpu-24gb" if gb < 36 else "gpu-40gb"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "gpu-8gb"
    return "cpu"
