"""export_model / import_model: what goes into the zip, exact round trip, refusals."""
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.inference.model_archive import export_model, import_model
from autoseg.paths import Workspace

NAME = "Dataset901_Synth"
FOLD = f"results/{NAME}/3d_fullres/default/fold_0"
EXPORTED = {
    f"preprocessed/{NAME}/plans.json": b'{"plans": 1}\n',
    f"preprocessed/{NAME}/dataset.json": b'{"labels": {}}\n',
    f"preprocessed/{NAME}/fingerprint.json": b'{"fp": 2}\n',
    f"preprocessed/{NAME}/throughput.json": b'{"cpu": "x"}\n',
    f"results/{NAME}/selection.json": b'{"configurations": ["3d_fullres"]}\n',
    f"{FOLD}/plans.json": b'{"plans": 1}\n',
    f"{FOLD}/train_config.json": b'{"num_epochs": 1}\n',
    f"{FOLD}/checkpoint_final.pth": bytes(range(256)) * 40,
    f"{FOLD}/checkpoint_best.pth": b"\x00best\xff" * 100,
}
NOT_EXPORTED = {
    f"{FOLD}/checkpoint_latest.pth": b"latest",
    f"{FOLD}/validation/case_000.nii.gz": b"seg",
    f"{FOLD}/training.log": b"log",
    f"preprocessed/{NAME}/3d_fullres/case_000.b2nd": b"data",
}


def trained_workspace(root: Path) -> Workspace:
    for rel, data in {**EXPORTED, **NOT_EXPORTED}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return Workspace(root)


def test_export_holds_only_what_predict_needs(tmp_path):
    ws = trained_workspace(tmp_path / "a")
    archive = export_model(ws, "901", tmp_path / "model.zip")
    with zipfile.ZipFile(archive) as z:
        assert set(z.namelist()) == set(EXPORTED)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary zip was renamed into place


def test_import_into_a_fresh_root_is_byte_identical_and_idempotent(tmp_path):
    archive = export_model(trained_workspace(tmp_path / "a"), "901", tmp_path / "model.zip")
    fresh = Workspace(tmp_path / "b")
    written = import_model(archive, fresh)
    assert {p.relative_to(fresh.root).as_posix() for p in written} == set(EXPORTED)
    for rel, data in EXPORTED.items():
        assert (fresh.root / rel).read_bytes() == data
    assert import_model(archive, fresh) == []  # identical files already there: nothing to do
    assert fresh.dataset_name("901") == NAME


def test_import_refuses_to_overwrite_a_different_file(tmp_path):
    archive = export_model(trained_workspace(tmp_path / "a"), "901", tmp_path / "model.zip")
    other = tmp_path / "b" / FOLD / "train_config.json"
    other.parent.mkdir(parents=True)
    other.write_bytes(b'{"num_epochs": 1000}\n')
    with pytest.raises(UserFacingError, match="would overwrite 1 different file.*train_config.json"):
        import_model(archive, Workspace(tmp_path / "b"))
    assert other.read_bytes() == b'{"num_epochs": 1000}\n'
    assert not (tmp_path / "b" / FOLD / "checkpoint_final.pth").exists()  # nothing half-imported


@pytest.mark.parametrize("member", ["results/../../evil.txt", "/tmp/evil.txt", "notes/readme.txt"])
def test_import_refuses_foreign_members(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"preprocessed/{NAME}/plans.json", "{}")
        z.writestr(member, "gotcha")
    root = tmp_path / "ws" / "inner"
    with pytest.raises(UserFacingError, match="unexpected member"):
        import_model(archive, Workspace(root))
    assert not root.exists() and not (tmp_path / "evil.txt").exists()


def test_export_without_a_trained_fold_is_refused(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "preprocessed" / NAME).mkdir(parents=True)
    (tmp_path / "preprocessed" / NAME / "plans.json").write_text("{}")
    with pytest.raises(UserFacingError, match="no trained fold of Dataset901_Synth"):
        export_model(ws, "901", tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def test_cli_round_trip(tmp_path):
    trained_workspace(tmp_path / "a")
    archive = tmp_path / "m.zip"
    assert main(["export_model", "-d", "901", "--root", str(tmp_path / "a"), "-o", str(archive)]) == 0
    assert main(["import_model", str(archive), "--root", str(tmp_path / "b")]) == 0
    for rel, data in EXPORTED.items():
        assert (tmp_path / "b" / rel).read_bytes() == data


def _zip(path: Path, entries: dict[str, bytes], folder_entries: bool = False) -> Path:
    """A zip of ``entries`` (name -> bytes), with a folder entry before each folder's files if asked."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        folders_done = set()
        for name, data in entries.items():
            parts = name.replace("\\", "/").split("/")
            for k in range(1, len(parts)):
                folder = "/".join(parts[:k]) + "/"
                if folder_entries and folder not in folders_done:
                    z.writestr(folder, b"")
                    folders_done.add(folder)
            z.writestr(name, data)
    return path


PACKERS = {
    "folder entries": lambda p: _zip(p, EXPORTED, folder_entries=True),
    "wrapped in one folder, macOS Finder extras": lambda p: _zip(p, {
        **{f"model/{n}": d for n, d in EXPORTED.items()}, "model/.DS_Store": b"\0\0\0\1Bud1",
        f"__MACOSX/model/._{NAME}": b"\0\5\26\7"}, folder_entries=True),
    "backslashes and ./": lambda p: _zip(p, {(f"./{n}" if k % 2 else n.replace("/", "\\")): d
                                            for k, (n, d) in enumerate(EXPORTED.items())}),
}


@pytest.mark.parametrize("packer", PACKERS)
def test_import_takes_a_zip_from_any_packer_and_leaves_nothing_else(tmp_path, packer):
    archive = PACKERS[packer](tmp_path / "repacked.zip")
    root = tmp_path / "b"
    written = import_model(archive, Workspace(root))
    assert {p.relative_to(root).as_posix() for p in written} == set(EXPORTED)
    for rel, data in EXPORTED.items():
        assert (root / rel).read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["preprocessed", "results"]  # no staging folder, no strays
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == set(EXPORTED)


def test_import_of_a_folder_zipped_by_shutil(tmp_path):
    trained_workspace(tmp_path / "a")
    for rel in NOT_EXPORTED:
        (tmp_path / "a" / rel).unlink()
    (tmp_path / "a" / "raw").mkdir()
    archive = shutil.make_archive(str(tmp_path / "shutil"), "zip", tmp_path / "a", ".")
    assert "preprocessed/" in zipfile.ZipFile(archive).namelist()  # the folder entries the old import wrote as files
    # raw/ holds no file, so only its folder entry is in the zip: it is skipped like the other folder entries
    assert main(["import_model", archive, "--root", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["preprocessed", "results"]
    assert {p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*") if p.is_file()} == set(EXPORTED)


def test_a_file_that_is_not_a_zip_is_refused_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "model.zip").write_bytes(b"PK\x03\x04 cut off after its first four bytes")
    assert main(["import_model", str(tmp_path / "model.zip"), "--root", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"autoseg import_model: error: {tmp_path / 'model.zip'} is not a readable zip file")
    assert "Traceback" not in err and not (tmp_path / "ws").exists()
    assert main(["import_model", str(tmp_path / "missing.zip"), "--root", str(tmp_path / "ws")]) == 2
    assert "missing.zip: no such file" in capsys.readouterr().err


def test_a_corrupt_member_is_found_before_anything_is_written(tmp_path):
    archive = _zip(tmp_path / "m.zip", EXPORTED)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:  # flip one byte inside the checkpoint's compressed data
        info = z.getinfo(f"{FOLD}/checkpoint_final.pth")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(UserFacingError, match="cannot be read back whole"):
        import_model(archive, Workspace(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()


def test_stray_files_where_folders_belong_are_refused_not_overwritten(tmp_path):
    archive = _zip(tmp_path / "m.zip", EXPORTED)
    root = tmp_path / "ws"
    root.mkdir()
    (root / "preprocessed").write_bytes(b"")  # what importing a zip with folder entries used to leave
    with pytest.raises(UserFacingError, match="would overwrite 4 different file.*preprocessed/"):
        import_model(archive, Workspace(root))
    assert sorted(p.name for p in root.iterdir()) == ["preprocessed"]


def test_a_failed_write_leaves_no_staging_folder(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "m.zip", EXPORTED)
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        os.rename(src, dst)

    monkeypatch.setattr("autoseg.inference.model_archive.os.replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        import_model(archive, Workspace(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()  # the two files renamed before it, their folders, the staging folder
    (tmp_path / "ws" / "results").mkdir(parents=True)
    (tmp_path / "ws" / "results" / "other.txt").write_text("kept")
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
        import_model(archive, Workspace(tmp_path / "ws"))
    assert [p.relative_to(tmp_path / "ws").as_posix() for p in sorted((tmp_path / "ws").rglob("*"))] == \
        ["results", "results/other.txt"]
