"""``TrainConfig``: every training setting, in sections of frozen dataclasses.

A trainer variant is data: a named diff of the defaults (``VARIANTS``) or ``--set key=value`` on
the command line, a setting named by its section and field (``optim.initial_lr=0.002``,
``augmentation.p_rotation=0``). A setting with fixed choices is typed ``Literal[...]`` and checked
from its type (``serialization.check_choices``). The resolved config is saved beside every
checkpoint as ``train_config.json``; ``load_train_config`` reads it, in sections or in the flat
layout that autoseg wrote before them (``TrainConfig.MOVED``: each flat key's place now), and
``--set`` still takes the flat names (``--set initial_lr=0.002``).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from autoseg.device import MemoryFormat, Precision
from autoseg.errors import UserFacingError
from autoseg.registry import Registry
from autoseg.serialization import check_choices, choice_message, from_jsonable, load_json_as
from autoseg.training.augmentation import AugmentationConfig

log = logging.getLogger(__name__)

Optimizer = Literal["auto", "sgd", "adamw"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
LossName = Literal["dice_ce", "ce", "dice"]  # the names of training.loss.LOSSES (a test keeps them equal)
DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}
# "auto" trains schedules up to this long with AdamW: the range measured (1,200-4,000 iterations,
# docs/experiments/short_run_optimizer.md); longer ones keep nnU-Net's SGD, tuned for its 250,000
ADAMW_MAX_ITERATIONS = 5000


def _check(section: Any, prefix: str) -> None:
    """Every number of ``section`` finite (nan/inf never train or compare sensibly) and every
    ``Literal`` field one of its choices; ``prefix`` names the section in the message."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{f.name} must be a finite number, found {value}")
    check_choices(section, prefix)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long a run trains: epochs of iterations, or a time budget."""
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    # iterations in all; None: num_epochs x num_iterations_per_epoch. Fewer end the run inside its
    # last epoch (a time budget sets it to what the time allows; the poly schedule spans num_epochs)
    num_iterations: Optional[int] = None
    time_budget_s: Optional[float] = None
    # with a time budget on the cpu: the network width re-chosen for this fold's budget from the
    # steps timed at planning (throughput.json; planners/throughput.py), saved in the fold's plans.json
    fit_width_to_budget: bool = True
    checkpoint_every_epochs: int = 50

    @property
    def total_iterations(self) -> int:
        """Iterations the schedule trains: ``num_epochs`` x ``num_iterations_per_epoch``, capped by
        ``num_iterations`` when set (the last epoch then holds what is left)."""
        whole = self.num_epochs * self.num_iterations_per_epoch
        return whole if self.num_iterations is None else min(whole, self.num_iterations)

    def __post_init__(self):
        _check(self, "schedule.")
        if self.num_epochs < 1 or self.num_iterations_per_epoch < 1:
            raise ValueError("schedule.num_epochs and schedule.num_iterations_per_epoch must be >= 1")
        if self.num_iterations is not None and self.num_iterations < 1:
            raise ValueError(f"schedule.num_iterations must be >= 1 (or None: all epochs), found {self.num_iterations}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("schedule.time_budget_s must be positive (or None for the epoch schedule)")
        if self.checkpoint_every_epochs < 1:
            raise ValueError(f"schedule.checkpoint_every_epochs must be >= 1, found {self.checkpoint_every_epochs}")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule (poly: ``lr * (1 - epoch / num_epochs) ** poly_exponent``)."""
    # "sgd": nnU-Net's SGD (momentum, nesterov below); "adamw": AdamW; "auto": AdamW for a short run
    # (a time budget, or at most ADAMW_MAX_ITERATIONS; docs/experiments/short_run_optimizer.md), SGD
    # for a long one. The trainer saves the one it used (resolve_optimizer)
    optimizer: Optimizer = "auto"
    initial_lr: Optional[float] = None  # None: 1e-2 for SGD (nnU-Net's), 1e-3 for AdamW
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    poly_exponent: float = 0.9
    grad_clip: float = 12.0

    def __post_init__(self):
        _check(self, "optim.")
        if self.initial_lr is not None and not self.initial_lr > 0:
            raise ValueError(f"optim.initial_lr must be positive (or None: the optimizer's default), "
                             f"found {self.initial_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, found {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), found {self.momentum}")
        if not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 (the largest gradient norm kept), found {self.grad_clip}")


@dataclass(frozen=True)
class LossConfig:
    """The loss (``training/loss.py``), deep supervision and the output biases at the start."""
    name: LossName = "dice_ce"
    batch_dice: Optional[bool] = None  # None: as the plans say
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    deep_supervision: bool = True
    # Output biases start at log(class frequency in training patches), floored at output_prior_min
    # (network.init_output_bias); false: zero biases (uniform softmax at the start)
    output_prior_init: bool = True
    output_prior_min: float = 1e-3

    def __post_init__(self):
        _check(self, "loss.")


@dataclass(frozen=True)
class SamplingConfig:
    """How the batches are drawn (``training/dataloader.py``)."""
    batch_size: Optional[int] = None  # None: as the plans say
    oversample_foreground_percent: float = 0.33
    num_workers: Optional[int] = None  # augmentation processes; None: chosen from the CPU count

    def __post_init__(self):
        _check(self, "sampling.")
        if not 0 <= self.oversample_foreground_percent <= 1:
            raise ValueError("sampling.oversample_foreground_percent must be in [0, 1]")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"sampling.num_workers must be >= 0 (0: in the training process; or None: chosen "
                             f"from the CPU count), found {self.num_workers}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"sampling.batch_size must be >= 1 (or None: as the plans say), found {self.batch_size}")


@dataclass(frozen=True)
class SmallClassConfig:
    """Small/rare classes (autoseg/training/small_classes.py). By default every sample gets a
    component of a small class pasted into it from another training case where its surroundings
    match (copy-paste, ``paste`` = 1.0, autoseg/training/paste.py), and the loss is plain: measured
    on the implanted Hippocampus lesions, the sampler and loss emphasis below find about as many
    lesions but cost the anatomy about twice as much Dice (docs/small_structures.md)."""
    # None: the plans' small_classes of the configuration; (): no special handling
    classes: Optional[tuple[int, ...]] = None
    # share of all samples drawn to hold a component of a small class (B=2, 0.33: one sample in 66%
    # of the batches), split among the classes in proportion to shares (None: equally)
    oversample: float = 0.0
    shares: Optional[tuple[float, ...]] = None
    ce_weight: float = 1.0  # cross-entropy weight of small classes (others 1)
    batch_dice: bool = False  # Dice of small classes pooled over the batch
    # probability that a sample gets one small-class component pasted into it from a training case
    # that holds one, where its surroundings match (autoseg/training/paste.py); 0: no pasting
    paste: float = 1.0

    def __post_init__(self):
        _check(self, "small_classes.")
        if not 0 <= self.oversample <= 1:
            raise ValueError(f"small_classes.oversample must be in [0, 1], found {self.oversample}")
        if not 0 <= self.paste <= 1:
            raise ValueError(f"small_classes.paste must be in [0, 1], found {self.paste}")
        if self.shares is not None:
            if any(s < 0 for s in self.shares) or not sum(self.shares) > 0:
                raise ValueError(f"small_classes.shares must be >= 0 with a positive sum, found {self.shares}")
            if self.classes is not None and len(self.shares) != len(self.classes):
                raise ValueError(f"small_classes.shares needs one entry per small class {self.classes}, "
                                 f"found {self.shares}")
        if self.classes is not None and any(c < 1 for c in self.classes):
            raise ValueError(f"small_classes.classes must be foreground labels (>= 1), found {self.classes}")
        if self.ce_weight <= 0:
            raise ValueError(f"small_classes.ce_weight must be > 0, found {self.ce_weight}")


@dataclass(frozen=True)
class ValidationConfig:
    """The patch validation after each epoch and the sliding-window validation at the end."""
    step_size: float = 0.5
    mirroring: bool = True
    # the axes the final validation mirrors (None: every axis); a time budget sets it when mirroring
    # every axis would take more than budget.VALIDATION_SHARE of it (budget.choose_validation_mirroring)
    mirror_axes: Optional[tuple[int, ...]] = None
    ema_alpha: float = 0.9  # pseudo-Dice EMA: ema = alpha * ema + (1 - alpha) * new

    def __post_init__(self):
        _check(self, "validation.")
        if not 0 < self.step_size <= 1:  # 0 divides by zero; below it the tiles never advance
            raise ValueError(f"validation.step_size must be in (0, 1], found {self.step_size}")
        if not 0 <= self.ema_alpha <= 1:
            raise ValueError(f"validation.ema_alpha must be in [0, 1], found {self.ema_alpha}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the machine computes: arithmetic, memory layout, and the processes' collectives."""
    # auto: fp16 autocast + gradient scaling on CUDA, bf16 autocast on a CPU where it is measured to
    # be faster (AMX / AVX512-BF16: about 2x per step), else fp32; the trainer saves the one it used
    precision: Precision = "auto"
    # layout of the network's weights and activations in training: "contiguous" (NCDHW),
    # "channels_last" (NDHWC), or "auto": on a cpu the one whose step was faster when the plans
    # were made (throughput.json: timed for each width; planners/throughput.py), else contiguous;
    # the trainer saves the one it used
    memory_format: MemoryFormat = "auto"
    # training on several processes (training/distributed.py): the longest any rank waits for the
    # others in one collective before the run ends with a message (a rank that died or hangs); it
    # must cover the longest gap between two steps of any rank (rank 0 writing a checkpoint, every
    # rank loading its cases before the first step)
    collective_timeout_s: float = 1800.0

    def __post_init__(self):
        _check(self, "runtime.")
        if not self.collective_timeout_s > 0:
            raise ValueError(f"runtime.collective_timeout_s must be > 0 (seconds), found {self.collective_timeout_s}")


@dataclass(frozen=True)
class TrainConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    small_classes: SmallClassConfig = field(default_factory=SmallClassConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 12345
    # a checkpoint (or fold folder) whose matching weights a new run starts from (training/pretrained.py)
    pretrained: Optional[str] = None
    # cascade: the variant of the previous stage (3d_lowres) whose cross-validation masks feed this
    # one and which predict runs first; None: the same variant as this training
    previous_stage_variant: Optional[str] = None

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
    # The flat keys of the layout before the sections -> each one's place now. A train_config.json
    # written flat loads into the sections (upgrade_jsonable), and --set takes the flat names.
    MOVED: ClassVar[dict[str, str]] = {
        **{k: f"schedule.{k}" for k in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                                        "num_iterations", "time_budget_s", "fit_width_to_budget",
                                        "checkpoint_every_epochs")},
        **{k: f"optim.{k}" for k in ("optimizer", "initial_lr", "weight_decay", "momentum", "nesterov",
                                     "poly_exponent", "grad_clip")},
        "loss": "loss.name",
        **{k: f"loss.{k}" for k in ("batch_dice", "ce_weight", "dice_weight", "deep_supervision",
                                    "output_prior_init", "output_prior_min")},
        **{k: f"sampling.{k}" for k in ("batch_size", "oversample_foreground_percent", "num_workers")},
        "small_classes": "small_classes.classes",
        **{f"small_class_{k}": f"small_classes.{k}" for k in ("oversample", "shares", "ce_weight", "batch_dice",
                                                              "paste")},
        **{f"validation_{k}": f"validation.{k}" for k in ("step_size", "mirroring", "mirror_axes")},
        "ema_alpha": "validation.ema_alpha",
        **{k: f"runtime.{k}" for k in ("precision", "memory_format", "collective_timeout_s")},
    }

    @property
    def total_iterations(self) -> int:
        return self.schedule.total_iterations

    def with_(self, **changes) -> TrainConfig:
        """A copy with ``changes``, typed values checked as a new config's are: a top-level field or a
        whole section (``seed=1``), fields of a section as a dict (``schedule=dict(num_epochs=2,
        num_iterations_per_epoch=3)``) or one field by its dotted path (``**{"optim.initial_lr": 1e-3}``)."""
        nested: dict[str, Any] = {}
        for key, value in changes.items():
            *sections, name = key.split(".")
            tree = nested
            for section in sections:
                tree = tree.setdefault(section, {})
            tree[name] = {**tree.get(name, {}), **value} if isinstance(value, dict) else value
        return _replace_nested(self, nested)

    @classmethod
    def upgrade_jsonable(cls, data: Any, where: str = "TrainConfig") -> Any:
        """``data`` (a train_config.json's object) with the keys of the flat layout moved into their
        sections (``MOVED``), a note logged when there were any: ``{"initial_lr": 0.002, "loss": "ce"}``
        -> ``{"optim": {"initial_lr": 0.002}, "loss": {"name": "ce"}}``. Keys already in sections,
        retired and unknown keys are left for ``from_jsonable`` to judge."""
        nested, moved = _nest_flat(data)
        if moved:
            log.info("%s: %d setting(s) of the flat layout read into their sections (TrainConfig.MOVED)",
                     where, moved)
        return nested


def _nest_flat(data: Any) -> tuple[Any, int]:
    """(``data`` with the flat layout's keys moved into their sections, how many were moved)."""
    if not isinstance(data, dict):
        return data, 0
    flat = {k for k in data if k in TrainConfig.MOVED and not (k in _SECTIONS and isinstance(data[k], dict))}
    out = {k: dict(v) if k in _SECTIONS and isinstance(v, dict) else v for k, v in data.items() if k not in flat}
    for key in flat:
        section, name = TrainConfig.MOVED[key].split(".")
        out.setdefault(section, {}).setdefault(name, data[key])
    return out, len(flat)


_SECTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.default_factory is not dataclasses.MISSING)


def _replace_nested(obj: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace`` of ``obj`` where a dict value changes fields of a section."""
    names = {f.name for f in dataclasses.fields(obj)}
    kwargs = {}
    for name, value in changes.items():
        if name not in names:
            raise TypeError(f"{type(obj).__name__} has no field '{name}'; its fields: {', '.join(sorted(names))}")
        current = getattr(obj, name)
        kwargs[name] = (_replace_nested(current, value) if isinstance(value, dict) and dataclasses.is_dataclass(current)
                        else value)
    return dataclasses.replace(obj, **kwargs)


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A fold's ``train_config.json``, written in sections or in the older flat layout."""
    return load_json_as(TrainConfig, path)


def train_config_from_dict(data: dict, where: str = "TrainConfig") -> TrainConfig:
    """A ``TrainConfig`` from a saved object (a checkpoint's ``train_config``), either layout."""
    return from_jsonable(TrainConfig, data, where)


def saved_setting(data: dict | None, path: str, default: Any = None) -> Any:
    """One setting of a saved train_config object (a checkpoint's ``train_config``, a
    train_config.json read as JSON), in either layout, by its dotted path (``"runtime.precision"``);
    ``default`` where it was not saved. Nothing else of the object is read or checked."""
    node, _ = _nest_flat(data or {})
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


VARIANTS: Registry[dict[str, str]] = Registry("training variant")
VARIANTS.add("default", {})
VARIANTS.add("no_deep_supervision", {"loss.deep_supervision": "false"})
VARIANTS.add("ce_only", {"loss.name": "ce"})
VARIANTS.add("no_augmentation", {"augmentation.enabled": "false"})
VARIANTS.add("short", {"schedule.num_epochs": "50"})
VARIANTS.add("no_small_classes", {"small_classes.classes": "()"})  # plain training, whatever the plans flag
# the small classes shown by drawing their cases more often, with a loss emphasis, instead of by
# copy-paste (the default before copy-paste; docs/small_structures.md)
VARIANTS.add("small_class_sampler", {"small_classes.paste": "0", "small_classes.oversample": "0.33",
                                     "small_classes.ce_weight": "3", "small_classes.batch_dice": "true"})


def _parse(value: str, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserFacingError(f"--set {key}={value}: {choice_message(key, args, value)}")
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
    """Return ``cfg`` with ``["key=value", ...]`` (or a dict) applied, values parsed by field type.
    A key is a dotted path (``optim.initial_lr``) or, for a ``TrainConfig``, a flat name of the
    layout before the sections (``initial_lr``: ``TrainConfig.MOVED``)."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        cfg = _set(cfg, _setting_path(type(cfg), key), value, key)
    return cfg


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UserFacingError(f"--set expects KEY=VALUE, found '{item}' (e.g. --set schedule.num_epochs=50)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _setting_path(cls: type, key: str) -> list[str]:
    """The field path ``key`` names in ``cls``: its dotted parts, a flat name's place now
    (``MOVED``); an error for a retired, unknown or incomplete one, with the close match."""
    retired, moved = getattr(cls, "RETIRED", {}), getattr(cls, "MOVED", {})
    if key in retired:
        raise UserFacingError(f"the training setting '{key}' was retired: {retired[key]}")
    if key in moved:
        log.info("--set %s: the setting is now %s (the flat name still works)", key, moved[key])
        key = moved[key]
    leaves, groups = _setting_names(cls)
    if key in leaves:
        return key.split(".")
    if key in groups:
        example = next(p for p in leaves if p.startswith(key + "."))
        raise UserFacingError(f"'{key}' is a group of settings; set one of its fields, e.g. {example}=...")
    candidates = {**{p: p for p in leaves}, **moved}
    close = difflib.get_close_matches(key, list(candidates), n=1)
    by_name = {p.rsplit(".", 1)[-1]: p for p in reversed(leaves)}  # a field in another section
    close = [candidates[close[0]]] if close else [by_name[c] for c in difflib.get_close_matches(
        key.rsplit(".", 1)[-1], list(by_name), n=1)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    head = key.split(".")[0]
    available = ([p for p in leaves if p.startswith(head + ".")] if head in groups
                 else [f"{f.name}.*" if f.name in groups else f.name for f in dataclasses.fields(cls)])
    raise UserFacingError(f"unknown training setting '{key}'{hint} available: {', '.join(available)}")


@functools.lru_cache(maxsize=None)
def _setting_names(cls: type) -> tuple[list[str], list[str]]:
    """(the dotted paths of every setting of ``cls``, the paths of its sections), in field order."""
    leaves, groups = [], []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            groups.append(f.name)
            sub_leaves, sub_groups = _setting_names(tp)
            leaves += [f"{f.name}.{p}" for p in sub_leaves]
            groups += [f"{f.name}.{p}" for p in sub_groups]
        else:
            leaves.append(f.name)
    return leaves, groups


def _set(obj, path: list[str], value: str, full_key: str):
    head = path[0]
    if len(path) > 1:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), path[1:], value, full_key)})
    try:
        return dataclasses.replace(obj, **{head: _parse(value, typing.get_type_hints(type(obj))[head], full_key)})
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
    optimizer = cfg.optim.optimizer
    if optimizer == "auto":
        short = cfg.schedule.time_budget_s is not None or cfg.total_iterations <= ADAMW_MAX_ITERATIONS
        optimizer = "adamw" if short else "sgd"
    lr = DEFAULT_LR[optimizer] if cfg.optim.initial_lr is None else cfg.optim.initial_lr
    return cfg.with_(optim=dict(optimizer=optimizer, initial_lr=lr))
