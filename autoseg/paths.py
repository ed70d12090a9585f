"""The workspace: where raw data, preprocessed data and results live.

``--root DIR`` wins, else the ``AUTOSEG_ROOT`` environment variable, else
``./autoseg_data``. Inside: ``raw/DatasetXXX_Name``, ``preprocessed/DatasetXXX_Name``,
``results/DatasetXXX_Name``. Datasets are named as in nnU-Net: ``-d 4``,
``-d Dataset004_Hippocampus`` or ``-d Hippocampus`` all find the same folder.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "AUTOSEG_ROOT"
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


class DatasetNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None) -> "Workspace":
        chosen = root if root is not None else os.environ.get(ROOT_ENV) or "autoseg_data"
        return cls(Path(chosen).expanduser().absolute())

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def dataset_name(self, ident: str | int) -> str:
        """Resolve ``4``, ``'004'``, ``'Dataset004_Hippocampus'`` or ``'Hippocampus'``."""
        ident = str(ident).strip()
        candidates = _known_datasets(self)
        if _DATASET_RE.match(ident):
            return ident
        if ident.isdigit():
            matches = [n for n in candidates if int(_DATASET_RE.match(n).group(1)) == int(ident)]
        else:
            matches = [n for n in candidates if _DATASET_RE.match(n).group(2) == ident]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DatasetNotFoundError(
                f"dataset '{ident}' is ambiguous: {', '.join(sorted(matches))}; pass the full name"
            )
        known = ", ".join(sorted(candidates)) or "none"
        raise DatasetNotFoundError(
            f"no dataset '{ident}' under {self.root} (known: {known}); put it in "
            f"{self.raw}/DatasetXXX_Name, convert a Decathlon task with 'autoseg convert_msd', "
            f"or point --root / {ROOT_ENV} at the right workspace"
        )

    def raw_dataset(self, ident: str | int) -> Path:
        return self.raw / self.dataset_name(ident)

    def preprocessed_dataset(self, ident: str | int) -> Path:
        return self.preprocessed / self.dataset_name(ident)

    def results_dataset(self, ident: str | int) -> Path:
        return self.results / self.dataset_name(ident)


def _known_datasets(ws: Workspace) -> list[str]:
    names: set[str] = set()
    for folder in (ws.raw, ws.preprocessed, ws.results):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir() and _DATASET_RE.match(p.name))
    return sorted(names)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``dataset_folder_name(4, 'Hippocampus') == 'Dataset004_Hippocampus'``."""
    if not 0 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be 0..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"
