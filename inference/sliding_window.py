"""Sliding-window prediction with Gaussian importance weighting and mirror test-time augmentation.

``sliding_window_predict`` works with any ``predictor(x (B, C, *patch)) -> logits (B, K, *patch)``:
tiles overlap by ``1 - step_size`` of the patch, each tile's logits are weighted by a Gaussian
centred on the tile (sigma = patch / 8, so the less reliable borders count less), summed,
divided by the summed weights, and turned into probabilities by a softmax (by a sigmoid per output
for region-based models: the logits are averaged, then each turned into its probability). Images smaller
than the patch are padded and cropped back.

Two implementations of the same computation: in torch (on any device; training's validation and
the torch backend of predict) and in numpy (``*_numpy``: the ONNX Runtime backend, so that a CPU
prediction never imports torch). Both take their tiles, padding and weights from the helpers here.

Example: an axis of 100 voxels with a 40-voxel patch and step 0.5 gets tiles starting at
0, 20, 40, 60 (``tile_starts(100, 40, 0.5)``).
"""
from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

Predictor = Callable[["torch.Tensor"], "torch.Tensor"]
NumpyPredictor = Callable[[np.ndarray], np.ndarray]


def tile_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Start offsets along one axis: evenly spread, at most ``step_size * patch`` apart, covering."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step_size)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def gaussian_importance_numpy(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """A separable float32 Gaussian over the patch, max 1, centred, never exactly 0."""
    g = np.ones((), np.float32)
    for p in patch:
        x = np.arange(p, dtype=np.float32) - np.float32((p - 1) / 2)
        g1 = np.exp(np.float32(-0.5) * (x / np.float32(p * sigma_scale)) ** 2)
        g = g[..., None] * g1
    g = g / g.max()
    # Only guard against exact zeros: a floor such as 1e-3 would flatten the weights of voxels
    # that lie near a tile edge in every tile covering them (image borders and corners).
    return np.maximum(g, np.finfo(np.float32).tiny).astype(np.float32)


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """``gaussian_importance_numpy`` as a torch tensor."""
    import torch

    return torch.from_numpy(gaussian_importance_numpy(patch, sigma_scale))


def _padding(spatial: Sequence[int], patch: Sequence[int]) -> list[int]:
    """Voxels to add per axis so that the image is at least one patch (half before, half after)."""
    return [max(0, p - s) for p, s in zip(patch, spatial)]


def _tile_slices(shape: Sequence[int], patch: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    starts = [tile_starts(s, p, step_size) for s, p in zip(shape, patch)]
    return [tuple(slice(o, o + p) for o, p in zip(t, patch)) for t in itertools.product(*starts)]


def _unpad(spatial: Sequence[int], pad: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))


def _mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _blend_tiles(predictor, x, tiles, combos, weight, acc, norm, batch_size: int, stack, zeros, flip) -> None:
    """The loop both implementations share, on torch tensors or numpy arrays alike: ``batch_size``
    tiles at a time, the prediction of every mirror copy flipped back and averaged, each tile's
    logits added to ``acc`` with ``weight`` and the weights to ``norm``; then ``acc /= norm``.
    ``stack(list)``, ``zeros(n)`` (logits of n tiles) and ``flip(array, axes)`` are the library's."""
    for i in range(0, len(tiles), batch_size):
        slices = tiles[i:i + batch_size]
        batch = stack([x[(slice(None),) + s] for s in slices])
        logits = zeros(len(slices))
        for combo in combos:
            axes = tuple(a + 2 for a in combo)
            out = predictor(flip(batch, axes) if axes else batch)
            logits += flip(out, axes) if axes else out
        logits /= len(combos)
        for s, lg in zip(slices, logits):
            acc[(slice(None),) + s] += lg * weight
            norm[s] += weight
    acc /= norm


def sliding_window_logits(predictor: Predictor, data: np.ndarray | torch.Tensor, patch_size: Sequence[int],
                          num_classes: int, step_size: float = 0.5, gaussian: bool = True,
                          mirror_axes: Sequence[int] = (), device: str | torch.device = "cpu",
                          batch_size: int = 1) -> torch.Tensor:
    """Averaged logits (K, *spatial) of ``data`` (C, *spatial); ``mirror_axes`` index spatial axes."""
    import torch

    with torch.inference_mode():
        return _sliding_window_logits_torch(predictor, data, patch_size, num_classes, step_size, gaussian,
                                            mirror_axes, device, batch_size)


def _sliding_window_logits_torch(predictor, data, patch_size, num_classes, step_size, gaussian, mirror_axes,
                                 device, batch_size):
    import torch

    x = torch.as_tensor(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, dtype=torch.float32)
    spatial = tuple(x.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    pad = _padding(spatial, patch)
    if any(pad):
        pad_arg = []
        for p in reversed(pad):
            pad_arg += [p // 2, p - p // 2]
        x = torch.nn.functional.pad(x, pad_arg)
    shape = tuple(x.shape[1:])
    x = x.to(device)
    weight = gaussian_importance(patch).to(device) if gaussian else torch.ones(patch, device=device)
    acc = torch.zeros((num_classes,) + shape, dtype=torch.float32, device=device)
    norm = torch.zeros(shape, dtype=torch.float32, device=device)
    tiles = _tile_slices(shape, patch, step_size)
    combos = _mirror_combinations(mirror_axes)
    _blend_tiles(lambda t: predictor(t).float(), x, tiles, combos, weight, acc, norm, batch_size, torch.stack,
                 lambda n: torch.zeros((n, num_classes) + patch, dtype=torch.float32, device=device),
                 lambda t, axes: torch.flip(t, axes))
    if any(pad):
        acc = acc[(slice(None),) + _unpad(spatial, pad)]
    return acc


def sliding_window_predict(predictor: Predictor, data, patch_size, num_classes: int, step_size: float = 0.5,
                           gaussian: bool = True, mirror_axes: Sequence[int] = (),
                           device: str | torch.device = "cpu", batch_size: int = 1,
                           sigmoid: bool = False) -> torch.Tensor:
    """Softmax probabilities (K, *spatial) for ``data`` (C, *spatial), or with ``sigmoid`` (region
    outputs) each output's own probability; see the module docstring."""
    logits = sliding_window_logits(predictor, data, patch_size, num_classes, step_size, gaussian, mirror_axes,
                                   device, batch_size)
    import torch

    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 0)


def predict_volume(predictor: Predictor, data, patch_size, num_classes: int, step_size: float = 0.5,
                   mirror: bool = True, device: str | torch.device = "cpu",
                   mirror_axes: Sequence[int] | None = None, sigmoid: bool = False) -> torch.Tensor:
    """Probabilities for a (C, Z, Y, X) volume with a 3D patch, or slice by slice with a 2D one;
    ``mirror``: test-time mirroring along ``mirror_axes`` (axes of the patch; None: every axis);
    ``sigmoid``: region outputs (``sliding_window_predict``)."""
    mirror_axes = (tuple(range(len(patch_size))) if mirror_axes is None else tuple(mirror_axes)) if mirror else ()
    if len(patch_size) == 3:
        return sliding_window_predict(predictor, data, patch_size, num_classes, step_size, True, mirror_axes, device,
                                      sigmoid=sigmoid)
    import torch

    x = torch.as_tensor(data, dtype=torch.float32)
    out = torch.empty((num_classes,) + tuple(x.shape[1:]), dtype=torch.float32)
    for z in range(x.shape[1]):
        out[:, z] = sliding_window_predict(predictor, x[:, z], patch_size, num_classes, step_size, True,
                                           mirror_axes, device, batch_size=4, sigmoid=sigmoid).cpu()
    return out


def sliding_window_logits_numpy(predictor: NumpyPredictor, data: np.ndarray, patch_size: Sequence[int],
                                num_classes: int, step_size: float = 0.5, gaussian: bool = True,
                                mirror_axes: Sequence[int] = (), batch_size: int = 1) -> np.ndarray:
    """``sliding_window_logits`` in numpy, for a ``predictor`` from and to float32 arrays."""
    x = np.asarray(data, dtype=np.float32)
    spatial = tuple(x.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    pad = _padding(spatial, patch)
    if any(pad):
        x = np.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pad])
    shape = tuple(x.shape[1:])
    weight = gaussian_importance_numpy(patch) if gaussian else np.ones(patch, np.float32)
    acc = np.zeros((num_classes,) + shape, np.float32)
    norm = np.zeros(shape, np.float32)
    tiles = _tile_slices(shape, patch, step_size)
    combos = _mirror_combinations(mirror_axes)
    _blend_tiles(predictor, x, tiles, combos, weight, acc, norm, batch_size, np.stack,
                 lambda n: np.zeros((n, num_classes) + patch, np.float32),
                 lambda a, axes: np.ascontiguousarray(np.flip(a, axes)))
    if any(pad):
        acc = acc[(slice(None),) + _unpad(spatial, pad)]
    return acc


def softmax_numpy(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(logits - logits.max(axis, keepdims=True))
    e /= e.sum(axis, keepdims=True)
    return e


def sigmoid_numpy(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32, copy=False)


def predict_volume_numpy(predictor: NumpyPredictor, data: np.ndarray, patch_size, num_classes: int,
                         step_size: float = 0.5, mirror: bool = True, sigmoid: bool = False) -> np.ndarray:
    """``predict_volume`` in numpy: float32 probabilities (K, Z, Y, X), slice by slice with a 2D patch."""
    mirror_axes = tuple(range(len(patch_size))) if mirror else ()
    activation = sigmoid_numpy if sigmoid else softmax_numpy
    if len(patch_size) == 3:
        return activation(sliding_window_logits_numpy(predictor, data, patch_size, num_classes, step_size,
                                                      True, mirror_axes))
    x = np.asarray(data, dtype=np.float32)
    out = np.empty((num_classes,) + tuple(x.shape[1:]), np.float32)
    for z in range(x.shape[1]):
        out[:, z] = activation(sliding_window_logits_numpy(predictor, x[:, z], patch_size, num_classes,
                                                           step_size, True, mirror_axes, batch_size=4))
    return out
