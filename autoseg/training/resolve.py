"""The settings a training run resolves before its first step: precision, network width and memory
layout, mostly from what the planning timed on this machine (``throughput.json``)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from autoseg.device import cpu_identity, resolve_precision
from autoseg.training.train_config import TrainConfig, saved_setting


def planned_on_this_cpu(throughput: dict | None, dev) -> bool:
    """Whether ``throughput.json`` was timed on this kind of CPU and this run is on the CPU."""
    return bool(dev.type == "cpu" and throughput and throughput.get("cpu") and throughput["cpu"] == cpu_identity())


def auto_precision(precision: str, dev, state: dict | None, throughput: dict | None, plans=None,
                   configuration: str | None = None) -> tuple[str, str | None]:
    """The precision a run computes in, and a line for the log (None: nothing to say).

    A named precision is checked and kept (``resolve_precision``). ``auto`` is decided once and then
    kept: a resumed run goes on in the precision it started with (its checkpoint's train_config), and
    on a CPU a new run takes the one the planning chose on this same CPU for this configuration at
    the width of ``plans`` (``throughput.json``: each width's precision, timed against the other, and
    ``cpu``; files of an older autoseg hold one ``precision`` for all). On a
    CPU with AVX512-BF16 but no AMX, ``auto`` times bf16 against fp32 (``cpu_bf16_is_faster``), and
    a second probe on a loaded machine can answer otherwise; training would then run in a precision
    its layout was not timed in. Anything else: ``resolve_precision`` decides here."""
    if precision != "auto":
        return resolve_precision(precision, dev), None
    saved = saved_setting((state or {}).get("train_config"), "runtime.precision")
    if saved in ("fp32", "bf16") or (saved == "fp16" and dev.type == "cuda"):
        return resolve_precision(saved, dev), f"precision {saved}, as the run started"
    if planned_on_this_cpu(throughput, dev):
        from autoseg.planners.throughput import planned_precision

        planned = planned_precision(throughput, plans, configuration) if plans is not None else None
        planned = planned or throughput.get("precision")
        if planned in ("fp32", "bf16"):
            return planned, f"precision {planned}: chosen when planning on this CPU (throughput.json)"
    return resolve_precision(precision, dev), None


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a run resolved before its first step: ``cfg`` (precision and memory layout decided), the
    ``plans`` to train, lines for the log, and the seconds per training step that the planning (or a
    probe just now) timed for exactly this network, precision and layout (None: not timed)."""

    cfg: TrainConfig
    plans: object
    notes: list
    expected_step_s: Optional[float] = None


def resolve_settings(cfg: TrainConfig, plans, configuration: str, dev, state: dict | None,
                     throughput: dict | None, fold_plans=None, width: Optional[int] = None) -> Resolved:
    """``cfg`` with its precision and memory layout resolved, the plans to train (a resumed run's own
    ``fold_plans``; else ``plans`` at ``width`` when given, else with the width fitted to
    ``cfg.schedule.time_budget_s``), and lines for the log. Where the planning timed this
    configuration on this CPU and the precision is ``auto``, the width is fitted first (each width
    with its own precision) and the precision is then the fitted width's; otherwise the precision
    is decided first and the width fitted in it. On a CPU with bf16 instructions, a new run in ``auto`` whose network the
    planning did not time on this CPU times it now (``time_network_now``), so that no run trains in
    a precision slower than fp32, nor in one whose kernels never finish."""
    from autoseg.planners.throughput import with_width

    notes = []
    fit = (fold_plans is None and width is None and cfg.schedule.time_budget_s and cfg.schedule.fit_width_to_budget
           and throughput is not None)
    width_first = cfg.runtime.precision == "auto" and state is None and planned_on_this_cpu(throughput, dev)
    if fold_plans is not None:
        plans = fold_plans  # the network this fold started with
    elif width is not None:
        plans = with_width(plans, configuration, width)
    if fit and width_first:
        plans, note = fit_width(plans, configuration, throughput, cfg.schedule.time_budget_s, "auto")
        notes.append(note)
    precision, note = auto_precision(cfg.runtime.precision, dev, state, throughput, plans, configuration)
    notes.append(note)
    if fit and not width_first:
        plans, note = fit_width(plans, configuration, throughput, cfg.schedule.time_budget_s, precision)
        notes.append(note)
    expected = None
    if needs_timing_now(cfg, dev, state, throughput, plans, configuration):
        precision, layout, expected, note = time_network_now(plans, configuration, cfg)
        notes.append(note)
        if cfg.runtime.memory_format == "auto":
            cfg = cfg.with_(**{"runtime.memory_format": layout})
    cfg = cfg.with_(**{"runtime.precision": precision})
    cfg, note = resolve_memory_format(cfg, plans, configuration, throughput, dev)
    notes.append(note)
    if expected is None and planned_on_this_cpu(throughput, dev):
        from autoseg.planners.throughput import planned_step_seconds

        expected = planned_step_seconds(throughput, plans, configuration, cfg.runtime.precision,
                                        cfg.runtime.memory_format)
    return Resolved(cfg, plans, [n for n in notes if n], expected)


def needs_timing_now(cfg: TrainConfig, dev, state: dict | None, throughput: dict | None, plans,
                     configuration: str) -> bool:
    """A new run in precision ``auto`` on a CPU that has bf16 instructions, whose network's width the
    planning did not time on this CPU (no ``throughput.json``, another CPU, another profile)."""
    if dev.type != "cpu" or cfg.runtime.precision != "auto" or state is not None:
        return False
    from autoseg.planners.throughput import planned_precision, precisions_to_time

    if "bf16" not in precisions_to_time():
        return False
    return not (planned_on_this_cpu(throughput, dev) and planned_precision(throughput, plans, configuration))


def time_network_now(plans, configuration: str, cfg: TrainConfig) -> tuple[str, str, float, str]:
    """(precision, memory layout, seconds per step, a line for the log) from this run's network and
    batch timed in fp32 and bf16 in both layouts, in a probe process under a cap
    (``planners.step_probe.CappedStepTimer``); fp32 where nothing in bf16 finished or won by the
    margin (``pick_precision``)."""
    from autoseg.device import usable_cpus
    from autoseg.planners.step_probe import CappedStepTimer
    from autoseg.planners.throughput import DEFAULT_FOLD_BUDGET_S, TIMED_MEMORY_FORMATS, pick_precision, step_cap_seconds
    from autoseg.preprocess.previous_stage import num_input_channels

    cp = plans.configuration(configuration)
    cap = step_cap_seconds(cfg.schedule.time_budget_s or DEFAULT_FOLD_BUDGET_S)
    timer = CappedStepTimer(num_input_channels(plans, configuration), plans.num_classes, cap, usable_cpus())
    try:
        timed = timer(cp.network, tuple(cp.patch_size), cfg.sampling.batch_size or cp.batch_size,
                      tuple((p, f) for p in ("fp32", "bf16") for f in TIMED_MEMORY_FORMATS))
    finally:
        timer.close()
    picked = pick_precision(timed.seconds)
    if picked is None:
        return "fp32", "contiguous", None, ("precision fp32: no training step of this network finished within "
                                            f"{cap:.0f} s in any precision ({'; '.join(timed.abandoned)})")
    precision, layout, seconds = picked
    detail = ", ".join(f"{p} {f} {s:.3f} s" for p, by in timed.seconds.items() for f, s in by.items())
    abandoned = f"; abandoned: {'; '.join(timed.abandoned)}" if timed.abandoned else ""
    return precision, layout, seconds, (f"precision {precision}, memory format {layout}: this network's training "
                                        f"step timed now, as the planning did not time it on this CPU "
                                        f"({detail}{abandoned})")


def fit_width(plans, configuration: str, throughput: dict, budget_s: float, precision: str):
    """``plans`` with the network width chosen for ``budget_s`` from the planning-time step timings
    (``throughput.json``) in ``precision`` (``auto``: each width's own), and a line for the log saying
    what was chosen (None: nothing to say)."""
    from autoseg.planners.throughput import fit_width_to_training_budget

    before = plans.configuration(configuration).network.features_per_stage
    plans, why_not = fit_width_to_training_budget(plans, configuration, throughput, budget_s, precision)
    after = plans.configuration(configuration).network.features_per_stage
    if why_not:
        return plans, f"network width kept as planned ({why_not})"
    if after != before:
        return plans, (f"network features {list(after)} instead of the planned {list(before)}: the widest that "
                       f"trains enough iterations in {budget_s:.0f} s by the steps timed at planning "
                       "(throughput.json)")
    return plans, None


def resolve_memory_format(cfg: TrainConfig, plans, configuration: str, throughput: dict | None, dev):
    """``cfg`` with ``memory_format`` resolved (``auto``: on a cpu the layout whose step was faster at
    planning for this network width and precision, by ``throughput`` (throughput.json, None when
    there is none), else contiguous), and a line for the log saying why (None when ``cfg`` named
    the layout)."""
    if cfg.runtime.memory_format != "auto":
        return cfg, None
    chosen, why = "contiguous", f"no timings of both layouts on {dev.type}"
    if dev.type == "cpu" and throughput is not None:
        from autoseg.planners.throughput import memory_format_for

        timed, why = memory_format_for(throughput, plans, configuration, cfg.runtime.precision)
        if timed is not None:
            chosen, why = timed, "its training step was the faster one at planning (throughput.json)"
    return cfg.with_(**{"runtime.memory_format": chosen}), f"memory format {chosen}: {why}"
