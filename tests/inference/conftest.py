"""Fixtures the inference tests share."""
import pytest

from autoseg.cli import main
from synthetic import make_dataset


def trained_workspace(tmp_path_factory, *settings: str) -> str:
    """A new workspace with Dataset901_Synth planned (cpu profile), preprocessed and fold 0 of
    3d_fullres trained with ``--set`` ``settings``; its root."""
    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    r = str(root)
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu", "-c", "3d_fullres",
                 "--root", r]) == 0
    assert main(["train", "3d_fullres", "0", "-d", "901", "--root", r, "-nw", "0",
                 *[a for s in settings for a in ("--set", s)]]) == 0
    return r


@pytest.fixture(scope="module")
def train_workspace(tmp_path_factory):
    """``trained_workspace`` for a module's own settings: ``train_workspace(*settings)``."""
    return lambda *settings: trained_workspace(tmp_path_factory, *settings)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> str:
    """Fold 0 trained for 2 iterations (one per test module: each module's predictions get a
    workspace of their own)."""
    return trained_workspace(tmp_path_factory, "schedule.num_epochs=1", "schedule.num_iterations_per_epoch=2",
                             "schedule.num_val_iterations_per_epoch=1")
