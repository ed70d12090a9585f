"""export_model / import_model: what goes into the zip, exact round trip, refusals."""
import zipfile
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.model_archive import export_model, import_model
from autoseg.paths import Workspace

NAME = "Dataset901_Synth"
FOLD = f"results/{NAME}/3d_fullres/default/fold_0"
EXPORTED = {
    f"preprocessed/{NAME}/plans.json": b'{"plans": 1}\n',
    f"preprocessed/{NAME}/dataset.json": b'{"labels": {}}\n',
    f"preprocessed/{NAME}/fingerprint.json": b'{"fp": 2}\n',
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
