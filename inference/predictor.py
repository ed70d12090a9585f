"""A trained configuration (one or more folds) that predicts whole cases.

Models are loaded once; each case goes through the training preprocessing, the sliding window
(every fold, softmax averaged), and back to the original geometry. The networks run in torch
(``backend="torch"``) or as exported ONNX graphs in ONNX Runtime (``backend="onnx"``, a CPU in
fp32; ``inference/onnx_backend.py``), in which case torch is not imported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

import numpy as np

from autoseg.imageio import ImageGeometry

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

@dataclass
class Predictor:
    networks: list
    plans: object
    configuration: object  # ConfigurationPlan
    device: "torch.device | str"  # "cpu" with the onnx backend
    step_size: float = 0.5
    mirror: bool = True
    train_config: object = None  # TrainConfig of the first fold
    previous: Optional["Predictor"] = None  # cascade: the stage that runs first and feeds its mask in
    precision: str = "fp32"  # resolved (autoseg.device.resolve_precision)
    backend: str = "torch"  # or "onnx": networks are onnx_backend.OnnxNetwork
    onnx_records: list = field(default_factory=list)  # onnx: each fold's export record
    _forwards: Optional[list] = field(default=None, init=False, repr=False)  # built by forwards()

    @classmethod
    def from_folds(cls, fold_dirs: list[Path], checkpoint: str = "checkpoint_final", device="cpu",
                   step_size: float = 0.5, mirror: bool = True, precision: str = "auto",
                   backend: str = "torch") -> "Predictor":
        if backend == "onnx":
            return cls._from_onnx(fold_dirs, checkpoint, step_size, mirror)
        import torch

        from autoseg.device import resolve_precision, usable_cpus
        from autoseg.training.checkpoint import load_trained_model

        device = torch.device(device)
        if device.type == "cpu":
            torch.set_num_threads(usable_cpus())
        models = [load_trained_model(d, checkpoint, device) for d in fold_dirs]
        first = models[0]
        return cls([m.network for m in models], first.plans, first.configuration, device, step_size, mirror,
                   first.train_config, precision=resolve_precision(precision, device))

    @classmethod
    def _from_onnx(cls, fold_dirs: list[Path], checkpoint: str, step_size: float, mirror: bool) -> "Predictor":
        from autoseg.inference.onnx_backend import load_onnx_network
        from autoseg.plans import load_plans
        from autoseg.training.train_config import load_train_config

        loaded = [load_onnx_network(Path(d), checkpoint) for d in fold_dirs]
        first = Path(fold_dirs[0])
        plans = load_plans(first / "plans.json")
        configuration = plans.configuration(loaded[0][1]["configuration"])
        train_config = load_train_config(first / "train_config.json")
        return cls([net for net, _ in loaded], plans, configuration, "cpu", step_size, mirror, train_config,
                   precision="fp32", backend="onnx", onnx_records=[info for _, info in loaded])

    def onnx_extra_seconds_per_pass(self) -> float:
        """How much slower one patch runs through all folds in ONNX Runtime than in torch, from the
        timings in the export records (onnx backend only)."""
        return sum(r["onnx_seconds_per_pass"] - r["torch_seconds_per_pass"] for r in self.onnx_records)

    def forwards(self) -> list:
        """The networks as inference callables (``fast_forward.inference_forward``), built once."""
        if self.backend == "onnx":
            return self.networks
        if self._forwards is None:
            from autoseg.inference.fast_forward import inference_forward

            self._forwards = [_watched(inference_forward(net, self.precision, self.device)) for net in self.networks]
        return self._forwards

    def predict_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """Probabilities (K, z, y, x) at the preprocessed spacing (softmax, or one sigmoid map per
        region for a region-based model), averaged over folds."""
        from autoseg.inference.sliding_window import predict_volume, predict_volume_numpy

        args = (data, self.configuration.patch_size, self.plans.num_classes, self.step_size, self.mirror)
        total = None
        for forward in self.forwards():
            sigmoid = self.plans.regions is not None
            if self.backend == "onnx":
                p = predict_volume_numpy(forward, *args, sigmoid=sigmoid)
            else:
                p = predict_volume(forward, *args, self.device, sigmoid=sigmoid).float().cpu().numpy()
            total = p if total is None else total + p
        return total / len(self.networks)

    def predict_case(self, image: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
        """Label map (Z, Y, X) and probabilities (K, Z, Y, X) in the image's own geometry.

        A cascade stage first runs ``previous`` on the image and adds its segmentation, put on
        this configuration's grid, as one-hot input channels (as in training).
        """
        from autoseg.inference.overlap import prepare_case, run_networks, stages_of
        from autoseg.preprocess.preprocessor import export_to_original

        [(probs, props)] = run_networks([self], prepare_case(image, geometry, stages_of([self])))
        return export_to_original(probs, props, self.plans, self.configuration.name)


_WATCHDOG = None


def _watched(forward):
    """``forward`` under the process's forward-pass watchdog (``training.speed.StepWatchdog``, one
    thread for every predictor): a pass that never returns ends the process with a message after
    max(900 s, 200x the typical pass), never waited for."""
    import time

    global _WATCHDOG
    if _WATCHDOG is None:
        from autoseg.training.speed import StepWatchdog

        _WATCHDOG = StepWatchdog(logger=log, what="forward pass", advice=StepWatchdog.PREDICT_ADVICE).__enter__()
    dog = _WATCHDOG

    def run(x):
        dog.step_started()
        started = time.perf_counter()
        try:
            return forward(x)
        finally:
            dog.step_done(time.perf_counter() - started)

    return run
