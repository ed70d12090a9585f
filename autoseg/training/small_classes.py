"""Training settings for small/rare classes, resolved from ``TrainConfig`` and the plans.

The planner flags classes per configuration (``ConfigurationPlan.small_classes``,
``planners/classes.py``); ``TrainConfig.small_classes`` overrides that list (``()`` turns the
handling off). For the resolved classes:

- **sampling** (``dataloader.BatchSource``): a share ``small_class_oversample`` of the samples is
  placed to hold a connected component of a small class, drawn among the training cases that contain
  it, the classes in proportion to ``small_class_shares`` (equal by default);
- **loss** (``loss.DiceCELoss``): cross-entropy weight ``small_class_ce_weight`` for those classes
  (others 1), and their soft Dice pooled over the batch (``small_class_batch_dice``).

Why this loss (numbers in docs/small_structures.md): the soft-Dice term already gives every
class the same weight whatever its size, but the 3d plans average it per sample, so a sample
without the class adds an absent-class term (about 1, with almost no gradient) that halves a
batch of two's Dice gradient for the class; pooled over the batch, it is one Dice over every
component in the batch, which the sampler puts there in most batches. Cross-entropy is a mean over
voxels, where the implanted Hippocampus blobs (median 32 voxels) are 0.036% of a 89,600-voxel
patch; a weight w multiplies their share and moves cross-entropy's decision threshold for the
class from 0.5 to 1 / (1 + w) (0.25 for w = 3): more lesion recall for some precision, which the
selection's learned size/presence rules can win back.

Fade (``small_class_fade``): over the last part of the schedule the emphasis falls linearly to
plain training, so that the low-learning-rate end of training, where the anatomy's boundaries
settle, sees the plain batches and loss while the small class has been learned with the emphasis
before. ``emphasis`` gives the factor (1: full emphasis, 0: plain) at an iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

from autoseg.errors import UserFacingError
from autoseg.plans import ConfigurationPlan
from autoseg.training.train_config import TrainConfig


@dataclass(frozen=True)
class SmallClassSetup:
    classes: tuple[int, ...]  # labels handled as small/rare (empty: plain training)
    shares: dict[int, float]  # label -> share of each batch drawn to hold one of its components
    ce_weights: tuple[float, ...] | None  # per output channel (background first); None: unweighted
    batch_dice_classes: tuple[int, ...]  # labels whose Dice is pooled over the batch

    @property
    def active(self) -> bool:
        return bool(self.classes)

    def describe(self) -> str:
        if not self.active:
            return "no small classes"
        shares = ", ".join(f"{c}: {s:.2f}" for c, s in self.shares.items())
        return (f"small classes {self.classes}: batch shares {{{shares}}}, CE weight "
                f"{max(self.ce_weights) if self.ce_weights else 1.0:g}, batch Dice for {self.batch_dice_classes}")


def fade_window(total_iterations: int, fade: float, delay: float = 0.0) -> tuple[int, int, int] | None:
    """Iterations (on, start, end): the emphasis is 0 before ``on`` (the first ``delay`` of the
    schedule), 1 from ``on`` to ``start``, and falls linearly to 0 at ``end`` (over the last ``fade``);
    None: emphasis throughout.

    ``fade_window(1000, 0.25) == (0, 750, 1000)``, ``fade_window(1000, 0.0, 0.5) == (500, 1000, 1000)``."""
    if (fade <= 0 and delay <= 0) or total_iterations <= 0:
        return None
    total = int(total_iterations)
    return int(round(total * delay)), int(round(total * (1 - fade))), total


def emphasis(iteration: int, window: tuple[int, int, int] | None) -> float:
    """The small-class emphasis at ``iteration``: 0 before ``on``, 1 from there to ``start``, 0 from
    ``end``, linear between ``start`` and ``end``.

    With window (0, 750, 1000): 1.0 at 750, 0.5 at 875, 0.0 at 1000 and after; with (500, 1000,
    1000): 0.0 at 499, 1.0 from 500 to 1000."""
    if window is None:
        return 1.0
    on, start, end = window
    if iteration < on:
        return 0.0
    if iteration <= start:
        return 1.0
    if iteration >= end:
        return 0.0
    return (end - iteration) / (end - start)


def resolve_small_classes(cfg: TrainConfig, plan: ConfigurationPlan, num_classes: int) -> SmallClassSetup:
    """The small-class handling for training ``plan`` with ``cfg`` (``num_classes`` includes background).

    Example: plans flag (3,), defaults -> shares {3: 0.33}, CE weights (1, 1, 1, 3), batch Dice for (3,).
    """
    classes = plan.small_classes if cfg.small_classes is None else cfg.small_classes
    classes = tuple(int(c) for c in classes)
    bad = [c for c in classes if not 1 <= c < num_classes]
    if bad:
        raise UserFacingError(f"small_classes {bad} are not foreground labels of this dataset (1..{num_classes - 1}); "
                              f"set e.g. --set small_classes={','.join(str(c) for c in range(1, num_classes))}")
    if not classes:
        return SmallClassSetup((), {}, None, ())
    weights = cfg.small_class_shares if cfg.small_class_shares is not None else (1.0,) * len(classes)
    if len(weights) != len(classes):
        raise UserFacingError(f"small_class_shares has {len(weights)} entries but the small classes are {classes}; "
                              f"give one per class, e.g. --set small_class_shares={','.join('1' for _ in classes)}")
    total = float(sum(weights))
    shares = {c: cfg.small_class_oversample * w / total for c, w in zip(classes, weights)}
    ce = tuple(cfg.small_class_ce_weight if k in classes else 1.0 for k in range(num_classes))
    return SmallClassSetup(
        classes=classes, shares=shares,
        ce_weights=None if all(w == 1.0 for w in ce) else ce,
        batch_dice_classes=classes if cfg.small_class_batch_dice else (),
    )
