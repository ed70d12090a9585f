"""Train nnU-Net v2's plain ``nnUNetTrainer`` on one fold within a wall-clock budget, then validate.

Runs inside $NNUNET_VENV (stdlib, torch and nnunetv2 only); bench/time_to_dice.py starts it:

    $NNUNET_VENV/bin/python bench/nnunet_budget_train.py --dataset Dataset004_Hippocampus \\
        --budget-s 1800 --plans cpu --result r.json

with ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set, ``nnUNet_n_proc_DA=1``,
and ``splits_final.json`` already in the preprocessed dataset folder.

Plans: ``--plans default`` uses ``nnUNetPlans.json`` as nnU-Net wrote it; ``--plans cpu`` edits
it the way a knowledgeable user would for a CPU: batch size 2 and every entry of
``features_per_stage`` halved (32-64-128-256 -> 16-32-64-128 on Hippocampus), plans name
``nnUNetPlansCPU`` (so the output folder says so). Preprocessing is unchanged.

The budget (seconds) covers, from just after torch and nnunetv2 are imported: building and initialising the
trainer, the warm-up and ``run_training()``. ``perform_actual_validation()`` runs after the
budget, timed on its own: nnU-Net gets its whole budget for training (the generous choice;
autoseg's budget includes its final validation).

Warm-up and fitting: on the initialised trainer, ``--warmup`` calls of its own
``train_step(next(dataloader))`` at the initial learning rate; the median of all but the first
is the seconds per iteration ``s``. These iterations stay in the model (they count as
training, as autoseg's warm-up does). Then the poly schedule is fitted to the time left,
``left = budget - elapsed - MARGIN_FRACTION * budget``: an epoch of ``its`` iterations costs
``its * s + val_its * s / 3 + EPOCH_OVERHEAD_S`` seconds, with ``val_its = max(1, round(0.05 *
its))`` patch-validation iterations (a forward pass costs about a third of a step); ``its`` is
the largest number (at least 1) for which ``--epochs`` epochs fit, and the number of epochs is
then the number of whole such epochs that fit (more than ``--epochs`` only when ``its`` is 1).
Examples: 1,800 s, 60 s spent, 0.7 s per iteration, 20 epochs: left = 1,704 s -> 20 epochs x
116 iterations (+6 validation iterations), 84.6 s each. 600 s, 80 s spent, 11.5 s per
iteration: left = 508 s -> 29 epochs x 1 iteration (+1), 17.3 s each. The optimizer and
``PolyLRScheduler`` are rebuilt for the fitted number of epochs and ``run_training()`` runs
them unchanged (no re-fitting during training: nnU-Net's schedule is fixed once started).

Device: ``--device cpu`` (the default) or ``cuda`` (bench/gpu.py). On CUDA, as nnU-Net's own
``nnUNetv2_train``: torch on 1 thread (``--threads`` changes it), autocast to fp16 with a gradient
scaler (nnU-Net's ``train_step``), and ``torch.compile`` unless ``nnUNet_compile`` says otherwise
(nnU-Net's default; ``compiled`` in the result says which).

The result JSON holds the plans used (patch, batch, features), the fitted schedule, the
warm-up step times, iterations done, ``training_wall_s`` (after the imports to the end of ``run_training``),
``validation_wall_s`` and nnU-Net's own validation summary (foreground mean Dice). Also: the time
of every training step (``step_s``, warm-up first: the trainer's own ``train_step`` timed, the
batch already drawn, ended by a device synchronisation on CUDA; ``step_start_s``: when each
started, seconds after the imports), the peak GPU memory torch allocated during training and up
to the end of the validation (``peak_gpu_mb_training``, ``peak_gpu_mb``; None on the CPU), and
each epoch's end (seconds after the imports) with its pseudo-Dice and EMA (``epochs``: nnU-Net's
``mean_fg_dice`` and ``ema_fg_dice`` from its patch validation).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

EPOCH_OVERHEAD_S = 2.0  # per epoch: logging, progress plot, checkpoint_best when the EMA improves
MARGIN_FRACTION = 0.02
VAL_SHARE = 0.05
VAL_COST = 1 / 3  # a validation iteration (forward only) relative to a training step


def fit_schedule(budget_s: float, elapsed_s: float, s_per_it: float, target_epochs: int) -> dict:
    """Epochs, iterations per epoch and validation iterations per epoch that fit the time left.

    ``fit_schedule(1800, 60, 0.7, 20)`` gives 20 epochs x 116 iterations + 6 validation iterations;
    ``fit_schedule(600, 80, 11.5, 20)`` gives 29 epochs x 1 + 1 (see the module docstring)."""
    left = budget_s - elapsed_s - MARGIN_FRACTION * budget_s

    def epoch_s(its: int) -> float:
        return its * s_per_it + max(1, round(VAL_SHARE * its)) * s_per_it * VAL_COST + EPOCH_OVERHEAD_S

    its = int((left / target_epochs - EPOCH_OVERHEAD_S) / (s_per_it * (1 + VAL_SHARE * VAL_COST)))
    while its > 1 and target_epochs * epoch_s(its) > left:
        its -= 1
    its = max(1, its)
    epochs = max(1, int(left / epoch_s(its)))  # whole epochs that fit (more than the target when its == 1)
    return {"num_epochs": epochs, "num_iterations_per_epoch": its,
            "num_val_iterations_per_epoch": max(1, round(VAL_SHARE * its)),
            "left_s": left, "predicted_s": epochs * epoch_s(its)}


def edit_plans_for_cpu(plans: dict, configuration: str, batch_size: int = 2, width_divisor: int = 2) -> dict:
    """A copy of nnU-Net ``plans`` with ``configuration``'s batch size and feature widths set for a CPU."""
    plans = json.loads(json.dumps(plans))
    cfg = plans["configurations"][configuration]
    cfg["batch_size"] = batch_size
    kwargs = cfg["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [max(1, f // width_divisor) for f in kwargs["features_per_stage"]]
    plans["plans_name"] = "nnUNetPlansCPU"
    return plans


def _timed_step(step, device, started: float, durations: list, starts: list):
    """``step`` (the trainer's bound ``train_step``) timing each call into ``durations`` (seconds,
    ended by a device synchronisation on CUDA) and its start into ``starts`` (seconds after ``started``)."""
    import torch

    def timed(batch):
        t = time.perf_counter()
        out = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - t)
        starts.append(t - started)
        return out

    return timed


def _peak_gpu_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def _epochs(trainer, wall_started: float) -> list[dict]:
    """Each finished epoch: its end (seconds after ``wall_started``, a ``time.time()``) and nnU-Net's
    pseudo-Dice of its patch validation (``mean_fg_dice``) and that value's moving average."""
    ends = trainer.logger.get_value("epoch_end_timestamps", step=None)
    dice = trainer.logger.get_value("mean_fg_dice", step=None)
    ema = trainer.logger.get_value("ema_fg_dice", step=None)
    return [{"end_s": end - wall_started, "pseudo_dice": float(d), "ema_pseudo_dice": float(e)}
            for end, d, e in zip(ends, dice, ema)]


def _finish(*loaders) -> None:
    for dl in loaders:
        if hasattr(dl, "_finish"):
            dl._finish()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="e.g. Dataset004_Hippocampus")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--budget-s", type=float, required=True, help="training budget in seconds")
    p.add_argument("--plans", choices=("default", "cpu"), default="default")
    p.add_argument("--epochs", type=int, default=20, help="target number of epochs of the fitted schedule")
    p.add_argument("--warmup", type=int, default=5, help="warm-up iterations (the first is not timed)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 2 on the CPU; 1 on CUDA, as nnUNetv2_train sets)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--result", required=True, help="JSON file to write")
    args = p.parse_args()

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    started = time.perf_counter()
    wall_started = time.time()  # nnU-Net's epoch timestamps are time.time()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but this Python's torch sees no CUDA GPU")
    torch.set_num_threads(args.threads or (1 if args.device == "cuda" else 2))
    if args.device == "cuda":
        try:
            torch.set_num_interop_threads(1)  # as nnUNetv2_train; refused once parallel work has run
        except RuntimeError:
            pass
    pre = os.path.join(os.environ["nnUNet_preprocessed"], args.dataset)
    if not os.path.isfile(os.path.join(pre, "splits_final.json")):
        raise SystemExit(f"{pre}/splits_final.json is missing; write the fixed split there first")
    with open(os.path.join(pre, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    if args.plans == "cpu":
        plans = edit_plans_for_cpu(plans, args.configuration)
    cfg = plans["configurations"][args.configuration]
    plans["continue_training"] = False  # nnU-Net's run_training.py sets this key; the trainer pops it

    device = torch.device(args.device)
    trainer = nnUNetTrainer(plans, args.configuration, args.fold, dataset_json, device=device)
    trainer.initialize()
    step_s, step_start_s = [], []
    trainer.train_step = _timed_step(trainer.train_step, device, started, step_s, step_start_s)
    dl_tr, dl_val = trainer.get_dataloaders()
    trainer.network.train()
    for g in trainer.optimizer.param_groups:
        g["lr"] = trainer.initial_lr
    for _ in range(max(2, args.warmup)):
        trainer.train_step(next(dl_tr))
    warmup_steps = len(step_s)
    _finish(dl_tr, dl_val)  # run_training makes its own loaders
    s_per_it = statistics.median(step_s[1:])
    warmup_end_s = time.perf_counter() - started

    sched = fit_schedule(args.budget_s, warmup_end_s, s_per_it, args.epochs)
    trainer.num_epochs = sched["num_epochs"]
    trainer.num_iterations_per_epoch = sched["num_iterations_per_epoch"]
    trainer.num_val_iterations_per_epoch = sched["num_val_iterations_per_epoch"]
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()  # poly over the fitted epochs
    print(f"time budget {args.budget_s:.0f} s: {s_per_it:.2f} s per iteration after {warmup_end_s:.0f} s -> "
          f"{sched['num_epochs']} epochs x {sched['num_iterations_per_epoch']} iterations "
          f"(+{sched['num_val_iterations_per_epoch']} validation iterations per epoch)", flush=True)

    trainer.run_training()
    training_wall_s = time.perf_counter() - started
    peak_training = _peak_gpu_mb(device)
    t = time.perf_counter()
    trainer.perform_actual_validation()
    validation_wall_s = time.perf_counter() - t

    val_dir = os.path.join(trainer.output_folder, "validation")
    own = {}
    summary_path = os.path.join(val_dir, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            own = json.load(f).get("foreground_mean", {})
    epoch_s = [b - a for a, b in zip(trainer.logger.get_value("epoch_start_timestamps", step=None),
                                     trainer.logger.get_value("epoch_end_timestamps", step=None))]
    result = {
        "plans": args.plans, "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
        "features_per_stage": cfg["architecture"]["arch_kwargs"]["features_per_stage"],
        "budget_s": args.budget_s, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),
        "device": args.device, "compiled": bool(getattr(trainer, "_do_i_compile", lambda: False)()),
        "precision": "fp16 autocast" if args.device == "cuda" else "fp32",
        "warmup_step_s": step_s[:warmup_steps], "s_per_it_warmup": s_per_it, "warmup_end_s": warmup_end_s,
        "step_s": step_s, "step_start_s": step_start_s,
        "schedule": sched, "epochs_done": len(epoch_s), "epoch_s": epoch_s, "epochs": _epochs(trainer, wall_started),
        "iterations_done": len(step_s),
        "peak_gpu_mb_training": peak_training, "peak_gpu_mb": _peak_gpu_mb(device),
        "training_wall_s": training_wall_s, "validation_wall_s": validation_wall_s,
        "validation_folder": val_dir, "nnunet_own_foreground_mean": own,
    }
    tmp = args.result + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
