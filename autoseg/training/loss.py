"""Segmentation losses and their deep-supervision wrapper.

``dice_ce`` = ``ce_weight`` * cross-entropy + ``dice_weight`` * (1 - soft Dice). Soft Dice is
computed on softmax probabilities over the foreground classes (background excluded), per
sample and class, or pooled over the batch ("batch Dice"), with a small smoothing term so
classes absent from a patch do not blow up. A perfect prediction has loss 0 (plus CE ~ 0).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.registry import Registry

SMOOTH = 1e-5


def soft_dice(probs: torch.Tensor, target: torch.Tensor, batch_dice: bool) -> torch.Tensor:
    """Mean soft Dice over foreground classes. ``probs`` (B, K, ...), ``target`` (B, 1, ...) int."""
    onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
    probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0,) + axes
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + SMOOTH) / (denom + SMOOTH).clamp_min(1e-8)
    return dice.mean()


class DiceCELoss(nn.Module):
    def __init__(self, batch_dice: bool, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.batch_dice, self.ce_weight, self.dice_weight = batch_dice, ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), target[:, 0].long())
        if self.dice_weight:
            probs = torch.softmax(logits.float(), 1)
            loss = loss + self.dice_weight * (1 - soft_dice(probs, target, self.batch_dice))
        return loss


LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
LOSSES.add("dice_ce", lambda batch_dice, ce_weight, dice_weight: DiceCELoss(batch_dice, ce_weight, dice_weight))
LOSSES.add("ce", lambda batch_dice, ce_weight, dice_weight: DiceCELoss(batch_dice, ce_weight or 1.0, 0.0))
LOSSES.add("dice", lambda batch_dice, ce_weight, dice_weight: DiceCELoss(batch_dice, 0.0, dice_weight or 1.0))


def deep_supervision_weights(n: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... for ``n`` outputs (full resolution first), the lowest set to 0
    (when there are at least two), normalised to sum 1. ``n=3`` gives [2/3, 1/3, 0]."""
    w = [0.5 ** i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class DeepSupervisionLoss(nn.Module):
    def __init__(self, loss: nn.Module, n_outputs: int):
        super().__init__()
        self.loss = loss
        self.weights = deep_supervision_weights(n_outputs)

    def forward(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        total = outputs[0].new_zeros(())
        for w, o, t in zip(self.weights, outputs, targets):
            if w:
                total = total + w * self.loss(o, t)
        return total


def build_loss(name: str, batch_dice: bool, ce_weight: float, dice_weight: float, n_outputs: int | None) -> nn.Module:
    base = LOSSES.get(name)(batch_dice, ce_weight, dice_weight)
    return DeepSupervisionLoss(base, n_outputs) if n_outputs else base
