"""The forward pass used for inference: on a CPU in bf16, a channels-last copy of the U-Net whose
instance norms are computed by plain reductions.

Why: under bf16 autocast a third of the U-Net's forward on this project's AMX CPU went into
layout and dtype copies around ``InstanceNorm``, and the norm's own reduction over a
channels-last tensor was slower than the convolutions (docs/experiments/inference_forward.md).
Here the
whole network is in bf16 and channels-last memory format, so oneDNN's convolutions read and write
that layout without reorders, and each ``InstanceNorm -> LeakyReLU`` pair becomes one
``NormLeakyReLU``: per sample and channel, the mean from one sum, the variance from the sum of
squares of the centred values, then one fused multiply-add and the activation in place. The sums
are accumulated in fp32 by torch and rounded to bf16, as autocast rounds the convolutions.

Only for inference (no autograd benefit: in training the extra ops' backward was slower than
``InstanceNorm``'s), only on a CPU in bf16.

On an x86 CPU in fp32 (CPUs without fast bf16, e.g. AVX2-only laptops) inference runs a copy whose
convolutions call oneDNN directly (``OneDNNConv``), with the fused norm, in the usual contiguous
layout. torch sends an fp32 convolution of a batch of one with a kernel of at most 3 to its slow
reference implementation when batch x channels x the first two spatial sizes is at most 20,480,
which the sliding window's batch-1 tiles hit in every narrow layer (the gain is measured in
docs/experiments/inference_forward.md).
Everywhere else (CUDA, MPS) the network runs under autocast as before
(``autoseg.device.with_autocast``).
"""
from __future__ import annotations

import copy
import platform

import torch
from torch import nn

from autoseg.device import with_autocast


class NormLeakyReLU(nn.Module):
    """``LeakyReLU(InstanceNorm(x))`` (affine or not) with the parameters of ``norm`` and ``act``,
    written for channels-last tensors (bf16 path) and correct in any layout (the fp32 path runs it
    contiguous, where it measured faster than channels-last for the 8-64 and 16-128 U-Nets)."""

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm, act: nn.LeakyReLU):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.eps, self.slope = norm.eps, act.negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        order = (0,) + tuple(range(2, x.ndim)) + (1,)
        count = x[0, 0].numel()
        # (n, count / g, g * c): g consecutive voxels per row, so that the element-wise ops below run
        # over rows of >= 256 values (a row of c = 16 bf16 values is too short to vectorise well)
        g = _group(count, c)
        rows = x.permute(order).reshape(n, count // g, g * c)  # a view when x is channels-last

        def per_channel_sum(t: torch.Tensor) -> torch.Tensor:  # (n, 1, g * c) with each channel's total
            return t.sum(1).view(n, g, c).sum(1, dtype=torch.float32).repeat(1, g).unsqueeze(1)

        centred = rows - (per_channel_sum(rows) / count).to(x.dtype)
        var = per_channel_sum(centred * centred) / count
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float().repeat(g)
        bias = self.bias.to(x.dtype).repeat(g) if self.bias is not None else torch.zeros((), dtype=x.dtype)
        y = torch.addcmul(bias, centred, scale.to(x.dtype))
        y = nn.functional.leaky_relu_(y, self.slope)
        inverse = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        return y.reshape((n,) + tuple(spatial) + (c,)).permute(inverse)


def _group(count: int, channels: int, row: int = 256) -> int:
    """The largest power of two g <= row / channels that divides ``count``."""
    g = 1
    while g * 2 * channels <= row and count % (g * 2) == 0:
        g *= 2
    return g


def fuse_norm_activation(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every ``InstanceNorm`` directly followed by a ``LeakyReLU`` inside an
    ``nn.Sequential`` replaced by one ``NormLeakyReLU`` (``net`` itself is not changed)."""
    net = copy.deepcopy(net)
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        layers, fused, i = list(seq), [], 0
        while i < len(layers):
            pair = layers[i:i + 2]
            if (len(pair) == 2 and isinstance(pair[0], nn.modules.instancenorm._InstanceNorm)
                    and isinstance(pair[1], nn.LeakyReLU) and not pair[0].track_running_stats):
                fused.append(NormLeakyReLU(*pair))
                i += 2
            else:
                fused.append(layers[i])
                i += 1
        for name in list(seq._modules):
            del seq._modules[name]
        for k, layer in enumerate(fused):
            seq.add_module(str(k), layer)
    return net


class OneDNNConv(nn.Module):
    """``conv`` (a zero-padded ``Conv2d``/``Conv3d`` with numeric padding) through
    ``torch.mkldnn_convolution``, whatever the batch size: same weights, same result up to
    float rounding."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def use_onednn_convolutions(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose zero-padded ``Conv2d``/``Conv3d`` layers run as ``OneDNNConv``
    (transposed convolutions and other layers unchanged; ``net`` itself is not changed)."""
    return _swap_convolutions(copy.deepcopy(net))


def _swap_convolutions(net: nn.Module) -> nn.Module:
    """``use_onednn_convolutions`` in place, on a copy the caller owns."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) in (nn.Conv2d, nn.Conv3d) and child.padding_mode == "zeros"
                    and not isinstance(child.padding, str)):
                setattr(parent, name, OneDNNConv(child))
    return net


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def inference_forward(net: nn.Module, precision: str, device: torch.device):
    """``net`` as a callable for inference in a resolved ``precision``: float32 in, float32 logits
    (or a list of them) out. On a CPU in bf16: the channels-last bf16 copy described above; on a
    x86 CPU in fp32 with oneDNN: the fused copy with ``OneDNNConv`` layers (both built now: call
    again after the weights change); elsewhere ``with_autocast``."""
    if device.type == "cpu" and precision == "fp32" and _onednn_on_x86():
        # one copy (the fusion's), contiguous whatever layout the network trained in: at batch 1
        # channels-last was slower here (docs/experiments/inference_forward.md)
        return _swap_convolutions(fuse_norm_activation(net)).to(memory_format=torch.contiguous_format).eval()
    if device.type != "cpu" or precision != "bf16":
        return with_autocast(net, precision, device)
    fast = fuse_norm_activation(net).to(torch.bfloat16)
    fast = fast.to(memory_format=torch.channels_last_3d if _has_conv3d(fast) else torch.channels_last)
    fast.eval()

    def run(x: torch.Tensor):
        out = fast(_channels_last(x.to(torch.bfloat16)))
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()

    return run


def _onednn_on_x86() -> bool:
    """oneDNN is built in and the CPU is x86, where the oneDNN copy was measured (ARM builds run
    oneDNN through other kernels: there the network runs as it is)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")
    return x86 and torch.backends.mkldnn.is_available()


def _has_conv3d(net: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in net.modules())
