"""Width chosen from measured speed (cpu profile): the rule by hand with fake timers, and a real measurement."""
import dataclasses
import json
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.fingerprint_types import load_fingerprint
from autoseg.planners.experiment import plan_experiment
from autoseg.planners.step_probe import CappedStepTimer
from autoseg.planners.throughput import (MIN_ITERATIONS, STEP_OVERHEAD, StepTiming,
                                         adapt_to_throughput, choose_width, fit_width_to_training_budget,
                                         memory_format_for, pick_precision, width_for_budget)
from autoseg.plans import NetworkPlan


@pytest.fixture(scope="module")
def hippocampus():
    return load_fingerprint(Path(__file__).parent / "data" / "hippocampus_fingerprint.json")


def per_feature(seconds: float):
    return lambda net, patch, batch, combos: StepTiming({"fp32": {"contiguous": seconds * net.features_per_stage[0]}})


def test_choose_width_example_from_the_docstring(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")
    chosen, measured = choose_width(cfg, per_feature(0.02), budget_s=1800)
    assert [m.base_features for m in measured] == [8, 16, 24, 32]
    assert [m.iterations_in_budget for m in measured] == [int(1800 / (0.02 * w * STEP_OVERHEAD))
                                                          for w in (8, 16, 24, 32)]
    assert measured[3].iterations_in_budget < MIN_ITERATIONS <= measured[2].iterations_in_budget
    assert chosen.network.features_per_stage == (24, 48, 96, 192)
    # same patch, strides and kernels: only the width changes
    assert chosen.patch_size == cfg.patch_size and chosen.network.strides == cfg.network.strides


def test_more_budget_buys_a_wider_network_and_none_fitting_gives_the_narrowest(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")
    assert choose_width(cfg, per_feature(0.02), budget_s=7200)[0].network.features_per_stage[0] == 32
    chosen, measured = choose_width(cfg, per_feature(0.02), budget_s=60)
    assert chosen.network.features_per_stage[0] == 8
    assert [m.base_features for m in measured] == [8]  # wider ones are not timed once 8 misses


def test_cpu_plans_differ_from_gpu_plans_and_fit_the_budget(hippocampus):
    gpu = plan_experiment(hippocampus, "gpu-8gb").configuration("3d_fullres")
    plans, report = adapt_to_throughput(plan_experiment(hippocampus, "cpu"), per_feature(0.02), 1800)
    cpu = plans.configuration("3d_fullres")
    assert gpu.batch_size == 7 and cpu.batch_size == 2
    assert cpu.network.features_per_stage[0] < gpu.network.features_per_stage[0]
    chosen = report["configurations"]["3d_fullres"]
    seconds = next(c["seconds_per_step"] for c in chosen["candidates"]
                   if c["base_features"] == chosen["chosen_base_features"])
    assert 1800 / (seconds * STEP_OVERHEAD) >= MIN_ITERATIONS  # the chosen network fits the budget
    json.dumps(report)


def test_the_capped_timer_runs_real_steps_in_each_combination():
    net = NetworkPlan(dim=2, features_per_stage=(4, 8), kernel_sizes=((3, 3), (3, 3)), strides=((1, 1), (2, 2)))
    timer = CappedStepTimer(1, 3, cap_s=60, threads=1, rounds=1)
    try:
        timed = timer(net, (16, 16), 2, (("fp32", "contiguous"), ("fp32", "channels_last")))
        # both timed (one may be left out of the later rounds after its warm-up as clearly slower)
        assert set(timed.seconds) == {"fp32"} and timed.abandoned == ()
        assert set(timed.seconds["fp32"]) | {f for _, f in timed.dropped} == {"contiguous", "channels_last"}
        assert all(0 < s < 5 for s in timed.seconds["fp32"].values())
        net3d = NetworkPlan(dim=3, features_per_stage=(4, 8), kernel_sizes=((3, 3, 3),) * 2,
                            strides=((1, 1, 1), (2, 2, 2)))
        assert set(timer(net3d, (8, 8, 8), 2, (("fp32", "channels_last"),)).seconds["fp32"]) == {"channels_last"}
        contention = timer.contention()
        assert contention["threads"] == 1 and contention["busy"] is False
    finally:
        timer.close()


def test_each_width_counts_its_faster_layout_and_records_both(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")

    def timer(net, patch, batch, combos):  # channels-last faster at width 8 only
        w = net.features_per_stage[0]
        return StepTiming({"fp32": {"contiguous": 0.02 * w, "channels_last": 0.01 * w if w == 8 else 0.03 * w}})

    chosen, measured = choose_width(cfg, timer, budget_s=1800)
    assert [(m.base_features, m.memory_format, m.seconds_per_step) for m in measured] == [
        (8, "channels_last", 0.08), (16, "contiguous", 0.32), (24, "contiguous", 0.48), (32, "contiguous", 0.64)]
    assert measured[0].seconds_by_memory_format == {"contiguous": 0.16, "channels_last": 0.08}
    assert measured[0].iterations_in_budget == int(1800 / (0.08 * STEP_OVERHEAD))


def test_memory_format_for_the_trained_width(hippocampus):
    plans = plan_experiment(hippocampus, "cpu", force_lowres=True)
    width = plans.configuration("3d_fullres").network.features_per_stage[0]
    both = {"contiguous": 0.3, "channels_last": 0.2}
    throughput = {"precision": "fp32", "configurations": {"3d_fullres": {"candidates": [
        {"base_features": width, "memory_format": "channels_last", "seconds_by_memory_format": both},
        {"base_features": 2 * width, "memory_format": "contiguous"}]}}}  # one layout timed (older plans)
    assert memory_format_for(throughput, plans, "3d_fullres", "fp32") == ("channels_last", None)
    # the cascade stage reads its fullres stage's timings
    assert memory_format_for(throughput, plans, "3d_cascade_fullres", "fp32") == ("channels_last", None)
    assert memory_format_for(throughput, plans, "2d", "fp32")[0] is None
    assert memory_format_for(throughput, plans, "3d_fullres", "bf16") == (
        None, "steps were timed in fp32, training runs in bf16")
    wider = fit_width_to_training_budget(plans, "3d_fullres", {"precision": "fp32", "configurations": {
        "3d_fullres": {"candidates": [{"base_features": width, "seconds_per_step": 10.0},
                                      {"base_features": 2 * width, "seconds_per_step": 0.01}]}}}, 1800, "fp32")[0]
    assert wider.configuration("3d_fullres").network.features_per_stage[0] == 2 * width
    layout, why_not = memory_format_for(throughput, wider, "3d_fullres", "fp32")
    assert layout is None and "step was not timed" in why_not  # an older file without that width's seconds
    # a width timed in one layout only (bf16 contiguous dropped at a narrower width): that layout
    one = {"configurations": {"3d_fullres": {"candidates": [
        {"base_features": width, "seconds_by_precision": {"bf16": {"channels_last": 0.21}}}]}}}
    assert memory_format_for(one, plans, "3d_fullres", "bf16") == ("channels_last", None)


def test_cli_cpu_plan_writes_the_measurements(synth_dataset, workspace):
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu", "-c", "3d_fullres",
                 "--time-budget", "10m", "--root", str(workspace)]) == 0
    folder = workspace / "preprocessed" / "Dataset901_Synth"
    report = json.loads((folder / "throughput.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    assert report["fold_budget_s"] == 600
    entry = report["configurations"]["3d_fullres"]
    widths = [c["base_features"] for c in entry["candidates"]]
    assert widths == [8, 16, 24, 32][:len(widths)]
    first = entry["candidates"][0]  # the narrowest: every combination timed, the fastest one counted
    assert set(first["seconds_by_precision"]["fp32"]) == {"contiguous", "channels_last"}
    for c in entry["candidates"]:
        timed = c["seconds_by_memory_format"]
        assert timed == c["seconds_by_precision"][c["precision"]]
        assert c["seconds_per_step"] == min(timed.values()) == timed[c["memory_format"]]
    assert entry["precision"] == next(c["precision"] for c in entry["candidates"]
                                      if c["base_features"] == entry["chosen_base_features"])
    assert report["contention"]["threads"] >= 1 and report["timing_s"] > 0
    features = plans["configurations"]["3d_fullres"]["network"]["features_per_stage"]
    assert features[0] == entry["chosen_base_features"]


def test_width_for_budget_example_from_the_docstring():
    candidates = [{"base_features": 16, "seconds_per_step": 0.16}, {"base_features": 32, "seconds_per_step": 0.45}]
    assert width_for_budget(candidates, 1800) == 32  # 1800 / (0.45 * 1.15) = 3478 iterations >= 2500
    assert width_for_budget(candidates, 600) == 16   # 32 would get 1159, 16 gets 3260
    assert width_for_budget(candidates, 60) == 16    # none fits: the narrowest measured


def test_a_training_budget_rechooses_the_width_from_the_stored_timings(hippocampus):
    plans = plan_experiment(hippocampus, "cpu")
    planned = plans.configuration("3d_fullres")
    throughput = {"precision": "bf16", "configurations": {"3d_fullres": {"candidates": [
        {"base_features": 8, "seconds_per_step": 0.09}, {"base_features": 16, "seconds_per_step": 0.16},
        {"base_features": 32, "seconds_per_step": 0.45}]}}}
    short, why_not = fit_width_to_training_budget(plans, "3d_fullres", throughput, 600, "bf16")
    cfg = short.configuration("3d_fullres")
    assert why_not is None and cfg.network.features_per_stage[0] == 16
    assert cfg.patch_size == planned.patch_size and cfg.network.strides == planned.network.strides
    long, _ = fit_width_to_training_budget(plans, "3d_fullres", throughput, 1800, "bf16")
    assert long.configuration("3d_fullres").network.features_per_stage[0] == 32
    # timings of another precision do not say how fast this training is: the plans are kept
    kept, why_not = fit_width_to_training_budget(plans, "3d_fullres", throughput, 600, "fp32")
    assert kept is plans and "timed in bf16, training runs in fp32" in why_not
    kept, why_not = fit_width_to_training_budget(plans, "2d", throughput, 600, "bf16")
    assert kept is plans and "no step timings for 2d" in why_not


def test_the_cascade_stage_takes_its_fullres_stage_timings(hippocampus):
    plans = plan_experiment(hippocampus, "cpu", force_lowres=True)
    assert plans.configuration("3d_cascade_fullres").preprocessed_name == "3d_fullres"
    throughput = {"precision": "fp32", "configurations": {"3d_fullres": {"candidates": [
        {"base_features": 8, "seconds_per_step": 0.05}, {"base_features": 16, "seconds_per_step": 0.16},
        {"base_features": 32, "seconds_per_step": 0.45}]}}}
    fitted, why_not = fit_width_to_training_budget(plans, "3d_cascade_fullres", throughput, 300, "fp32")
    # 300 / (0.05 * 1.15) = 5217 iterations >= 2500; 16 would get 1630
    assert why_not is None
    assert fitted.configuration("3d_cascade_fullres").network.features_per_stage[0] == 8


def test_bf16_counts_only_where_it_beats_fp32_by_the_margin():
    assert pick_precision({"fp32": {"contiguous": 0.3}, "bf16": {"contiguous": 0.25}}) == ("bf16", "contiguous", 0.25)
    assert pick_precision({"fp32": {"contiguous": 0.3}, "bf16": {"contiguous": 0.28}}) == ("fp32", "contiguous", 0.3)
    assert pick_precision({"fp32": {"contiguous": 0.3, "channels_last": 0.2},
                           "bf16": {"channels_last": 0.19}}) == ("fp32", "channels_last", 0.2)
    assert pick_precision({"bf16": {"contiguous": 0.5}}) == ("bf16", "contiguous", 0.5)  # fp32 abandoned
    assert pick_precision({}) is None


def test_precision_is_chosen_per_configuration_and_an_abandoned_bf16_is_not_timed_again(hippocampus):
    plans = plan_experiment(hippocampus, "cpu")
    calls = []

    def timer(net, patch, batch, combos):  # bf16 twice as fast in 3d; in 2d it never finishes
        calls.append((len(patch), net.features_per_stage[0], combos))
        w = net.features_per_stage[0]
        if len(patch) == 2:
            return StepTiming({"fp32": {"contiguous": 0.01 * w, "channels_last": 0.012 * w}},
                              ("bf16 contiguous: a step took over 10.0 s (abandoned)",
                               "bf16 channels_last: a step took over 10.0 s (abandoned)"))
        return StepTiming({"fp32": {"contiguous": 0.02 * w}, "bf16": {"contiguous": 0.01 * w}})

    adapted, report = adapt_to_throughput(plans, timer, 1800, ("fp32", "bf16"))
    assert report["configurations"]["3d_fullres"]["precision"] == "bf16"
    assert report["configurations"]["2d"]["precision"] == "fp32"
    two_d = [c for c in calls if c[0] == 2]
    assert two_d[0][2] == (("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"),
                           ("bf16", "channels_last"))
    # wider 2d networks: bf16 not timed again; both fp32 layouts still are (neither was dropped)
    assert all(c[2] == (("fp32", "contiguous"), ("fp32", "channels_last")) for c in two_d[1:])
    later = report["configurations"]["2d"]["candidates"][1]
    assert "bf16 contiguous: not timed (abandoned at width 8)" in later["abandoned"]
    # training in auto takes each width's own precision; a forced fp32 training is fitted with fp32 steps
    throughput = dict(report, cpu="x")
    for c in throughput["configurations"]["3d_fullres"]["candidates"]:
        assert c["seconds_by_precision"]["bf16"]["contiguous"] == pytest.approx(0.01 * c["base_features"])
    fitted, why_not = fit_width_to_training_budget(adapted, "3d_fullres", throughput, 600, "fp32")
    assert why_not is None  # 600 / (0.02 * 8 * 1.15) = 3260 >= 2500; width 16 gets 1630
    assert fitted.configuration("3d_fullres").network.features_per_stage[0] == 8
    fitted, _ = fit_width_to_training_budget(adapted, "3d_fullres", throughput, 600, "auto")
    assert fitted.configuration("3d_fullres").network.features_per_stage[0] == 16  # bf16: 600/(0.16*1.15)=3260


def test_a_width_whose_every_step_was_abandoned_counts_as_the_cap(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")

    def timer(net, patch, batch, combos):
        return StepTiming({}, tuple(f"{p} {f}: a step took over 10.0 s (abandoned)" for p, f in combos))

    chosen, measured = choose_width(cfg, timer, budget_s=1800, precisions=("fp32", "bf16"), cap_s=10.0)
    assert [m.base_features for m in measured] == [8]  # nothing left to time at wider widths
    assert measured[0].too_slow and measured[0].seconds_per_step == 10.0
    assert measured[0].iterations_in_budget == int(1800 / (10.0 * STEP_OVERHEAD))
    assert chosen.network.features_per_stage[0] == 8


def test_timings_of_another_patch_are_not_this_configurations(hippocampus):
    from autoseg.planners.throughput import planned_step_seconds, with_width

    plans = plan_experiment(hippocampus, "cpu")
    cfg = plans.configuration("3d_fullres")
    timed = {"fp32": {"contiguous": 0.3, "channels_last": 0.2}}
    throughput = {"configurations": {"3d_fullres": {
        "patch_size": list(cfg.patch_size), "batch_size": cfg.batch_size,
        "candidates": [{"base_features": 16, "seconds_per_step": 0.2, "precision": "fp32",
                        "seconds_by_precision": timed}]}}}
    plans16 = with_width(plans, "3d_fullres", 16)
    assert planned_step_seconds(throughput, plans16, "3d_fullres", "fp32", "channels_last") == 0.2
    assert memory_format_for(throughput, plans16, "3d_fullres", "fp32") == ("channels_last", None)
    bigger = dataclasses.replace(plans16, configurations={**plans16.configurations, "3d_fullres": dataclasses.replace(
        plans16.configuration("3d_fullres"), patch_size=(40, 112, 80))})
    assert planned_step_seconds(throughput, bigger, "3d_fullres", "fp32", "channels_last") is None
    assert memory_format_for(throughput, bigger, "3d_fullres", "fp32")[0] is None


def test_a_quiet_machine_times_no_width_past_the_first_miss_and_fp32_only_while_it_is_close(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")
    calls = []

    class Timer:  # 0.1 s per base feature in bf16, three times that in fp32: 16 and wider miss 30 minutes
        def __init__(self, busy):
            self.busy_answer = busy

        def busy(self):
            return self.busy_answer

        def __call__(self, net, patch, batch, combos):
            w = net.features_per_stage[0]
            calls.append((w, combos))
            return StepTiming({p: {f: (0.03 if p == "bf16" else 0.09) * w for _, f in combos if _ == p}
                               for p in {p for p, _ in combos}})

    chosen, measured = choose_width(cfg, Timer(False), 1800, ("fp32", "bf16"))
    # width 8: 0.24 s bf16 (1800 / (0.24 * 1.15) = 6522); 16: 0.48 s (3260); 24: 0.72 s (2173): a miss
    assert [m.base_features for m in measured] == [8, 16, 24] and chosen.network.features_per_stage[0] == 16
    # fp32 was 3x bf16 at width 8: not timed again at 16 and 24
    assert all(p == "bf16" for _, combos in calls[1:] for p, _ in combos)
    calls.clear()
    _, measured = choose_width(cfg, Timer(True), 1800, ("fp32", "bf16"))
    assert [m.base_features for m in measured] == [8, 16, 24, 32]  # busy: one width past the miss
