"""The ``autoseg`` program as users start it (``python -m autoseg.cli``, the console script's
``run``): it ends with ``os._exit`` to skip the interpreter's teardown, so everything it printed
or wrote must be out before that, and its exit code must survive."""
import json
import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk


def autoseg(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as most shells run it
    return subprocess.run([sys.executable, "-m", "autoseg.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_mask(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_output_printed_into_a_pipe_is_complete(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((6, 6, 6), np.uint8)
    a[1:3, 1:3, 1:3] = 1  # 8 voxels
    b = np.zeros_like(a)
    b[1:3, 1:3, 2:4] = 1  # shifted by one voxel: 4 of 8 overlap, Dice 0.5
    write_mask(ref / "c1.nii.gz", a)
    write_mask(pred / "c1.nii.gz", b)
    done = autoseg("evaluate", "-ref", ref, "-pred", pred, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # stdout is a pipe here, so block-buffered: the last line only arrives if it was flushed
    assert done.stdout.rstrip().endswith(f"written to {pred / 'summary.json'}")
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["mean"]["1"]["dice"] == 0.5


def test_a_user_error_keeps_its_message_and_exit_code(tmp_path):
    done = autoseg("predict", "-i", tmp_path / "missing", "-o", tmp_path / "out", "-d", "4", "--root", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("autoseg predict: error: ")
