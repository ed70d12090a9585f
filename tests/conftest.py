"""Shared fixtures: tiny synthetic datasets and the location of the real data."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests that take more than ~20 s")
    config.addinivalue_line("markers", "realdata: tests that read ../shared/data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty autoseg workspace root with raw/ ready for datasets."""
    (tmp_path / "raw").mkdir()
    return tmp_path


@pytest.fixture
def synth_dataset(workspace: Path) -> Path:
    """Six tiny 3D cases with two nested ellipsoid classes, in raw/Dataset901_Synth."""
    from synthetic import make_dataset

    return make_dataset(workspace / "raw")
