"""Fixtures the inference tests share."""
import pytest

from autoseg.cli import main
from synthetic import make_dataset


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> str:
    """A workspace with Dataset901_Synth planned, preprocessed and fold 0 of 3d_fullres trained
    (one per test module: each module's predictions get a workspace of their own)."""
    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    r = str(root)
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu", "-c", "3d_fullres",
                 "--root", r]) == 0
    assert main(["train", "3d_fullres", "0", "-d", "901", "--root", r, "-nw", "0", "--set", "schedule.num_epochs=1",
                 "--set", "schedule.num_iterations_per_epoch=2", "--set", "schedule.num_val_iterations_per_epoch=1"]) == 0
    return r
