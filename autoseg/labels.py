"""The label values of a dataset, read from ``dataset.json``'s ``labels`` as nnU-Net v2 reads them.

``labels`` maps a name to an integer value, background 0. A label named exactly ``ignore`` (nnU-Net
v2's rule) marks voxels that carry no annotation (sparse annotation: a few labelled slices,
scribbles, partly labelled sets); it must have the highest value. Those voxels take no part in the
loss, the metrics or the postprocessing learning, and the network has no output channel for them,
so it never predicts that value. Every other value is a class the network learns.

Region-based labels (nnU-Net v2): a name maps to a list of values, and ``regions_class_order``
says which value stands for each region in a label map. Each region is one sigmoid output of the
network, trained and scored on the mask of its values; see ``Regions`` below.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

IGNORE_NAME = "ignore"
LabelValue = Union[int, tuple[int, ...]]  # a label's value in dataset.json: one value, or a region's values


def _values(value) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def all_values(labels: Mapping[str, object]) -> tuple[int, ...]:
    """Every value a label file may hold: background, each label or region member, the ignore value."""
    return tuple(sorted({v for value in labels.values() for v in _values(value)}))


def ignore_value(labels: Mapping[str, int]) -> Optional[int]:
    """The value of the label named ``ignore``, or None."""
    return labels.get(IGNORE_NAME)


def class_values(labels: Mapping[str, object]) -> tuple[int, ...]:
    """The label values other than the ignore value, background included, ascending (with regions:
    every value any region holds)."""
    ignore = ignore_value(labels)
    return tuple(v for v in all_values(labels) if v != ignore)


def foreground_values(labels: Mapping[str, object]) -> tuple[int, ...]:
    """The classes other than background, ascending (the ignore value left out)."""
    return tuple(v for v in class_values(labels) if v != 0)


def num_outputs(labels: Mapping[str, object]) -> int:
    """Output channels of the network: one per region when region-based, else the highest class
    value + 1 (never one for the ignore value)."""
    if is_region_based(labels):
        return len(region_values(labels))
    return max(class_values(labels)) + 1


def ignore_problems(labels: Mapping[str, int]) -> list[str]:
    """What breaks nnU-Net v2's ignore-label rule in ``labels`` (name -> integer value), one line each."""
    ignore = ignore_value(labels)
    if ignore is None:
        return []
    others = {k: max(_values(v)) for k, v in labels.items() if k != IGNORE_NAME}
    problems = []
    if ignore == 0:
        problems.append("dataset.json: the 'ignore' label has value 0, which is background; give it the highest "
                        f"value, e.g. \"ignore\": {max(others.values(), default=0) + 1}")
    elif others and ignore < max(others.values()):
        highest = max(others, key=others.get)
        problems.append(f"dataset.json: the 'ignore' label must have the highest value (nnU-Net v2's rule); found "
                        f"\"ignore\": {ignore} below \"{highest}\": {labels[highest]}; renumber it to "
                        f"{max(others.values()) + 1} in dataset.json and in the label files")
    if len(others) < 2:
        problems.append("dataset.json: a dataset with an 'ignore' label needs background and at least one class "
                        f"besides it; found {dict(labels)}")
    return problems


# Region-based labels (nnU-Net v2): a name maps to a list of label values, e.g. BraTS's
# {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3} with
# "regions_class_order": [1, 2, 3]. Each region is trained as its own sigmoid output on the mask of
# its values; a prediction is turned back into a label map by writing regions_class_order[k] where
# region k's probability exceeds 0.5, later regions over earlier ones.
#
# Everywhere after dataset.json, a region is named by the value written for it (its entry of
# regions_class_order): metrics, postprocessing steps and summaries key regions by that value as
# they key plain labels by theirs, and ``Regions`` pairs each such value with the region's members.

Regions = tuple[tuple[int, tuple[int, ...]], ...]  # (value written for the region, its values), in order


def is_region_based(labels: Mapping[str, object]) -> bool:
    """Whether any label of ``labels`` maps to a list of values (a region)."""
    return any(isinstance(v, (list, tuple)) for v in labels.values())


def _region_items(labels: Mapping[str, object]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, _values(value)) for name, value in labels.items()
            if name != IGNORE_NAME and _values(value) not in ((0,), ())]


def region_values(labels: Mapping[str, object]) -> tuple[tuple[int, ...], ...]:
    """Each region's label values, in the order of ``labels``, background and ignore left out:
    the BraTS example above gives ((1, 2, 3), (2, 3), (3,))."""
    return tuple(values for _, values in _region_items(labels))


def label_names(labels: Mapping[str, object], regions: Optional["Regions"] = None) -> dict[int, str]:
    """The name of each class by its value; a region by the value written for it."""
    if regions is None:
        return {v: k for k, v in labels.items()}
    return {0: "background", **{v: name for (v, _), (name, _) in zip(regions, _region_items(labels))}}


def region_problems(labels: Mapping[str, object], regions_class_order) -> list[str]:
    """What keeps ``labels`` with ``regions_class_order`` (dataset.json) from being trained as
    regions, one line each; [] for plain labels without an order."""
    if not is_region_based(labels):
        if regions_class_order is not None:
            return ["dataset.json: 'regions_class_order' is given but no label maps to a list of values; remove "
                    "it, or write the regions as lists (e.g. \"tumor core\": [2, 3])"]
        return []
    regions = region_values(labels)
    example = ", ".join(str(r[-1]) for r in regions)
    if regions_class_order is None:
        return [f"dataset.json: region-based labels (a name mapped to a list of values) need "
                f"'regions_class_order', the value written for each region in a label map, one per region in "
                f"the order of 'labels', e.g. \"regions_class_order\": [{example}]"]
    order = regions_class_order
    if not (isinstance(order, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in order)):
        return [f"dataset.json: 'regions_class_order' must be a list of integers, found {order!r}"]
    problems = []
    if len(order) != len(regions):
        problems.append(f"dataset.json: 'regions_class_order' has {len(order)} entries for {len(regions)} regions "
                        f"{[list(r) for r in regions]}; give one value per region, e.g. [{example}]")
    elif len(set(order)) != len(order):
        problems.append(f"dataset.json: 'regions_class_order' {list(order)} repeats a value, so two regions would "
                        "be written alike and one could never be predicted; give each region its own value")
    else:
        for value, members in zip(order, regions):
            if value not in members:
                problems.append(f"dataset.json: 'regions_class_order' writes {value} for the region {list(members)}, "
                                f"which does not hold {value}: a predicted label map could not be read back as "
                                f"that region; use one of {list(members)}")
    if 0 in {v for r in regions for v in r}:
        problems.append("dataset.json: a region holds 0, the background; regions list foreground values only")
    return problems


def regions_of(labels: Mapping[str, object], regions_class_order) -> Optional[Regions]:
    """The regions of ``labels`` paired with their written values, or None for plain labels."""
    if not is_region_based(labels):
        return None
    return tuple((int(v), members) for v, members in zip(regions_class_order, region_values(labels)))


def scored_classes(labels: Mapping[str, object], regions: Optional[Regions]) -> tuple[int, ...]:
    """What the metrics and the postprocessing score, each named by its value: the regions' written
    values, else the foreground labels."""
    return tuple(v for v, _ in regions) if regions else foreground_values(labels)


def class_mask(seg: np.ndarray, key: int, regions: Optional[Regions] = None) -> np.ndarray:
    """Where ``seg`` holds the class ``key``: that value, or with regions every value of the region
    written as ``key``."""
    if regions is None:
        return seg == key
    return np.isin(seg, dict(regions)[key])


def class_channel(key: int, regions: Optional[Regions] = None) -> int:
    """The network output (probability map) of class ``key``."""
    return key if regions is None else [v for v, _ in regions].index(key)


def remove_class(seg: np.ndarray, where: np.ndarray, key: int, regions: Optional[Regions] = None) -> np.ndarray:
    """A copy of ``seg`` with class ``key`` taken away at ``where`` (boolean, seg's shape).

    Plain labels: those voxels become background. Regions: a voxel leaves region ``key`` and every
    region inside it (whose values are a subset of its values) and keeps its other regions, written
    back in regions_class_order; for BraTS, removing "enhancing tumor" leaves "tumor core" (2),
    removing "tumor core" leaves "whole tumor" (1)."""
    out = seg.copy()
    if regions is None:
        out[where & (seg == key)] = 0
        return out
    members = dict(regions)[key]
    gone = {v for v, m in regions if set(m) <= set(members)}
    for value in members:
        kept = [v for v, m in regions if value in m and v not in gone]
        out[where & (seg == value)] = kept[-1] if kept else 0
    return out


def probabilities_to_labels(probs: np.ndarray, regions_class_order: Optional[Sequence[int]] = None) -> np.ndarray:
    """A label map from per-output probabilities (K, ...): the argmax (softmax outputs), or for a
    region-based model its sigmoid maps at 0.5 in ``regions_class_order``."""
    if regions_class_order is None:
        return probs.argmax(0).astype(np.uint8)
    return regions_to_labels(probs, regions_class_order)


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
