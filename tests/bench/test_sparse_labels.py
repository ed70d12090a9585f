"""bench/data/make_sparse_labels.py: which slices stay annotated."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "data"))

from make_sparse_labels import kept_slices, sparsify  # noqa: E402


def test_a_tenth_of_the_slices_evenly_spaced_at_least_one():
    rng = np.random.default_rng(0)
    kept = kept_slices(36, 0.1, rng)  # round(3.6) = 4 slices, 9 apart
    assert len(kept) == 4 and set(np.diff(kept)) == {9} and 0 <= kept[0] < 9
    assert len(kept_slices(3, 0.1, rng)) == 1


def test_every_other_slice_becomes_the_ignore_value():
    label = np.arange(4 * 2 * 2).reshape(4, 2, 2) % 3
    out = sparsify(label, np.array([1, 3]), ignore=3)
    assert np.array_equal(out[[1, 3]], label[[1, 3]]) and np.all(out[[0, 2]] == 3)
