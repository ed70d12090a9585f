"""Trained models from Python: load once, then segment arrays, SimpleITK images, files or folders
without writing anything.

    from autoseg.inference.api import load_model

    model = load_model("WS", dataset=4)          # what find_best_config selected, with its postprocessing
    model = load_model("Hippocampus_model.zip")  # an exported model (autoseg export_model)
    result = model.predict(array, spacing=(1.0, 1.0, 1.0))      # array (Z, Y, X) or (C, Z, Y, X)
    result.labels, result.probabilities                           # probabilities only if asked for
    result = model.predict(sitk_image)           # or a list of per-channel SimpleITK images
    result.as_sitk()                             # the labels with the input's geometry
    for case_id, result in model.predict_folder("imagesTs"):     # one case at a time
        ...

The computation is the one ``autoseg predict`` runs (``predict.segment``): the same preprocessing,
sliding window, fold and configuration averaging and postprocessing, so the labels are the CLI's
voxel for voxel. Arrays are taken in the array order of ``autoseg.imageio`` (z, y, x) with
``spacing`` in mm in that order; an array without spacing is refused rather than guessed.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from autoseg.errors import UserFacingError
from autoseg.imageio import ImageGeometry, natural_2d_geometry

IDENTITY_3D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # (Z, Y, X) uint8, the input's grid
    geometry: ImageGeometry
    probabilities: Optional[np.ndarray] = None  # (K, Z, Y, X) float32 when asked for

    def as_sitk(self):
        """The labels as a SimpleITK image with the input's spacing, origin and direction."""
        from autoseg.imageio import to_sitk

        return to_sitk(self.labels, self.geometry)


class Model:
    """A loaded model: one or more configurations (an ensemble), their folds and postprocessing."""

    def __init__(self, predictors: list, postprocessing=None, workspace_copy: Optional[Path] = None):
        self.predictors, self.postprocessing = predictors, postprocessing
        self._workspace_copy = workspace_copy  # an unpacked model zip, removed by close()

    @property
    def plans(self):
        return self.predictors[0].plans

    @property
    def num_channels(self) -> int:
        return len(self.plans.channel_names)

    def predict(self, image, spacing: Optional[Sequence[float]] = None, probabilities: bool = False) -> Prediction:
        """Segment one case: a numpy array (``(Z, Y, X)`` for one channel, ``(C, Z, Y, X)``; a 2D
        picture ``(Y, X)``) with ``spacing`` (z, y, x) in mm (not for a 2D picture), a SimpleITK
        image, or a list of SimpleITK images (one per channel)."""
        return self._segment(*self._as_case(image, spacing), probabilities)

    def _segment(self, data: np.ndarray, geometry: ImageGeometry, probabilities: bool) -> Prediction:
        from autoseg.inference.predict import segment

        if data.shape[0] != self.num_channels:
            raise UserFacingError(f"{data.shape[0]} channel(s) given, the model expects {self.num_channels} "
                                  f"({', '.join(self.plans.channel_names)}), channels first")
        labels, probs = segment(self.predictors, data, geometry, self.postprocessing)
        return Prediction(labels, geometry, probs if probabilities else None)

    def predict_files(self, cases: Iterable, probabilities: bool = False) -> Iterator[Prediction]:
        """Segment each case of ``cases`` (a file, or a list of its channel files), one at a time."""
        from autoseg.imageio import read_image

        for case in cases:
            files = [case] if isinstance(case, (str, Path)) else list(case)
            yield self._segment(*read_image(files), probabilities)

    def predict_folder(self, folder, probabilities: bool = False) -> Iterator[tuple[str, Prediction]]:
        """(case id, prediction) for each case of ``folder`` (``{case}_{XXXX}{ending}`` files, as
        ``autoseg predict -i`` reads them), in case-id order; a case with missing channels raises."""
        from autoseg.inference.predict import input_cases_for

        for case in input_cases_for(Path(folder), self.plans):
            if case.problem:
                raise UserFacingError(f"case {case.case_id}: {case.problem}")
            yield case.case_id, next(self.predict_files([case.files], probabilities))

    def _as_case(self, image, spacing) -> tuple[np.ndarray, ImageGeometry]:
        """(C, Z, Y, X) float32 data and its geometry."""
        from autoseg.imageio import from_sitk

        if isinstance(image, np.ndarray):
            data, geometry = _array_case(image, spacing)
        else:
            images = image if isinstance(image, (list, tuple)) else [image]
            if not all(hasattr(i, "GetSpacing") for i in images):
                raise UserFacingError(f"predict takes numpy arrays or SimpleITK images; found {type(image).__name__}")
            read = [from_sitk(i, f"SimpleITK image {k}") for k, i in enumerate(images)]
            if len({r[1].shape for r in read}) > 1:
                raise UserFacingError(f"the channel images differ in shape: {[r[1].shape for r in read]}")
            data, geometry = np.concatenate([r[0] for r in read]).astype(np.float32), read[0][1]
        return data, geometry

    def close(self) -> None:
        """Remove the unpacked copy of a model zip (nothing else is held on disk)."""
        if self._workspace_copy is not None:
            shutil.rmtree(self._workspace_copy, ignore_errors=True)
            self._workspace_copy = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _array_case(array: np.ndarray, spacing) -> tuple[np.ndarray, ImageGeometry]:
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise UserFacingError("the image array must hold finite numbers (no NaN or inf)")
    if array.ndim == 2:  # a 2D picture, as autoseg.imageio reads a PNG
        if spacing is not None:
            raise UserFacingError("a 2D (Y, X) array is a picture without spacing; pass spacing=None, or give a "
                                  "(1, Y, X) array with a 3-entry spacing for a 2D medical slice")
        return array[None, None].astype(np.float32), natural_2d_geometry(*array.shape)
    if array.ndim not in (3, 4):
        raise UserFacingError(f"expected an array (Z, Y, X) or (C, Z, Y, X), found shape {array.shape}")
    if spacing is None or len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UserFacingError(f"an image array needs its spacing: three positive numbers (z, y, x) in mm, as "
                              f"the array's axes; found {spacing!r}")
    data = array[None] if array.ndim == 3 else array
    geometry = ImageGeometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), IDENTITY_3D, tuple(data.shape[1:]))
    return data.astype(np.float32), geometry


def load_model(source, dataset=None, configurations: Optional[Sequence[str]] = None, folds=None,
               checkpoint: str = "checkpoint_final", variant: str = "default", device: str = "auto",
               tta: bool = True, step_size: float = 0.5, precision: str = "auto", backend: str = "torch",
               postprocess: bool = True) -> Model:
    """Load a model once: ``source`` a workspace root (then ``dataset``: its id or name) or a model
    zip written by ``autoseg export_model`` (unpacked into a temporary folder until ``close()``;
    ``dataset`` may be left out when the zip holds one). Without ``configurations`` the selection of
    ``find_best_config`` is used, with its postprocessing (``postprocess=False`` leaves it out)."""
    from autoseg.device import pick_device
    from autoseg.inference.predict import load_predictor, selected_model
    from autoseg.paths import Workspace

    source = Path(source)
    copy = None
    if source.is_file():
        from autoseg.inference.model_archive import import_model

        copy = Path(tempfile.mkdtemp(prefix="autoseg_model_"))
        try:
            import_model(source, Workspace(copy))
        except BaseException:
            shutil.rmtree(copy, ignore_errors=True)
            raise
        source = copy
    elif not source.is_dir():
        raise UserFacingError(f"{source} is neither a workspace folder nor a model zip")
    try:
        ws = Workspace(source)
        if dataset is None:
            names = sorted(p.name for p in ws.results.iterdir()) if ws.results.is_dir() else []
            if len(names) != 1:
                raise UserFacingError(f"{source} holds the models of {names or 'no dataset'}; say which with dataset=")
            dataset = names[0]
        name = ws.dataset_name(str(dataset))
        configurations, variant, checkpoint, folds, postprocessing = selected_model(ws, name, configurations,
                                                                                    variant, folds, checkpoint)
        dev = "cpu" if backend == "onnx" else pick_device(device)
        predictors = [load_predictor(ws, name, c, variant, folds, checkpoint, dev, step_size, tta, precision, backend)
                      for c in configurations]
    except BaseException:
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
        raise
    return Model(predictors, postprocessing if postprocess else None, copy)
