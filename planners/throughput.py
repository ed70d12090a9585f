"""Planning for the compute the user has: network width and precision chosen from measured training speed.

nnU-Net sizes every plan for an 8 GB GPU. On a CPU the same U-Net (Hippocampus: 32-256
features, batch 7) takes seconds per iteration, and within hours it sees too few batches to
learn anything (100 iterations in 18 minutes gave Dice 0.00 on this project's 2-core machine),
while the same patch with half the width and batch 2 reached 0.86 in 24 minutes (1,750
iterations). What a short budget buys is iterations, so on the ``cpu`` profile:

1. the patch is planned as usual (the memory rule of the profile, up to the median image):
   context is what segmentation accuracy depends on most, so it is the last thing given up;
2. for each candidate width (``base_features`` in ``CANDIDATE_WIDTHS``, narrowest first, features
   doubling per stage as usual) one training step (forward, deep-supervised loss, backward) of the
   planned batch is timed on this machine in every combination of precision (fp32, and bf16 where
   the CPU has bf16 instructions) and memory layout (contiguous, channels-last): a warm-up step each,
   then ``TIMED_ROUNDS`` interleaved rounds, the median counting (``planners/step_probe.py``), up to the
   first width that misses the target below, and on a machine the reference convolution shows
   busy one more unless that one missed it by more than ``EXTRA_WIDTH_MISS`` (training re-checks the
   width against its own first steps, and can then take a width timed here); fp32 is timed at wider
   widths only while it stays within ``FP32_KEEP_FACTOR`` of the chosen step;
3. each width counts with its fastest combination, bf16 only where it beats fp32 by
   ``BF16_STEP_MARGIN`` (``pick_precision``): the precision is chosen per configuration, since
   oneDNN's bf16 kernels are fast for some shapes and pathologically slow for others;
4. the widest candidate that still trains ``MIN_ITERATIONS`` iterations within the per-fold
   budget is chosen (``choose_width``); if none does, the narrowest.

No timing can hang: the steps run in a probe process (``autoseg.capped``) and a step that overruns
its cap (``step_cap_seconds``; bf16 at most ``BF16_CAP_RATIO`` x the fp32 warm-up) is abandoned and
recorded as such. Seen on a CPU with AMX: the bf16 backward pass of the 8-wide network for a patch
of 4 x 128 x 112 did not finish within 20 s where the fp32 step took 0.15 s.

``MIN_ITERATIONS = 2500``: the hand-tuned nnU-Net run above was still improving at 1,750
iterations, as autoseg's own Hippocampus runs do (docs/benchmarks.md, "Time to Dice"). Wider
networks only pay off once enough iterations are affordable. The measurements are written next
to the plans (``throughput.json``), so the choice can be checked and reproduced, and training
reads its precision and layout from them.

Which layout wins depends on the CPU's oneDNN kernels and the network, not on a rule we could
write down (docs/planning.md, "Memory layout").
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.planners.topology import fit_topology

log = logging.getLogger(__name__)

CANDIDATE_WIDTHS = (32, 24, 16, 8)
TIMED_MEMORY_FORMATS = ("contiguous", "channels_last")
TIMED_ROUNDS = 3  # interleaved timed rounds after the warm-up; the median counts
MIN_ITERATIONS = 2500
DEFAULT_FOLD_BUDGET_S = 1800.0
STEP_OVERHEAD = 1.15  # data loading, patch validation and checkpoints on top of the raw step
# bf16 is chosen for a configuration only where its measured step is this much faster than fp32's
BF16_STEP_MARGIN = 1.1
# caps on one timed step: at least MIN_STEP_CAP_S, or CAP_FACTOR x the step that would still train
# MIN_ITERATIONS in the budget (a step slower than that misses the budget anyway); the warm-up step
# (oneDNN builds its kernels) gets twice that. A bf16 step is abandoned once it takes
# BF16_CAP_RATIO x the fp32 warm-up of the same network (bf16 is only of use where it is faster).
MIN_STEP_CAP_S = 10.0
CAP_FACTOR = 10.0
MIN_BF16_CAP_S = 3.0
BF16_CAP_RATIO = 10.0
# a quiet machine runs the reference convolution nearly n times faster on n threads; below this share
# of n the other cores are taken by something else, and every timing is pessimistic
QUIET_PARALLEL_SHARE = 0.6
EXTRA_WIDTH_MISS = 2.0
# fp32 stays timed at wider widths while its step is within this factor of the chosen (bf16) one
FP32_KEEP_FACTOR = 1.5

Combo = tuple[str, str]  # (precision, memory format), e.g. ("bf16", "channels_last")


@dataclass(frozen=True)
class StepTiming:
    """What timing one candidate gave: ``seconds[precision][memory_format]`` (median over the rounds
    it ran) for every combination that finished, and a note per combination abandoned at its cap."""

    seconds: dict[str, dict[str, float]]
    abandoned: tuple[str, ...] = ()
    dropped: tuple[Combo, ...] = ()  # timed, but left out of later rounds as clearly slower


# (network, patch, batch, combinations to time) -> StepTiming
StepTimer = Callable[[NetworkPlan, tuple[int, ...], int, tuple[Combo, ...]], StepTiming]


@dataclass(frozen=True)
class WidthMeasurement:
    base_features: int
    features_per_stage: tuple[int, ...]
    seconds_per_step: float  # in the chosen precision and the faster layout
    iterations_in_budget: int
    memory_format: str = "contiguous"  # the faster layout in the chosen precision
    seconds_by_memory_format: Optional[dict[str, float]] = None  # the chosen precision's layouts
    precision: str = "fp32"
    seconds_by_precision: Optional[dict[str, dict[str, float]]] = None
    abandoned: tuple[str, ...] = ()  # combinations that overran their cap, or not timed because of one
    too_slow: bool = False  # no combination finished: seconds_per_step is the cap, a lower bound


def target_step_seconds(budget_s: float) -> float:
    """The step that still trains ``MIN_ITERATIONS`` in ``budget_s``: 1800 s -> 0.626 s."""
    return budget_s / (MIN_ITERATIONS * STEP_OVERHEAD)


def step_cap_seconds(budget_s: float) -> float:
    """The cap on one timed step for a fold budget: ``max(MIN_STEP_CAP_S, CAP_FACTOR x
    target_step_seconds)``: 10 s for 30 minutes, 50 s for 4 hours."""
    return max(MIN_STEP_CAP_S, CAP_FACTOR * target_step_seconds(budget_s))


def pick_precision(seconds: dict[str, dict[str, float]]) -> Optional[tuple[str, str, float]]:
    """(precision, memory format, seconds) of the step to train with: fp32's faster layout, or bf16's
    where that is at least ``BF16_STEP_MARGIN`` x faster; None when nothing finished.

    ``{"fp32": {"contiguous": 0.3}, "bf16": {"contiguous": 0.25}}`` -> fp32 (0.3 / 0.25 = 1.2 >= 1.1
    would pick bf16; 0.28 would not)."""
    best = {p: min(by_fmt.items(), key=lambda kv: kv[1]) for p, by_fmt in seconds.items() if by_fmt}
    if "bf16" in best and ("fp32" not in best or best["bf16"][1] * BF16_STEP_MARGIN <= best["fp32"][1]):
        return ("bf16",) + best["bf16"]
    if "fp32" in best:
        return ("fp32",) + best["fp32"]
    return None


def widen(cfg: ConfigurationPlan, base_features: int, max_features: int) -> ConfigurationPlan:
    """``cfg`` with a network of another width (same patch, spacing, strides and kernels)."""
    axes = cfg.spacing[1:] if cfg.network.dim == 2 else cfg.spacing
    _, net = fit_topology(tuple(cfg.patch_size), tuple(axes), base_features, max_features,
                          len(cfg.network.features_per_stage))
    same = {k: getattr(cfg.network, k) for k in ("encoder", "blocks_per_stage", "n_conv_per_stage",
                                                  "n_conv_per_stage_decoder")}
    return dataclasses.replace(cfg, network=dataclasses.replace(net, **same))


def choose_width(cfg: ConfigurationPlan, step_seconds: StepTimer, budget_s: float = DEFAULT_FOLD_BUDGET_S,
                 precisions: Sequence[str] = ("fp32",), max_features_ratio: int = 10,
                 cap_s: Optional[float] = None) -> tuple[ConfigurationPlan, list[WidthMeasurement]]:
    """The widest candidate network that trains ``MIN_ITERATIONS`` within ``budget_s`` (else the narrowest).

    Each width is timed in every combination of ``precisions`` and ``TIMED_MEMORY_FORMATS``, and
    counts with its ``pick_precision`` step. A combination abandoned at its cap, or dropped as clearly
    slower, is not timed again at wider widths (the same shapes, only wider), except that fp32's
    faster layout is while it is within ``FP32_KEEP_FACTOR`` of the chosen step (the fallback, and
    what a training in fp32 is fitted with). A width with nothing finished counts as taking ``cap_s``
    (default ``step_cap_seconds(budget_s)``). Wider widths are timed until one misses the budget, and
    one more when the timer says the machine was busy (``step_seconds.busy()``; timers without it
    count as busy).

    Example with a fake timer of 0.02 s per base feature: widths 8, 16, 24, 32 take 0.16, 0.32,
    0.48, 0.64 s; 1800 s / (0.48 s * 1.15) = 3260 >= 2500, but 32 gives 2445, so 24 is chosen."""
    cap_s = step_cap_seconds(budget_s) if cap_s is None else cap_s
    combos = tuple((p, f) for p in precisions for f in TIMED_MEMORY_FORMATS)
    measured, skipped = [], []
    for width in sorted(CANDIDATE_WIDTHS):  # narrowest first; wider ones cost more, so stop at the first miss
        candidate = widen(cfg, width, width * max_features_ratio)
        timed = step_seconds(candidate.network, tuple(candidate.patch_size), candidate.batch_size, combos)
        picked = pick_precision(timed.seconds)
        precision, fmt, seconds = picked if picked else ("fp32", "contiguous", cap_s)
        measured.append(WidthMeasurement(
            width, candidate.network.features_per_stage, seconds, int(budget_s / (seconds * STEP_OVERHEAD)), fmt,
            dict(timed.seconds.get(precision, {})), precision, {p: dict(v) for p, v in timed.seconds.items()},
            tuple(skipped) + timed.abandoned, picked is None))
        done = {(p, f) for p, by_fmt in timed.seconds.items() for f in by_fmt}
        lost = [c for c in combos if c not in done]
        skipped += [f"{p} {f}: not timed (abandoned at width {width})" for p, f in lost]
        fp32 = timed.seconds.get("fp32") or {}
        # fp32 stays (its faster layout, even when dropped as slower) while it is close to the chosen step
        far = bool(fp32) and picked is not None and min(fp32.values()) > FP32_KEEP_FACTOR * picked[2]
        keep = set() if far or not fp32 else {("fp32", min(fp32, key=fp32.get))}
        combos = tuple(c for c in combos if c in done and (c not in timed.dropped or c in keep)
                       and not (far and c[0] == "fp32"))
        if measured[-1].iterations_in_budget < MIN_ITERATIONS:
            # one width past the first that misses the budget is still timed when the machine was busy
            # (and the miss is under EXTRA_WIDTH_MISS): training's re-check (recheck_width) can then
            # still pick it if its own first steps run faster than measured here
            busy = getattr(step_seconds, "busy", lambda: True)()
            if not busy or measured[-1].iterations_in_budget < MIN_ITERATIONS / EXTRA_WIDTH_MISS:
                break
            if len(measured) > 1 and measured[-2].iterations_in_budget < MIN_ITERATIONS:
                break
        if not combos:
            break
    fitting = [m for m in measured if m.iterations_in_budget >= MIN_ITERATIONS]
    best = max(fitting, key=lambda m: m.base_features) if fitting else min(measured, key=lambda m: m.base_features)
    return widen(cfg, best.base_features, best.base_features * max_features_ratio), measured


def candidate_seconds(candidate: dict, precision: Optional[str], planned_precision: str = "fp32") -> Optional[float]:
    """Seconds of one ``throughput.json`` candidate's step: in its chosen precision (``precision``
    None), or in ``precision`` (its faster layout; None when that precision was not timed).
    Candidates of an older autoseg hold one precision, ``planned_precision`` (the file's)."""
    if precision is None:
        return candidate["seconds_per_step"]
    by_precision = candidate.get("seconds_by_precision")
    if by_precision is None:
        return candidate["seconds_per_step"] if precision == planned_precision else None
    timed = by_precision.get(precision) or {}
    return min(timed.values()) if timed else None


def width_for_budget(candidates: list[dict], budget_s: float, precision: Optional[str] = None,
                     planned_precision: str = "fp32") -> int:
    """The base width ``choose_width`` would pick for ``budget_s`` from stored measurements
    (``throughput.json`` candidates): the widest that trains ``MIN_ITERATIONS`` within the budget,
    else the narrowest measured; in each candidate's chosen precision, or in ``precision``
    (``candidate_seconds``; candidates without timings in it are left out).

    Example: steps of 0.16 s (width 16) and 0.45 s (width 32) give 32 for 30 minutes
    (1800 / (0.45 * 1.15) = 3478 iterations) but 16 for 10 minutes (32 would get 1159)."""
    timed = [(c["base_features"], candidate_seconds(c, precision, planned_precision)) for c in candidates]
    timed = [(w, s) for w, s in timed if s is not None]
    fitting = [w for w, s in timed if budget_s / (s * STEP_OVERHEAD) >= MIN_ITERATIONS]
    return int(max(fitting) if fitting else min(w for w, _ in timed))


def _candidate(throughput: dict, plans, configuration: str, width: int) -> Optional[dict]:
    for c in (_configuration_timings(throughput, plans, configuration) or {}).get("candidates", []):
        if c["base_features"] == width:
            return c
    return None


def planned_precision(throughput: dict, plans, configuration: str) -> Optional[str]:
    """The precision the planning chose for ``configuration`` at its network's width: the
    candidate's own (``throughput.json`` of this autoseg: one per configuration and width), else the
    file's single one (older autoseg), else None (not timed)."""
    width = plans.configuration(configuration).network.features_per_stage[0]
    c = _candidate(throughput, plans, configuration, width)
    if c is None:
        return None
    return c.get("precision") or throughput.get("precision", "fp32")


def planned_step_seconds(throughput: dict, plans, configuration: str, precision: str,
                         memory_format: str) -> Optional[float]:
    """The step the planning timed for ``configuration``'s network width in ``precision`` and
    ``memory_format`` (``throughput.json``), or None when it was not timed so."""
    width = plans.configuration(configuration).network.features_per_stage[0]
    c = _candidate(throughput, plans, configuration, width)
    if c is None:
        return None
    if "seconds_by_precision" in c:
        return (c["seconds_by_precision"].get(precision) or {}).get(memory_format)
    if throughput.get("precision", "fp32") != precision:
        return None
    return (c.get("seconds_by_memory_format") or {}).get(memory_format)


def recheck_width(throughput: dict, plans, configuration: str, budget_s: float, scale: float,
                  precision: str = "auto") -> Optional[int]:
    """The width ``width_for_budget`` picks for ``budget_s`` when every step the planning timed for
    ``configuration`` takes ``scale`` times as long (the machine is busier, ``scale`` > 1, or quieter
    than when the plans were made), in ``precision`` (``auto``: each width's own); None when the
    timings do not cover it.

    Example: widths 8 and 16 timed at 0.9 and 1.9 s on a busy machine, training's first steps run
    at a sixth of that (``scale`` 1/6): for 30 minutes 16 is chosen (0.32 s: 4,900 iterations)."""
    report = _configuration_timings(throughput, plans, configuration)
    if not report:
        return None
    wanted = None if precision == "auto" else precision
    file_precision = throughput.get("precision", "fp32")
    scaled = []
    for c in report["candidates"]:
        seconds = candidate_seconds(c, wanted, file_precision)
        if seconds is not None and not c.get("too_slow"):
            scaled.append(dict(c, seconds_per_step=seconds * scale, seconds_by_precision=None))
    return width_for_budget(scaled, budget_s) if scaled else None


def fit_width_to_training_budget(plans, configuration: str, throughput: dict, budget_s: float, precision: str):
    """``plans`` with ``configuration``'s network re-chosen for a training budget of ``budget_s``
    per fold, from the steps measured at planning time (no new timing), in ``precision`` (``auto``:
    each width in the precision chosen for it). Unchanged when the measurements do not cover it
    (that precision not timed, no cpu planning), with the reason as the second return value. A
    cascade stage, whose network is its fullres stage's (see ``adapt_to_throughput``), uses that
    stage's timings (its extra one-hot input channels change only the first convolution)."""
    cfg = plans.configuration(configuration)
    report = _configuration_timings(throughput, plans, configuration)
    if not report:
        return plans, f"no step timings for {configuration} in throughput.json"
    wanted = None if precision == "auto" else precision
    file_precision = throughput.get("precision", "fp32")
    if not any(candidate_seconds(c, wanted, file_precision) is not None for c in report["candidates"]):
        return plans, f"steps were timed in {_timed_precisions(report, file_precision)}, training runs in {precision}"
    width = width_for_budget(report["candidates"], budget_s, wanted, file_precision)
    if width == cfg.network.features_per_stage[0]:
        return plans, None
    return with_width(plans, configuration, width), None


def _timed_precisions(report: dict, file_precision: str) -> str:
    names = {p for c in report["candidates"] for p in (c.get("seconds_by_precision") or {file_precision: 1})}
    return " and ".join(sorted(names))


def with_width(plans, configuration: str, base_features: int):
    """``plans`` with ``configuration``'s network ``widen``-ed to ``base_features`` first-stage
    features (at most 10x that deeper down), everything else kept."""
    configs = dict(plans.configurations)
    configs[configuration] = widen(configs[configuration], base_features, base_features * 10)
    return dataclasses.replace(plans, configurations=configs)


def memory_format_for(throughput: dict, plans, configuration: str,
                      precision: str) -> tuple[Optional[str], Optional[str]]:
    """The memory layout whose training step in ``precision`` was faster at planning for
    ``configuration``'s network width (``throughput.json``; a cascade stage looks at its fullres
    stage's timings), and None; or None and the reason when they do not say (that precision not
    timed at this width: planned by an older autoseg, another profile, a width not measured). A
    width timed in one layout only (the other dropped as clearly slower at a narrower width, or
    abandoned at its cap) trains in that one: on Hippocampus, bf16 contiguous was dropped at width 8
    (0.13 s against 0.09 s channels-last), and a 16-wide fold trained contiguous at 0.26 s per step
    where the planning had timed 0.21 s channels-last."""
    width = plans.configuration(configuration).network.features_per_stage[0]
    c = _candidate(throughput, plans, configuration, width)
    if c is not None and "seconds_by_precision" in c:
        timed = c["seconds_by_precision"].get(precision) or {}
        if not timed:
            other = ", ".join(sorted(p for p, t in c["seconds_by_precision"].items() if t)) or "no precision"
            return None, f"steps were timed in {other}, training runs in {precision}"
    elif c is not None:
        timed_in = throughput.get("precision", "fp32")
        if timed_in != precision:
            return None, f"steps were timed in {timed_in}, training runs in {precision}"
        timed = c.get("seconds_by_memory_format") or {}
    else:
        timed = {}
    if timed:  # one layout only: the other was dropped as clearly slower at a narrower width, or abandoned
        return min(timed, key=timed.get), None
    return None, f"this network width's {precision} step was not timed (throughput.json)"


def _configuration_timings(throughput: dict, plans, configuration: str) -> Optional[dict]:
    """``configuration``'s entry of ``throughput.json``; for a cascade stage, whose network is its
    fullres stage's (``adapt_to_throughput``), that stage's entry when it has none of its own. None
    when the entry timed another patch or batch than ``plans`` now has (plans edited or re-made
    since): its seconds are not this configuration's."""
    timed = throughput.get("configurations", {})
    cfg = plans.configuration(configuration)
    entry = timed.get(configuration) or (timed.get(cfg.preprocessed_name) if cfg.previous_stage else None)
    if entry and "patch_size" in entry and (tuple(entry["patch_size"]) != tuple(cfg.patch_size)
                                            or entry.get("batch_size", cfg.batch_size) != cfg.batch_size):
        return None
    return entry


def adapt_to_throughput(plans, step_seconds: StepTimer, budget_s: float = DEFAULT_FOLD_BUDGET_S,
                        precisions: Sequence[str] = ("fp32",)):
    """``plans`` with every configuration's width chosen by ``choose_width``; also returns the
    measurements per configuration (JSON-ready), each with the precision chosen for its width. A
    cascade stage gets its fullres stage's network."""
    configs, report = dict(plans.configurations), {}
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage:
            continue
        configs[name], measured = choose_width(cfg, step_seconds, budget_s, precisions)
        width = configs[name].network.features_per_stage[0]
        report[name] = {"chosen_base_features": width,
                        "precision": next(m.precision for m in measured if m.base_features == width),
                        "patch_size": list(cfg.patch_size), "batch_size": cfg.batch_size,
                        "candidates": [dataclasses.asdict(m) for m in measured]}
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage:
            source = configs.get(cfg.preprocessed_name, cfg)
            configs[name] = dataclasses.replace(cfg, network=source.network)
    return dataclasses.replace(plans, configurations=configs), {
        "fold_budget_s": budget_s, "min_iterations": MIN_ITERATIONS, "step_overhead": STEP_OVERHEAD,
        "precisions_timed": list(precisions), "configurations": report}


def precisions_to_time() -> tuple[str, ...]:
    """fp32, and bf16 unless torch says this CPU has neither AMX nor AVX512-BF16 (bf16 would be
    emulated there, several times slower)."""
    from autoseg.device import bf16_verdict, torch_bf16_flags

    return ("fp32",) if bf16_verdict(*torch_bf16_flags()) is False else ("fp32", "bf16")


def detect_profile() -> str:
    """The device profile for this machine: a CUDA GPU by its memory, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        gb = torch.cuda.get_device_properties(0).total_memory / 1e9
        return "gpu-8gb" if gb < 20 else "gpu-24gb" if gb < 36 else "gpu-40gb"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "gpu-8gb"
    return "cpu"
