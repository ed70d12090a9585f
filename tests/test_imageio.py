import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.imageio import FAKE_2D_SPACING, ImageReadError, read_image, read_label, write_image


def test_nifti_round_trip_keeps_geometry_exactly(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 2.9))  # x, y, z
    img.SetOrigin((10.5, -3.0, 7.25))
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))

    data, geom = read_image([tmp_path / "a.nii.gz"])
    assert data.shape == (1, 4, 5, 6) and data.dtype == np.float32
    assert geom.spacing == pytest.approx((2.9, 1.3, 0.7))  # array order z, y, x
    assert geom.origin == pytest.approx((10.5, -3.0, 7.25))
    assert geom.direction == pytest.approx(direction)

    write_image(arr.astype(np.uint8) % 3, geom, tmp_path / "out.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert back.GetOrigin() == pytest.approx(img.GetOrigin())
    assert back.GetDirection() == pytest.approx(direction)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr.astype(np.uint8) % 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(12, 7)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "g.png"))
    data, geom = read_image([tmp_path / "g.png"])
    assert data.shape == (1, 1, 12, 7) and geom.is_2d and geom.spacing == (FAKE_2D_SPACING, 1.0, 1.0)
    assert np.array_equal(data[0, 0], grey)

    rgb = np.stack([grey, 255 - grey, grey // 2], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    data, _ = read_image([tmp_path / "c.png"])
    assert data.shape == (3, 1, 12, 7)
    assert np.array_equal(data[1, 0], 255 - grey)

    seg = (grey % 3).astype(np.uint8)[None]
    write_image(seg, geom, tmp_path / "s.png")
    lab, lgeom = read_label(tmp_path / "s.png")
    assert lab.shape == (1, 1, 12, 7) and np.array_equal(lab[0], seg)


def test_rgb_label_is_rejected_with_explanation(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)  # a red class; an all-grey RGB label would be accepted
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "lab.png"))
    with pytest.raises(ImageReadError, match="3 channels.*RGB-coloured"):
        read_label(tmp_path / "lab.png")


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image([bad])


@pytest.mark.realdata
def test_nrrd_anisotropic_spacing(shared_data):
    data, geom = read_image([shared_data / "pyradiomics_mri" / "brain1_image.nrrd"])
    assert data.shape[0] == 1 and data.shape[1] == 25
    assert geom.spacing[0] == pytest.approx(6.5, abs=0.01)
    assert geom.spacing[1] == pytest.approx(geom.spacing[2])
