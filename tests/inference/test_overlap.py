"""``autoseg predict`` with worker processes (``inference/overlap.py``): the files the serial run
writes, each failing case reported while the others are written, ``--continue``, and a worker that
dies or hangs ending predict with a message that names the case, never a hang."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from synthetic import ellipsoid_case

TESTS = Path(__file__).resolve().parents[1]
GOOD = ["good_a", "good_b", "good_c"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three good cases of different shapes with odd spacing, a corrupt file (refused before any
    step) and a case holding NaN (refused when read, in the preprocessing step)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    for cid, shape in zip(GOOD + ["nan"], ((14, 18, 16), (13, 17, 15), (16, 15, 17), (14, 14, 14))):
        arr, _ = ellipsoid_case(shape, rng)
        if cid == "nan":
            arr[0, 0, :3] = np.nan
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.9, 1.1, 1.3))
        sitk.WriteImage(img, str(folder / f"{cid}_0000.nii.gz"))
    (folder / "bad_0000.nii.gz").write_bytes(b"this is not a NIfTI file")
    return folder


def command(root: str, images: Path, out: Path, *extra) -> list:
    return ["predict", "-i", str(images), "-o", str(out), "-d", "901", "--root", root, "-c", "3d_fullres", "-f", "0",
            "--disable_tta", *extra]


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_workers_write_the_files_the_serial_path_writes(trained_root, images, tmp_path, caplog, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    runs = {"serial": ("-nwp", "0", "-nwe", "0"), "1+1": ("-nwp", "1", "-nwe", "1"), "2+2": ("-nwp", "2", "-nwe", "2")}
    for name, workers in runs.items():
        out = tmp_path / name
        assert main(command(trained_root, images, out, "--backend", backend, "--save_probabilities", *workers)) == 1
        assert written(out) == sorted(f"{c}{e}" for c in GOOD for e in (".json", ".nii.gz", ".npz"))
    # each run reported both bad cases: the corrupt one before any step, the NaN one from its (worker's) reading
    assert caplog.text.count("case bad failed") == 3
    assert caplog.text.count(f"case nan failed: {images / 'nan_0000.nii.gz'}: holds 3 NaN/inf voxel(s)") == 3
    serial = tmp_path / "serial"
    for name in ("1+1", "2+2"):
        for cid in GOOD:
            for ending in (".nii.gz", ".json"):  # the segmentation byte for byte
                assert (tmp_path / name / f"{cid}{ending}").read_bytes() == (serial / f"{cid}{ending}").read_bytes()
            with np.load(tmp_path / name / f"{cid}.npz") as a, np.load(serial / f"{cid}.npz") as b:
                assert np.array_equal(a["probabilities"], b["probabilities"])  # the zip holds its time of writing


def test_a_case_that_fails_in_the_export_worker_is_reported_and_the_others_written(trained_root, images,
                                                                                   tmp_path, caplog):
    out = tmp_path / "pred"
    (out / "good_b.nii.gz").mkdir(parents=True)  # the segmentation cannot replace a folder
    assert main(command(trained_root, images, out, "-nwp", "1", "-nwe", "1")) == 1
    assert written(out) == ["good_a.nii.gz", "good_b.nii.gz", "good_c.nii.gz"]
    assert (out / "good_b.nii.gz").is_dir() and (out / "good_c.nii.gz").is_file()
    assert "case good_b failed" in caplog.text and "case good_a failed" not in caplog.text


def test_continue_with_workers_writes_only_the_missing_cases(trained_root, images, tmp_path):
    out = tmp_path / "pred"
    assert main(command(trained_root, images, out, "-nwp", "1", "-nwe", "1")) == 1
    first = {name: (out / name).read_bytes() for name in written(out)}
    (out / "good_b.nii.gz").unlink()
    kept = {name: os.stat(out / name).st_mtime_ns for name in written(out)}
    assert main(command(trained_root, images, out, "-nwp", "1", "-nwe", "1", "--continue")) == 1  # nan again
    assert {name: (out / name).read_bytes() for name in written(out)} == first
    assert {name: os.stat(out / name).st_mtime_ns for name in kept} == kept  # the others not rewritten


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.parametrize("step, hook, words", [
    ("_prepare_step", "exit_preparing_good_b", ("preprocessing worker process ended unexpectedly", "case good_b")),
    ("_export_step", "exit_exporting_good_a", ("export worker process ended unexpectedly", "case good_a")),
    ("_prepare_step", "hang_preparing_good_b", ("worker has not finished case good_b after 4 s (--worker-timeout)",)),
], ids=["dies preparing", "dies exporting", "hangs preparing"])
def test_a_worker_that_dies_or_hangs_ends_predict_naming_the_case(trained_root, images, tmp_path, step, hook, words):
    out = tmp_path / "pred"
    args = command(trained_root, images, out, "-nwp", "1", "-nwe", "1", "--worker-timeout", "4")
    # a separate process, as a user runs predict: the step is replaced there, and a hang ends this test too
    code = (f"import sys, worker_hooks; from autoseg.inference import overlap; overlap.{step} = worker_hooks.{hook}; "
            f"from autoseg.cli import main; sys.exit(main({args!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("autoseg predict: error: ") and all(w in message for w in words), done.stderr
    assert "--continue" in message
    assert not alive(int((tmp_path / "worker.pid").read_text()))  # stopped, not left behind
    assert not (out / ("good_a.nii.gz" if "exporting" in hook else "good_b.nii.gz")).exists()
    # what was written is kept; the rest follows with --continue
    assert main(command(trained_root, images, out, "--continue", "-nwp", "0", "-nwe", "0")) == 1
    assert written(out) == [f"{c}.nii.gz" for c in GOOD]


def test_auto_turns_workers_on_with_a_gpu_only_and_for_two_cases_or_more(monkeypatch):
    from types import SimpleNamespace

    import autoseg.device
    from autoseg.inference.overlap import choose_workers

    def counts(prepare, export, predictors, cases) -> tuple[int, int]:
        workers, _ = choose_workers(prepare, export, predictors, cases)
        return workers.prepare, workers.export

    monkeypatch.setattr(autoseg.device, "usable_cpus", lambda: 16)
    gpu, cpu = [SimpleNamespace(device=SimpleNamespace(type="cuda"))], [SimpleNamespace(device="cpu")]  # onnx: "cpu"
    workers, why = choose_workers("auto", "auto", gpu, 10, 60)
    assert (workers.prepare, workers.export, workers.timeout_s, why) == (3, 3, 60.0, "the network runs on a GPU")
    assert counts("auto", "auto", cpu, 10) == (0, 0)
    assert counts("auto", "auto", gpu, 1) == (0, 0)  # one case: nothing to overlap
    assert counts(2, "auto", cpu, 10) == (2, 0) and counts(1, 2, gpu, 10) == (1, 2)  # a number given wins
    monkeypatch.setattr(autoseg.device, "usable_cpus", lambda: 4)  # (4 - 1) // 2: a core left to the main process
    assert counts("auto", "auto", gpu, 10) == (1, 1)
