"""HD95 and normalised surface Dice on hand-made masks, spacing-aware, with the empty cases."""
import math

import numpy as np
import pytest

from autoseg.postprocess.surface import directed_surface_distances, image_diagonal_mm, surface, surface_metrics

ANISO = (2.0, 1.0, 1.0)  # (z, y, x) mm


def cubes(shift_axis: int, start: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4x4 cube at [start, start+4) on every axis, and the same cube shifted by one voxel."""
    ref = np.zeros((8, 8, 8), bool)
    ref[start:start + 4, start:start + 4, start:start + 4] = True
    pred = np.roll(ref, 1, axis=shift_axis)
    return ref, pred


def counts(d: np.ndarray) -> dict[float, int]:
    values, n = np.unique(d, return_counts=True)
    return {float(v): int(k) for v, k in zip(values, n)}


def test_surface_of_a_cube_is_its_shell():
    ref, _ = cubes(0)
    s = surface(ref)
    assert s.sum() == 64 - 8  # a 4^3 cube minus its 2^3 interior
    assert not s[3:5, 3:5, 3:5].any()


def test_cubes_shifted_along_the_coarse_axis():
    """Shift by one voxel along z (2 mm). Of the 56 surface voxels of each cube, 36 lie on the
    other surface; the 4 interior voxels of the face that enters the other cube are 1 mm (one
    voxel sideways in y or x) from its surface; the 12 rim and 4 interior voxels of the face that
    leaves it are 2 mm (one voxel along z) away. The same holds the other way round."""
    ref, pred = cubes(0)
    d_pred, d_ref = directed_surface_distances(ref, pred, ANISO)
    assert counts(d_pred) == {0.0: 36, 1.0: 4, 2.0: 16}
    assert counts(d_ref) == {0.0: 36, 1.0: 4, 2.0: 16}
    m = surface_metrics(ref, pred, ANISO, nsd_tolerance_mm=1.0)
    assert m["hd95"] == pytest.approx(2.0)  # 16 of 56 distances are 2 mm: the 95th percentile is 2
    assert m["nsd"] == pytest.approx((40 + 40) / 112)  # 5/7
    assert surface_metrics(ref, pred, ANISO, 0.5)["nsd"] == pytest.approx(72 / 112)
    assert surface_metrics(ref, pred, ANISO, 2.0)["nsd"] == pytest.approx(1.0)


def test_cubes_shifted_along_a_fine_axis():
    """The same one-voxel shift along x (1 mm): every non-zero distance is 1 mm."""
    ref, pred = cubes(2)
    d_pred, d_ref = directed_surface_distances(ref, pred, ANISO)
    assert counts(d_pred) == counts(d_ref) == {0.0: 36, 1.0: 20}
    m = surface_metrics(ref, pred, ANISO, 1.0)
    assert m["hd95"] == pytest.approx(1.0) and m["nsd"] == pytest.approx(1.0)
    assert surface_metrics(ref, pred, ANISO, 0.5)["nsd"] == pytest.approx(72 / 112)


def test_the_image_border_counts_as_outside():
    """A cube in the image corner has the same 56-voxel shell and the same distances."""
    ref, pred = cubes(0, start=0)
    d_pred, d_ref = directed_surface_distances(ref, pred, ANISO)
    assert counts(d_pred) == {0.0: 36, 1.0: 4, 2.0: 16}
    assert surface_metrics(ref, pred, ANISO)["hd95"] == pytest.approx(2.0)


def test_identical_masks():
    ref, _ = cubes(0)
    assert surface_metrics(ref, ref, ANISO) == {"hd95": 0.0, "nsd": 1.0}


def test_hd95_ignores_one_stray_voxel_that_the_maximum_would_not():
    """2D 10x10 square (36 surface voxels) and the same plus one voxel 8 mm away from it.
    The prediction's 37 distances are 36 zeros and one 8 mm: the 95th percentile (index 34.2 of
    the sorted list) is 0. NSD counts the stray voxel as the only one out of tolerance."""
    ref = np.zeros((1, 20, 20), bool)
    ref[0, 1:11, 1:11] = True
    pred = ref.copy()
    pred[0, 18, 10] = True  # row 18 vs the square's last row 10: 8 voxels
    d_pred, d_ref = directed_surface_distances(ref, pred, (999.0, 1.0, 1.0))
    assert counts(d_pred) == {0.0: 36, 8.0: 1} and counts(d_ref) == {0.0: 36}
    m = surface_metrics(ref, pred, (999.0, 1.0, 1.0))
    assert m["hd95"] == 0.0
    assert m["nsd"] == pytest.approx(72 / 73)


def test_2d_slice_axis_plays_no_part():
    """Squares of 4x4 shifted by one pixel in one slice of spacing 999: the 999 mm axis is
    dropped. Each outline has 12 pixels; 6 lie on the other, 6 are 1 mm away."""
    ref = np.zeros((1, 8, 8), bool)
    ref[0, 2:6, 2:6] = True
    pred = np.roll(ref, 1, axis=2)
    d_pred, d_ref = directed_surface_distances(ref, pred, (999.0, 0.5, 1.0))
    # the interior entering pixels are 0.5 mm (one row, spacing 0.5) from the other outline
    assert counts(d_pred) == {0.0: 6, 0.5: 2, 1.0: 4}
    m = surface_metrics(ref, pred, (999.0, 0.5, 1.0), 0.5)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["nsd"] == pytest.approx((8 + 8) / 24)
    empty = surface_metrics(ref, np.zeros_like(ref), (999.0, 0.5, 1.0))
    assert empty["hd95"] == pytest.approx(math.sqrt(3.5 ** 2 + 7.0 ** 2))


def test_both_empty_is_undefined():
    empty = np.zeros((8, 8, 8), bool)
    m = surface_metrics(empty, empty, ANISO)
    assert math.isnan(m["hd95"]) and math.isnan(m["nsd"])


def test_one_empty_scores_zero_nsd_and_the_image_diagonal():
    ref, _ = cubes(0)
    empty = np.zeros_like(ref)
    diagonal = math.sqrt((7 * 2.0) ** 2 + 7.0 ** 2 + 7.0 ** 2)  # largest distance between voxel centres
    assert image_diagonal_mm((8, 8, 8), ANISO) == pytest.approx(diagonal)
    for r, p in ((ref, empty), (empty, ref)):
        m = surface_metrics(r, p, ANISO)
        assert m["nsd"] == 0.0 and m["hd95"] == pytest.approx(diagonal)


def test_bad_arguments_are_refused():
    ref, pred = cubes(0)
    with pytest.raises(ValueError, match="differs"):
        surface_metrics(ref, pred[:-1], ANISO)
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(ref, pred, (1.0, 1.0))
    with pytest.raises(ValueError, match=">= 0 mm"):
        surface_metrics(ref, pred, ANISO, -1.0)
