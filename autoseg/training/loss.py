"""Segmentation losses and their deep-supervision wrapper.

``dice_ce`` = ``ce_weight`` * cross-entropy + ``dice_weight`` * (1 - soft Dice). Soft Dice is
computed on softmax probabilities over the foreground classes (background excluded), per
sample and class, or pooled over the batch ("batch Dice"), with a small smoothing term so
classes absent from a patch do not blow up. A perfect prediction has loss 0 (plus CE ~ 0).

Small classes (see ``small_classes``): ``ce_class_weights`` (one per output channel) weight the
cross-entropy (a weighted mean over voxels, as ``torch.nn.functional.cross_entropy``), and the
Dice of the classes in ``batch_dice_classes`` is pooled over the batch even when the rest is not.

Sparse annotation: voxels of the dataset's ignore label (``autoseg.labels``) are masked out of both
terms, as if they were not in the patch.

Region-based labels (``RegionLoss``): one sigmoid output per region, trained on the region's mask
(the target's voxels holding one of its values) with binary cross-entropy (mean over voxels and
regions) plus soft Dice on the sigmoid maps of every region; the ignore label masks both alike.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.registry import Registry

SMOOTH = 1e-5
# on several processes: sums over the batch -> the same sums over every rank's share of the global
# batch, differentiably (``distributed.Ranks.pool``); None on one process
Pool = Callable[[torch.Tensor], torch.Tensor]


def soft_dice(probs: torch.Tensor, target: torch.Tensor, batch_dice: bool,
              batch_dice_classes: tuple[int, ...] = (), mask: torch.Tensor | None = None,
              pool: Pool | None = None) -> torch.Tensor:
    """Mean soft Dice over foreground classes. ``probs`` (B, K, ...), ``target`` (B, 1, ...) int with
    values below K wherever ``mask`` (B, 1, ..., bool; default everywhere) is set; voxels outside the
    mask count neither in the prediction nor in the reference.

    Each class contributes the mean of its per-sample Dice, or its Dice over the whole batch when
    ``batch_dice`` is set or the class is in ``batch_dice_classes``; the result is the mean over classes.
    ``pool``: on several processes, the sums pooled over the batch are summed over every rank's share
    of it (``Pool``).
    """
    onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
    return _dice_of_masks(probs[:, 1:], onehot[:, 1:], batch_dice, tuple(k - 1 for k in batch_dice_classes), mask,
                          pool)


def _dice_of_masks(probs: torch.Tensor, ref: torch.Tensor, batch_dice: bool, pooled_channels: tuple[int, ...] = (),
                   mask: torch.Tensor | None = None, pool: Pool | None = None) -> torch.Tensor:
    """Mean soft Dice over the channels of ``probs`` and ``ref`` (B, C, ..., float); channels in
    ``pooled_channels`` (or all with ``batch_dice``) pooled over the batch, the others per sample."""
    if mask is not None:
        probs, ref = probs * mask, ref * mask
    onehot = ref
    axes = tuple(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)  # (B, K-1)
    denom = probs.sum(axes) + onehot.sum(axes)
    per_sample = (2 * intersect + SMOOTH) / (denom + SMOOTH).clamp_min(1e-8)
    sums = torch.stack([intersect.sum(0), denom.sum(0)])
    if pool is not None and (batch_dice or pooled_channels):
        sums = pool(sums)
    pooled = (2 * sums[0] + SMOOTH) / (sums[1] + SMOOTH).clamp_min(1e-8)
    if batch_dice:
        return pooled.mean()
    chosen = torch.tensor([k in pooled_channels for k in range(probs.shape[1])], device=probs.device)
    return torch.where(chosen, pooled, per_sample.mean(0)).mean()


class DiceCELoss(nn.Module):
    """``ignore_label``: voxels of that target value take no part in either term (no gradient
    reaches their logits); a batch without an annotated voxel has loss 0."""

    def __init__(self, batch_dice: bool, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 ce_class_weights: tuple[float, ...] | None = None, batch_dice_classes: tuple[int, ...] = (),
                 ignore_label: int | None = None, pool: Pool | None = None):
        super().__init__()
        self.batch_dice, self.ce_weight, self.dice_weight, self.pool = batch_dice, ce_weight, dice_weight, pool
        self.batch_dice_classes = tuple(batch_dice_classes)
        self.ignore_label = ignore_label
        self.register_buffer("class_weights", None if ce_class_weights is None
                             else torch.tensor(ce_class_weights, dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        mask = None
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            target = torch.where(mask, target, torch.zeros_like(target))
        if self.ce_weight:
            weight = None if self.class_weights is None else self.class_weights.to(logits.device)
            loss = loss + self.ce_weight * _cross_entropy(logits.float(), target[:, 0].long(), weight,
                                                          None if mask is None else mask[:, 0])
        if self.dice_weight:
            probs = torch.softmax(logits.float(), 1)
            loss = loss + self.dice_weight * (1 - soft_dice(probs, target, self.batch_dice, self.batch_dice_classes,
                                                            mask, self.pool))
        return loss


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy, the (class-)weighted mean over the voxels in ``mask`` (all without one); 0
    where the mask is empty (torch's ``ignore_index`` would give NaN there)."""
    if mask is None:
        return F.cross_entropy(logits, target, weight=weight)
    per_voxel = F.cross_entropy(logits, target, weight=weight, reduction="none")
    w = mask.to(per_voxel.dtype) if weight is None else weight[target] * mask
    return (per_voxel * mask).sum() / w.sum().clamp_min(1e-8)


class RegionLoss(nn.Module):
    """Region-based training: ``regions`` lists each output's label values; output k is trained on
    where the target holds one of region k's values. ``bce_weight`` * binary cross-entropy (mean
    over the annotated voxels and the regions) + ``dice_weight`` * (1 - mean soft Dice of the
    sigmoid maps, every region counted); ``ignore_label`` voxels take no part in either term."""

    def __init__(self, regions, batch_dice: bool, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 ignore_label: int | None = None, pool: Pool | None = None):
        super().__init__()
        self.pool = pool
        self.regions = tuple(tuple(int(v) for v in r) for r in regions)
        self.batch_dice, self.bce_weight, self.dice_weight = batch_dice, bce_weight, dice_weight
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ref = region_targets(target, self.regions).to(torch.float32)
        mask = None if self.ignore_label is None else target != self.ignore_label
        logits = logits.float()
        loss = logits.new_zeros(())
        if self.bce_weight:
            per_voxel = F.binary_cross_entropy_with_logits(logits, ref, reduction="none")
            if mask is None:
                bce = per_voxel.mean()
            else:
                bce = (per_voxel * mask).sum() / (mask.sum() * len(self.regions)).clamp_min(1)
            loss = loss + self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * (1 - _dice_of_masks(torch.sigmoid(logits), ref, self.batch_dice,
                                                                 mask=mask, pool=self.pool))
        return loss


def region_targets(target: torch.Tensor, regions) -> torch.Tensor:
    """(B, 1, ...) label map -> (B, K, ...) boolean region masks."""
    return torch.cat([torch.isin(target, torch.tensor(r, device=target.device, dtype=target.dtype))
                      for r in regions], 1)


def _dice_ce(batch_dice, ce_weight, dice_weight, regions=None, ignore_label=None, pool=None, **small) -> nn.Module:
    """CE (BCE on regions) weighted ``ce_weight`` + Dice weighted ``dice_weight``."""
    if regions:
        if any(w != 1 for w in small.get("ce_class_weights") or ()) or small.get("batch_dice_classes"):
            raise ValueError("small-class loss weights do not apply to region-based training")
        return RegionLoss(regions, batch_dice, ce_weight, dice_weight, ignore_label, pool)
    return DiceCELoss(batch_dice, ce_weight, dice_weight, ignore_label=ignore_label, pool=pool, **small)


LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
LOSSES.add("dice_ce", _dice_ce)
LOSSES.add("ce", lambda batch_dice, ce_weight, dice_weight, **kw: _dice_ce(batch_dice, ce_weight or 1.0, 0.0, **kw))
LOSSES.add("dice", lambda batch_dice, ce_weight, dice_weight, **kw: _dice_ce(batch_dice, 0.0, dice_weight or 1.0, **kw))


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


def build_loss(name: str, batch_dice: bool, ce_weight: float, dice_weight: float, n_outputs: int | None,
               ce_class_weights: tuple[float, ...] | None = None, batch_dice_classes: tuple[int, ...] = (),
               ignore_label: int | None = None, regions=None, pool: Pool | None = None) -> nn.Module:
    """The named loss, wrapped for deep supervision when ``n_outputs`` is given; ``ce_class_weights``
    and ``batch_dice_classes`` are the small-class settings (``SmallClassSetup.ce_weights``,
    ``.batch_dice_classes``); ``ignore_label`` the dataset's (``Plans.ignore_label``). With
    ``regions`` (``Plans.regions``) the loss is on regions (``RegionLoss``): "dice_ce" is BCE + Dice,
    "ce" BCE alone, "dice" Dice alone, ``ce_weight`` weighing the BCE. ``pool``: on several processes,
    a Dice pooled over the batch is pooled over the global batch (``Pool``)."""
    base = LOSSES.get(name)(batch_dice, ce_weight, dice_weight, ce_class_weights=ce_class_weights,
                            batch_dice_classes=tuple(batch_dice_classes), ignore_label=ignore_label,
                            regions=[members for _, members in regions] if regions else None, pool=pool)
    return DeepSupervisionLoss(base, n_outputs) if n_outputs else base
