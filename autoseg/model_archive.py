"""Move trained models between machines: ``autoseg export_model`` / ``autoseg import_model``.

The zip holds, relative to the workspace root: ``preprocessed/<dataset>/{plans,dataset,
fingerprint}.json``, every fold's ``plans.json``, ``train_config.json`` and final/best
checkpoints, and ``results/<dataset>/selection.json``: all that ``predict`` needs.
"""
from __future__ import annotations

import argparse
import logging
import os
import zipfile
from pathlib import Path

from autoseg.errors import UserFacingError
from autoseg.paths import Workspace

log = logging.getLogger(__name__)
FOLD_FILES = ("plans.json", "train_config.json", "checkpoint_final.pth", "checkpoint_best.pth")


def _members(ws: Workspace, name: str) -> list[Path]:
    files = [ws.preprocessed / name / f for f in ("plans.json", "dataset.json", "fingerprint.json")]
    files.append(ws.results / name / "selection.json")
    for fold in sorted((ws.results / name).glob("*/*/fold_*")):
        files += [fold / f for f in FOLD_FILES]
    return [f for f in files if f.is_file()]


def export_model(ws: Workspace, dataset: str, output: str | Path) -> Path:
    name = ws.dataset_name(dataset)
    files = _members(ws, name)
    if not any(f.name == "checkpoint_final.pth" for f in files):
        raise UserFacingError(f"no trained fold of {name} under {ws.results / name}; train one first")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f.relative_to(ws.root).as_posix())
    os.replace(tmp, output)
    return output


def import_model(archive: str | Path, ws: Workspace) -> list[Path]:
    """Unpack into ``ws``; refuses to overwrite a different existing file (identical ones are skipped)."""
    written = []
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        for n in names:
            parts = Path(n).parts
            if Path(n).is_absolute() or ".." in parts or parts[0] not in ("preprocessed", "results"):
                raise UserFacingError(f"{archive}: unexpected member '{n}'; not an autoseg model archive")
        clashes = [n for n in names if (ws.root / n).is_file() and (ws.root / n).read_bytes() != z.read(n)]
        if clashes:
            raise UserFacingError(f"importing would overwrite {len(clashes)} different file(s) in {ws.root}, e.g. "
                                  f"{clashes[0]}; import into another --root or remove them first")
        for n in names:
            target = ws.root / n
            if target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            tmp.write_bytes(z.read(n))
            os.replace(tmp, target)
            written.append(target)
    return written


def cli_export_model(args: argparse.Namespace) -> int:
    out = export_model(Workspace.resolve(args.root), args.dataset, args.output)
    log.info("exported to %s", out)
    return 0


def cli_import_model(args: argparse.Namespace) -> int:
    written = import_model(args.archive, Workspace.resolve(args.root))
    log.info("imported %d file(s)", len(written))
    return 0
