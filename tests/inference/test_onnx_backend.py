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


@pytest.fixture
def cpu_machine(monkeypatch):
    """A CPU-only torch build on a CPU without bf16 instructions, onnxruntime installed."""
    monkeypatch.setattr(onnx_backend, "_cpu_only_torch", lambda: True)
    monkeypatch.setattr(onnx_backend, "cpuinfo_bf16_flags", lambda: (False, False))
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
    cpu_machine.setattr(onnx_backend, "cpuinfo_bf16_flags", lambda: (True, True))  # AMX: bf16 in torch is faster
    assert choose_backend("auto", "cpu", "auto") == "torch"
    assert choose_backend("auto", "cpu", "fp32") == "onnx"
    cpu_machine.setattr(onnx_backend, "cpuinfo_bf16_flags", lambda: (False, True))  # torch's probe decides
    assert choose_backend("auto", "cpu", "auto") == "torch"
    cpu_machine.setattr(onnx_backend, "cpuinfo_bf16_flags", lambda: (None, None))  # cannot read the flags
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


def nifti(path, size_xyz, spacing_xyz):
    import numpy as np
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros(tuple(reversed(size_xyz)), np.int16))
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, str(path))
    return path


def test_forward_passes_from_the_header_by_hand(tmp_path):
    from types import SimpleNamespace

    from autoseg.inference.onnx_backend import forward_passes

    image = nifti(tmp_path / "a_0000.nii.gz", (30, 20, 10), (1.0, 1.0, 2.0))  # (z, y, x) 10 x 20 x 30, z 2 mm
    cfg = SimpleNamespace(patch_size=(8, 16, 16), spacing=(2.0, 1.0, 1.0))
    # at (2, 1, 1) mm the image stays 10 x 20 x 30: tiles 2 (z: 0, 2) x 2 (y: 0, 4) x 3 (x: 0, 7, 14)
    assert forward_passes([image], cfg, mirror=False) == 12
    assert forward_passes([image], cfg, mirror=True) == 12 * 8
    assert forward_passes([image], cfg, mirror=False, step_size=1.0) == 2 * 2 * 2  # x: 0, 14
    coarse = SimpleNamespace(patch_size=(8, 16, 16), spacing=(4.0, 2.0, 2.0))  # 5 x 10 x 15: one tile
    assert forward_passes([image, image], coarse, mirror=True) == 2 * 8
    flat = SimpleNamespace(patch_size=(16, 16), spacing=(2.0, 1.0, 1.0))  # 2D: 10 slices of 2 x 3 tiles, 4 mirrors
    assert forward_passes([image], flat, mirror=True) == 10 * 6 * 4
    (tmp_path / "bad_0000.nii.gz").write_bytes(b"not an image")
    assert forward_passes([tmp_path / "bad_0000.nii.gz", image], cfg, mirror=False) == 12


def test_auto_switches_to_torch_when_the_slower_passes_cost_more_than_its_import(tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    from autoseg.inference.predict import InputCase, _torch_pays_off

    image = nifti(tmp_path / "a_0000.nii.gz", (30, 20, 10), (1.0, 1.0, 2.0))
    cfg = SimpleNamespace(patch_size=(8, 16, 16), spacing=(2.0, 1.0, 1.0))  # 12 tiles, 96 passes with TTA

    def predictor(extra):
        return SimpleNamespace(configuration=cfg, step_size=0.5, previous=None,
                               onnx_extra_seconds_per_pass=lambda: extra)

    cases = [InputCase("a", (image,), ".nii.gz")]
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a run that has not imported it
    assert _torch_pays_off([predictor(0.01)], cases, tta=True) == ""  # 96 x 0.01 = 0.96 s < 1.5 s
    reason = _torch_pays_off([predictor(0.02)], cases, tta=True)  # 1.92 s
    assert "96 forward passes would take 1.9 s longer" in reason
    assert _torch_pays_off([predictor(0.02)], cases, tta=False) == ""  # 12 passes: 0.24 s
    assert _torch_pays_off([predictor(-0.05)], cases * 100, tta=True) == ""  # ONNX faster: never torch
    with_previous = predictor(0.01)
    with_previous.previous = predictor(0.01)  # a cascade runs both stages' passes
    assert "192 forward passes" in _torch_pays_off([with_previous], cases, tta=True)
    monkeypatch.setitem(sys.modules, "torch", object())
    assert "torch was imported" in _torch_pays_off([predictor(0.0)], cases, tta=True)
