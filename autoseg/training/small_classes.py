"""Training settings for small/rare classes, resolved from ``TrainConfig`` and the plans.

The planner flags classes per configuration (``ConfigurationPlan.small_classes``,
``planners/classes.py``); ``TrainConfig.small_classes.classes`` overrides that list (``()`` turns the
handling off). For the resolved classes:

- **copy-paste** (``paste``): with probability ``small_classes.paste`` (default 1: every sample) a
  sample drawn as in plain training gets a component of a small class, cut from a training case
  that holds one, pasted in where its surroundings match, the classes in proportion to
  ``small_classes.shares`` (equal by default);
- **sampling** (``dataloader.BatchSource``, off by default): a share ``small_classes.oversample`` of
  the samples is placed to hold a connected component of a small class, drawn among the training
  cases that contain it (same split among classes);
- **loss** (``loss.DiceCELoss``, plain by default): cross-entropy weight ``small_classes.ce_weight``
  for those classes (others 1), and their soft Dice pooled over the batch (``small_classes.batch_dice``).

Why these defaults (numbers in docs/small_structures.md and
docs/experiments/small_class_copy_paste.md): the soft-Dice term
already gives every class the same weight whatever its size, as long as the class is in the sample;
per sample, a sample without it adds an absent-class term (about 1, with almost no gradient). With
every sample holding a pasted component that term never arises, so neither a pooled Dice nor a
cross-entropy weight is needed to keep the class from being swamped. Drawing the lesion cases more
often (the sampler) with a cross-entropy weight of 3 and a pooled Dice (``--variant
small_class_sampler``) finds about as many implanted Hippocampus lesions, but shifts how often each case's
anatomy is seen and the share of the gradient the anatomy gets, and cost the anatomy about twice the Dice.
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
        parts = []
        if any(self.shares.values()):
            parts.append("batch shares {" + ", ".join(f"{c}: {s:.2f}" for c, s in self.shares.items()) + "}")
        if self.paste:
            parts.append("pasted into " + ", ".join(f"{c}: {p:.2f}" for c, p in self.paste.items()) + " of the samples")
        parts.append(f"CE weight {max(self.ce_weights) if self.ce_weights else 1.0:g}")
        parts.append(f"batch Dice for {self.batch_dice_classes}" if self.batch_dice_classes else "Dice per sample")
        return f"small classes {self.classes}: " + ", ".join(parts)


def resolve_small_classes(cfg: TrainConfig, plan: ConfigurationPlan, num_classes: int,
                          region_based: bool = False) -> SmallClassSetup:
    """The small-class handling for training ``plan`` with ``cfg`` (``num_classes`` includes background);
    none for a region-based dataset (the planner flags no class there; asking for one is refused).

    Example: plans flag (3,), defaults -> paste {3: 1.0}, shares {3: 0.0}, no CE weights, no batch Dice;
    ``--variant small_class_sampler`` -> shares {3: 0.33}, CE weights (1, 1, 1, 3), batch Dice for (3,).
    """
    small = cfg.small_classes
    classes = plan.small_classes if small.classes is None else small.classes
    classes = tuple(int(c) for c in classes)
    if region_based and classes:
        raise UserFacingError(f"small_classes {classes} were asked for, but this dataset is region-based: the "
                              "small-class sampling and loss weights act on softmax classes, not on regions; "
                              "drop --set small_classes.classes")
    bad = [c for c in classes if not 1 <= c < num_classes]
    if bad:
        raise UserFacingError(f"small_classes {bad} are not foreground labels of this dataset "
                              f"(1..{num_classes - 1}); set e.g. --set small_classes.classes={','.join(str(c) for c in range(1, num_classes))}")
    if not classes:
        return SmallClassSetup((), {}, None, (), {})
    weights = small.shares if small.shares is not None else (1.0,) * len(classes)
    if len(weights) != len(classes):
        raise UserFacingError(f"small_classes.shares has {len(weights)} entries but the small classes are "
                              f"{classes}; give one per class, e.g. --set small_classes.shares="
                              f"{','.join('1' for _ in classes)}")
    total = float(sum(weights))
    shares = {c: small.oversample * w / total for c, w in zip(classes, weights)}
    ce = tuple(small.ce_weight if k in classes else 1.0 for k in range(num_classes))
    return SmallClassSetup(
        classes=classes, shares=shares,
        ce_weights=None if all(w == 1.0 for w in ce) else ce,
        batch_dice_classes=classes if small.batch_dice else (),
        paste={c: small.paste * w / total for c, w in zip(classes, weights)} if small.paste else {},
    )


def unlearned_classes(summary: dict, classes: tuple[int, ...]) -> dict[int, int]:
    """The classes among ``classes`` that a validation ``summary`` (summary.json) shows the network
    never predicts although the references hold them: label -> number of reference lesions (pooled
    over the cases) of which not one is found and none is predicted. A run can end there: on the
    implanted Hippocampus data one training seed in eight learned no blob in any arm, plain
    training included (docs/small_structures.md, "When a small class is not learned").

    Example: pooled {"3": {"n_ref_lesions": 9, "n_pred_lesions": 0}} -> {3: 9}; a class with no
    reference lesion in the validation cases, or with any prediction, is not listed."""
    pooled = summary.get("pooled", {})
    out = {}
    for c in classes:
        stats = pooled.get(str(c), {})
        if stats.get("n_ref_lesions", 0) > 0 and stats.get("n_pred_lesions", 0) == 0:
            out[c] = int(stats["n_ref_lesions"])
    return out


def unlearned_message(cls: int, n_ref: int, where: str) -> str:
    return (f"small class {cls} was never predicted on {where}, which hold {n_ref} of its lesions: the "
            f"network did not learn it. Train longer (--time-budget or --set schedule.num_epochs=N) or with "
            f"another seed (--set seed=N); see docs/small_structures.md, 'When a small class is not learned'")
