"""The planner's small/rare flag, on hand-built fingerprints and on the real Hippocampus one."""
import dataclasses
import json
from pathlib import Path

import pytest

from autoseg.fingerprint import summarise_classes
from autoseg.fingerprint_types import CaseFingerprint, Fingerprint, load_fingerprint
from autoseg.planners.classes import SMALL_EDGE_RATIO, class_sizes, flag_small_classes, patch_edge_mm
from autoseg.planners.experiment import plan_experiment
from autoseg.plans import IntensityProperties, load_plans, save_plans

DATA = Path(__file__).parent / "data"
LABELS = {"background": 0, "anterior": 1, "posterior": 2, "lesion": 3, "rare_big": 4, "speckle": 5, "never": 6}


def implanted_fingerprint() -> Fingerprint:
    """Nine Hippocampus-like cases (36 x 50 x 35 at 1 mm). Anatomy 1 and 2: one component of
    1700 / 1600 voxels in every case. Lesion 3: components 27 (case 0), 64 and 8 (case 3),
    125 (case 6). Class 4: one 2000-voxel component in cases 0, 1, 2. Class 5: a 200-voxel
    component in every case. Class 6: in no case."""
    lesions = {0: (27,), 3: (64, 8), 6: (125,)}
    cases = []
    for i in range(9):
        comps = {"1": (1700,), "2": (1600,), "3": lesions.get(i, ()), "4": (2000,) if i < 3 else (),
                 "5": (200,), "6": ()}
        cases.append(CaseFingerprint(f"c{i}", (36, 50, 35), (1.0, 1.0, 1.0), (36, 50, 35),
                                     {k: sum(v) for k, v in comps.items()}, comps))
    return Fingerprint(
        schema_version=1, dataset_name="Dataset990_Implanted", channel_names=("MRI",), labels=LABELS,
        file_ending=".nii.gz", is_2d=False, cases=tuple(cases),
        intensity=(IntensityProperties(0.0, 1.0, 0.0, -3.0, 3.0, -2.5, 2.5),),
        classes=summarise_classes(cases, LABELS), crop_reduction_median=1.0)


def test_class_summary_by_hand():
    lesion = implanted_fingerprint().classes[2]
    assert lesion.label == 3 and lesion.presence_fraction == pytest.approx(3 / 9)
    assert lesion.component_volume_mm3_median == pytest.approx((27 + 64) / 2)  # of 8, 27, 64, 125


def test_flags_the_implanted_class_not_the_anatomy():
    fp = implanted_fingerprint()
    # patch 40 x 56 x 40 at 1 mm: edge 89,600 ** (1/3) = 44.75 mm; threshold 0.171 x 44.75 = 7.65 mm
    assert patch_edge_mm((40, 56, 40), (1.0, 1.0, 1.0)) == pytest.approx(44.75, abs=0.01)
    sizes = {s.label: s for s in class_sizes(fp, (40, 56, 40), (1.0, 1.0, 1.0))}
    # lesion: 45.5 ** (1/3) = 3.57 mm (0.080 of the edge) and in 3 of 9 cases: small and rare
    assert sizes[3].edge_mm == pytest.approx(45.5 ** (1 / 3)) and sizes[3].small and sizes[3].rare
    # anatomy: 1700 ** (1/3) = 11.93 mm (0.267), 1600 ** (1/3) = 11.70 mm (0.261), in every case
    assert not sizes[1].flagged and not sizes[2].flagged
    assert sizes[4].rare and not sizes[4].small  # 12.6 mm but in 3 of 9 cases
    assert sizes[5].small and not sizes[5].rare  # 200 ** (1/3) = 5.85 mm (0.131) in every case
    assert not sizes[6].flagged  # in no case: nothing to sample
    assert flag_small_classes(fp, (40, 56, 40), (1.0, 1.0, 1.0)) == (3, 4, 5)
    assert "-> small and rare" in sizes[3].describe()


def test_a_sparsely_annotated_dataset_flags_nothing():
    # with an ignore label the components are cut where the annotation stops: no flag from them
    fp = implanted_fingerprint()
    sparse = dataclasses.replace(fp, labels={**LABELS, "ignore": 7})
    assert flag_small_classes(sparse, (40, 56, 40), (1.0, 1.0, 1.0)) == ()


def test_threshold_is_half_a_percent_of_a_3d_patch():
    assert SMALL_EDGE_RATIO ** 3 == pytest.approx(0.005)
    # a 2D patch compares with the edge of its area: 56 x 40 at 1 mm -> 2240 ** 0.5 = 47.33 mm
    assert patch_edge_mm((56, 40), (1.0, 1.0, 1.0)) == pytest.approx(2240 ** 0.5)
    # a patch twice as coarse makes the same component relatively smaller
    assert patch_edge_mm((40, 56, 40), (2.0, 2.0, 2.0)) == pytest.approx(2 * 89600 ** (1 / 3))


def test_plan_experiment_writes_the_flag_per_configuration(tmp_path):
    plans = plan_experiment(implanted_fingerprint())
    assert plans.configuration("3d_fullres").patch_size == (40, 56, 40)
    assert plans.configuration("3d_fullres").small_classes == (3, 4, 5)
    # 2d: class 5 (edge 5.85 mm) is 0.124 of the 47.3 mm edge of the 56 x 40 patch, above 0.0707 (its
    # cross-section is 1.5% of the patch area); the lesions (0.075) are small only there, but rare
    assert plans.configuration("2d").small_classes == (3, 4)
    assert plans.small_classes == (3, 4, 5)
    save_plans(plans, tmp_path / "plans.json")
    assert load_plans(tmp_path / "plans.json") == plans


def test_real_hippocampus_flags_nothing():
    plans = plan_experiment(load_fingerprint(DATA / "hippocampus_fingerprint.json"), profile="cpu")
    assert plans.small_classes == ()
    for cfg in plans.configurations.values():
        assert cfg.small_classes == ()


def test_plans_without_the_field_still_load(tmp_path):
    plans = plan_experiment(implanted_fingerprint())
    save_plans(plans, tmp_path / "plans.json")
    data = json.loads((tmp_path / "plans.json").read_text())
    for cfg in data["configurations"].values():
        del cfg["small_classes"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_plans(tmp_path / "old.json").small_classes == ()
    data["configurations"]["3d_fullres"]["small_classes"] = [9]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match=r"small_classes \[9\] are not labels"):
        load_plans(tmp_path / "bad.json")


def test_a_2d_patch_compares_cross_sections_with_its_area():
    from autoseg.planners.classes import small_edge_ratio

    assert small_edge_ratio(2) ** 2 == pytest.approx(0.005) and small_edge_ratio(3) == SMALL_EDGE_RATIO
    # a cine MRI ventricle: 64,000 mm3 (edge 40 mm, cross-section 1,600 mm2) in a 224 x 256 slice at
    # 1.5 mm (129,024 mm2, edge 359.2 mm): 1.24% of the area, ratio 0.111 >= 0.0707: not small
    fp = dataclasses.replace(implanted_fingerprint(), classes=(
        dataclasses.replace(implanted_fingerprint().classes[0], component_volume_mm3_median=64000.0),))
    (size,) = class_sizes(fp, (224, 256), (10.0, 1.5, 1.5))
    assert size.edge_mm / size.patch_edge_mm == pytest.approx(40 / 359.2, abs=1e-3) and not size.small
    # the same component against a 3D patch of the same edge would be small (0.111 < 0.171)
    (size3d,) = class_sizes(fp, (36, 240, 240), (10.0, 1.5, 1.5))
    assert size3d.small
