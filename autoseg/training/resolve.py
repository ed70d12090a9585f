"""The settings a training run resolves before its first step: precision, network width and memory
layout, mostly from what the planning timed on this machine (``throughput.json``)."""
from __future__ import annotations

import dataclasses

from autoseg.device import cpu_identity, resolve_precision
from autoseg.training.train_config import TrainConfig


def auto_precision(precision: str, dev, state: dict | None, throughput: dict | None) -> tuple[str, str | None]:
    """The precision a run computes in, and a line for the log (None: nothing to say).

    A named precision is checked and kept (``resolve_precision``). ``auto`` is decided once and then
    kept: a resumed run goes on in the precision it started with (its checkpoint's train_config), and
    on a CPU a new run takes the one the planning chose on this same CPU (``throughput.json``'s
    ``precision`` and ``cpu``), since the planning timed its steps (width, memory layout) in it. On a
    CPU with AVX512-BF16 but no AMX, ``auto`` times bf16 against fp32 (``cpu_bf16_is_faster``), and
    a second probe on a loaded machine can answer otherwise; training would then run in a precision
    its layout was not timed in. Anything else: ``resolve_precision`` decides here."""
    if precision != "auto":
        return resolve_precision(precision, dev), None
    saved = (state or {}).get("train_config", {}).get("precision")
    if saved in ("fp32", "bf16") or (saved == "fp16" and dev.type == "cuda"):
        return resolve_precision(saved, dev), f"precision {saved}, as the run started"
    planned = (throughput or {}).get("precision")
    if dev.type == "cpu" and planned in ("fp32", "bf16") and throughput.get("cpu") and throughput["cpu"] == cpu_identity():
        return planned, f"precision {planned}: chosen when planning on this CPU (throughput.json)"
    return resolve_precision(precision, dev), None


def fit_width(plans, configuration: str, throughput: dict, cfg: TrainConfig):
    """``plans`` with the network width chosen for ``cfg.time_budget_s`` from the planning-time step
    timings (``throughput.json``), and a line for the log saying what was chosen (None: nothing to say)."""
    from autoseg.planners.throughput import fit_width_to_training_budget

    before = plans.configuration(configuration).network.features_per_stage
    plans, why_not = fit_width_to_training_budget(plans, configuration, throughput, cfg.time_budget_s, cfg.precision)
    after = plans.configuration(configuration).network.features_per_stage
    if why_not:
        return plans, f"network width kept as planned ({why_not})"
    if after != before:
        return plans, (f"network features {list(after)} instead of the planned {list(before)}: the widest that "
                       f"trains enough iterations in {cfg.time_budget_s:.0f} s by the steps timed at planning "
                       "(throughput.json)")
    return plans, None


def resolve_memory_format(cfg: TrainConfig, plans, configuration: str, throughput: dict | None, dev):
    """``cfg`` with ``memory_format`` resolved (``auto``: on a cpu the layout whose step was faster at
    planning for this network width and precision, by ``throughput`` (throughput.json, None when
    there is none), else contiguous), and a line for the log saying why (None when ``cfg`` named
    the layout)."""
    if cfg.memory_format != "auto":
        return cfg, None
    chosen, why = "contiguous", f"no timings of both layouts on {dev.type}"
    if dev.type == "cpu" and throughput is not None:
        from autoseg.planners.throughput import memory_format_for

        timed, why = memory_format_for(throughput, plans, configuration, cfg.precision)
        if timed is not None:
            chosen, why = timed, "its training step was the faster one at planning (throughput.json)"
    return dataclasses.replace(cfg, memory_format=chosen), f"memory format {chosen}: {why}"
