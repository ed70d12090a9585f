"""``TrainConfig``: every training setting in one frozen dataclass.

A trainer variant is data: a named diff of the defaults (``VARIANTS``) or ``--set key=value``
on the command line (nested fields with a dot: ``augmentation.p_rotation=0``). The resolved
config is saved beside every checkpoint as ``train_config.json``.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from autoseg.device import MEMORY_FORMATS, PRECISIONS
from autoseg.errors import UserFacingError
from autoseg.registry import Registry
from autoseg.serialization import from_jsonable
from autoseg.training.augmentation import AugmentationConfig


OPTIMIZERS = ("auto", "sgd", "adamw")
DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}
# "auto" trains schedules up to this long with AdamW: the range measured (1,200-4,000 iterations,
# docs/experiments/short_run_optimizer.md); longer ones keep nnU-Net's SGD, tuned for its 250,000
ADAMW_MAX_ITERATIONS = 5000


@dataclass(frozen=True)
class TrainConfig:
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    # iterations in all; None: num_epochs x num_iterations_per_epoch. Fewer end the run inside its
    # last epoch (a time budget sets it to what the time allows; the poly schedule spans num_epochs)
    num_iterations: Optional[int] = None
    # "sgd": nnU-Net's SGD (momentum, nesterov below); "adamw": AdamW; "auto": AdamW for a short run
    # (a time budget, or at most ADAMW_MAX_ITERATIONS; docs/experiments/short_run_optimizer.md), SGD
    # for a long one. The trainer saves the one it used (resolve_optimizer)
    optimizer: str = "auto"
    initial_lr: Optional[float] = None  # None: 1e-2 for SGD (nnU-Net's), 1e-3 for AdamW
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    loss: str = "dice_ce"
    batch_dice: Optional[bool] = None  # None: as the plans say
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    deep_supervision: bool = True
    # Output biases start at log(class frequency in training patches), floored at output_prior_min
    # (network.init_output_bias); false: zero biases (uniform softmax at the start)
    output_prior_init: bool = True
    output_prior_min: float = 1e-3
    # a checkpoint (or fold folder) whose matching weights a new run starts from (training/pretrained.py)
    pretrained: Optional[str] = None
    oversample_foreground_percent: float = 0.33
    # Small/rare classes (autoseg/training/small_classes.py). None: the plans' small_classes of the
    # configuration; (): no special handling. By default every sample gets a component of a small
    # class pasted into it from another training case where its surroundings match (copy-paste,
    # small_class_paste = 1.0, autoseg/training/paste.py), and the loss is plain: measured on the
    # implanted Hippocampus lesions, the sampler and loss emphasis below find about as many lesions but
    # cost the anatomy about twice as much Dice (docs/small_structures.md).
    small_classes: Optional[tuple[int, ...]] = None
    # share of all samples drawn to hold a component of a small class (B=2, 0.33: one sample in 66%
    # of the batches), split among the classes in proportion to small_class_shares (None: equally)
    small_class_oversample: float = 0.0
    small_class_shares: Optional[tuple[float, ...]] = None
    small_class_ce_weight: float = 1.0  # cross-entropy weight of small classes (others 1)
    small_class_batch_dice: bool = False  # Dice of small classes pooled over the batch
    # probability that a sample gets one small-class component pasted into it from a training case
    # that holds one, where its surroundings match (autoseg/training/paste.py); 0: no pasting
    small_class_paste: float = 1.0
    batch_size: Optional[int] = None  # None: as the plans say
    seed: int = 12345
    checkpoint_every_epochs: int = 50
    ema_alpha: float = 0.9  # pseudo-Dice EMA: ema = alpha * ema + (1 - alpha) * new
    num_workers: Optional[int] = None  # augmentation processes; None: chosen from the CPU count
    time_budget_s: Optional[float] = None
    # with a time budget on the cpu: the network width re-chosen for this fold's budget from the
    # steps timed at planning (throughput.json; planners/throughput.py), saved in the fold's plans.json
    fit_width_to_budget: bool = True
    validation_step_size: float = 0.5
    validation_mirroring: bool = True
    # the axes the final validation mirrors (None: every axis); a time budget sets it when mirroring
    # every axis would take more than budget.VALIDATION_SHARE of it (budget.choose_validation_mirroring)
    validation_mirror_axes: Optional[tuple[int, ...]] = None
    # auto: fp16 autocast + gradient scaling on CUDA, bf16 autocast on a CPU where it is measured to
    # be faster (AMX / AVX512-BF16: about 2x per step), else fp32; the trainer saves the one it used
    precision: str = "auto"
    # layout of the network's weights and activations in training: "contiguous" (NCDHW),
    # "channels_last" (NDHWC), or "auto": on a cpu the one whose step was faster when the plans
    # were made (throughput.json: timed for each width; planners/throughput.py), else contiguous;
    # the trainer saves the one it used
    memory_format: str = "auto"
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # cascade: the variant of the previous stage (3d_lowres) whose cross-validation masks feed this
    # one and which predict runs first; None: the same variant as this training
    previous_stage_variant: Optional[str] = None
    # training on several processes (training/distributed.py): the longest any rank waits for the
    # others in one collective before the run ends with a message (a rank that died or hangs); it
    # must cover the longest gap between two steps of any rank (rank 0 writing a checkpoint, every
    # rank loading its cases before the first step)
    collective_timeout_s: float = 1800.0

    # Settings measured and not adopted, then removed: a train_config.json written before still
    # loads (autoseg.serialization skips these keys with a note; they never changed prediction),
    # and --set names why one is gone. Key -> what training does now, and where it was measured.
    RETIRED: ClassVar[dict[str, str]] = {
        "small_class_placement": "a small-class patch is always placed at random so that it holds the component "
                                 "('centre' found far fewer lesions: docs/experiments/small_class_first_runs.md)",
        "small_class_slots": "small-class samples always take the foreground-forced places first ('random' cost "
                             "more anatomy Dice: docs/experiments/small_class_sampler_cost.md)",
        "small_class_balance_cases": "the other samples' cases are always drawn uniformly (balancing them lost the "
                                     "lesions of one seed in six: docs/experiments/small_class_sampler_cost.md)",
    }

    @property
    def total_iterations(self) -> int:
        """Iterations the schedule trains: ``num_epochs`` x ``num_iterations_per_epoch``, capped by
        ``num_iterations`` when set (the last epoch then holds what is left)."""
        whole = self.num_epochs * self.num_iterations_per_epoch
        return whole if self.num_iterations is None else min(whole, self.num_iterations)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # every number finite: nan/inf never train or compare sensibly
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, found {value}")
        if self.num_epochs < 1 or self.num_iterations_per_epoch < 1:
            raise ValueError("num_epochs and num_iterations_per_epoch must be >= 1")
        if self.num_iterations is not None and self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1 (or None: all epochs), found {self.num_iterations}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, found {self.optimizer!r}")
        if self.initial_lr is not None and not self.initial_lr > 0:
            raise ValueError(f"initial_lr must be positive (or None: the optimizer's default), found {self.initial_lr}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be positive (or None for the epoch schedule)")
        if not self.collective_timeout_s > 0:
            raise ValueError(f"collective_timeout_s must be > 0 (seconds), found {self.collective_timeout_s}")
        if not 0 <= self.oversample_foreground_percent <= 1:
            raise ValueError("oversample_foreground_percent must be in [0, 1]")
        if not 0 <= self.small_class_oversample <= 1:
            raise ValueError(f"small_class_oversample must be in [0, 1], found {self.small_class_oversample}")
        if not 0 <= self.small_class_paste <= 1:
            raise ValueError(f"small_class_paste must be in [0, 1], found {self.small_class_paste}")
        if self.small_class_shares is not None:
            if any(s < 0 for s in self.small_class_shares) or not sum(self.small_class_shares) > 0:
                raise ValueError(f"small_class_shares must be >= 0 with a positive sum, found {self.small_class_shares}")
            if self.small_classes is not None and len(self.small_class_shares) != len(self.small_classes):
                raise ValueError(f"small_class_shares needs one entry per small class {self.small_classes}, "
                                 f"found {self.small_class_shares}")
        if self.small_classes is not None and any(c < 1 for c in self.small_classes):
            raise ValueError(f"small_classes must be foreground labels (>= 1), found {self.small_classes}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, found {self.memory_format!r}")
        if self.small_class_ce_weight <= 0:
            raise ValueError(f"small_class_ce_weight must be > 0, found {self.small_class_ce_weight}")
        if not 0 < self.validation_step_size <= 1:  # 0 divides by zero; below it the tiles never advance
            raise ValueError(f"validation_step_size must be in (0, 1], found {self.validation_step_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: in the training process; or None: chosen from the "
                             f"CPU count), found {self.num_workers}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None: as the plans say), found {self.batch_size}")
        if self.checkpoint_every_epochs < 1:
            raise ValueError(f"checkpoint_every_epochs must be >= 1, found {self.checkpoint_every_epochs}")
        if not 0 <= self.ema_alpha <= 1:
            raise ValueError(f"ema_alpha must be in [0, 1], found {self.ema_alpha}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, found {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), found {self.momentum}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (the largest gradient norm kept), found {self.grad_clip}")


VARIANTS: Registry[dict[str, str]] = Registry("training variant")
VARIANTS.add("default", {})
VARIANTS.add("no_deep_supervision", {"deep_supervision": "false"})
VARIANTS.add("ce_only", {"loss": "ce"})
VARIANTS.add("no_augmentation", {"augmentation.enabled": "false"})
VARIANTS.add("short", {"num_epochs": "50"})
VARIANTS.add("no_small_classes", {"small_classes": "()"})  # plain training, whatever the plans flag
# the small classes shown by drawing their cases more often, with a loss emphasis, instead of by
# copy-paste (the default before copy-paste; docs/small_structures.md)
VARIANTS.add("small_class_sampler", {"small_class_paste": "0", "small_class_oversample": "0.33",
                                     "small_class_ce_weight": "3", "small_class_batch_dice": "true"})


def _parse(value: str, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if tp is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
        if origin is tuple:
            parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(_parse(p.strip(), args[0], key) for p in parts)
    except ValueError:
        pass
    raise UserFacingError(f"--set {key}={value}: expected a value of type {getattr(tp, '__name__', tp)}")


def apply_overrides(cfg, overrides: list[str] | dict[str, str]):
    """Return ``cfg`` with ``["key=value", ...]`` (or a dict) applied, values parsed by field type."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UserFacingError(f"--set expects KEY=VALUE, found '{item}' (e.g. --set num_epochs=50)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _set(obj, path: list[str], value: str, full_key: str):
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    retired = getattr(obj, "RETIRED", {})
    if head in retired:
        raise UserFacingError(f"the training setting '{full_key}' was retired: {retired[head]}")
    if head not in names:
        close = difflib.get_close_matches(head, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserFacingError(f"unknown training setting '{full_key}'{hint} available: {', '.join(names)}")
    hints = typing.get_type_hints(type(obj))
    if len(path) > 1:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), path[1:], value, full_key)})
    if dataclasses.is_dataclass(hints[head]):
        raise UserFacingError(f"'{full_key}' is a group of settings; set one of its fields, e.g. {full_key}.enabled=false")
    try:
        return dataclasses.replace(obj, **{head: _parse(value, hints[head], full_key)})
    except ValueError as exc:
        raise UserFacingError(f"--set {full_key}={value}: {exc}") from None


def resolve_train_config(variant: str = "default", overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the named variant's diff, then the command line's ``--set`` overrides."""
    try:
        diff = VARIANTS.get(variant)
    except KeyError as exc:
        raise UserFacingError(str(exc).strip('"')) from None
    return apply_overrides(apply_overrides(TrainConfig(), diff), overrides or [])


def resolve_optimizer(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its optimizer and learning rate chosen: ``auto`` is AdamW for a short run (a
    time budget, or a schedule of at most ``ADAMW_MAX_ITERATIONS``) and SGD for a long one (nnU-Net's
    250,000 iterations); an unset ``initial_lr`` is that optimizer's ``DEFAULT_LR``."""
    optimizer = cfg.optimizer
    if optimizer == "auto":
        short = cfg.time_budget_s is not None or cfg.total_iterations <= ADAMW_MAX_ITERATIONS
        optimizer = "adamw" if short else "sgd"
    lr = DEFAULT_LR[optimizer] if cfg.initial_lr is None else cfg.initial_lr
    return dataclasses.replace(cfg, optimizer=optimizer, initial_lr=lr)


def train_config_from_dict(data: dict) -> TrainConfig:
    return from_jsonable(TrainConfig, data)
