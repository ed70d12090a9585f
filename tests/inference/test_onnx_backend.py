"""Choosing between the torch and ONNX Runtime backends of predict, without importing torch."""
import pytest

from autoseg.errors import UserFacingError
from autoseg.inference import onnx_backend
from autoseg.inference.onnx_backend import choose_backend, version_file_is_cpu_only

CPU_BUILD = """from typing import Optional
__version__ = '2.13.0+cpu'
cuda: Optional[str] = None
git_version = 'cf30153c'
hip: Optional[str] = None
rocm: Optional[str] = None
xpu: Optional[str] = None
"""


def test_version_file_of_a_cpu_build_and_of_gpu_builds():
    assert version_file_is_cpu_only(CPU_BUILD)
    assert not version_file_is_cpu_only(CPU_BUILD.replace("cuda: Optional[str] = None", "cuda: Optional[str] = '12.8'"))
    assert not version_file_is_cpu_only(CPU_BUILD.replace("hip: Optional[str] = None", "hip = '6.2.4'"))
    assert version_file_is_cpu_only("cuda = None  # old style\nhip = None\n")
    assert not version_file_is_cpu_only("__version__ = '2.1.0'\n")  # names no toolkit: cannot tell


def test_cpu_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: none\n")
    assert onnx_backend._cpu_has_bf16(str(info)) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert onnx_backend._cpu_has_bf16(str(info)) is True
    assert onnx_backend._cpu_has_bf16(str(tmp_path / "missing")) is None


@pytest.fixture
def cpu_machine(monkeypatch):
    """A CPU-only torch build on a CPU without bf16 instructions, onnxruntime installed."""
    monkeypatch.setattr(onnx_backend, "_cpu_only_torch", lambda: True)
    monkeypatch.setattr(onnx_backend, "_cpu_has_bf16", lambda: False)
    monkeypatch.setattr(onnx_backend, "onnxruntime_available", lambda: True)
    return monkeypatch


def test_auto_picks_onnx_on_a_cpu_in_fp32(cpu_machine):
    assert choose_backend("auto", None, "auto") == "onnx"
    assert choose_backend("auto", "cpu", "fp32") == "onnx"
    assert choose_backend("torch", "cpu", "fp32") == "torch"


def test_auto_keeps_torch_for_gpus_bf16_cpus_and_other_precisions(cpu_machine):
    assert choose_backend("auto", "cuda", "auto") == "torch"
    assert choose_backend("auto", "cpu", "bf16") == "torch"
    cpu_machine.setattr(onnx_backend, "_cpu_only_torch", lambda: False)  # a CUDA build: may have a GPU
    assert choose_backend("auto", "auto", "auto") == "torch"
    assert choose_backend("auto", "cpu", "auto") == "onnx"  # the CPU asked for by name
    cpu_machine.setattr(onnx_backend, "_cpu_has_bf16", lambda: True)  # AMX: bf16 in torch is faster
    assert choose_backend("auto", "cpu", "auto") == "torch"
    assert choose_backend("auto", "cpu", "fp32") == "onnx"
    cpu_machine.setattr(onnx_backend, "_cpu_has_bf16", lambda: None)  # cannot read the flags
    assert choose_backend("auto", "cpu", "auto") == "torch"


def test_asking_for_onnx_where_it_cannot_run_says_why(cpu_machine):
    with pytest.raises(UserFacingError, match="CPU only.*--device cuda.*--backend torch"):
        choose_backend("onnx", "cuda", "auto")
    with pytest.raises(UserFacingError, match="fp32.*--precision bf16"):
        choose_backend("onnx", "cpu", "bf16")
    cpu_machine.setattr(onnx_backend, "onnxruntime_available", lambda: False)
    with pytest.raises(UserFacingError, match="onnxruntime is not installed"):
        choose_backend("onnx", "cpu", "fp32")
    assert choose_backend("auto", "cpu", "fp32") == "torch"
    with pytest.raises(UserFacingError, match="must be one of auto, torch, onnx"):
        choose_backend("tensorrt", "cpu", "fp32")
