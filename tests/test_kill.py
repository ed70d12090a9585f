"""kill -9 in the middle of a stage's work, then the same command again (``train --continue``,
``predict --continue``): the result is the uninterrupted run's, file by file.

Each test first runs the command uninterrupted and measures how long its work takes after it has
begun (its first output folder appears); the killed run is sent SIGKILL a seeded random share of
that time after its own work has begun (predict: after a seeded random number of cases is written,
within the next case's time). A run that ends before its kill (the machine is shared, and timings
vary) is retried with an earlier kill, so every test does kill a run in its work.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from synthetic import ellipsoid_case, make_dataset

DS = "Dataset901_Synth"
TRAIN = ["train", "3d_fullres", "0", "-d", "901", "-np", "0", "--device", "cpu", "--set", "precision=fp32",
         "--set", "num_epochs=4", "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1",
         "--set", "checkpoint_every_epochs=1"]


def start(args: list, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "autoseg.cli", *map(str, args), "--root", str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run(args: list, root: Path) -> None:
    proc = start(args, root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def timed(args: list, root: Path, begun: Callable[[], bool], ended: Callable[[], bool] = lambda: False) -> float:
    """Run ``args`` to its end; the seconds from when ``begun()`` first held to when ``ended()`` first
    held (or the process ended)."""
    proc = start(args, root)
    since = until = None
    while proc.poll() is None:
        if since is None and begun():
            since = time.monotonic()
        if until is None and ended():
            until = time.monotonic()
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()
    now = time.monotonic()
    return (until or now) - (since or now)


def killed(args: list, root: Path, begun: Callable[[], bool], work_s: float, rng: random.Random,
           share: float) -> bool:
    """Start ``args``, and once ``begun()`` holds send SIGKILL after ``share`` x a random fraction of
    ``work_s``; True when it was killed, False when it had ended first."""
    proc = start(args, root)
    while not begun() and proc.poll() is None:
        time.sleep(0.01)
    deadline = time.monotonic() + share * rng.uniform(0.1, 0.9) * work_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read()  # ended by itself, and well
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return True


def kill_then_rerun(args: list, rerun: list, template: Path, tmp: Path, begun: Callable[[Path], bool],
                    work_s: float, seed: int) -> Path:
    """A copy of ``template`` in which ``args`` was killed in its work, then ``rerun`` ran to its end."""
    rng = random.Random(seed)
    for attempt in range(4):
        root = tmp / f"killed{attempt}"
        shutil.copytree(template, root)
        if killed(args, root, lambda: begun(root), work_s, rng, share=0.5 ** attempt):
            run(rerun, root)
            return root
    pytest.fail(f"{args[0]} ended before every kill ({work_s:.1f} s of work measured)")


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by its relative path, but the hidden ``.NAME.tmpPID`` files a killed
    writer leaves (never read: each file is written under such a name and renamed into place)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (p.name.startswith(".") and ".tmp" in p.name)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_ws")
    make_dataset(root / "raw", num_cases=5, shape=(12, 14, 13))
    return root


@pytest.fixture(scope="module")
def planned(raw, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planned") / "ws"
    shutil.copytree(raw, root)
    run(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "gpu-8gb", "-c", "3d_fullres"], root)
    return root


@pytest.fixture(scope="module")
def trained(planned, tmp_path_factory) -> tuple[Path, float]:
    """A copy of ``planned`` with fold 0 trained uninterrupted, and the seconds its epochs took (from its
    fold folder's creation to checkpoint_final; the final validation after it is left out, so that kills
    land between epochs and within them)."""
    root = tmp_path_factory.mktemp("trained") / "ws"
    shutil.copytree(planned, root)
    work_s = timed(TRAIN, root, lambda: fold0(root).is_dir(), lambda: (fold0(root) / "checkpoint_final.pth").exists())
    return root, work_s


def fold0(root: Path) -> Path:
    return root / "results" / DS / "3d_fullres" / "default" / "fold_0"


def test_plan_and_preprocess_killed_then_rerun_writes_what_an_uninterrupted_run_writes(raw, tmp_path):
    args = ["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "gpu-8gb", "-c", "3d_fullres"]
    reference = tmp_path / "reference"
    shutil.copytree(raw, reference)
    begun = lambda root: (root / "preprocessed" / DS).is_dir()  # noqa: E731
    work_s = timed(args, reference, lambda: begun(reference))
    root = kill_then_rerun(args, args, raw, tmp_path, begun, work_s, seed=1)
    want = files(reference / "preprocessed")
    assert files(root / "preprocessed") == want and any(k.endswith(".data.b2") for k in want)


@pytest.mark.slow
def test_training_killed_then_continued_ends_with_the_uninterrupted_weights(planned, trained, tmp_path):
    import torch

    reference, work_s = trained
    root = kill_then_rerun(TRAIN, TRAIN + ["--continue"], planned, tmp_path, fold0, work_s, seed=2)
    want = torch.load(fold0(reference) / "checkpoint_final.pth", weights_only=True)["network"]
    got = torch.load(fold0(root) / "checkpoint_final.pth", weights_only=True)["network"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_predict_killed_then_continued_writes_what_an_uninterrupted_run_writes(trained, tmp_path):
    model, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5):
        sitk.WriteImage(sitk.GetImageFromArray(ellipsoid_case((14, 16, 15), rng)[0]), str(images / f"c{i}_0000.nii.gz"))

    def args(out: Path) -> list:
        return ["predict", "-i", images, "-o", out, "-d", "901", "-c", "3d_fullres", "-f", "0", "--backend", "torch",
                "--precision", "fp32", "--device", "cpu", "--save_probabilities", "--disable_tta"]

    cases = 5
    per_case_s = timed(args(tmp_path / "reference"), model, lambda: (tmp_path / "reference").is_dir()) / cases
    rng_kill = random.Random(3)
    for attempt in range(4):  # killed once a random number of cases is written, within the next case's time
        out = tmp_path / f"killed{attempt}"
        done = rng_kill.randrange(cases - 1)
        if killed(args(out), model, lambda: out.is_dir() and len(list(out.glob("*.nii.gz"))) >= done, per_case_s,
                  rng_kill, share=0.5 ** attempt):
            break
    else:
        pytest.fail(f"predict ended before every kill ({per_case_s:.1f} s a case measured)")
    run(args(out) + ["--continue"], model)
    assert files(out) == files(tmp_path / "reference")
