"""Width chosen from measured speed (cpu profile): the rule by hand with fake timers, and a real measurement."""
import json
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.fingerprint_types import load_fingerprint
from autoseg.planners.experiment import plan_experiment
from autoseg.planners.throughput import (MIN_ITERATIONS, STEP_OVERHEAD, adapt_to_throughput, choose_width,
                                         fit_width_to_training_budget, measure_step_seconds, memory_format_for,
                                         width_for_budget)
from autoseg.plans import NetworkPlan


@pytest.fixture(scope="module")
def hippocampus():
    return load_fingerprint(Path(__file__).parent / "data" / "hippocampus_fingerprint.json")


def per_feature(seconds: float):
    return lambda net, patch, batch: {"contiguous": seconds * net.features_per_stage[0]}


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


def test_measure_step_seconds_runs_a_real_step_in_each_layout():
    net = NetworkPlan(dim=2, features_per_stage=(4, 8), kernel_sizes=((3, 3), (3, 3)), strides=((1, 1), (2, 2)))
    seconds = measure_step_seconds(net, (16, 16), 2, in_channels=1, num_classes=3, repeats=1)
    assert set(seconds) == {"contiguous", "channels_last"}
    assert all(0 < s < 5 for s in seconds.values())
    net3d = NetworkPlan(dim=3, features_per_stage=(4, 8), kernel_sizes=((3, 3, 3),) * 2, strides=((1, 1, 1), (2, 2, 2)))
    assert set(measure_step_seconds(net3d, (8, 8, 8), 2, repeats=1, memory_formats=("channels_last",))) == {
        "channels_last"}


def test_each_width_counts_its_faster_layout_and_records_both(hippocampus):
    cfg = plan_experiment(hippocampus, "cpu").configuration("3d_fullres")

    def timer(net, patch, batch):  # channels-last faster at width 8 only
        w = net.features_per_stage[0]
        return {"contiguous": 0.02 * w, "channels_last": 0.01 * w if w == 8 else 0.03 * w}

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
    assert layout is None and "not timed in both layouts" in why_not  # that width was timed in one layout


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
    for c in entry["candidates"]:  # both layouts timed, the faster one counted
        timed = c["seconds_by_memory_format"]
        assert set(timed) == {"contiguous", "channels_last"}
        assert c["seconds_per_step"] == min(timed.values()) == timed[c["memory_format"]]
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
