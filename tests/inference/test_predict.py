"""``autoseg predict`` / ``ensemble`` with a tiny model trained by the real pipeline (once per module)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from synthetic import ellipsoid_case

ANGLE = math.radians(30)
DIRECTION = (math.cos(ANGLE), -math.sin(ANGLE), 0.0, math.sin(ANGLE), math.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
SPACING_XYZ = (0.9, 1.1, 1.3)
ORIGIN = (12.5, -3.25, 7.0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two good cases with a rotated direction, odd spacing and origin, and one corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(11)
    for cid, shape in (("good_a", (14, 18, 16)), ("good_b", (13, 17, 15))):
        arr, _ = ellipsoid_case(shape, rng)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING_XYZ)
        img.SetOrigin(ORIGIN)
        img.SetDirection(DIRECTION)
        sitk.WriteImage(img, str(folder / f"{cid}_0000.nii.gz"))
    (folder / "bad_0000.nii.gz").write_bytes(b"this is not a NIfTI file")
    return folder


def predict(root, images, out, *extra) -> int:
    return main(["predict", "-i", str(images), "-o", str(out), "-d", "901", "--root", root, *extra])


def assert_same_geometry(output: Path, source: Path) -> None:
    a, b = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_predict_keeps_geometry_and_reports_the_corrupt_case(trained_root, images, tmp_path, caplog):
    out = tmp_path / "pred"
    assert predict(trained_root, images, out, "-c", "3d_fullres", "-f", "0", "--disable_tta") == 1
    assert sorted(p.name for p in out.iterdir()) == ["good_a.nii.gz", "good_b.nii.gz"]
    for cid in ("good_a", "good_b"):
        assert_same_geometry(out / f"{cid}.nii.gz", images / f"{cid}_0000.nii.gz")
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}.nii.gz")))
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    assert "case bad failed" in caplog.text

    before = {p.name: os.stat(p).st_mtime_ns for p in out.iterdir()}
    assert predict(trained_root, images, out, "-c", "3d_fullres", "-f", "0", "--disable_tta", "--continue") == 1
    assert {p.name: os.stat(p).st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten


def test_predict_refuses_cut_off_and_nan_images_naming_them(trained_root, tmp_path, caplog):
    # SimpleITK alone reads both: the cut-off file with zeros for its missing half, NaN as 0
    folder = tmp_path / "in"
    folder.mkdir()
    arr, _ = ellipsoid_case((14, 18, 16), np.random.default_rng(3))
    for cid in ("good", "cut"):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"{cid}_0000.nii.gz"))
    cut = folder / "cut_0000.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    arr[0, :2, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / "nan_0000.nii.gz"))
    out = tmp_path / "pred"
    assert predict(trained_root, folder, out, "-c", "3d_fullres", "-f", "0", "--disable_tta") == 1
    assert [p.name for p in out.iterdir()] == ["good.nii.gz"]
    declared = 352 + 14 * 18 * 16 * 4
    assert f"case cut failed: {cut}: the file is incomplete: its header declares {declared} bytes" in caplog.text
    assert f"case nan failed: {folder / 'nan_0000.nii.gz'}: holds 2 NaN/inf voxel(s) of {14 * 18 * 16}" in caplog.text


def test_saved_probabilities_and_ensemble(trained_root, images, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert predict(trained_root, images, a, "-c", "3d_fullres", "-f", "0", "--save_probabilities") == 1
    assert predict(trained_root, images, b, "-c", "3d_fullres", "-f", "0", "--save_probabilities",
                   "--disable_tta", "--step_size", "0.9") == 1
    for folder in (a, b):
        for cid in ("good_a", "good_b"):
            shape = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{cid}.nii.gz"))).shape
            with np.load(folder / f"{cid}.npz") as z:
                probs = z["probabilities"]
            assert probs.dtype == np.float16 and probs.shape == (3,) + shape
            np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=3e-3)
            geometry = json.loads((folder / f"{cid}.json").read_text())
            assert tuple(geometry["shape"]) == shape
            np.testing.assert_allclose(geometry["direction"], DIRECTION, atol=1e-6)
    assert main(["ensemble", "-i", str(a), str(b), "-o", str(c)]) == 0
    for cid in ("good_a", "good_b"):
        with np.load(a / f"{cid}.npz") as za, np.load(b / f"{cid}.npz") as zb:
            mean = (za["probabilities"].astype(np.float32) + zb["probabilities"].astype(np.float32)) / 2
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(c / f"{cid}.nii.gz")))
        assert np.array_equal(got, mean.argmax(0))
        assert_same_geometry(c / f"{cid}.nii.gz", images / f"{cid}_0000.nii.gz")


def test_predict_without_configuration_needs_a_selection(trained_root, images, tmp_path, capsys):
    results = Path(trained_root) / "results" / "Dataset901_Synth"
    (results / "selection.json").unlink(missing_ok=True)
    assert predict(trained_root, images, tmp_path / "none") == 2
    err = capsys.readouterr().err
    assert "selection.json not found" in err and "find_best_config" in err

    assert main(["find_best_config", "-d", "901", "-c", "3d_fullres", "-f", "0", "--root", trained_root]) == 0
    selection = json.loads((results / "selection.json").read_text())
    assert selection["configurations"] == ["3d_fullres"] and selection["folds"] == [0]
    out = tmp_path / "selected"
    assert predict(trained_root, images, out, "--disable_tta") == 1  # only the corrupt case fails
    assert sorted(p.name for p in out.iterdir()) == ["good_a.nii.gz", "good_b.nii.gz"]
    assert_same_geometry(out / "good_a.nii.gz", images / "good_a_0000.nii.gz")


def test_predict_names_the_missing_fold(trained_root, images, tmp_path, capsys):
    assert predict(trained_root, images, tmp_path / "x", "-c", "3d_fullres", "-f", "3") == 2
    assert "autoseg train 3d_fullres FOLD -d Dataset901_Synth" in capsys.readouterr().err


def fold0(root: str) -> Path:
    return Path(root) / "results" / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_0"


def test_onnx_and_torch_backends_agree_and_the_export_follows_its_checkpoint(trained_root, images, tmp_path):
    from autoseg.inference.onnx_backend import onnx_files, read_export_record

    fold = fold0(trained_root)
    outs = {b: tmp_path / b for b in ("torch", "onnx")}
    for backend, out in outs.items():  # ONNX computes in fp32; 'auto' may pick bf16 for torch on this CPU
        assert predict(trained_root, images, out, "-c", "3d_fullres", "-f", "0", "--save_probabilities",
                       "--backend", backend, "--precision", "fp32") == 1
    graph, record = onnx_files(fold, "checkpoint_final")
    info = json.loads(record.read_text())
    assert graph.is_file() and info["configuration"] == "3d_fullres" and info["in_channels"] == 1
    for cid in ("good_a", "good_b"):
        with np.load(outs["torch"] / f"{cid}.npz") as zt, np.load(outs["onnx"] / f"{cid}.npz") as zo:
            pt, po = zt["probabilities"].astype(np.float32), zo["probabilities"].astype(np.float32)
        np.testing.assert_allclose(po, pt, atol=2e-3)  # float16 files of float32 results
        labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(outs[b] / f"{cid}.nii.gz"))) for b in outs]
        top2 = np.sort(pt, 0)[-2:]
        clear = top2[1] - top2[0] > 1e-2  # voxels whose best class is not a near-tie
        assert np.array_equal(labels[0][clear], labels[1][clear])
        assert_same_geometry(outs["onnx"] / f"{cid}.nii.gz", images / f"{cid}_0000.nii.gz")

    # a retrained (here: touched) checkpoint no longer matches its export, which is redone
    pth = fold / "checkpoint_final.pth"
    st = pth.stat()
    os.utime(pth, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    assert read_export_record(fold, "checkpoint_final") is None
    assert predict(trained_root, images, tmp_path / "again", "-c", "3d_fullres", "-f", "0", "--disable_tta",
                   "--backend", "onnx") == 1
    assert read_export_record(fold, "checkpoint_final")["checkpoint_mtime_ns"] == st.st_mtime_ns + 10 ** 9


def test_predict_with_the_onnx_backend_does_not_import_torch(trained_root, images, tmp_path):
    import subprocess
    import sys

    from autoseg.inference.onnx_backend import export_fold, read_export_record

    if read_export_record(fold0(trained_root), "checkpoint_final") is None:
        export_fold(fold0(trained_root))  # the one step that needs torch, done here
    args = ["predict", "-i", str(images), "-o", str(tmp_path / "p"), "-d", "901", "--root", trained_root,
            "-c", "3d_fullres", "-f", "0", "--backend", "onnx"]
    code = f"import sys; from autoseg.cli import main; rc = main({args!r}); print('torch' in sys.modules, rc)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-2:] == ["False", "1"], done.stderr  # rc 1: the corrupt case
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["good_a.nii.gz", "good_b.nii.gz"]


def test_auto_falls_back_to_torch_when_the_export_cannot_be_written(trained_root, images, tmp_path, monkeypatch,
                                                                     caplog, capsys):
    from autoseg.inference import onnx_backend

    def read_only(fold_dir, checkpoint="checkpoint_final"):
        raise PermissionError(f"[Errno 30] Read-only file system: '{fold_dir}/{checkpoint}.onnx'")

    monkeypatch.setattr(onnx_backend, "read_export_record", lambda fold_dir, checkpoint: None)  # needs an export
    monkeypatch.setattr(onnx_backend, "export_fold", read_only)
    monkeypatch.setattr(onnx_backend, "choose_backend", lambda requested, device, precision: "onnx")
    out = tmp_path / "p"
    assert predict(trained_root, images, out, "-c", "3d_fullres", "-f", "0", "--disable_tta") == 1
    assert sorted(p.name for p in out.iterdir()) == ["good_a.nii.gz", "good_b.nii.gz"]
    assert "could not be loaded" in caplog.text and "Read-only file system" in caplog.text
    # asked for by name: a clear error instead
    assert predict(trained_root, images, tmp_path / "q", "-c", "3d_fullres", "-f", "0", "--backend", "onnx") == 2
    err = capsys.readouterr().err
    assert "cannot write the ONNX export" in err and "--backend torch" in err


def test_predict_takes_the_precision_the_planning_timed_on_this_cpu(trained_root, monkeypatch):
    import autoseg.device
    from autoseg.inference.predict import load_predictor
    from autoseg.paths import Workspace

    monkeypatch.setattr(autoseg.device, "cpu_bf16_is_faster", lambda *a, **k: True)  # the probe would say bf16
    ws = Workspace(Path(trained_root))
    path = ws.preprocessed_dataset("Dataset901_Synth") / "throughput.json"
    original = path.read_text()

    def planned_as(precision: str, cpu: str | None = None) -> str:
        timed = json.loads(original)
        for candidate in timed["configurations"]["3d_fullres"]["candidates"]:
            candidate["precision"] = precision
        timed["cpu"] = cpu or timed["cpu"]
        path.write_text(json.dumps(timed))
        return load_predictor(ws, "Dataset901_Synth", "3d_fullres", "default", (0,), "checkpoint_final",
                              "cpu").precision

    try:
        assert planned_as("fp32") == "fp32"  # bf16 was slower (or abandoned) in the planning's timing
        assert planned_as("bf16") == "bf16"
        assert planned_as("fp32", cpu="another CPU") == "bf16"  # timed elsewhere: the probe decides
    finally:
        path.write_text(original)


def test_case_parts_are_disjoint_cover_every_case_and_differ_by_at_most_one():
    from autoseg.inference.predict import case_part

    cases = ["a", "b", "c", "d", "e"]
    assert case_part(cases, 2, 0) == ["a", "c", "e"] and case_part(cases, 2, 1) == ["b", "d"]
    assert case_part(cases, 1, 0) == cases
    assert case_part(cases, 7, 6) == []  # more parts than cases: some parts are empty
    for k in range(1, 7):
        parts = [case_part(cases, k, i) for i in range(k)]
        assert sorted(c for p in parts for c in p) == cases
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_parts_predict_each_case_once_as_one_run_does(trained_root, images, tmp_path, caplog):
    caplog.set_level("INFO", logger="autoseg.inference.predict")
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ("-c", "3d_fullres", "-f", "0", "--disable_tta", "--backend", "torch")
    assert predict(trained_root, images, whole, *common) == 1  # the corrupt case fails
    # sorted cases: bad, good_a, good_b -> part 0: bad, good_b; part 1: good_a
    assert predict(trained_root, images, split, *common, "--num-parts", "2", "--part-id", "1") == 0
    assert sorted(p.name for p in split.iterdir()) == ["good_a.nii.gz"]
    assert "1 of the 3 cases" in caplog.text
    assert predict(trained_root, images, split, *common, "--num-parts", "2", "--part-id", "0") == 1
    assert sorted(p.name for p in split.iterdir()) == sorted(p.name for p in whole.iterdir())
    for p in whole.iterdir():
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(p))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(split / p.name))))
