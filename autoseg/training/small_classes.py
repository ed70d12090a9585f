"""Training settings for small/rare classes, resolved from ``TrainConfig`` and the plans.

The planner flags classes per configuration (``ConfigurationPlan.small_classes``,
``planners/classes.py``); ``TrainConfig.small_classes`` overrides that list (``()`` turns the
handling off). For the resolved classes:

- **sampling** (``dataloader.BatchSource``): a share ``small_class_oversample`` of the samples is
  placed to hold a connected component of a small class, drawn among the training cases that contain
  it, the classes in proportion to ``small_class_shares`` (equal by default);
- **copy-paste** (``paste``, off by default): with probability ``small_class_paste`` a sample gets
  a component of a small class pasted in where its surroundings match (same split among classes);
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
"""
from __future__ import annotations

from dataclasses import dataclass, field

from autoseg.errors import UserFacingError
from autoseg.plans import ConfigurationPlan
from autoseg.training.train_config import TrainConfig


@dataclass(frozen=True)
class SmallClassSetup:
    classes: tuple[int, ...]  # labels handled as small/rare (empty: plain training)
    shares: dict[int, float]  # label -> share of each batch drawn to hold one of its components
    ce_weights: tuple[float, ...] | None  # per output channel (background first); None: unweighted
    batch_dice_classes: tuple[int, ...]  # labels whose Dice is pooled over the batch
    paste: dict[int, float] = field(default_factory=dict)  # label -> probability that a sample gets one of its components pasted

    @property
    def active(self) -> bool:
        return bool(self.classes)

    def describe(self) -> str:
        if not self.active:
            return "no small classes"
        shares = ", ".join(f"{c}: {s:.2f}" for c, s in self.shares.items())
        text = (f"small classes {self.classes}: batch shares {{{shares}}}, CE weight "
                f"{max(self.ce_weights) if self.ce_weights else 1.0:g}, batch Dice for {self.batch_dice_classes}")
        if self.paste:
            text += ", pasted into " + ", ".join(f"{c}: {p:.2f}" for c, p in self.paste.items()) + " of the samples"
        return text


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
        return SmallClassSetup((), {}, None, (), {})
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
        paste={c: cfg.small_class_paste * w / total for c, w in zip(classes, weights)} if cfg.small_class_paste else {},
    )
