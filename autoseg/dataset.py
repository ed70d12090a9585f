"""A raw dataset in nnU-Net v2 layout, described by ``DatasetSpec``.

Layout (read unchanged from nnU-Net v2)::

    DatasetXXX_Name/
      dataset.json            channel_names, labels (name -> int; "ignore": unannotated voxels;
                              name -> list of ints: a region, with regions_class_order;
                              autoseg.labels), numTraining, file_ending
      imagesTr/{case}_{XXXX}{file_ending}   one file per channel XXXX = 0000, 0001, ...
      labelsTr/{case}{file_ending}
      imagesTs/               optional, same naming as imagesTr

or, with an explicit file list in dataset.json (nnU-Net v2's ``"dataset"`` key), the training cases
named there, each ``{"images": [one path per channel], "label": path}``, paths relative to the
dataset folder (never outside it); imagesTr/labelsTr are then not searched.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from autoseg.imageio import SUPPORTED_ENDINGS
from autoseg.labels import (LabelValue, Regions, all_values, foreground_values, ignore_problems, ignore_value,
                            is_region_based, label_names, region_problems, regions_of)


class DatasetError(ValueError):
    """A dataset failed validation; ``problems`` lists every finding."""

    def __init__(self, folder: str | Path, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"dataset {folder} has {len(self.problems)} problem(s):\n{lines}\n"
            "Nothing was written. Fix the files listed above and run the command again."
        )


@dataclass(frozen=True)
class Case:
    case_id: str
    images: tuple[Path, ...]  # one per channel, in channel order
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    folder: Path
    name: str
    channel_names: tuple[str, ...]  # in channel order
    labels: dict[str, LabelValue]  # name -> value (or a region's values), background 0
    file_ending: str
    num_training: int
    file_list: tuple[Case, ...] | None = None  # dataset.json "dataset" entries, when given
    regions_class_order: tuple[int, ...] | None = None  # region-based labels only

    @property
    def regions(self) -> Regions | None:
        """Each region's written value and members (region-based labels), else None."""
        return regions_of(self.labels, self.regions_class_order)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every value a label file may hold (background, classes or region members, ignore)."""
        return all_values(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """The classes other than background (not the ignore label), ascending."""
        return foreground_values(self.labels)

    @property
    def ignore_label(self) -> int | None:
        """The value of the label named ``ignore`` (unannotated voxels), or None."""
        return ignore_value(self.labels)

    @property
    def label_names(self) -> dict[int, str]:
        """Name of each scored class by its value (a region by the value written for it)."""
        return label_names(self.labels, self.regions)

    def training_cases(self) -> list[Case]:
        """The file list's cases, else those found in labelsTr with their channel files (existence
        not checked)."""
        if self.file_list is not None:
            return list(self.file_list)
        return self._cases("imagesTr", with_labels=True)

    def test_cases(self) -> list[Case]:
        return self._cases("imagesTs", with_labels=False)

    def _cases(self, images_dir: str, with_labels: bool) -> list[Case]:
        """Cases with the channel files found for them, sorted by channel index.

        A case normally has one file per channel (``_0000``, ``_0001``...); a 2D RGB
        image is one file holding three channels. ``autoseg.integrity`` checks counts.
        """
        groups = group_channel_files(self.folder / images_dir, self.file_ending)
        if with_labels:
            ids = sorted(
                p.name[: -len(self.file_ending)]
                for p in (self.folder / "labelsTr").glob(f"*{self.file_ending}")
                if not p.name.startswith(".")
            )
        else:
            ids = sorted(groups)
        return [
            Case(
                case_id=cid,
                images=tuple(groups.get(cid, {})[k] for k in sorted(groups.get(cid, {}))),
                label=(self.folder / "labelsTr" / f"{cid}{self.file_ending}") if with_labels else None,
            )
            for cid in ids
        ]


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def group_channel_files(folder: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """Map ``case_id -> {channel index -> path}`` for ``{case}_{XXXX}{ending}`` files."""
    groups: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return groups
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(file_ending):
            continue
        m = _CHANNEL_RE.match(p.name[: -len(file_ending)])
        if m:
            groups.setdefault(m.group("case"), {})[int(m.group("ch"))] = p
    return groups


def parse_dataset_json(folder: str | Path) -> tuple[DatasetSpec | None, list[str]]:
    """Parse ``folder/dataset.json``; return the spec (or None) and every problem found."""
    folder = Path(folder)
    path = folder / "dataset.json"
    if not path.is_file():
        return None, [f"{path} is missing; nnU-Net v2 layout needs a dataset.json"]
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [f"{path} is not valid JSON: {exc}"]
    if not isinstance(raw, dict):
        return None, [f"{path} must hold a JSON object, found {type(raw).__name__}"]
    problems: list[str] = []
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in raw:
            hint = " (Decathlon 'modality'? convert with 'autoseg convert_msd')" if key == "channel_names" and "modality" in raw else ""
            problems.append(f"dataset.json: missing key '{key}'{hint}")
    channels = raw.get("channel_names", raw.get("modality"))
    channel_names: tuple[str, ...] = ()
    if isinstance(channels, dict) and channels:
        try:
            order = sorted(channels, key=int)
            if [int(k) for k in order] != list(range(len(order))):
                problems.append(f"dataset.json: channel_names keys must be 0..{len(order) - 1}, found {order}")
            channel_names = tuple(str(channels[k]) for k in order)
        except ValueError:
            problems.append(f"dataset.json: channel_names keys must be integers as strings, found {list(channels)}")
    elif "channel_names" in raw:
        problems.append(f"dataset.json: channel_names must be a non-empty object like {{\"0\": \"CT\"}}, found {channels!r}")
    labels_raw = raw.get("labels")
    labels: dict[str, LabelValue] = {}
    order = raw.get("regions_class_order")
    if isinstance(labels_raw, dict) and labels_raw:
        for name, value in labels_raw.items():
            if _is_int(value):
                labels[str(name)] = value
            elif isinstance(value, list) and value and all(_is_int(v) for v in value):
                labels[str(name)] = tuple(value)
            else:
                problems.append(f"dataset.json: label '{name}' must map to an integer, or for a region to a list "
                                f"of integers (e.g. [2, 3]); found {value!r}")
        if labels and 0 not in labels.values() and (0,) not in labels.values():
            problems.append("dataset.json: labels must include background with value 0")
        if labels and not is_region_based(labels) and len(set(labels.values())) != len(labels):
            problems.append(f"dataset.json: label values must be unique, found {sorted(labels.values())}")
        if labels and len(labels) == len(labels_raw):
            problems += ignore_problems(labels) + region_problems(labels, order)
    elif "labels" in raw:
        problems.append(f"dataset.json: labels must be a non-empty object name -> int, found {labels_raw!r}")
    ending = raw.get("file_ending")
    if "file_ending" in raw and (not isinstance(ending, str) or ending not in SUPPORTED_ENDINGS):
        problems.append(f"dataset.json: file_ending must be one of {', '.join(SUPPORTED_ENDINGS)}, found {ending!r}")
    num = raw.get("numTraining")
    if "numTraining" in raw and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
        problems.append(f"dataset.json: numTraining must be a non-negative integer, found {num!r}")
    for key in ("dataset", "file_paths"):  # optional explicit file lists must stay inside
        entries = raw.get(key)
        if isinstance(entries, dict):
            for value in _iter_strings(entries):
                target = (folder / value).resolve()
                if folder.resolve() not in target.parents and target != folder.resolve():
                    problems.append(f"dataset.json: path '{value}' in '{key}' escapes the dataset folder")
    file_list = None
    if "dataset" in raw:
        file_list, found = _file_list(folder, raw["dataset"], ending if isinstance(ending, str) else "")
        problems += found
    if problems:
        return None, problems
    spec = DatasetSpec(
        folder=folder,
        name=str(raw.get("name", folder.name)),
        channel_names=channel_names,
        labels=labels,
        file_ending=ending,
        num_training=num,
        file_list=file_list,
        regions_class_order=tuple(order) if is_region_based(labels) else None,
    )
    return spec, []


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _file_list(folder: Path, entries, ending: str) -> tuple[tuple[Case, ...] | None, list[str]]:
    """The training cases of dataset.json's ``"dataset"`` (case id -> {"images": [...], "label": ...})
    and every problem in its structure (files are checked by ``autoseg.integrity``)."""
    example = '{"case_001": {"images": ["imagesTr/case_001_0000.nii.gz"], "label": "labelsTr/case_001.nii.gz"}}'
    if not isinstance(entries, dict) or not entries:
        return None, [f"dataset.json: 'dataset' must map case ids to their files, e.g. {example}; found {entries!r:.80}"]
    cases, problems = [], []
    for cid, entry in entries.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(images, str):
            images = [images]
        if not (isinstance(images, list) and images and all(isinstance(i, str) for i in images)
                and isinstance(label, str)):
            problems.append(f"dataset.json: 'dataset' entry {cid!r} must be {{\"images\": [paths, one per channel], "
                            f"\"label\": path}}; found {entry!r:.120}")
            continue
        wrong = [p for p in images + [label] if ending and not p.endswith(ending)]
        if wrong:
            problems.append(f"dataset.json: 'dataset' entry {cid!r} names {wrong}, which do not end in the "
                            f"file_ending {ending}")
        cases.append(Case(str(cid), tuple(folder / i for i in images), folder / label))
    return tuple(cases), problems


def _iter_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _iter_strings(v)


def load_dataset(folder: str | Path) -> DatasetSpec:
    """Parse dataset.json and raise ``DatasetError`` listing every problem."""
    spec, problems = parse_dataset_json(folder)
    if problems:
        raise DatasetError(folder, problems)
    return spec
