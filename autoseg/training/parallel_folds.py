"""``autoseg train_all --gpus 0,1,...``: independent folds trained at the same time, one process per
device, each process training its folds one after the other.

The processes are started by torchrun's agent (``distributed.launch_local``: one process per
device; when one fails the agent stops the others and the message names it); they form no process
group, each trains as a single process would. Process ``k`` trains every ``n``-th of the runs from
``k`` (``device_runs``) on GPU ``gpus[k]`` (``CUDA_VISIBLE_DEVICES`` set in the process before
CUDA starts), or with ``--device cpu`` on its share of the cores (its affinity mask: the threads of
one process per core share). A time budget is wall-clock time: every device has all of it, shared
among its own runs as in a sequential ``train_all``. A cascade (``3d_cascade_fullres``) needs
every ``3d_lowres`` fold finished first, so its folds run in a second round after the others
(``stages``), the budget split between the rounds by their number of runs (``stage_budget``).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from autoseg.errors import UserFacingError

log = logging.getLogger(__name__)

CASCADE = "3d_cascade_fullres"


def device_runs(runs: list, devices: int, k: int) -> list:
    """The runs process ``k`` of ``devices`` trains: every ``devices``-th from ``k``, in order
    (runs 0..4 on 2 devices: 0 2 4 and 1 3)."""
    return runs[k::devices]


def stages(runs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The rounds of concurrent runs: every configuration but the cascade, then the cascade (which
    reads the 3d_lowres folds' cross-validation); empty rounds dropped."""
    return [s for s in ([r for r in runs if r[0] != CASCADE], [r for r in runs if r[0] == CASCADE]) if s]


def stage_budget(total_s: float, spent_s: float, stage_runs: int, remaining_runs: int) -> float:
    """A round's share of what is left of the budget, by its number of runs:
    ``stage_budget(3600, 0, 10, 15) == 2400``."""
    return max(0.0, total_s - spent_s) * stage_runs / remaining_runs


def train_concurrently(ws, dataset: str, runs: list[tuple[str, str]], cfg, total_budget_s: float | None,
                       variant: str, device: str | None, gpus: list[int]) -> None:
    """Train ``runs`` on ``len(gpus)`` processes at once (module docstring); finished folds must be
    left out of ``runs`` already, interrupted ones are resumed."""
    import torch

    from autoseg.device import pick_device
    from autoseg.training import distributed

    dev = pick_device(device)
    if dev.type == "cuda" and max(gpus) >= torch.cuda.device_count():
        raise UserFacingError(f"--gpus {','.join(map(str, gpus))} names GPU {max(gpus)}, but torch sees "
                              f"{torch.cuda.device_count()} GPU(s) (indices 0-{torch.cuda.device_count() - 1})")
    if dev.type not in ("cuda", "cpu"):
        raise UserFacingError(f"--gpus runs folds on CUDA GPUs or, with --device cpu, on the CPU; not on {dev.type}")
    started = time.perf_counter()
    remaining = len(runs)
    for stage in stages(runs):
        budget = stage_budget(total_budget_s, time.perf_counter() - started, len(stage), remaining) \
            if total_budget_s else None
        log.info("%d fold(s) on %d %s at once%s: %s", len(stage), len(gpus), "GPUs" if dev.type == "cuda" else
                 "CPU processes", f", {budget:.0f} s each" if budget else "",
                 "; ".join(f"{_device_name(dev.type, gpus, k)}: " + ", ".join(f"{c}/{f}" for c, f in
                                                                             device_runs(stage, len(gpus), k))
                           for k in range(len(gpus))))
        distributed.launch_local(len(gpus), train_device, str(ws.root), dataset, stage, cfg, budget, variant,
                                 dev.type, gpus, then="fix the cause and run train_all again: it skips the finished "
                                                      "folds and resumes the others")
        remaining -= len(stage)


def _device_name(kind: str, gpus: list[int], k: int) -> str:
    return f"GPU {gpus[k]}" if kind == "cuda" else f"process {k}"


def train_device(root: str, dataset: str, runs: list, cfg, budget_s: float | None, variant: str, kind: str,
                 gpus: list[int]) -> None:
    """One process of ``train_concurrently`` (started by torchrun's agent, which sets LOCAL_RANK):
    its share of the runs on its device, one after the other."""
    import sys

    from autoseg.errors import user_errors
    from autoseg.paths import Workspace
    from autoseg.training.trainer import train_runs

    k, n = int(os.environ["LOCAL_RANK"]), len(gpus)
    if kind == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[k])  # before CUDA starts in this process
    elif hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        mine = cores[k * len(cores) // n:(k + 1) * len(cores) // n] or cores[k % len(cores):k % len(cores) + 1]
        os.sched_setaffinity(0, mine)
    name = _device_name(kind, gpus, k)
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    try:
        train_runs(Workspace(Path(root)), dataset, device_runs(runs, n, k), cfg, budget_s, variant, kind, resume=True)
    except user_errors() as exc:
        print(f"autoseg train_all: error: [{name}] {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
