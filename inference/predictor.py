"""A trained configuration (one or more folds) that predicts whole cases.

Models are loaded once; each case goes through the training preprocessing, the sliding window
(every fold, softmax averaged), and back to the original geometry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from autoseg.imageio import ImageGeometry


@dataclass
class Predictor:
    networks: list
    plans: object
    configuration: object  # ConfigurationPlan
    device: torch.device
    step_size: float = 0.5
    mirror: bool = True
    train_config: object = None  # TrainConfig of the first fold
    previous: Optional["Predictor"] = None  # cascade: the stage that runs first and feeds its mask in
    precision: str = "fp32"  # resolved (autoseg.device.resolve_precision)
    _forwards: Optional[list] = field(default=None, init=False, repr=False)  # built by forwards()

    @classmethod
    def from_folds(cls, fold_dirs: list[Path], checkpoint: str = "checkpoint_final", device="cpu",
                   step_size: float = 0.5, mirror: bool = True, precision: str = "auto") -> "Predictor":
        from autoseg.device import resolve_precision
        from autoseg.training.checkpoint import load_trained_model

        device = torch.device(device)
        if device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        models = [load_trained_model(d, checkpoint, device) for d in fold_dirs]
        first = models[0]
        return cls([m.network for m in models], first.plans, first.configuration, device, step_size, mirror,
                   first.train_config, precision=resolve_precision(precision, device))

    def forwards(self) -> list:
        """The networks as inference callables (``fast_forward.inference_forward``), built once."""
        if self._forwards is None:
            from autoseg.inference.fast_forward import inference_forward

            self._forwards = [inference_forward(net, self.precision, self.device) for net in self.networks]
        return self._forwards

    def predict_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """Softmax (K, z, y, x) at the preprocessed spacing, averaged over folds."""
        from autoseg.inference.sliding_window import predict_volume

        total = None
        for forward in self.forwards():
            p = predict_volume(forward, data, self.configuration.patch_size,
                               self.plans.num_classes, self.step_size, self.mirror, self.device).float().cpu()
            total = p if total is None else total + p
        return (total / len(self.networks)).numpy()

    def predict_case(self, image: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
        """Label map (Z, Y, X) and probabilities (K, Z, Y, X) in the image's own geometry.

        A cascade stage first runs ``previous`` on the image and adds its segmentation, put on
        this configuration's grid, as one-hot input channels (as in training).
        """
        from autoseg.preprocess.preprocessor import export_to_original, preprocess_case

        data, _, props = preprocess_case(image, geometry, self.plans, self.configuration.name)
        if self.configuration.previous_stage:
            from autoseg.preprocess.previous_stage import one_hot, previous_stage_labels, previous_stage_to_grid

            if self.previous is None:
                raise ValueError(f"{self.configuration.name} needs its previous stage's predictor (previous=...)")
            prev_seg, _ = self.previous.predict_case(image, geometry)
            grid = previous_stage_to_grid(prev_seg, props, self.plans, self.configuration.name)
            data = np.concatenate([data, one_hot(grid, previous_stage_labels(self.plans))])
        probs = self.predict_preprocessed(data)
        return export_to_original(probs, props, self.plans, self.configuration.name)
