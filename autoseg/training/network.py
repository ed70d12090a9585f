"""The U-Net, built only from a configuration's plans.

Encoder: per stage ``n_conv`` x (conv -> instance norm -> LeakyReLU), the first conv of a
stage strided (downsampling by strided convolution); or, with ``encoder="residual"`` (nnU-Net's
residual-encoder U-Net, "ResEnc"), ``blocks_per_stage[i]`` residual blocks per stage, each conv ->
norm -> LeakyReLU -> conv -> norm plus its input (through a strided 1x1 convolution and norm where
the block changes the shape), then LeakyReLU. Decoder: transposed convolution
(kernel = stride), concatenation with the skip, ``n_conv_decoder`` x (conv -> norm ->
LeakyReLU), and a 1x1 segmentation head at every resolution for deep supervision. With deep
supervision off, only the full-resolution head runs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autoseg.plans import ConfigurationPlan, NetworkPlan, Plans


def _ops(dim: int):
    if dim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d


class ConvBlock(nn.Sequential):
    def __init__(self, dim: int, cin: int, cout: int, kernel, stride, n_conv: int):
        conv, _, norm = _ops(dim)
        layers = []
        for i in range(n_conv):
            layers += [
                conv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                     padding=[k // 2 for k in kernel], bias=True),
                norm(cout, eps=1e-5, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, cin: int, cout: int, kernel, stride):
        super().__init__()
        conv, _, norm = _ops(dim)
        pad = [k // 2 for k in kernel]
        self.body = nn.Sequential(conv(cin, cout, kernel, stride, padding=pad, bias=True),
                                  norm(cout, eps=1e-5, affine=True), nn.LeakyReLU(0.01, inplace=True),
                                  conv(cout, cout, kernel, 1, padding=pad, bias=True), norm(cout, eps=1e-5, affine=True))
        reshapes = cin != cout or any(s != 1 for s in stride)
        self.skip = (nn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout, eps=1e-5, affine=True))
                     if reshapes else nn.Identity())
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _encoder_stage(net: NetworkPlan, i: int, cin: int) -> nn.Module:
    dim, f, k, s = net.dim, net.features_per_stage[i], net.kernel_sizes[i], net.strides[i]
    if net.encoder == "residual":
        return nn.Sequential(*[ResidualBlock(dim, cin if b == 0 else f, f, k, s if b == 0 else (1,) * dim)
                               for b in range(net.blocks_per_stage[i])])
    return ConvBlock(dim, cin, f, k, s, net.n_conv_per_stage)


class UNet(nn.Module):
    def __init__(self, net: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool):
        super().__init__()
        dim, feats = net.dim, net.features_per_stage
        conv, transp, _ = _ops(dim)
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        cin = in_channels
        for i, f in enumerate(feats):
            self.encoder.append(_encoder_stage(net, i, cin))
            cin = f
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(len(feats) - 1, 0, -1):  # from the bottleneck up
            self.up.append(transp(feats[i], feats[i - 1], net.strides[i], net.strides[i], bias=False))
            self.decoder.append(ConvBlock(dim, 2 * feats[i - 1], feats[i - 1], net.kernel_sizes[i - 1], 1,
                                          net.n_conv_per_stage_decoder))
            self.heads.append(conv(feats[i - 1], num_classes, 1, 1, 0, bias=True))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        last = len(self.decoder) - 1
        for i, (up, dec, head) in enumerate(zip(self.up, self.decoder, self.heads)):
            x = dec(torch.cat([up(x), skips.pop()], 1))
            if self.deep_supervision or i == last:
                outputs.append(head(x))
        if not self.deep_supervision:
            return outputs[-1]
        return outputs[::-1]  # full resolution first


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(m.weight, a=1e-2)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_network(plans: Plans, configuration: str, deep_supervision: bool,
                  in_channels: int | None = None) -> UNet:
    """The U-Net for ``configuration`` of ``plans``; input channels default to the dataset's image
    channels, plus one per foreground label for a cascade stage (the previous stage's one-hot mask)."""
    from autoseg.preprocess.previous_stage import num_input_channels

    cfg = plans.configuration(configuration)
    channels = in_channels if in_channels is not None else num_input_channels(plans, configuration)
    return UNet(cfg.network, channels, plans.num_classes, deep_supervision)


def init_output_bias(net: UNet, priors, min_prior: float = 1e-3, sigmoid: bool = False) -> list[float]:
    """Set every segmentation head's bias to ``log(prior)`` so the untrained network's softmax
    starts at the class frequencies instead of uniform; return the priors used. ``sigmoid``
    (region outputs, each its own probability): the bias is ``log(p / (1 - p))`` with each prior
    clipped to [min_prior, 1 - min_prior] and not renormalised.

    Priors are clipped below at ``min_prior`` and renormalised. Starting from uniform, the first
    iterations' cross-entropy drives every voxel to background and the Dice term then needs
    hundreds of iterations to recover the foreground (a plateau measured on Hippocampus: Dice 0 for
    ~250 iterations); starting from the frequencies skips that phase (RetinaNet's prior
    initialisation applied to segmentation).
    """
    p = np.maximum(np.asarray(priors, dtype=np.float64), min_prior)
    if sigmoid:
        p = np.minimum(p, 1 - min_prior)
        bias = np.log(p / (1 - p))
    else:
        p = p / p.sum()
        bias = np.log(p)
    if len(p) != net.heads[0].out_channels:
        raise ValueError(f"{len(p)} class priors for a network with {net.heads[0].out_channels} outputs")
    with torch.no_grad():
        for head in net.heads:
            head.bias.copy_(torch.from_numpy(bias).to(head.bias))
    return [float(x) for x in p]


def set_deep_supervision(net: UNet, on: bool) -> None:
    net.deep_supervision = on


def deep_supervision_scales(cfg: ConfigurationPlan) -> list[tuple[float, ...]]:
    """Relative size of each deep-supervision output, full resolution first.

    Strides ((1,1,1), (2,2,2), (2,2,2)) give [(1,1,1), (0.5,0.5,0.5)]: one output per decoder
    stage, the lowest at the resolution of the stage just above the bottleneck.
    """
    scales = []
    current = [1.0] * cfg.network.dim
    for stride in cfg.network.strides[:-1]:
        current = [c / s for c, s in zip(current, stride)]
        scales.append(tuple(current))
    return scales
