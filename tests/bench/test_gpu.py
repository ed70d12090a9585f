"""bench/gpu.py: its pure parts, its refusal where autoseg's requirements are missing, and a whole
run on the CPU (autoseg's side, tiny budgets) whose JSON must hold sensible values."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from synthetic import make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gpu  # noqa: E402
import gpu_worker  # noqa: E402


def test_predict_case_names_repeat_the_cases_under_new_names():
    assert gpu.predict_case_names(["a", "b"], 5) == [("a", "a"), ("b", "b"), ("a_copy1", "a"), ("b_copy1", "b"),
                                                     ("a_copy2", "a")]
    assert gpu.predict_case_names(["a", "b", "c"], 2) == [("a", "a"), ("b", "b")]
    with pytest.raises(ValueError, match="no cases"):
        gpu.predict_case_names([], 3)


def test_step_summary_leaves_out_the_warm_up():
    # steps 9 (warm-up), 1, 2, 3 s; starts 0, 9, 10.5, 13: iterations after the warm-up 1.5 and 2.5 s
    s = gpu.step_summary([9.0, 1.0, 2.0, 3.0], [0.0, 9.0, 10.5, 13.0], skip=1)
    assert s == {"step_s_median": 2.0, "iteration_s_median": 2.0, "steps_timed": 3, "steps_left_out": 1}
    few = gpu.step_summary([5.0, 6.0], [0.0, 5.0], skip=10)
    assert few == {"step_s_median": None, "iteration_s_median": None, "steps_timed": 0, "steps_left_out": 2}


def test_ratio_is_autoseg_over_nnunet_and_none_without_both_numbers():
    assert gpu.ratio(0.1, 0.4) == 0.25
    assert gpu.ratio(None, 0.4) is None and gpu.ratio(0.1, None) is None and gpu.ratio(0.1, 0.0) is None
    assert gpu.ratio("fp16", "fp16") is None


def test_detect_layout(tmp_path):
    task = tmp_path / "Task04_Hippocampus"
    task.mkdir()
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {}, "training": []}))
    assert gpu.detect_layout(task) == ("decathlon", 4, "Hippocampus")
    raw = tmp_path / "Dataset120_Retina"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "OCT"}, "labels": {}, "file_ending": ".png"}))
    assert gpu.detect_layout(raw) == ("nnunet", 120, "Retina")
    assert gpu.detect_layout(raw, 7) == ("nnunet", 7, "Retina")
    plain = tmp_path / "my_data"
    plain.mkdir()
    (plain / "dataset.json").write_text((raw / "dataset.json").read_text())
    with pytest.raises(SystemExit, match="expected DatasetXXX_Name.*--dataset-id"):
        gpu.detect_layout(plain)
    assert gpu.detect_layout(plain, 12) == ("nnunet", 12, "my_data")
    (plain / "dataset.json").write_text(json.dumps({"labels": {}}))
    with pytest.raises(SystemExit, match="neither the Decathlon keys"):
        gpu.detect_layout(plain, 12)
    with pytest.raises(SystemExit, match="no dataset.json"):
        gpu.detect_layout(tmp_path / "missing")


def test_autoseg_requirements_map_distributions_to_modules(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text('from setuptools import setup\nsetup(name="x", install_requires=["torch>=2.1", "pillow>=9.1", '
                     '"scikit-image>=0.21", "onnxruntime>=1.17", "acvl-utils>=0.2", "SimpleITK>=2.2", "onnx"])\n')
    assert gpu.autoseg_requirements(setup) == ["torch", "PIL", "skimage", "acvl_utils", "SimpleITK"]
    real = gpu.autoseg_requirements()
    assert {"torch", "SimpleITK", "numpy", "blosc2"} <= set(real) and "onnxruntime" not in real


def test_the_worker_hooks_still_exist_in_the_trainer():
    import autoseg.training.fold_run  # noqa: F401
    import autoseg.training.trainer  # noqa: F401
    from autoseg import training

    for hook in gpu_worker.TRAINER_HOOKS:
        assert gpu_worker._has_path(training, hook), hook


def test_table_rows_and_ratios():
    result = {"predict": {"n": 20, "autoseg": {"per_case_s": 0.05, "fixed_s": 4.0, "t_N_s": 5.0},
                          "nnunet": {"per_case_s": 0.2, "fixed_s": 8.0, "t_N_s": 11.8}},
              "train": {"autoseg": {"step_s_median": 0.1, "batch_size": 9, "patch_size": [40, 56, 40], "dice": 0.85},
                        "nnunet": {"step_s_median": 0.125, "batch_size": 9, "patch_size": [40, 56, 40], "dice": 0.80}}}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in gpu.table(result).splitlines()[2:]}
    assert rows["training step, median after warm-up (s)"] == ["0.1000", "0.1250", "1.2500 |"]  # nnU-Net / autoseg
    assert rows["batch x patch"] == ["9 x 40x56x40", "9 x 40x56x40", "n/a |"]
    assert rows["predict: 20 cases (s)"] == ["5.0000", "11.8", "2.3600 |"]
    assert rows["predict: per case (s)"][2] == "4.0000 |"
    assert rows["validation Dice, fold 0"][2] == "0.9412 |"  # 0.80 / 0.85
    assert "held-out Dice" not in rows  # measured by neither: no row


def test_missing_requirement_stops_with_the_list(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "autoseg_requirements", lambda: ["torch", "no_such_module_for_the_test"])
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work")]) == 2
    result = json.loads(out.read_text())
    assert result["status"] == "missing requirements"
    assert "no_such_module_for_the_test" in result["errors"][0]["error"]
    assert "setup" not in result and "train" not in result


def synthetic_raw(root: Path) -> Path:
    """10 tiny cases: 8 for training, 2 held out with their labels (imagesTs, labelsTs)."""
    raw = make_dataset(root, name="Dataset905_GpuSmoke", num_cases=10, shape=(16, 20, 18), seed=5)
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir()
    for cid in ("case_008", "case_009"):
        shutil.move(raw / "imagesTr" / f"{cid}_0000.nii.gz", raw / "imagesTs" / f"{cid}_0000.nii.gz")
        shutil.move(raw / "labelsTr" / f"{cid}.nii.gz", raw / "labelsTs" / f"{cid}.nii.gz")
    meta = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps(dict(meta, numTraining=8)))
    return raw


@pytest.mark.slow
def test_a_cpu_run_of_autoseg_alone_writes_sensible_numbers(tmp_path):
    raw = synthetic_raw(tmp_path / "data")
    out, logs = tmp_path / "gpu.json", tmp_path / "logs"
    code = gpu.main(["--raw", str(raw), "--device", "cpu", "--budget-s", "15", "--predict-cases", "3", "--disable-tta",
                     "--autoseg-profile", "gpu-8gb", "--autoseg-set", "batch_size=1", "--autoseg-set", "precision=fp32",
                     "--warmup-steps", "2", "-np", "2", "--nnunet", str(tmp_path / "no_python"),
                     "--out", str(out), "--logs", str(logs)])
    result = json.loads(out.read_text())
    assert code == 0, result["errors"]
    assert result["status"] == "autoseg only" and result["errors"] == []
    assert "no such Python" in result["environment"]["nnunet"]["skipped"]
    assert result["data"]["dataset"] == "Dataset905_GpuSmoke" and result["data"]["heldout_ids"] == ["case_008",
                                                                                                      "case_009"]
    train = result["train"]["autoseg"]
    assert train["step_s_median"] > 0 and train["iteration_s_median"] > 0
    assert train["steps_timed"] == train["iterations"] - 2 > 0 and train["steps_left_out"] == 2
    assert train["precision"] == "fp32" and train["batch_size"] == 1 and len(train["patch_size"]) == 3
    assert 0 <= train["dice"] <= 1 and train["cases"] == len(result["data"]["val_ids"])
    assert train["peak_gpu_mb_training"] is None  # no GPU
    assert train["epochs"] and all(0 <= e["ema_pseudo_dice"] <= 1 for e in train["epochs"])
    assert [e["end_s"] for e in train["epochs"]] == sorted(e["end_s"] for e in train["epochs"])
    assert train["command_wall_s"] > train["validation_wall_s"] > 0
    predict = result["predict"]
    p = predict["autoseg"]
    assert predict["n"] == 3 and predict["inputs"] == "held-out images" and predict["distinct_images"] == 2
    assert predict["tta"] is False and predict["failed"] == {}
    assert p["t_1_s"] > 0 and p["t_N_s"] > 0
    assert p["per_case_s"] == pytest.approx((p["t_N_s"] - p["t_1_s"]) / 2)
    assert p["fixed_s"] == pytest.approx(p["t_1_s"] - p["per_case_s"])
    assert 0 <= p["heldout"]["dice"] <= 1 and p["heldout"]["cases"] == 2
    assert "| training step, median after warm-up (s) |" in result["table_markdown"]
    assert (logs / "autoseg_train.log").is_file() and (logs / "autoseg_predict_3_r0.log").is_file()
