"""2D image datasets (PNG/TIFF/BMP): reading and writing, RGB channels and normalisation,
label formats and their errors, 2d-only planning, and one run through every command."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from autoseg.cli import main
from autoseg.dataset import DatasetError
from autoseg.fingerprint import extract_fingerprint
from autoseg.imageio import FAKE_2D_SPACING, ImageReadError, read_image, read_label, write_image
from autoseg.integrity import verify_dataset_folder
from autoseg.planners.experiment import plan_experiment
from autoseg.preprocess.preprocessor import preprocess_case
from synthetic import make_png_dataset


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif", ".tiff"])
def test_label_map_round_trip_keeps_size_and_values(tmp_path, ending):
    # 7 rows x 12 columns, values 0..5: read as (1, 1, H, W), written back as an 8-bit grey image
    grey = (np.arange(7 * 12) % 6).astype(np.uint8).reshape(7, 12)
    Image.fromarray(grey).save(tmp_path / f"in{ending}")
    data, geom = read_image([tmp_path / f"in{ending}"])
    assert data.shape == (1, 1, 7, 12) and geom.shape == (1, 7, 12)
    assert geom.is_2d and geom.spacing == (FAKE_2D_SPACING, 1.0, 1.0)
    assert np.array_equal(data[0, 0], grey)

    write_image(grey[None].astype(np.int64), geom, tmp_path / f"out{ending}")
    with Image.open(tmp_path / f"out{ending}") as back:
        assert back.size == (12, 7) and back.mode == "L"  # (width, height), 8 bit, one channel
        assert np.array_equal(np.asarray(back), grey)
    lab, _ = read_label(tmp_path / f"out{ending}")
    assert lab.shape == (1, 1, 7, 12) and np.array_equal(lab[0, 0], grey)


def test_label_values_above_255_are_written_as_16_bit_png(tmp_path):
    _, geom = read_image([_grey_png(tmp_path / "g.png", np.zeros((3, 4), np.uint8))])
    seg = np.array([[0, 1, 300, 2], [0, 0, 0, 0], [5, 5, 5, 1000]], np.int32)[None]
    write_image(seg, geom, tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as back:
        assert back.mode.startswith("I")  # 16-bit grey
    assert np.array_equal(read_label(tmp_path / "s.png")[0][0], seg)


def test_grey_bmp_is_one_channel(tmp_path):
    # SimpleITK reads an 8-bit grey BMP (a grey palette) as RGB; autoseg reads it as one channel
    grey = np.array([[0, 50], [100, 250]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.bmp")
    assert sitk.ReadImage(str(tmp_path / "a.bmp")).GetNumberOfComponentsPerPixel() == 3
    data, _ = read_image([tmp_path / "a.bmp"])
    assert data.shape == (1, 1, 2, 2) and np.array_equal(data[0, 0], grey)


def test_rgb_png_is_three_channels_like_three_grey_files(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, np.arange(6) * 40, 255
    Image.fromarray(rgb).save(tmp_path / "c_0000.png")
    for c in range(3):
        Image.fromarray(rgb[..., c]).save(tmp_path / f"f_{c:04d}.png")
    one, _ = read_image([tmp_path / "c_0000.png"])
    three, _ = read_image([tmp_path / f"f_{c:04d}.png" for c in range(3)])
    assert one.shape == three.shape == (3, 1, 5, 6)
    assert np.array_equal(one, three)
    assert np.array_equal(one[1, 0, 0], [0, 40, 80, 120, 160, 200])


def test_palette_png_label_reads_indices_and_palette_image_reads_colours(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))  # black, red, green
    im.save(tmp_path / "lab.png")
    lab, geom = read_label(tmp_path / "lab.png")
    assert lab.shape == (1, 1, 2, 3) and np.array_equal(lab[0, 0], idx)
    colours, _ = read_image([tmp_path / "lab.png"])  # as an image the palette gives the colours
    assert colours.shape == (3, 1, 2, 3)
    assert np.array_equal(colours[:, 0, 0, 1], [255, 0, 0]) and np.array_equal(colours[:, 0, 0, 2], [0, 255, 0])


def test_grey_label_saved_as_rgb_or_with_opaque_alpha_is_accepted(tmp_path):
    grey = np.array([[0, 1], [2, 1]], np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), mode="LA").save(tmp_path / "la.png")
    for name in ("rgb.png", "la.png"):
        lab, _ = read_label(tmp_path / name)
        assert lab.shape == (1, 1, 2, 2) and np.array_equal(lab[0, 0], grey)


def test_rgb_coloured_label_is_refused_with_the_colours_and_how_to_convert(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :2] = (255, 0, 0)
    rgb[3, 3] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "lab.png")
    with pytest.raises(ImageReadError) as info:
        read_label(tmp_path / "lab.png")
    msg = str(info.value)
    assert "lab.png" in msg and "one channel holding the class indices 0..N" in msg
    assert "3 colours (0, 0, 0), (0, 0, 255), (255, 0, 0)" in msg
    assert "mapping each colour to its class index" in msg and "palette PNG" in msg


def test_integrity_reports_rgb_label_rgb_channel_count_and_255_masks(workspace):
    folder = make_png_dataset(workspace / "raw", num_cases=3, rgb=True)
    rgb_label = np.zeros((48, 40, 3), np.uint8)
    rgb_label[10:20, 10:20] = (0, 255, 0)
    Image.fromarray(rgb_label).save(folder / "labelsTr" / "case_000.png")
    mask = np.zeros((48, 40), np.uint8)
    mask[5:9, 5:9] = 255
    Image.fromarray(mask).save(folder / "labelsTr" / "case_001.png")
    meta = json.loads((folder / "dataset.json").read_text())
    meta["channel_names"] = {"0": "RGB"}  # an RGB file is 3 channels, not 1
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as info:
        verify_dataset_folder(folder, num_processes=1)
    problems = info.value.problems
    assert any("case case_000" in p and "RGB-coloured label" in p and "(0, 255, 0)" in p for p in problems)
    assert any("case case_001" in p and "[255]" in p and "0/255" in p for p in problems)
    assert any("case case_002" in p and "case_002_0000.png alone holds 3" in p
               and '{"0": "R", "1": "G", "2": "B"}' in p for p in problems)


def test_rgb_plan_is_2d_only_with_per_image_per_channel_zscore(workspace):
    folder = make_png_dataset(workspace / "raw", num_cases=4, rgb=True)
    fp = extract_fingerprint(verify_dataset_folder(folder, num_processes=1), num_processes=1)
    assert fp.is_2d
    for force_lowres in (False, True):
        plans = plan_experiment(fp, "cpu", force_lowres=force_lowres)
        assert list(plans.configurations) == ["2d"]
    cfg = plans.configuration("2d")
    assert cfg.normalization == ("zscore",) * 3 and cfg.use_mask_for_norm == (False,) * 3
    assert cfg.patch_size == (48, 40)  # the whole 48 x 40 image

    # hand-computed: each channel is standardised on its own, over the whole image (zeros included)
    image = np.zeros((3, 1, 2, 2), np.float32)
    image[0, 0] = [[10, 20], [30, 40]]  # mean 25, std sqrt(125)
    image[1, 0] = [[0, 0], [200, 200]]  # mean 100, std 100: the zeros are content, not outside a mask
    image[2, 0] = 255  # constant: 0 everywhere
    _, geom = read_image([_grey_png(workspace / "g.png", np.zeros((2, 2), np.uint8))])
    data, _, props = preprocess_case(image, geom, plans, "2d")
    assert data.shape == (3, 1, 2, 2) and props.crop_bbox == ((0, 1), (0, 2), (0, 2))
    s = np.sqrt(125.0)
    assert np.allclose(data[0, 0], [[-15 / s, -5 / s], [5 / s, 15 / s]], atol=1e-5)
    assert np.allclose(data[1, 0], [[-1, -1], [1, 1]], atol=1e-6)
    assert np.allclose(data[2, 0], 0.0)


def test_grey_plan_is_2d_only(workspace):
    folder = make_png_dataset(workspace / "raw", num_cases=3)
    fp = extract_fingerprint(verify_dataset_folder(folder, num_processes=1), num_processes=1)
    plans = plan_experiment(fp, "gpu-8gb", force_lowres=True)
    assert list(plans.configurations) == ["2d"]
    assert plans.configuration("2d").network.dim == 2


@pytest.mark.slow  # about 20-25 s on an idle 2-core CPU
def test_png_dataset_through_every_command(tmp_path):
    """plan_and_preprocess -> train -> find_best_config -> predict -> evaluate on RGB PNGs."""
    ws = tmp_path / "ws"
    folder = make_png_dataset(ws / "raw", num_cases=8, shape=(32, 28), rgb=True, seed=1)
    test_images, test_labels = folder / "imagesTs", tmp_path / "labelsTs"
    test_images.mkdir()
    test_labels.mkdir()
    for cid in ("case_006", "case_007"):  # held out
        shutil.move(folder / "imagesTr" / f"{cid}_0000.png", test_images / f"{cid}_0000.png")
        shutil.move(folder / "labelsTr" / f"{cid}.png", test_labels / f"{cid}.png")
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "numTraining": 6}))
    root = ["--root", str(ws)]

    assert main(["plan_and_preprocess", "-d", "902", "-np", "1", "--device-profile", "cpu", *root]) == 0
    pre = ws / "preprocessed" / "Dataset902_SynthPNG"
    plans = json.loads((pre / "plans.json").read_text())
    assert list(plans["configurations"]) == ["2d"]
    assert sorted(p.name for p in pre.iterdir() if p.is_dir()) == ["2d", "gt_segmentations"]

    assert main(["train", "2d", "0", "-d", "902", "-nw", "0", "--set", "num_epochs=3",
                 "--set", "num_iterations_per_epoch=8", "--set", "num_val_iterations_per_epoch=1", *root]) == 0
    assert main(["find_best_config", "-d", "902", "-f", "0", *root]) == 0
    selection = json.loads((ws / "results" / "Dataset902_SynthPNG" / "selection.json").read_text())
    assert selection["configurations"] == ["2d"]

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(test_images), "-o", str(out), "-d", "902", *root]) == 0
    for cid in ("case_006", "case_007"):
        with Image.open(out / f"{cid}.png") as pred, Image.open(test_images / f"{cid}_0000.png") as src:
            assert pred.size == src.size == (28, 32) and pred.mode == "L"
            assert set(np.unique(np.asarray(pred)).tolist()) <= {0, 1, 2}
    assert main(["evaluate", "-ref", str(test_labels), "-pred", str(out), "-d", "902", *root]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # chance level: the outer ellipse covers ~12% of an image, so a random guess scores ~0.12
    assert summary["mean"]["1"]["dice"] > 0.4


def _grey_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _load_bench_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "data" / "make_2d_dataset.py"
    spec = importlib.util.spec_from_file_location("make_2d_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_oct_dataset_is_valid_seeded_and_layered(tmp_path):
    bench = _load_bench_script()
    folder = bench.make_dataset(tmp_path / "a", num_train=5, num_test=2, height=64, width=48)
    again = bench.make_dataset(tmp_path / "b", num_train=5, num_test=2, height=64, width=48)
    spec = verify_dataset_folder(folder, num_processes=1)
    assert spec.num_training == 5 and spec.foreground_labels == (1, 2, 3, 4, 5, 6, 7)
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["oct_005.png", "oct_006.png"]
    for sub, name in (("imagesTr", "oct_003_0000.png"), ("labelsTr", "oct_003.png"), ("imagesTs", "oct_006_0000.png")):
        assert (folder / sub / name).read_bytes() == (again / sub / name).read_bytes()  # seeded
    image = np.asarray(Image.open(folder / "imagesTr" / "oct_000_0000.png"))
    label = np.asarray(Image.open(folder / "labelsTr" / "oct_000.png"))
    assert image.shape == label.shape == (64, 48) and image.dtype == np.uint8
    for column in label.T:  # top to bottom: vitreous (0), the layers 1..7 in order, then sclera (0)
        inside = column[column > 0]
        assert np.all(np.diff(inside.astype(int)) >= 0)
        first, last = np.flatnonzero(column)[[0, -1]]
        assert column[0] == 0 and np.all(column[first:last + 1] > 0)
    # reflectivity: the nerve fibre layer is brighter than the inner nuclear layer and the vitreous
    assert image[label == 1].mean() > image[label == 3].mean()
    assert image[label == 1].mean() > image[:3].mean()
