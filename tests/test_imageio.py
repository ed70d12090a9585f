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


def _float_volume() -> np.ndarray:
    """(z, y, x) = (20, 30, 40) float32 noise: 24,000 voxels, 96,000 bytes of voxel data."""
    return np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("fraction", [1 / 2, 2 / 3])
def test_a_cut_off_file_is_refused_in_every_format(tmp_path, ending, fraction):
    whole = tmp_path / f"whole{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(_float_volume()), str(whole), useCompression=ending != ".nii")
    data = whole.read_bytes()
    cut = tmp_path / f"cut{ending}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match=r"cut\.(nii|mha|nrrd).*(copy or re-export it again)"):
        read_image([cut])
    with pytest.raises(ImageReadError):
        read_label(cut)
    assert read_image([whole])[0].shape == (1, 20, 30, 40)


def test_a_cut_off_nifti_names_the_size_its_header_declares(tmp_path):
    # SimpleITK alone pads both with zeros; the header declares 352 + 24,000 x 4 = 96,352 bytes
    plain, packed = tmp_path / "plain.nii", tmp_path / "packed.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_float_volume()), str(plain))
    sitk.WriteImage(sitk.GetImageFromArray(_float_volume()), str(packed), useCompression=True)
    assert plain.stat().st_size == 96352
    plain.write_bytes(plain.read_bytes()[:96352 // 2])
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size * 2 // 3])
    with pytest.raises(ImageReadError, match=r"plain\.nii: the file is incomplete: its header declares 96352 bytes "
                                             r"\(352 of header and 24000 values of 4 byte\(s\)\), but the file holds 48176"):
        read_image([plain])
    with pytest.raises(ImageReadError, match=r"packed\.nii\.gz: .*declares 96352 bytes.*gzip stream is cut off"):
        read_image([packed])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_and_inf_voxels_are_refused_in_every_format(tmp_path, ending):
    # SimpleITK's NIfTI reader turns NaN and inf into 0: the stored bytes are checked as well
    arr = _float_volume()
    arr[1, 1, 1], arr[2, 2, 2], arr[3, 3, 3] = np.nan, np.inf, -np.inf
    path = tmp_path / f"img{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(ImageReadError, match=rf"img{ending.replace('.', '[.]')}: holds 3 NaN/inf voxel\(s\) of 24000"):
        read_image([path])
    with pytest.raises(ImageReadError, match="3 NaN/inf"):
        read_label(path)


def test_float_labels_holding_integers_are_legal_and_others_are_refused(tmp_path):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1, 1, 1:3] = 2.0
    write = lambda a, name: sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name)) or tmp_path / name
    arr, _ = read_label(write(lab, "float.nii.gz"))
    assert arr.dtype == np.int16 and arr.sum() == 4
    half = lab.copy()
    half[0, 0, :3] = 0.5
    with pytest.raises(ImageReadError, match=r"half.nii.gz: .*found 3 voxel\(s\) with non-integer values such as 0.5"):
        read_label(write(half, "half.nii.gz"))
    big = lab.astype(np.int32)
    big[0, 0, 0] = 65537  # would become class 1 in int16
    with pytest.raises(ImageReadError, match="big.nii.gz: .*found values from 0 to 65537"):
        read_label(write(big, "big.nii.gz"))


@pytest.mark.realdata
def test_real_files_of_every_kind_are_read_whole(shared_data):
    hippocampus = shared_data / "Task04_Hippocampus"
    ct, _ = read_image([shared_data / "example_ct" / "example_ct_sm.nii.gz"])
    assert ct.shape == (1, 30, 101, 122)
    for image_file in sorted((hippocampus / "imagesTr").glob("*.nii.gz")):  # float32 and uint8 images
        image, _ = read_image([image_file])
        label, _ = read_label(hippocampus / "labelsTr" / image_file.name)
        assert image.shape == label.shape and set(np.unique(label).tolist()) <= {0, 1, 2}
    read_label(shared_data / "pyradiomics_mri" / "breast1_label.nrrd")


def test_a_nifti_header_extension_is_legal_and_short_data_in_a_whole_gzip_stream_is_not(tmp_path):
    # a 16-byte header extension moves the voxels to vox_offset 368: 368 + 24 x 4 = 464 bytes declared
    import gzip
    import struct

    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "plain.nii"))
    data = (tmp_path / "plain.nii").read_bytes()
    header = bytearray(data[:348])
    header[108:112] = struct.pack("<f", 368.0)
    extension = bytes([1, 0, 0, 0]) + struct.pack("<ii", 16, 0) + b"comments"
    with_extension = bytes(header) + extension + data[352:]
    (tmp_path / "ext.nii.gz").write_bytes(gzip.compress(with_extension))
    np.testing.assert_array_equal(read_image([tmp_path / "ext.nii.gz"])[0][0], arr)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(with_extension[:-8]))  # two voxels short, gzip whole
    with pytest.raises(ImageReadError, match=r"short.nii.gz: .*declares 464 bytes \(368 of header and 24 values "
                                             r"of 4 byte\(s\)\), but the decompressed stream holds 456"):
        read_image([tmp_path / "short.nii.gz"])
