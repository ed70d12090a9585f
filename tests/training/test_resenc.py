"""nnU-Net's residual-encoder U-Net (ResEnc) as a planned network: built from the plans, trained and
predicted in every configuration."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.plans import NetworkPlan, load_plans
from autoseg.training.network import ResidualBlock, UNet
from synthetic import make_dataset, plan_and_preprocess_cpu

TINY = ["--set", "num_epochs=1", "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1",
        "--set", "validation_mirroring=false", "-nw", "0"]


def test_a_residual_encoder_has_the_planned_blocks_and_the_plain_decoder():
    plan = NetworkPlan(3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), n_conv_per_stage_decoder=1,
                       encoder="residual", blocks_per_stage=(1, 3, 4))
    net = UNet(plan, 2, 3, deep_supervision=True)
    assert [sum(isinstance(m, ResidualBlock) for m in stage) for stage in net.encoder] == [1, 3, 4]
    # the first block of a stage that changes channels or strides has a projected skip, the others none
    assert not isinstance(net.encoder[1][0].skip, torch.nn.Identity)
    assert isinstance(net.encoder[1][1].skip, torch.nn.Identity)
    outputs = net(torch.zeros(1, 2, 16, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
    with pytest.raises(ValueError, match="needs >= 1 block for each of its 3 stages"):
        NetworkPlan(3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), encoder="residual",
                    blocks_per_stage=(1, 3))


@pytest.mark.slow
def test_resenc_trains_and_predicts_in_every_configuration(tmp_path):
    ws = tmp_path / "ws"
    make_dataset(ws / "raw")
    root = str(ws)
    plan_and_preprocess_cpu(root, network="resenc")
    plans = load_plans(ws / "preprocessed" / "Dataset901_Synth" / "plans.json")
    assert set(plans.configurations) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    for cfg in plans.configurations.values():
        n = len(cfg.network.features_per_stage)
        assert cfg.network.encoder == "residual" and cfg.network.blocks_per_stage == (1, 3, 4, 6, 6, 6)[:n]
    cases = [f"case_{i:03d}" for i in range(6)]
    (ws / "preprocessed" / "Dataset901_Synth" / "splits.json").write_text(json.dumps(
        [{"train": cases[3:], "val": cases[:3]}, {"train": cases[:3], "val": cases[3:]}]))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(ws / "raw" / "Dataset901_Synth" / "imagesTr" / "case_000_0000.nii.gz", inputs)
    for configuration, folds in (("3d_fullres", ["0"]), ("2d", ["0"]), ("3d_lowres", ["0", "1"]),
                                 ("3d_cascade_fullres", ["0"])):
        assert main(["train", configuration, *folds, "-d", "901", "--root", root, *TINY]) == 0
        out = tmp_path / f"pred_{configuration}"
        assert main(["predict", "-i", str(inputs), "-o", str(out), "-d", "901", "--root", root, "-c", configuration,
                     "-f", "0", "--disable_tta"]) == 0
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_000.nii.gz")))
        assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "case_000_0000.nii.gz"))).shape
        assert set(np.unique(seg)) <= {0, 1, 2}
