"""Prediction through ONNX Runtime: the CPU path that does not import torch.

Why: ``import torch`` is most of what a ``predict`` run costs before its first case, and
onnxruntime imports far faster; its fp32 3D convolutions are slower than torch's oneDNN path, so
it pays for short runs only (both measured in docs/experiments/onnx_backend.md).

Each fold's checkpoint is exported once, next to it: ``{checkpoint}.onnx`` and
``{checkpoint}.onnx.json`` (the checkpoint's size and modification time, the configuration, the
number of input channels, and one forward pass timed in each backend on this machine). An export
whose record no longer matches its checkpoint is redone; only exporting imports torch.

``choose_backend`` says whether ONNX Runtime can be used at all: not on a GPU (CUDA or MPS), not
in a precision other than fp32 (nor with ``auto`` where bf16 may be faster, by the rule training
uses: ``autoseg.device.bf16_verdict``), not without onnxruntime. ``predict``
(``inference/predict.py``, ``auto``) then weighs it against torch for the run: the forward passes
it will make (``forward_passes``) times the records' per-pass difference, against torch's import
(``TORCH_FIXED_SECONDS``).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.device import bf16_verdict, cpuinfo_bf16_flags, usable_cpus
from autoseg.errors import UserFacingError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
OPSET = 17


def onnx_files(fold_dir: Path, checkpoint: str) -> tuple[Path, Path]:
    """The exported graph and its record for ``fold_dir/{checkpoint}.pth``."""
    return fold_dir / f"{checkpoint}.onnx", fold_dir / f"{checkpoint}.onnx.json"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"checkpoint_bytes": st.st_size, "checkpoint_mtime_ns": st.st_mtime_ns}


def read_export_record(fold_dir: Path, checkpoint: str) -> dict | None:
    """The record of an export that still matches its checkpoint, else None."""
    graph, record = onnx_files(fold_dir, checkpoint)
    if not (graph.is_file() and record.is_file()):
        return None
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    stamp = _stamp(fold_dir / f"{checkpoint}.pth")
    if not all(info.get(k) == v for k, v in stamp.items()) or "onnx_seconds_per_pass" not in info:
        return None
    return info


def export_fold(fold_dir: Path, checkpoint: str = "checkpoint_final") -> dict:
    """Export ``fold_dir/{checkpoint}.pth`` to ONNX (batch size free, the patch size fixed) and
    write its record; both written to temporary files and renamed. Imports torch."""
    import torch

    from autoseg.training.checkpoint import load_trained_model

    fold_dir = Path(fold_dir)
    model = load_trained_model(fold_dir, checkpoint, "cpu")
    net = model.network.eval()
    in_channels = _input_channels(net)
    patch = tuple(int(p) for p in model.configuration.patch_size)
    graph, record = onnx_files(fold_dir, checkpoint)
    tmp = graph.with_name(f".{graph.name}.tmp{os.getpid()}")
    example = torch.zeros((1, in_channels) + patch)
    export_graph(net, example, tmp)
    os.replace(tmp, graph)
    info = {**_stamp(fold_dir / f"{checkpoint}.pth"), "configuration": model.configuration.name,
            "in_channels": in_channels, "patch_size": list(patch), "opset": OPSET, "torch": torch.__version__,
            **_time_both(net, graph, example)}
    tmp_record = record.with_name(f".{record.name}.tmp{os.getpid()}")
    tmp_record.write_text(json.dumps(info, indent=1))
    os.replace(tmp_record, record)
    return info


def export_graph(net, example, path: Path) -> None:
    """Write ``net``'s full-resolution output as an ONNX graph for inputs shaped like ``example``
    (the batch size left free). Imports torch."""
    import torch

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer notes
        warnings.simplefilter("ignore")
        # the TorchScript exporter: it needs the onnx package only, not onnxscript (torch >= 2.5 has
        # the dynamo exporter as well, and from 2.9 as its default)
        kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(_first_output(net), (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          **kwargs)


def _time_both(net, graph: Path, example) -> dict:
    """Seconds per forward pass of one patch on this machine in ONNX Runtime and in torch's fp32
    CPU inference forward: what ``auto`` weighs against torch's import time."""
    import torch

    from autoseg.inference.fast_forward import inference_forward

    forward = inference_forward(net, "fp32", torch.device("cpu"))
    with torch.inference_mode():
        torch_s = _median_seconds(forward, example)
    return {"onnx_seconds_per_pass": _median_seconds(_session(graph), example.numpy()),
            "torch_seconds_per_pass": torch_s}


def _median_seconds(run, x, repeats: int = 3) -> float:
    import time

    run(x)  # untimed: the first call allocates
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def _input_channels(net) -> int:
    import torch

    first = next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    return int(first.in_channels)


def _first_output(net):
    """``net`` wrapped so that its forward returns the full-resolution logits only (a network
    built with deep supervision returns a list)."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out[0] if isinstance(out, (list, tuple)) else out

    return FirstOutput(net).eval()


@dataclass
class OnnxNetwork:
    """One fold's exported network: float32 (B, C, *patch) -> float32 logits (B, K, *patch)."""
    session: object
    path: Path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]


def load_onnx_network(fold_dir: Path, checkpoint: str = "checkpoint_final", threads: int | None = None
                      ) -> tuple[OnnxNetwork, dict]:
    """The fold's ONNX Runtime session (exported first if missing or stale) and its record."""
    from autoseg.training.health import refuse_failed

    fold_dir = Path(fold_dir)
    refuse_failed(fold_dir)
    info = read_export_record(fold_dir, checkpoint)
    if info is None:
        log.info("exporting %s/%s.pth to ONNX (once per checkpoint)", fold_dir, checkpoint)
        try:
            info = export_fold(fold_dir, checkpoint)
        except OSError as exc:
            raise UserFacingError(f"cannot write the ONNX export of {fold_dir / checkpoint}.pth beside it ({exc}); "
                                  "predict with --backend torch, or from a writable copy of the model") from None
    return _session(onnx_files(fold_dir, checkpoint)[0], threads), info


def _session(graph: Path, threads: int | None = None) -> OnnxNetwork:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return OnnxNetwork(ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"]), graph)


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_backend(requested: str, device: str | None, precision: str) -> str:
    """``torch`` or ``onnx`` for a predict run, decided without importing torch.

    ``auto`` picks onnx when onnxruntime is installed, the run is on the CPU (``--device cpu``, or
    ``auto`` with a torch build that has no GPU support on a machine without Apple's MPS) and the
    precision is fp32 (``fp32``, or ``auto`` on a CPU where ``autoseg.device.bf16_verdict`` says
    bf16 is not faster)."""
    if requested not in BACKENDS:
        raise UserFacingError(f"--backend must be one of {', '.join(BACKENDS)}, found {requested!r}")
    if requested == "torch":
        return "torch"
    problem = None
    if not onnxruntime_available():
        problem = "onnxruntime is not installed (pip install onnxruntime)"
    elif device not in (None, "auto", "cpu"):
        problem = f"the ONNX backend runs on the CPU only, and --device {device} was asked for"
    elif precision not in ("auto", "fp32"):
        problem = f"the ONNX backend computes in fp32, and --precision {precision} was asked for"
    if requested == "onnx":
        if problem:
            raise UserFacingError(f"--backend onnx: {problem}; use --backend torch")
        return "onnx"
    if problem:
        return "torch"
    if device in (None, "auto") and not _cpu_only_torch():
        return "torch"
    if precision == "auto" and bf16_verdict(*cpuinfo_bf16_flags()) is not False:
        return "torch"  # bf16 is faster, or torch's timing probe must tell
    return "onnx"


def _cpu_only_torch() -> bool:
    """Whether the installed torch is a CPU-only build on a machine without MPS, read from
    ``torch/version.py`` without importing torch (False where it cannot tell)."""
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return False
    return version_file_is_cpu_only(text)


def version_file_is_cpu_only(text: str) -> bool:
    """Whether a ``torch/version.py`` names no GPU toolkit: its ``cuda``, ``hip`` (and ``rocm``,
    ``xpu``, where present) are ``None`` (False if it names none of them). Lines look like
    ``cuda: Optional[str] = None`` or ``cuda = '12.1'``."""
    values = {}
    for line in text.splitlines():
        target, sep, value = line.partition("=")
        name = target.split(":")[0].strip()
        if sep and name in ("cuda", "hip", "rocm", "xpu"):
            values[name] = value.split("#")[0].strip()
    return bool(values) and all(v in ("None", "''", '""') for v in values.values())


# What importing torch (and its teardown) costs a predict run that ONNX Runtime spares: the middle of
# the range measured in docs/experiments/onnx_backend.md.
TORCH_FIXED_SECONDS = 1.5


def forward_passes(files: list[Path], configuration, mirror: bool, step_size: float = 0.5) -> int:
    """Forward passes the sliding window will make over these images (one file per case, header
    only): the image at the configuration's spacing, tiles at ``step_size`` (crop to the nonzero
    region ignored: an upper bound), times the 2^axes mirror copies; slice by slice with a 2D
    patch. Files whose header cannot be read count nothing (they fail when read anyway)."""
    import SimpleITK as sitk

    from autoseg.inference.sliding_window import tile_starts
    from autoseg.preprocess.resampling import compute_new_shape

    patch = tuple(configuration.patch_size)
    copies = 2 ** len(patch) if mirror else 1
    total = 0
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        size, spacing = tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing()))
        if len(size) == 2:
            size, spacing = (1,) + size, (1.0,) + spacing
        if len(patch) == 2:  # in-plane resampling only, slice by slice (preprocessor.configuration_spacing)
            shape = compute_new_shape(size, spacing, (spacing[0],) + tuple(configuration.spacing[1:]))
            slices, plane = shape[0], shape[1:]
        else:
            shape = compute_new_shape(size, spacing, tuple(configuration.spacing))
            slices, plane = 1, shape
        tiles = 1
        for n, p in zip(plane, patch):
            tiles *= len(tile_starts(n, p, step_size))
        total += slices * tiles * copies
    return total
