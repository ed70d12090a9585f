"""The label values of a dataset, read from ``dataset.json``'s ``labels`` as nnU-Net v2 reads them.

``labels`` maps a name to an integer value, background 0. A label named exactly ``ignore`` (nnU-Net
v2's rule) marks voxels that carry no annotation (sparse annotation: a few labelled slices,
scribbles, partly labelled sets); it must have the highest value. Those voxels take no part in the
loss, the metrics or the postprocessing learning, and the network has no output channel for them,
so it never predicts that value. Every other value is a class the network learns.

Region-based labels (a name mapped to a list of values) are parsed and converted here
(``region_values``, ``labels_to_regions``, ``regions_to_labels``); training on them is not built yet.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

IGNORE_NAME = "ignore"


def ignore_value(labels: Mapping[str, int]) -> Optional[int]:
    """The value of the label named ``ignore``, or None."""
    return labels.get(IGNORE_NAME)


def class_values(labels: Mapping[str, int]) -> tuple[int, ...]:
    """The values the network learns, background included, ascending (the ignore value left out)."""
    ignore = ignore_value(labels)
    return tuple(sorted(v for v in labels.values() if v != ignore))


def foreground_values(labels: Mapping[str, int]) -> tuple[int, ...]:
    """The classes other than background, ascending (the ignore value left out)."""
    return tuple(v for v in class_values(labels) if v != 0)


def num_outputs(labels: Mapping[str, int]) -> int:
    """Output channels of the network: the highest class value + 1 (never the ignore value)."""
    return max(class_values(labels)) + 1


def ignore_problems(labels: Mapping[str, int]) -> list[str]:
    """What breaks nnU-Net v2's ignore-label rule in ``labels`` (name -> integer value), one line each."""
    ignore = ignore_value(labels)
    if ignore is None:
        return []
    others = {k: v for k, v in labels.items() if k != IGNORE_NAME}
    problems = []
    if ignore == 0:
        problems.append("dataset.json: the 'ignore' label has value 0, which is background; give it the highest "
                        f"value, e.g. \"ignore\": {max(others.values(), default=0) + 1}")
    elif others and ignore < max(others.values()):
        highest = max(others, key=others.get)
        problems.append(f"dataset.json: the 'ignore' label must have the highest value (nnU-Net v2's rule); found "
                        f"\"ignore\": {ignore} below \"{highest}\": {others[highest]}; renumber it to "
                        f"{max(others.values()) + 1} in dataset.json and in the label files")
    if len(others) < 2:
        problems.append("dataset.json: a dataset with an 'ignore' label needs background and at least one class "
                        f"besides it; found {dict(labels)}")
    return problems


# Region-based labels (nnU-Net v2): a name maps to a list of label values, e.g. BraTS's
# {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3} with
# "regions_class_order": [1, 2, 3]. Each region is trained as its own sigmoid output on the mask of
# its values; a prediction is turned back into a label map by writing regions_class_order[k] where
# region k's probability exceeds 0.5, later regions over earlier ones. The conversions below are
# those two steps; the rest of the pipeline does not train regions yet (autoseg.dataset refuses them).

def is_region_based(labels: Mapping[str, object]) -> bool:
    """Whether any label of ``labels`` maps to a list of values (a region)."""
    return any(isinstance(v, (list, tuple)) for v in labels.values())


def region_values(labels: Mapping[str, object]) -> tuple[tuple[int, ...], ...]:
    """Each region's label values, in the order of ``labels``, background and ignore left out:
    the BraTS example above gives ((1, 2, 3), (2, 3), (3,))."""
    out = []
    for name, value in labels.items():
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if name != IGNORE_NAME and values not in ((0,), ()):
            out.append(tuple(int(v) for v in values))
    return tuple(out)


def labels_to_regions(seg: np.ndarray, regions: Sequence[Sequence[int]]) -> np.ndarray:
    """A label map (any shape) -> one boolean mask per region, stacked first: region k is where
    ``seg`` holds one of its values (regions may overlap)."""
    return np.stack([np.isin(seg, list(r)) for r in regions])


def regions_to_labels(maps: np.ndarray, regions_class_order: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Region probabilities or masks (K, ...) -> a label map: ``regions_class_order[k]`` where map k
    exceeds ``threshold``, written in order, so a later region overwrites an earlier one."""
    if len(maps) != len(regions_class_order):
        raise ValueError(f"{len(maps)} region maps but regions_class_order has {len(regions_class_order)} entries")
    out = np.zeros(maps.shape[1:], np.uint8 if max(regions_class_order, default=0) < 256 else np.int16)
    for k, value in enumerate(regions_class_order):
        out[maps[k] > threshold] = value
    return out
