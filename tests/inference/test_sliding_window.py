"""Sliding-window inference with analytic predictors: identity, one-hot, fixed convolutions."""
import numpy as np
import pytest
import torch

from autoseg.inference.sliding_window import (
    gaussian_importance,
    predict_volume,
    predict_volume_numpy,
    sliding_window_logits,
    sliding_window_logits_numpy,
    sliding_window_predict,
    softmax_numpy,
    tile_starts,
)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def test_tile_starts_by_hand():
    assert tile_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert tile_starts(40, 40, 0.5) == [0]  # exactly one patch
    assert tile_starts(10, 40, 0.5) == [0]  # smaller than the patch: padded, one tile
    assert tile_starts(50, 40, 0.5) == [0, 10]  # (50-40)/20 -> 1 step, spread to the end
    assert tile_starts(61, 40, 0.5) == [0, 10, 21]  # 21/20 -> 2 steps of 10.5
    assert tile_starts(100, 40, 1.0) == [0, 30, 60]  # no overlap asked: still must cover


@pytest.mark.parametrize("patch,step", [(8, 0.5), (16, 0.5), (10, 0.2), (12, 0.25)])
def test_tiles_cover_the_axis_and_are_at_most_a_step_apart(patch, step):
    for size in range(1, 80):
        starts = tile_starts(size, patch, step)
        covered = np.zeros(max(size, patch), bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all(), (size, starts)
        assert starts[0] == 0 and starts[-1] == max(0, size - patch)
        assert all(0 < b - a <= step * patch for a, b in zip(starts, starts[1:])), (size, starts)


def test_gaussian_is_centred_with_max_one_and_never_zero():
    g = gaussian_importance((9, 8))
    assert g.shape == (9, 8)
    assert float(g.max()) == pytest.approx(1.0)
    assert float(g.min()) > 0
    # separable: the corner is the product of the edge values, not floored
    assert float(g[0, 0]) == pytest.approx(float(g[0, 3]) * float(g[4, 0]), rel=1e-4)
    assert torch.allclose(g, torch.flip(g, (0,))) and torch.allclose(g, torch.flip(g, (1,)))
    assert float(g[4, 3]) > float(g[4, 0]) > float(g[0, 0])


SIZES_3D = [(6, 5, 7), (8, 8, 8), (13, 9, 19), (20, 17, 11)]


@pytest.mark.parametrize("shape", SIZES_3D)
@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2), (2,)])
def test_identity_predictor_returns_softmax_of_input_3d(shape, gaussian, mirror_axes):
    x = np.random.default_rng(1).normal(size=(3,) + shape).astype(np.float32)
    out = sliding_window_predict(identity, x, (8, 8, 8), 3, 0.5, gaussian, mirror_axes)
    assert tuple(out.shape) == (3,) + shape
    np.testing.assert_allclose(out.numpy(), softmax_np(x), atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7), (16, 16), (23, 18), (40, 9)])
@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("mirror_axes", [(), (0, 1)])
def test_identity_predictor_returns_softmax_of_input_2d(shape, gaussian, mirror_axes):
    x = np.random.default_rng(2).normal(size=(2,) + shape).astype(np.float32)
    out = sliding_window_predict(identity, x, (16, 16), 2, 0.5, gaussian, mirror_axes, batch_size=3)
    np.testing.assert_allclose(out.numpy(), softmax_np(x), atol=1e-5)


def test_one_hot_predictor_reproduces_a_label_map():
    labels = np.random.default_rng(3).integers(0, 4, size=(11, 14, 9))

    def one_hot_logits(x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, *patch) label values
        return 10.0 * torch.nn.functional.one_hot(x[:, 0].long(), 4).movedim(-1, 1).float()

    out = sliding_window_predict(one_hot_logits, labels[None].astype(np.float32), (8, 8, 8), 4,
                                 mirror_axes=(0, 1, 2))
    assert np.array_equal(out.argmax(0).numpy(), labels)
    # softmax of 10 vs 0: e^10 / (e^10 + 3) for the right class
    np.testing.assert_allclose(out.max(0).values.numpy(), np.exp(10) / (np.exp(10) + 3), rtol=1e-5)


def test_batched_tiles_equal_single_tiles():
    x = np.random.default_rng(4).normal(size=(2, 13, 9, 19)).astype(np.float32)
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    a = sliding_window_logits(conv, x, (8, 8, 8), 3, batch_size=1)
    b = sliding_window_logits(conv, x, (8, 8, 8), 3, batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_translation_equivariant_conv_matches_whole_image():
    """A fixed conv with zero padding: tiles agree with the whole image except where a voxel
    lies on a tile's inner edge; the Gaussian gives such a voxel ~1/400 of the weight of a tile
    where it is interior, so the blend is within a small tolerance of the whole-image result.
    With uniform weights (or a weight floor flattening the tile edges) the error is O(0.5)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = np.random.default_rng(5).normal(size=(1, 20, 17, 23)).astype(np.float32)
    with torch.no_grad():
        whole = conv(torch.from_numpy(x)[None])[0]
    tiled = sliding_window_logits(conv, x, (8, 8, 8), 2, 0.5, gaussian=True)
    inner = (slice(None),) + (slice(1, -1),) * 3  # away from the image border
    err = (tiled - whole)[inner].abs().max().item()
    assert err < 2e-2, err
    assert (tiled - whole).abs().max().item() < 2e-2  # the image border is zero-padded in both
    uniform = sliding_window_logits(conv, x, (8, 8, 8), 2, 0.5, gaussian=False)
    assert (uniform - whole).abs().max().item() > 0.1  # the tile edges are what the Gaussian hides


def test_predict_volume_with_a_2d_patch_goes_slice_by_slice():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(2, 3, 1).eval()  # a 1x1 conv: exact, and fails on a 5D input
    x = np.random.default_rng(6).normal(size=(2, 5, 12, 10)).astype(np.float32)
    out = predict_volume(conv2d, x, (8, 8), 3, mirror=True)
    assert tuple(out.shape) == (3, 5, 12, 10)
    with torch.no_grad():
        per_slice = conv2d(torch.from_numpy(x).movedim(1, 0))  # (Z, K, Y, X): each slice alone
    expected = torch.softmax(per_slice, 1).movedim(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_predict_volume_with_a_3d_patch_is_the_sliding_window():
    x = np.random.default_rng(7).normal(size=(2, 9, 12, 10)).astype(np.float32)
    out = predict_volume(identity, x, (8, 8, 8), 2, mirror=True)
    np.testing.assert_allclose(out.numpy(), softmax_np(x), atol=1e-5)


def test_mirroring_averages_the_flipped_predictions():
    """A predictor that is not mirror-equivariant: x -> x + ramp along the last axis.

    Averaging the plain and the x-flipped predictions (flipped back) adds the mean ramp."""
    ramp = torch.arange(8, dtype=torch.float32)

    def biased(x: torch.Tensor) -> torch.Tensor:
        return x + ramp

    x = np.zeros((2, 8, 8, 8), np.float32)
    logits = sliding_window_logits(biased, x, (8, 8, 8), 2, gaussian=False, mirror_axes=(2,))
    np.testing.assert_allclose(logits.numpy(), np.full((2, 8, 8, 8), 3.5, np.float32), atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 5, 7), (13, 9, 19)])
@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2)])
def test_numpy_sliding_window_equals_the_torch_one(shape, mirror_axes):
    """The ONNX backend's numpy implementation: same tiles, padding, weights and mirroring."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()

    def conv_numpy(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return conv(torch.from_numpy(x)).numpy()

    x = np.random.default_rng(8).normal(size=(2,) + shape).astype(np.float32)
    expected = sliding_window_logits(conv, x, (8, 8, 8), 3, 0.5, True, mirror_axes, batch_size=2)
    got = sliding_window_logits_numpy(conv_numpy, x, (8, 8, 8), 3, 0.5, True, mirror_axes, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3,) + shape
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_numpy_predict_volume_goes_slice_by_slice_like_the_torch_one():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(2, 3, 3, padding=1).eval()

    def conv_numpy(x: np.ndarray) -> np.ndarray:
        assert x.ndim == 4  # slices, never the volume
        with torch.no_grad():
            return conv2d(torch.from_numpy(x)).numpy()

    x = np.random.default_rng(9).normal(size=(2, 4, 12, 19)).astype(np.float32)
    expected = predict_volume(conv2d, x, (8, 8), 3, mirror=True).numpy()
    got = predict_volume_numpy(conv_numpy, x, (8, 8), 3, mirror=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_numpy_softmax_by_hand():
    logits = np.array([[0.0, 2.0], [np.log(3.0), 2.0]], np.float32)  # (K=2, 2 voxels)
    np.testing.assert_allclose(softmax_numpy(logits), [[0.25, 0.5], [0.75, 0.5]], rtol=1e-6)
