"""Simulated low resolution as per-axis matrix products (autoseg/training/low_resolution.py)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from autoseg.training.augmentation import AugmentationConfig, build_transforms
from autoseg.training.low_resolution import LowResolutionTransform, resize_matrix, simulate_low_resolution


@pytest.mark.parametrize("shape, ignore_axes", [((20, 28, 20), None), ((6, 28, 20), (0,)), ((28, 20), None)])
def test_same_draws_and_same_batches_as_batchgenerators(shape, ignore_axes):
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform

    rng = np.random.default_rng(0)
    data = gaussian_filter(rng.normal(size=(4, 2, *shape)), (0, 0) + (1.5,) * len(shape)).astype(np.float32)
    theirs = SimulateLowResolutionTransform((0.5, 1), per_channel=True, p_per_channel=0.5, order_downsample=0,
                                            order_upsample=3, p_per_sample=0.6, ignore_axes=ignore_axes)
    ours = LowResolutionTransform((0.5, 1), p_per_channel=0.5, order_downsample=0, order_upsample=3,
                                  p_per_sample=0.6, ignore_axes=ignore_axes)
    changed = 0
    for seed in range(4):
        np.random.seed(seed)
        expected = theirs(data=data.copy())["data"]
        after_theirs = np.random.uniform()
        np.random.seed(seed)
        got = ours(data=data.copy())["data"]
        assert np.random.uniform() == after_theirs
        assert np.abs(got - expected).max() < 1e-6
        changed += int(np.abs(got - data).max() > 1e-3)
    assert changed >= 2  # the comparison covers channels that were changed


def test_resize_matrices_by_hand():
    # nearest, 4 -> 2 voxels with grid_mode: output centres at input positions 0.5 and 2.5, rounded up
    assert resize_matrix(4, 2, 0).tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]
    # linear, 2 -> 4: output centres at -0.25, 0.25, 0.75, 1.25; edge extension outside
    assert np.allclose(resize_matrix(2, 4, 1), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    assert np.allclose(resize_matrix(5, 5, 3), np.eye(5))


def test_enlarged_result_is_clipped_to_the_shrunken_range():
    x = np.zeros((8, 8))
    x[3:5, 3:5] = 1.0
    x[0, 0] = 5.0  # not kept by the 8 -> 4 nearest shrink (it keeps voxels 1, 3, 5, 7)
    out = simulate_low_resolution(x, (4, 4), order_down=0, order_up=3)
    assert out.max() <= 1.0 and out.min() >= 0.0
    assert np.array_equal(simulate_low_resolution(x, (8, 8)), x)  # no shrink: unchanged


def test_augmentation_uses_it_unless_batchgenerators_is_asked_for():
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform

    names = [type(t).__name__ for t in build_transforms(AugmentationConfig(), (12, 12, 12)).transforms]
    assert "LowResolutionTransform" in names and "SimulateLowResolutionTransform" not in names
    theirs = build_transforms(AugmentationConfig(order_data=1, backend="batchgenerators"), (12, 12, 12)).transforms
    assert any(isinstance(t, SimulateLowResolutionTransform) for t in theirs)
    assert type(theirs[0]).__name__ == "SpatialTransform"
    with pytest.raises(ValueError, match="augmentation.backend must be one of auto, batchgenerators, found 'scipy'"):
        AugmentationConfig(backend="scipy")
