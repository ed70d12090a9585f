import math

import pytest
import torch

from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.training.loss import DiceCELoss, build_loss, deep_supervision_weights, soft_dice
from autoseg.training.network import UNet, deep_supervision_scales, init_output_bias
from autoseg.training.steps import poly_lr


def test_3d_output_shapes_with_and_without_deep_supervision():
    net_plan = NetworkPlan(3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    net = UNet(net_plan, in_channels=2, num_classes=3, deep_supervision=True)
    outs = net(torch.zeros(2, 2, 16, 24, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 24, 8), (2, 3, 8, 12, 4)]
    net.deep_supervision = False
    assert tuple(net(torch.zeros(1, 2, 16, 24, 8)).shape) == (1, 3, 16, 24, 8)


def test_anisotropic_kernels_and_strides():
    net_plan = NetworkPlan(3, (4, 8, 16), ((1, 3, 3), (1, 3, 3), (3, 3, 3)), ((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    net = UNet(net_plan, 1, 2, True)
    assert net.encoder[0][0].kernel_size == (1, 3, 3)
    assert net.encoder[1][0].stride == (1, 2, 2)
    outs = net(torch.zeros(1, 1, 8, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 16, 16), (8, 8, 8)]
    cfg = ConfigurationPlan("3d_fullres", (5.0, 1.0, 1.0), (8, 16, 16), 2, (8, 16, 16), net_plan, ("zscore",),
                            (False,), True, "3d_fullres")
    assert deep_supervision_scales(cfg) == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5)]


def test_2d_network():
    net = UNet(NetworkPlan(2, (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2))), 3, 4, False)
    assert tuple(net(torch.zeros(2, 3, 16, 12)).shape) == (2, 4, 16, 12)


def test_output_bias_prior_sets_the_initial_softmax_to_the_floored_priors():
    net = UNet(NetworkPlan(3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2))), 1, 3, True)
    for head in net.heads:
        torch.nn.init.zeros_(head.weight)  # the output is then the bias alone
    used = init_output_bias(net, [0.9, 0.0, 0.1], min_prior=1e-3)
    expected = [0.9 / 1.001, 0.001 / 1.001, 0.1 / 1.001]  # class 1 floored at 1e-3, then renormalised
    assert used == pytest.approx(expected)
    for out in net(torch.randn(1, 1, 8, 8, 8)):  # every deep-supervision head
        assert torch.softmax(out, 1)[0, :, 0, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="2 class priors for a network with 3 outputs"):
        init_output_bias(net, [0.5, 0.5])


def test_ce_of_uniform_logits_is_log_k():
    loss = DiceCELoss(batch_dice=False, ce_weight=1.0, dice_weight=0.0)
    target = torch.randint(0, 4, (2, 1, 5, 5))
    assert float(loss(torch.zeros(2, 4, 5, 5), target)) == pytest.approx(math.log(4), rel=1e-6)


def test_perfect_prediction_has_zero_dice_loss_and_hand_computed_dice():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2, :2] = 1  # 4 voxels of class 1
    onehot = torch.zeros(1, 2, 4, 4).scatter_(1, target, 1.0)
    assert float(soft_dice(onehot, target, batch_dice=False)) == pytest.approx(1.0)
    half = onehot.clone()
    half[0, 1, 0, :2] = 0  # predict 2 of the 4 voxels: Dice = 2*2 / (2 + 4)
    assert float(soft_dice(half, target, batch_dice=False)) == pytest.approx(4 / 6, rel=1e-4)
    big = torch.where(onehot > 0, 50.0, -50.0)
    assert float(DiceCELoss(False)(big, target)) == pytest.approx(0.0, abs=1e-4)


def test_deep_supervision_weights():
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    ds = build_loss("dice_ce", True, 1.0, 1.0, 3)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    logits = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2), torch.full((1, 2, 1, 1), 99.0)]
    targets = [target, target[..., ::2, ::2], target[..., ::4, ::4]]
    single = DiceCELoss(True)
    expected = 2 / 3 * single(logits[0], targets[0]) + 1 / 3 * single(logits[1], targets[1])
    assert float(ds(logits, targets)) == pytest.approx(float(expected))
    with pytest.raises(KeyError, match="did you mean 'dice'"):
        build_loss("dic", True, 1, 1, None)


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9)
