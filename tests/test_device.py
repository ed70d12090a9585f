"""Precision choice (``autoseg.device``): explicit values, ``auto`` per device, clear errors."""
import pytest
import torch

from autoseg import device as device_module
from autoseg.device import autocast_dtype, resolve_precision, with_autocast
from autoseg.errors import UserFacingError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_fp16_on_cuda_and_measured_on_the_cpu(monkeypatch):
    assert resolve_precision("auto", CUDA) == "fp16"
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_explicit_precisions_are_kept_and_bad_ones_explained():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp16", CUDA) == "fp16"
    with pytest.raises(UserFacingError, match="fp16 needs a CUDA device.*use bf16 or fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(UserFacingError, match="one of auto, fp32, bf16, fp16, found 'half'"):
        resolve_precision("half", CPU)


def test_with_autocast_runs_the_network_in_the_chosen_dtype():
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    assert with_autocast(net, "fp32", CPU) is net
    assert autocast_dtype("fp32") is None
    out = with_autocast(net, "bf16", CPU)(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: the result is within ~1% of fp32's
    assert torch.allclose(out.float(), net(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("amx, avx512_bf16, speedup, expected", [
    (True, True, None, True),  # AMX: no timing needed
    (True, None, None, True),
    (False, False, None, False),  # no native bf16: emulated, slower
    (False, True, 1.6, True),  # AVX512-BF16 only: the probe decides
    (False, True, 1.1, False),
    (None, None, 1.6, True),  # torch cannot say (another architecture): the probe decides
    (None, None, 0.8, False),
])
def test_bf16_choice_reads_the_cpu_flags_before_timing(monkeypatch, amx, avx512_bf16, speedup, expected):
    flags = {"_is_amx_tile_supported": amx, "_is_avx512_bf16_supported": avx512_bf16}
    monkeypatch.setattr(device_module, "_cpu_flag", flags.get)

    def probe():
        if speedup is None:
            raise AssertionError("the timing probe ran although the flags decide")
        return speedup

    monkeypatch.setattr(device_module, "_bf16_speedup", probe)
    device_module.cpu_bf16_is_faster.cache_clear()
    try:
        assert device_module.cpu_bf16_is_faster() is expected
    finally:
        device_module.cpu_bf16_is_faster.cache_clear()


def test_the_cpu_measurement_answers_a_bool_once():
    device_module.cpu_bf16_is_faster.cache_clear()
    first = device_module.cpu_bf16_is_faster()
    assert isinstance(first, bool)
    assert device_module.cpu_bf16_is_faster.cache_info().hits == 0
    assert device_module.cpu_bf16_is_faster() is first
    assert device_module.cpu_bf16_is_faster.cache_info().hits == 1


def test_usable_cpus_counts_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(device_module.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert device_module.usable_cpus() == 1  # pinned to one core of 16 (taskset -c 3, a Slurm job)
    monkeypatch.setattr(device_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert device_module.usable_cpus() == 4


def test_usable_cpus_without_an_affinity_mask_counts_the_machine(monkeypatch):
    monkeypatch.delattr(device_module.os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 6)
    assert device_module.usable_cpus() == 6
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: None)  # unknown
    assert device_module.usable_cpus() == 1


def test_pool_size_asks_for_no_more_processes_than_jobs(monkeypatch):
    monkeypatch.setattr(device_module, "usable_cpus", lambda: 4)
    assert device_module.pool_size(None, 10) == 4  # one per usable CPU
    assert device_module.pool_size(None, 3) == 3  # no more than the jobs
    assert device_module.pool_size(8, 10) == 8  # -np wins over the CPU count
    assert device_module.pool_size(None, 0) == 1  # never none


def test_cpu_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: none\n")
    assert device_module.cpuinfo_bf16_flags(str(info)) == (False, False)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert device_module.cpuinfo_bf16_flags(str(info)) == (True, True)
    assert device_module.cpuinfo_bf16_flags(str(tmp_path / "missing")) == (None, None)


@pytest.mark.parametrize("amx, avx512_bf16, verdict", [
    (True, True, True), (True, None, True), (False, False, False),
    (False, True, None), (None, False, None), (None, None, None),
])
def test_one_bf16_rule_for_training_planning_and_the_onnx_choice(amx, avx512_bf16, verdict):
    assert device_module.bf16_verdict(amx, avx512_bf16) is verdict
