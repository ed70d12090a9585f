"""The inference forward pass: fused instance norm + LeakyReLU, channels-last bf16 on the CPU;
oneDNN convolutions in fp32."""
import pytest
import torch
from torch import nn

from autoseg.inference.fast_forward import (NormLeakyReLU, OneDNNConv, _group, fuse_norm_activation,
                                            inference_forward, use_onednn_convolutions)
from autoseg.plans import NetworkPlan
from autoseg.training.network import UNet

CPU = torch.device("cpu")


def test_group_is_the_largest_power_of_two_that_divides_the_voxels():
    assert _group(89600, 16) == 16  # 16 voxels x 16 channels = 256 values per row
    assert _group(89600, 32) == 8
    assert _group(89600, 320) == 1  # one voxel's channels already fill a row
    assert _group(12, 16) == 4  # 12 = 4 x 3
    assert _group(7, 16) == 1


@pytest.mark.parametrize("dim, shape, affine", [
    (3, (2, 16, 5, 6, 7), True),  # 210 voxels: groups of 2
    (3, (1, 4, 8, 8, 8), False),
    (2, (3, 8, 12, 10), True),
])
def test_norm_leaky_relu_equals_instance_norm_then_leaky_relu(dim, shape, affine):
    torch.manual_seed(0)
    norm = (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)(shape[1], eps=1e-5, affine=affine)
    if affine:
        nn.init.uniform_(norm.weight, 0.5, 2.0)
        nn.init.uniform_(norm.bias, -1.0, 1.0)
    act = nn.LeakyReLU(0.01)
    x = torch.randn(shape) * 3 + 2  # an offset mean, as a convolution's output has
    expected = act(norm(x))
    fused = NormLeakyReLU(norm, act)
    layout = torch.channels_last_3d if dim == 3 else torch.channels_last
    for inp in (x, x.contiguous(memory_format=layout)):  # any layout gives the same values
        assert torch.allclose(fused(inp), expected, atol=1e-5, rtol=1e-5)


def small_unet(dim=3):
    kernels = ((3,) * dim,) * 3
    strides = ((1,) * dim, (2,) * dim, (2,) * dim)
    torch.manual_seed(1)
    return UNet(NetworkPlan(dim, (8, 16, 32), kernels, strides), 1, 3, deep_supervision=False).eval()


def test_fusion_replaces_each_norm_activation_pair_and_leaves_the_network_alone():
    net = small_unet()
    pairs = sum(isinstance(m, nn.InstanceNorm3d) for m in net.modules())
    fused = fuse_norm_activation(net)
    assert sum(isinstance(m, NormLeakyReLU) for m in fused.modules()) == pairs
    assert not any(isinstance(m, (nn.InstanceNorm3d, nn.LeakyReLU)) for m in fused.modules())
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in net.modules()) == pairs  # a copy was changed
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(fused(x), net(x), atol=1e-4, rtol=1e-4)  # fp32: the same function


@pytest.mark.parametrize("dim", [3, 2])
def test_cpu_bf16_inference_matches_the_network_within_bf16_rounding(dim):
    net = small_unet(dim)
    x = torch.randn((2, 1) + (16,) * dim)
    forward = inference_forward(net, "bf16", CPU)
    with torch.no_grad():
        out, ref = forward(x), net(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # bf16 keeps 8 bits of mantissa: logits of order 1 within a few hundredths
    assert (out - ref).abs().max() < 0.1
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.97


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv3d(8, 8, 3, padding=1), (1, 8, 12, 14, 10)),  # batch 1, 8 channels: torch's slow path
    (nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (2, 4, 5, 9, 8)),
    (nn.Conv2d(3, 5, 3, padding=1, bias=False), (1, 3, 11, 9)),
])
def test_onednn_conv_equals_the_convolution(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        out, ref = OneDNNConv(conv)(x), conv(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("dim", [3, 2])
def test_fp32_inference_runs_onednn_convolutions_with_the_networks_result(dim, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    net = small_unet(dim).eval()
    forward = inference_forward(net, "fp32", CPU)
    convs = [m for m in forward.modules() if isinstance(m, OneDNNConv)]
    plain = [m for m in net.modules() if type(m) in (nn.Conv2d, nn.Conv3d)]
    assert len(convs) == len(plain) > 0  # every convolution swapped in the copy
    assert not any(isinstance(m, OneDNNConv) for m in net.modules())  # the network itself unchanged
    assert any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in forward.modules())
    assert any(isinstance(m, NormLeakyReLU) for m in forward.modules())  # and the fused norm
    x = torch.randn((1, 1) + (16,) * dim)
    # the same function; float32 sums in another order, amplified by the instance norms: ~1e-5
    with torch.no_grad():
        assert torch.allclose(forward(x), net(x), atol=1e-4)
    net.deep_supervision = True
    with torch.no_grad():
        outs, refs = use_onednn_convolutions(net)(x), net(x)
    assert len(outs) == len(refs) and all(torch.allclose(o, r, atol=1e-4) for o, r in zip(outs, refs))


def test_fp32_inference_on_arm_runs_the_network_itself(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    net = small_unet()
    assert inference_forward(net, "fp32", CPU) is net


def test_bf16_inference_keeps_the_deep_supervision_outputs():
    net = small_unet()
    net.deep_supervision = True
    outs = inference_forward(net, "bf16", CPU)(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(outs, list) and all(o.dtype == torch.float32 for o in outs)
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16, 16), (8, 8, 8)]
