"""``autoseg predict`` runs the cascade chain (lowres, then cascade) on a tiny model trained by the real
pipeline: 2-fold hand-made split, 3d_lowres folds 0 and 1, 3d_cascade_fullres fold 0 (once per module)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.imageio import read_image
from autoseg.inference.predict import load_predictor
from autoseg.paths import Workspace
from autoseg.preprocess.preprocessor import export_to_original, preprocess_case
from autoseg.preprocess.previous_stage import one_hot, previous_stage_to_grid
from synthetic import make_dataset, plan_and_preprocess_cpu

NAME = "Dataset901_Synth"
TINY = ["--set", "num_epochs=1", "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1",
        "--set", "validation_mirroring=false"]


@pytest.fixture(scope="module")
def cascade_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    r = str(root)
    plan_and_preprocess_cpu(r)
    cases = [f"case_{i:03d}" for i in range(6)]
    splits = [{"train": cases[3:], "val": cases[:3]}, {"train": cases[:3], "val": cases[3:]}]
    (root / "preprocessed" / NAME / "splits.json").write_text(json.dumps(splits))
    assert main(["train", "3d_lowres", "0", "1", "-d", "901", "--root", r, "-np", "0", *TINY]) == 0
    assert main(["train", "3d_cascade_fullres", "0", "-d", "901", "--root", r, "-np", "0", *TINY]) == 0
    return r


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_dataset(folder, name="Dataset905_New", num_cases=2, seed=5)
    for p in (folder / "Dataset905_New" / "imagesTr").iterdir():
        shutil.copy(p, folder / p.name)
    shutil.rmtree(folder / "Dataset905_New")
    return folder


def predict(root, images, out, *extra) -> int:
    return main(["predict", "-i", str(images), "-o", str(out), "-d", "901", "--root", root, "--disable_tta", *extra])


def probabilities(folder: Path, case: str) -> np.ndarray:
    with np.load(folder / f"{case}.npz") as z:
        return z["probabilities"].astype(np.float32)


def test_cascade_validation_used_the_cross_validation_masks(cascade_root):
    results = Path(cascade_root) / "results" / NAME
    validation = results / "3d_cascade_fullres" / "default" / "fold_0" / "validation"
    assert sorted(p.name for p in validation.glob("*.nii.gz")) == [f"case_{i:03d}.nii.gz" for i in range(3)]
    cached = results / "3d_lowres" / "default" / "predicted_next_stage"
    for i in range(6):
        source = json.loads((cached / f"case_{i:03d}.json").read_text())["source"]
        assert Path(source).parent.parent.name == ("fold_0" if i < 3 else "fold_1")


def test_predict_runs_lowres_then_cascade(cascade_root, images, tmp_path):
    out = tmp_path / "cascade"
    assert predict(cascade_root, images, out, "-c", "3d_cascade_fullres", "-f", "0", "--save_probabilities") == 0
    ws = Workspace(Path(cascade_root))
    lowres = load_predictor(ws, NAME, "3d_lowres", "default", ["0"], "checkpoint_final", "cpu", 0.5, False)
    cascade = load_predictor(ws, NAME, "3d_cascade_fullres", "default", ["0"], "checkpoint_final", "cpu", 0.5, False)
    assert cascade.previous is not None and cascade.previous.configuration.name == "3d_lowres"
    for case in ("case_000", "case_001"):
        image, geometry = read_image([images / f"{case}_0000.nii.gz"])
        # the chain by hand: lowres in the original geometry -> fullres grid -> one-hot channels
        low_seg, _ = lowres.predict_case(image, geometry)
        data, _, props = preprocess_case(image, geometry, cascade.plans, "3d_cascade_fullres")
        grid = previous_stage_to_grid(low_seg, props, cascade.plans, "3d_cascade_fullres")
        by_hand = cascade.predict_preprocessed(np.concatenate([data, one_hot(grid, [1, 2])]))
        _, expected = export_to_original(by_hand, props, cascade.plans, "3d_cascade_fullres")
        got = probabilities(out, case)
        np.testing.assert_allclose(got, expected, atol=2e-3)
        # the mask channels matter: another lowres mask (class 1 wherever the real one has none, and
        # nowhere else) gives other probabilities
        other = cascade.predict_preprocessed(np.concatenate([data, one_hot(np.where(grid == 1, 0, 1), [1, 2])]))
        assert np.abs(other - by_hand).max() > 1e-3
        written = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert written.GetSize() == sitk.ReadImage(str(images / f"{case}_0000.nii.gz")).GetSize()


def test_selected_ensemble_with_the_cascade_runs_the_chain(cascade_root, images, tmp_path):
    root = Path(cascade_root)
    assert main(["find_best_config", "-d", "901", "-f", "0", "--root", cascade_root]) == 0
    selection_path = root / "results" / NAME / "selection.json"
    selection = json.loads(selection_path.read_text())
    assert {"3d_lowres", "3d_cascade_fullres", "3d_lowres+3d_cascade_fullres"} <= set(selection["candidates"])
    selection["configurations"] = ["3d_lowres", "3d_cascade_fullres"]
    selection_path.write_text(json.dumps(selection))
    both, low, casc = tmp_path / "both", tmp_path / "low", tmp_path / "casc"
    assert predict(cascade_root, images, both, "--save_probabilities", "--no-postprocessing") == 0
    assert predict(cascade_root, images, low, "-c", "3d_lowres", "-f", "0", "--save_probabilities") == 0
    assert predict(cascade_root, images, casc, "-c", "3d_cascade_fullres", "-f", "0", "--save_probabilities") == 0
    for case in ("case_000", "case_001"):
        mean = (probabilities(low, case) + probabilities(casc, case)) / 2
        np.testing.assert_allclose(probabilities(both, case), mean, atol=2e-3)


def test_missing_lowres_fold_at_predict_time_is_named(cascade_root, images, tmp_path, capsys):
    lowres_fold = Path(cascade_root) / "results" / NAME / "3d_lowres" / "default" / "fold_0"
    hidden = lowres_fold.with_name("hidden_fold_0")
    lowres_fold.rename(hidden)
    try:
        assert predict(cascade_root, images, tmp_path / "x", "-c", "3d_cascade_fullres", "-f", "0") == 2
    finally:
        hidden.rename(lowres_fold)
    err = capsys.readouterr().err
    assert "3d_cascade_fullres runs 3d_lowres ('default') first" in err
    assert "3d_lowres/default/fold_0" in err and f"autoseg train 3d_lowres FOLD -d {NAME}" in err


def test_cascade_fold_all_predicts_with_every_lowres_fold(cascade_root, images, tmp_path):
    ws = Workspace(Path(cascade_root))
    results = ws.results / NAME / "3d_cascade_fullres" / "default"
    shutil.copytree(results / "fold_0", results / "fold_all")  # stands in for a cascade trained on fold 'all'
    try:
        p = load_predictor(ws, NAME, "3d_cascade_fullres", "default", ["all"], "checkpoint_final", "cpu")
        assert len(p.networks) == 1 and len(p.previous.networks) == 2  # lowres folds 0 and 1
    finally:
        shutil.rmtree(results / "fold_all")
