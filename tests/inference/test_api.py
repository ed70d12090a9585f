"""The Python API (``autoseg.inference.api``): a model loaded once from a workspace or a model zip
segments arrays, SimpleITK images, files and folders with the labels ``autoseg predict`` writes."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.inference.api import load_model
from synthetic import ellipsoid_case


@pytest.fixture(scope="module")
def selected_root(train_workspace) -> str:
    """Dataset901_Synth with fold 0 of 3d_fullres trained, validated and selected by find_best_config."""
    r = train_workspace("schedule.num_epochs=2", "schedule.num_iterations_per_epoch=3",
                        "schedule.num_val_iterations_per_epoch=1", "validation.mirroring=false")
    assert main(["find_best_config", "-d", "901", "-f", "0", "--root", r]) == 0
    return r


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two cases with 1.2 x 0.9 x 1.1 mm spacing (z, y, x), origin 0, identity direction."""
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    for cid, shape in (("a", (15, 18, 16)), ("b", (13, 17, 19))):
        arr, _ = ellipsoid_case(shape, rng)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.1, 0.9, 1.2))
        sitk.WriteImage(img, str(out / f"{cid}_0000.nii.gz"))
    return out


@pytest.fixture(scope="module")
def expected(selected_root, folder, tmp_path_factory) -> dict:
    """What ``autoseg predict`` writes for the cases of ``folder``."""
    out = tmp_path_factory.mktemp("cli")
    assert main(["predict", "-i", str(folder), "-o", str(out), "-d", "901", "--root", selected_root,
                 "--backend", "torch"]) == 0
    return {p.name[:-7]: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nii.gz"))}


def test_api_results_equal_the_cli_voxel_for_voxel(selected_root, folder, expected):
    with load_model(selected_root, dataset=901) as model:
        assert model.postprocessing is not None  # the selection's, as predict applies it
        from_folder = dict(model.predict_folder(folder))
        assert sorted(from_folder) == ["a", "b"]
        for cid, result in from_folder.items():
            assert np.array_equal(result.labels, expected[cid]) and result.probabilities is None
        image = sitk.ReadImage(str(folder / "a_0000.nii.gz"))
        from_image = model.predict(image, probabilities=True)
        array = sitk.GetArrayFromImage(image)
        from_array = model.predict(array, spacing=(1.2, 0.9, 1.1))
        assert np.array_equal(from_image.labels, expected["a"]) and np.array_equal(from_array.labels, expected["a"])
        probs = from_image.probabilities
        assert probs.shape == (3,) + array.shape and np.allclose(probs.sum(0), 1, atol=1e-4)
        written = from_image.as_sitk()
        assert written.GetSpacing() == pytest.approx(image.GetSpacing()) and written.GetSize() == image.GetSize()
        [from_file] = list(model.predict_files([folder / "b_0000.nii.gz"]))
        assert np.array_equal(from_file.labels, expected["b"])


def test_a_model_zip_loads_without_a_workspace_and_cleans_up(selected_root, folder, expected, tmp_path):
    archive = tmp_path / "model.zip"
    assert main(["export_model", "-d", "901", "-o", str(archive), "--root", selected_root]) == 0
    model = load_model(archive)
    unpacked = model._workspace_copy
    assert unpacked.is_dir()
    assert np.array_equal(dict(model.predict_folder(folder))["b"].labels, expected["b"])
    model.close()
    assert not unpacked.exists()


def test_inputs_that_do_not_fit_the_model_are_refused(selected_root):
    with load_model(selected_root, dataset=901, postprocess=False) as model:
        assert model.postprocessing is None
        array = np.zeros((12, 14, 13), np.float32)
        with pytest.raises(UserFacingError, match="needs its spacing: three positive numbers"):
            model.predict(array)
        with pytest.raises(UserFacingError, match=r"2 channel\(s\) given, the model expects 1 \(MRI\)"):
            model.predict(np.zeros((2, 12, 14, 13), np.float32), spacing=(1, 1, 1))
        with pytest.raises(UserFacingError, match="finite numbers"):
            model.predict(np.full((12, 14, 13), np.nan, np.float32), spacing=(1, 1, 1))
    with pytest.raises(UserFacingError, match="neither a workspace folder nor a model zip"):
        load_model(Path(selected_root) / "missing")
