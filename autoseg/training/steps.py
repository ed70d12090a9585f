"""The computations of one training iteration and of one epoch's patch validation, and the
learning rate of an epoch: pure functions of their inputs, run by ``fold_run.FoldRun``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from autoseg.inference.fast_forward import inference_forward
from autoseg.plans import Plans
from autoseg.training.dataloader import BatchSource, downsample_seg
from autoseg.training.distributed import Ranks
from autoseg.training.loss import region_targets


def poly_lr(initial: float, epoch: int, num_epochs: int, exponent: float = 0.9) -> float:
    """``poly_lr(0.01, 0, 100) == 0.01``; ``poly_lr(0.01, 50, 100) == 0.01 * 0.5 ** 0.9``."""
    return initial * (1 - epoch / num_epochs) ** exponent


def train_step(net, loss_fn, opt, scaler, batch, dev, grad_clip, amp_dtype=None,
               memory_format=None) -> tuple[float, float]:
    """One optimizer step; under autocast to ``amp_dtype`` (bf16/fp16) when given, with ``scaler`` for fp16;
    the batch in ``memory_format`` (a torch layout; None: as it comes). Returns the loss and the
    gradients' total norm before clipping to ``grad_clip``."""
    data = batch["data"].to(dev, non_blocking=True)
    if memory_format is not None:
        data = data.contiguous(memory_format=memory_format)
    target = batch["target"]
    target = [t.to(dev, non_blocking=True) for t in target] if isinstance(target, list) else target.to(dev)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = net(data)
        loss = loss_fn(out, target)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        if torch.isfinite(norm):  # a non-finite step would poison every weight; the run counts these
            opt.step()
    return float(loss.detach()), float(norm)


@torch.no_grad()
def validate_patches(net, loss_fn, src: BatchSource, start: int, count: int, dev, plans: Plans, scales,
                     precision: str = "fp32", ranks: Ranks | None = None):
    """Validation loss, pseudo-Dice per foreground class or region (TP/FP/FN summed over all
    patches, and over the ``ranks`` of a run on several processes, as the loss is averaged) and the
    seconds spent in the network's forward passes alone (what the final
    sliding-window validation costs per patch; making the batches, which for a cascade means
    loading large cases, is not)."""
    net.eval()
    forward = inference_forward(net, precision, dev)
    num_classes, regions = plans.num_classes, plans.regions
    tp = np.zeros(len(regions) if regions else num_classes - 1)
    fp, fn = tp.copy(), tp.copy()
    losses, forward_s = [], 0.0
    for k in range(count):
        b = src.batch(start + k)
        data = torch.from_numpy(b["data"]).to(dev)
        target = torch.from_numpy(b["target"]).to(dev)
        started = time.perf_counter()
        out = forward(data)
        forward_s += time.perf_counter() - started
        full = out[0] if isinstance(out, list) else out
        if scales:
            targets = [torch.from_numpy(downsample_seg(b["target"], s)).to(dev) for s in scales]
            losses.append(float(loss_fn(out, targets)))
        else:
            losses.append(float(loss_fn(full, target)))
        t = target[:, 0]
        if regions:  # a region is predicted where its logit is above 0 (sigmoid above 0.5)
            annotated = t != plans.ignore_label if plans.ignore_label is not None else torch.ones_like(t, dtype=bool)
            refs = region_targets(target, [members for _, members in regions])
            masks = [(full[:, k] > 0, refs[:, k]) for k in range(len(regions))]
        else:
            pred = full.argmax(1)
            annotated = t < num_classes  # the ignore label, where there is one, is the highest value
            masks = [(pred == c, t == c) for c in range(1, num_classes)]
        for k, (p, r) in enumerate(masks):
            tp[k] += float((p & r).sum())
            fp[k] += float((p & ~r & annotated).sum())
            fn[k] += float((~p & r).sum())
    mean_loss = float(np.mean(losses)) if losses else float("nan")
    if ranks is not None and ranks.active:
        k = len(tp)
        total = ranks.sum(np.concatenate([tp, fp, fn, [mean_loss]]), "the patch validation")
        tp, fp, fn, mean_loss = total[:k], total[k:2 * k], total[2 * k:3 * k], float(total[-1]) / ranks.world
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-8)
    return mean_loss, dice, forward_s
