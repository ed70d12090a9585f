"""Region-based labels (nnU-Net v2): label map -> region masks -> label map."""
import numpy as np
import pytest

from autoseg.labels import is_region_based, labels_to_regions, region_values, regions_to_labels

BRATS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def test_the_regions_of_a_brats_dataset_json():
    assert is_region_based(BRATS) and not is_region_based({"background": 0, "a": 1})
    assert region_values(BRATS) == ((1, 2, 3), (2, 3), (3,))
    assert region_values({"background": [0], "a": [1, 2], "ignore": 4}) == ((1, 2),)


def test_nested_regions_there_and_back():
    seg = np.array([0, 1, 2, 3, 2])  # edema, necrosis, enhancing, necrosis
    masks = labels_to_regions(seg, region_values(BRATS))
    assert masks.tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0]]
    assert regions_to_labels(masks.astype(float), [1, 2, 3]).tolist() == seg.tolist()


def test_probabilities_at_one_half_and_the_later_region_winning():
    probs = np.array([[0.9, 0.9, 0.6, 0.4],   # whole tumor
                      [0.2, 0.7, 0.8, 0.9],   # tumor core: voxel 3 above 0.5 although whole is not
                      [0.1, 0.3, 0.51, 0.5]])  # enhancing: only voxel 2 exceeds 0.5 (0.5 does not)
    assert regions_to_labels(probs, [1, 2, 3]).tolist() == [1, 2, 3, 2]
    # the order decides where regions overlap: written last, "whole tumor" (1) covers voxels 0-2
    assert regions_to_labels(probs[::-1], [3, 2, 1]).tolist() == [1, 1, 1, 2]


def test_overlapping_regions_that_are_not_nested():
    # A = {1, 2}, B = {2, 3}: value 2 lies in both, so the way back writes B's class over it
    masks = labels_to_regions(np.array([1, 2, 3, 0]), [(1, 2), (2, 3)])
    assert masks.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    assert regions_to_labels(masks, [1, 3]).tolist() == [1, 3, 3, 0]
    with pytest.raises(ValueError, match="2 region maps but regions_class_order has 3 entries"):
        regions_to_labels(masks, [1, 2, 3])
