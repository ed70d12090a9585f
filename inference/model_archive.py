"""Move trained models between machines: ``autoseg export_model`` / ``autoseg import_model``.

The zip holds, relative to the workspace root: ``preprocessed/<dataset>/{plans,dataset,
fingerprint}.json``, every fold's ``plans.json``, ``train_config.json`` and final/best
checkpoints, and ``results/<dataset>/selection.json``: all that ``predict`` needs, which is
why it sits with inference, the last stage (it reads what training and selection wrote).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from autoseg.errors import UserFacingError, output_file
from autoseg.paths import Workspace

log = logging.getLogger(__name__)
FOLD_FILES = ("plans.json", "train_config.json", "checkpoint_final.pth", "checkpoint_best.pth")


def _members(ws: Workspace, name: str) -> list[Path]:
    # throughput.json: the precision timed at planning, which predict --precision auto takes on the same CPU
    # (without it an imported model's precision is probed anew and may differ from the exporter's predictions)
    files = [ws.preprocessed / name / f for f in ("plans.json", "dataset.json", "fingerprint.json", "throughput.json")]
    files.append(ws.results / name / "selection.json")
    for fold in sorted((ws.results / name).glob("*/*/fold_*")):
        files += [fold / f for f in FOLD_FILES]
    return [f for f in files if f.is_file()]


def export_model(ws: Workspace, dataset: str, output: str | Path) -> Path:
    from autoseg.training.health import refuse_failed

    output_file(output, "model archive")
    name = ws.dataset_name(dataset)
    for fold in sorted((ws.results / name).glob("*/*/fold_*")):
        refuse_failed(fold)
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


MODEL_FOLDERS = ("preprocessed", "results")
# what packers add beside the files and is no part of a model: macOS Finder's resource forks and folder settings
PACKER_EXTRAS = ("__MACOSX", ".DS_Store")


def _model_members(archive: Path, z: zipfile.ZipFile) -> dict[str, tuple[str, ...]]:
    """Each file of the zip -> its path relative to the workspace root, every member checked.

    Accepted as any packer writes them: folder entries (``preprocessed/``, as ``shutil.make_archive``
    and ``zip -r`` add), backslashes or ``./`` in names, macOS extras (``PACKER_EXTRAS``), and one
    folder around ``preprocessed/`` and ``results/`` (a zip of the folder that holds them). Every
    file must then lie under ``preprocessed/`` or ``results/`` without ``..``; otherwise
    ``UserFacingError`` lists the members that do not."""
    files = {}
    for info in z.infolist():
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        if info.is_dir() or not parts or parts[0] in PACKER_EXTRAS or parts[-1] in PACKER_EXTRAS:
            continue
        files[info.filename] = parts
    if {p[0] for p in files.values()}.isdisjoint(MODEL_FOLDERS) and len({p[0] for p in files.values()}) == 1:
        files = {n: p[1:] for n, p in files.items()}  # one folder around the model's folders
    bad = [n for n, p in files.items() if len(p) < 2 or p[0] not in MODEL_FOLDERS or ".." in p]
    if bad or not files:
        found = f"unexpected member(s) {', '.join(repr(n) for n in bad[:3])}{' ...' if len(bad) > 3 else ''}" \
            if bad else "no files"
        raise UserFacingError(
            f"{archive}: {found}; expected an autoseg model archive holding files under "
            f"{' and '.join(f + '/' for f in MODEL_FOLDERS)} only (as `autoseg export_model` writes it)"
        )
    return files


def _open_archive(archive: Path) -> zipfile.ZipFile:
    if not archive.is_file():
        raise UserFacingError(f"{archive}: no such file; expected the .zip that `autoseg export_model` writes")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise UserFacingError(
            f"{archive} is not a readable zip file ({exc}); expected the .zip that `autoseg export_model` writes: "
            "if it was copied or downloaded, check that it arrived whole"
        ) from None


def _clash(root: Path, rel: tuple[str, ...], z: zipfile.ZipFile, name: str) -> bool:
    """True when writing member ``name`` to ``root/rel`` would replace something different: another
    file's content, a folder, or a file where one of its folders must go."""
    target = root.joinpath(*rel)
    if any(parent.exists() and not parent.is_dir() for parent in target.parents if root in parent.parents):
        return True
    return target.exists() and (not target.is_file() or target.read_bytes() != z.read(name))


def import_model(archive: str | Path, ws: Workspace) -> list[Path]:
    """Unpack a model zip into ``ws``; return the files written (identical ones already there are skipped).

    Nothing is written until every member has been checked (``_model_members``), the zip's checksums
    verified and no different file would be overwritten; then the files are unpacked into a temporary
    folder in the workspace root and each renamed into place, and the temporary folder removed. If a
    write fails, the files and folders this import made are removed again before the error is raised."""
    archive = Path(archive)
    with _open_archive(archive) as z:
        members = _model_members(archive, z)
        try:
            broken = z.testzip()  # reads every member: checksums, compression
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError) as exc:
            broken = f"? ({exc})"
        if broken:
            raise UserFacingError(f"{archive}: member {broken} cannot be read back whole (corrupt, or packed with a "
                                  "method Python's zipfile does not read); export or copy the model again")
        clashes = ["/".join(rel) for n, rel in members.items() if _clash(ws.root, rel, z, n)]
        if clashes:
            raise UserFacingError(f"importing would overwrite {len(clashes)} different file(s) in {ws.root}, e.g. "
                                  f"{clashes[0]}; import into another --root or remove them first")
        created = [] if ws.root.exists() else [ws.root]  # folders this import made, removed again if it fails
        ws.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import_model.", dir=ws.root))
        written = []
        try:
            for name, rel in members.items():
                staging.joinpath(*rel).parent.mkdir(parents=True, exist_ok=True)
                staging.joinpath(*rel).write_bytes(z.read(name))
            for rel in members.values():
                target = ws.root.joinpath(*rel)
                if target.is_file():  # identical: the clash check passed
                    continue
                created += [d for d in reversed(target.parents) if not d.exists()][:1]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging.joinpath(*rel), target)
                written.append(target)
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            for d in reversed(created):
                shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def cli_export_model(args: argparse.Namespace) -> int:
    out = export_model(Workspace.resolve(args.root), args.dataset, args.output)
    log.info("exported to %s", out)
    return 0


def cli_import_model(args: argparse.Namespace) -> int:
    written = import_model(args.archive, Workspace.resolve(args.root))
    log.info("imported %d file(s)", len(written))
    return 0
