"""Fine-tuning: ``transfer_plans`` plans a dataset with another's plans, and ``train --pretrained``
starts from that model's weights, every matching layer copied and the heads new when the classes differ."""
import json
import re

import pytest
import torch

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.plans import load_plans
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.network import build_network
from autoseg.training.pretrained import load_pretrained
from synthetic import make_dataset

TINY = ["--set", "num_epochs=1", "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1",
        "--set", "validation_mirroring=false", "-nw", "0"]


@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Workspace:
    """Dataset901 (two classes) trained for two iterations; Dataset902 (one class, other cases) raw."""
    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    make_dataset(root / "raw", name="Dataset902_Other", num_classes=1, seed=7)
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu", "-c", "3d_fullres",
                 "--root", str(root)]) == 0
    assert main(["train", "3d_fullres", "0", "-d", "901", "--root", str(root), *TINY]) == 0
    return Workspace(root)


def test_transferred_plans_let_every_layer_but_the_heads_be_copied(source_root):
    ws = source_root
    assert main(["transfer_plans", "--source-dataset", "901", "--target-dataset", "902", "--root", str(ws.root)]) == 0
    source, target = (load_plans(ws.preprocessed / n / "plans.json") for n in ("Dataset901_Synth", "Dataset902_Other"))
    assert target.dataset_name == "Dataset902_Other" and target.num_classes == 2 and source.num_classes == 3
    assert target.configurations["3d_fullres"].network == source.configurations["3d_fullres"].network
    assert target.intensity_properties == source.intensity_properties
    fold = ws.results / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_0"
    pretrained = load_checkpoint(fold / "checkpoint_final.pth")["network"]
    net = build_network(target, "3d_fullres", deep_supervision=True)
    fresh_heads = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("heads.")}
    report = load_pretrained(net, fold, target)
    state = net.state_dict()
    assert report["heads_new"] and report["not_copied"] == []
    assert set(report["copied"]) == {k for k in state if not k.startswith("heads.")}
    assert all(torch.equal(state[k], pretrained[k]) for k in report["copied"])
    assert all(torch.equal(state[k], fresh_heads[k]) for k in fresh_heads)  # the heads stay as they were made

    assert main(["preprocess", "-d", "902", "-np", "1", "--root", str(ws.root)]) == 0
    assert main(["train", "3d_fullres", "0", "-d", "902", "--root", str(ws.root), "--pretrained", str(fold),
                 *TINY]) == 0
    trained = ws.results / "Dataset902_Other" / "3d_fullres" / "default" / "fold_0"
    assert json.loads((trained / "train_config.json").read_text())["pretrained"] == str(fold / "checkpoint_final.pth")
    log = (trained / "training.log").read_text()
    copied, total = map(int, re.search(r"pretrained weights from .*: (\d+) of (\d+) tensors copied", log).groups())
    assert total - copied == len(fresh_heads) and "segmentation heads new (the classes differ)" in log


def test_a_network_that_shares_nothing_and_mismatched_channels_are_refused(source_root, tmp_path):
    ws = source_root
    fold = ws.results / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_0"
    plans = load_plans(ws.preprocessed / "Dataset901_Synth" / "plans.json")
    other = torch.nn.Module()
    other.conv = torch.nn.Conv3d(1, 2, 3)
    with pytest.raises(UserFacingError, match="shares no layer with this one.*transfer_plans"):
        load_pretrained(other, fold, plans)
    with pytest.raises(UserFacingError, match="no such checkpoint"):
        load_pretrained(other, tmp_path / "nothing", plans)
    make_dataset(ws.root / "raw", name="Dataset903_TwoChannels", channels=("T1", "T2"), seed=9)
    with pytest.raises(UserFacingError, match=r"1 channel\(s\) \['MRI'\], Dataset903_TwoChannels has 2"):
        from autoseg.planners.transfer import transfer_plans

        transfer_plans(ws, "901", "903", 1)
