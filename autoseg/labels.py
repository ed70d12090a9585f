"""The label values of a dataset, read from ``dataset.json``'s ``labels`` as nnU-Net v2 reads them.

``labels`` maps a name to an integer value, background 0. A label named exactly ``ignore`` (nnU-Net
v2's rule) marks voxels that carry no annotation (sparse annotation: a few labelled slices,
scribbles, partly labelled sets); it must have the highest value. Those voxels take no part in the
loss, the metrics or the postprocessing learning, and the network has no output channel for them,
so it never predicts that value. Every other value is a class the network learns.
"""
from __future__ import annotations

from typing import Mapping, Optional

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
