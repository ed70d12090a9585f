import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from autoseg.fingerprint_types import CaseFingerprint, load_fingerprint
from autoseg.planners.experiment import plan_experiment, target_spacing
from autoseg.planners.topology import plan_topology
from autoseg.plans import load_plans, save_plans

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def hippocampus():
    return load_fingerprint(DATA / "hippocampus_fingerprint.json")


def with_cases(fp, shape, spacing, n=10):
    case = CaseFingerprint("c", shape, spacing, shape, {}, {})
    cases = tuple(dataclasses.replace(case, case_id=f"c{i}") for i in range(n))
    return dataclasses.replace(fp, cases=cases)


def test_golden_hippocampus_3d_fullres(hippocampus):
    cfg = plan_experiment(hippocampus).configuration("3d_fullres")
    assert cfg.spacing == (1.0, 1.0, 1.0)
    assert cfg.patch_size == (40, 56, 40)
    assert cfg.batch_size == 7  # capped at 5% of the dataset's voxels
    assert cfg.network.features_per_stage == (32, 64, 128, 256)
    assert cfg.network.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert cfg.network.kernel_sizes == ((3, 3, 3),) * 4
    assert cfg.normalization == ("zscore",) and cfg.use_mask_for_norm == (False,)
    assert not cfg.batch_dice  # nnU-Net: Dice per sample in 3D, over the batch in 2D


def test_hippocampus_2d_and_no_lowres(hippocampus):
    plans = plan_experiment(hippocampus)
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    two = plans.configuration("2d")
    assert two.patch_size == (56, 40) and two.network.dim == 2 and two.batch_dice


def test_plans_round_trip(hippocampus, tmp_path):
    plans = plan_experiment(hippocampus, force_lowres=True)
    save_plans(plans, tmp_path / "plans.json")
    assert load_plans(tmp_path / "plans.json") == plans


def test_anisotropic_spacing_and_kernels(hippocampus):
    fp = with_cases(hippocampus, (25, 256, 256), (6.5, 0.78, 0.78))
    cfg = plan_experiment(fp).configuration("3d_fullres")
    assert cfg.spacing == pytest.approx((6.5, 0.78, 0.78))
    assert cfg.network.kernel_sizes[0] == (1, 3, 3)
    assert cfg.network.strides[1] == (1, 2, 2)  # the coarse axis is not pooled first


def test_target_spacing_uses_low_percentile_on_coarse_axis():
    spacings = np.array([[5.0, 0.8, 0.8]] * 8 + [[10.0, 0.8, 0.8]] * 12)
    assert target_spacing(spacings)[0] == pytest.approx(5.0)  # median would be 10
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [1.4, 1.0, 1.0]])
    assert target_spacing(iso) == pytest.approx((1.2, 1.0, 1.0))


@pytest.mark.parametrize("shape,spacing", [((40, 50, 30), (1, 1, 1)), ((30, 300, 280), (5, 0.7, 0.7)),
                                           ((1, 480, 640), (999, 1, 1)), ((400, 512, 512), (1, 0.8, 0.8))])
def test_patch_divisible_by_total_stride(hippocampus, shape, spacing):
    fp = with_cases(hippocampus, shape, spacing)
    fp = dataclasses.replace(fp, is_2d=shape[0] == 1)
    for cfg in plan_experiment(fp).configurations.values():
        for p, s in zip(cfg.patch_size, cfg.network.total_stride):
            assert p % s == 0
        assert cfg.batch_size >= 2


def test_lowres_trigger_and_cascade(hippocampus):
    big = with_cases(hippocampus, (400, 512, 512), (1.0, 0.8, 0.8))
    plans = plan_experiment(big)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans.configurations)
    low, full = plans.configuration("3d_lowres"), plans.configuration("3d_fullres")
    assert all(l > f for l, f in zip(low.spacing, full.spacing))
    assert math.prod(low.patch_size) >= 0.5 * math.prod(low.median_shape)
    cascade = plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and low.next_stage == "3d_cascade_fullres"
    assert cascade.preprocessed_name == "3d_fullres"
    assert "3d_lowres" not in plan_experiment(hippocampus).configurations
    forced = plan_experiment(hippocampus, force_lowres=True)
    assert forced.configuration("3d_lowres").spacing == (2.0, 2.0, 2.0)


def test_natural_2d_plans_only_2d(hippocampus):
    fp = dataclasses.replace(with_cases(hippocampus, (1, 480, 640), (999.0, 1.0, 1.0)), is_2d=True)
    assert set(plan_experiment(fp).configurations) == {"2d"}


def test_ct_channel_gets_ct_normalisation(hippocampus):
    fp = dataclasses.replace(hippocampus, channel_names=("CT",))
    assert plan_experiment(fp).configuration("3d_fullres").normalization == ("ct",)


def test_cpu_profile_is_smaller(hippocampus):
    gpu = plan_experiment(hippocampus).configuration("3d_fullres")
    cpu = plan_experiment(hippocampus, profile="cpu").configuration("3d_fullres")
    assert cpu.network.features_per_stage == (8, 16, 32, 64) and cpu.batch_size == 2
    assert cpu.patch_size == gpu.patch_size
    with pytest.raises(KeyError, match="did you mean 'cpu'"):
        plan_experiment(hippocampus, profile="cpuu")


def test_topology_stops_at_min_feature_map():
    net = plan_topology((36, 50, 35), (1.0, 1.0, 1.0))
    assert net.total_stride == (8, 8, 8) and len(net.strides) == 4


@pytest.mark.realdata
def test_real_anisotropic_mri(shared_data, tmp_path):
    import json
    import os

    from autoseg.dataset import load_dataset
    from autoseg.fingerprint import extract_fingerprint

    folder = tmp_path / "Dataset951_Brain"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case in ("brain1", "brain2"):
        os.symlink(shared_data / "pyradiomics_mri" / f"{case}_image.nrrd", folder / "imagesTr" / f"{case}_0000.nrrd")
        os.symlink(shared_data / "pyradiomics_mri" / f"{case}_label.nrrd", folder / "labelsTr" / f"{case}.nrrd")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "tumour": 1}, "numTraining": 2,
        "file_ending": ".nrrd"}))
    fp = extract_fingerprint(load_dataset(folder), num_processes=1)
    cfg = plan_experiment(fp).configuration("3d_fullres")
    assert cfg.spacing[0] > 3 * cfg.spacing[1]
    assert cfg.network.kernel_sizes[0] == (1, 3, 3)


@pytest.mark.parametrize("profile", ["gpu-8gb", "cpu"])
@pytest.mark.parametrize("slices", [8, 10, 12])
def test_a_shallow_thick_slice_stack_keeps_its_whole_depth(hippocampus, profile, slices):
    # cine MRI: 8-12 slices of 10 mm at 1.5 mm in-plane; the median image is 100-120 x 322 x 352 mm
    fp = with_cases(hippocampus, (slices, 215, 235), (10.0, 1.5, 1.5))
    plans = plan_experiment(fp, profile)
    full = plans.configuration("3d_fullres")
    assert full.patch_size[0] >= slices  # the whole stack in every patch
    assert full.network.kernel_sizes[0] == (1, 3, 3)
    # in-plane gives way instead, but keeps at least the depth's extent in mm (10 slices: 100 mm)
    assert min(full.patch_size[1:]) * 1.5 >= slices * 10.0 - 1.5 * full.network.total_stride[1]
    assert set(plans.configurations) == {"2d", "3d_fullres"}  # no lowres stage for a 100 x 322 x 352 mm image


def test_the_axis_reaching_furthest_in_mm_shrinks_first():
    from autoseg.planners.experiment import axis_to_shrink

    assert axis_to_shrink((10, 224, 256), (10, 215, 235), (10, 1.5, 1.5)) == 2  # 384 mm in x
    assert axis_to_shrink((10, 224, 224), (10, 215, 235), (10, 1.5, 1.5)) == 1  # tie in mm: y covers more
    assert axis_to_shrink((10, 64, 72), (10, 215, 235), (10, 1.5, 1.5)) == 2  # the stack is kept
    assert axis_to_shrink((10, 48, 48), (10, 215, 235), (10, 1.5, 1.5)) == 0  # nothing left in-plane
    assert axis_to_shrink((30, 56, 56), (30, 215, 235), (3, 1.5, 1.5)) == 0  # 30 slices: not shallow, 90 mm
    assert axis_to_shrink((40, 56, 40), (36, 50, 35), (1, 1, 1)) == 1


def test_lowres_coarsens_the_fine_axes_first_then_all_together():
    from autoseg.planners.experiment import _coarser

    assert _coarser((5.0, 1.0, 1.0), 2.0) == pytest.approx((5.0, 2.0, 2.0))
    assert _coarser((5.0, 1.0, 1.0), 5.0) == pytest.approx((5.0, 5.0, 5.0))
    assert _coarser((5.0, 1.0, 1.0), 10.0) == pytest.approx((10.0, 10.0, 10.0))
    assert _coarser((1.2, 1.0, 1.0), 2.0) == pytest.approx((2.4, 2.0, 2.0))  # nearly isotropic: as a whole


@pytest.mark.parametrize("profile", ["gpu-8gb", "cpu"])
def test_a_large_anisotropic_ct_gets_a_lowres_stage_coarser_than_its_slices(hippocampus, profile):
    fp = with_cases(hippocampus, (300, 512, 512), (2.5, 0.8, 0.8))
    low = plan_experiment(fp, profile).configuration("3d_lowres")
    assert low.spacing[1] == low.spacing[2] and low.spacing[1] >= 2.5 and low.spacing[0] >= 2.5
    assert low.spacing[0] > 2.5 or math.prod(low.patch_size) >= 0.5 * math.prod(low.median_shape)
