"""The settings a training run resolves before its first step: precision, network width and memory
layout, mostly from what the planning timed on this machine (``throughput.json``)."""
from __future__ import annotations

import dataclasses

from autoseg.device import cpu_identity, resolve_precision
from autoseg.training.train_config import TrainConfig


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
    saved = (state or {}).get("train_config", {}).get("precision")
    if saved in ("fp32", "bf16") or (saved == "fp16" and dev.type == "cuda"):
        return resolve_precision(saved, dev), f"precision {saved}, as the run started"
    if planned_on_this_cpu(throughput, dev):
        from autoseg.planners.throughput import planned_precision

        planned = planned_precision(throughput, plans, configuration) if plans is not None else None
        planned = planned or throughput.get("precision")
        if planned in ("fp32", "bf16"):
            return planned, f"precision {planned}: chosen when planning on this CPU (throughput.json)"
    return resolve_precision(precision, dev), None


def resolve_settings(cfg: TrainConfig, plans, configuration: str, dev, state: dict | None,
                     throughput: dict | None, fold_plans=None) -> tuple[TrainConfig, object, list[str]]:
    """``cfg`` with its precision and memory layout resolved, the plans to train (a resumed run's own
    ``fold_plans``, else ``plans`` with the width fitted to ``cfg.time_budget_s``), and lines for
    the log. Where the planning timed this configuration on this CPU and the precision is ``auto``,
    the width is fitted first (each width with its own precision) and the precision is then the
    fitted width's; otherwise the precision is decided first and the width fitted in it."""
    notes = []
    fit = fold_plans is None and cfg.time_budget_s and cfg.fit_width_to_budget and throughput is not None
    width_first = cfg.precision == "auto" and state is None and planned_on_this_cpu(throughput, dev)
    if fold_plans is not None:
        plans = fold_plans  # the network this fold started with
    if fit and width_first:
        plans, note = fit_width(plans, configuration, throughput, cfg.time_budget_s, "auto")
        notes.append(note)
    precision, note = auto_precision(cfg.precision, dev, state, throughput, plans, configuration)
    notes.append(note)
    if fit and not width_first:
        plans, note = fit_width(plans, configuration, throughput, cfg.time_budget_s, precision)
        notes.append(note)
    cfg = dataclasses.replace(cfg, precision=precision)
    cfg, note = resolve_memory_format(cfg, plans, configuration, throughput, dev)
    notes.append(note)
    return cfg, plans, [n for n in notes if n]


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
    if cfg.memory_format != "auto":
        return cfg, None
    chosen, why = "contiguous", f"no timings of both layouts on {dev.type}"
    if dev.type == "cpu" and throughput is not None:
        from autoseg.planners.throughput import memory_format_for

        timed, why = memory_format_for(throughput, plans, configuration, cfg.precision)
        if timed is not None:
            chosen, why = timed, "its training step was the faster one at planning (throughput.json)"
    return dataclasses.replace(cfg, memory_format=chosen), f"memory format {chosen}: {why}"
