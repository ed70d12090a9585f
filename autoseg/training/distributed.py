"""Training one fold on several processes with torch.distributed: the ranks of a run, the few
collectives the trainer needs, the global batch's shares, and the local launch.

A run on N processes ("ranks"), started by ``autoseg train ... --num-gpus N`` (which starts
torchrun's agent, ``torch.distributed.run``, in this process) or by ``torchrun --nnodes M
--nproc_per_node N -m autoseg.cli train ...`` (the ranks read the variables torchrun sets: RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the one place besides the
data root where autoseg reads the environment), trains one model with DistributedDataParallel:
NCCL on CUDA (rank ``r`` on GPU ``LOCAL_RANK``), gloo on a CPU.

- Batches: batch ``i`` stays the pure function of ``(seed, i)`` of ``dataloader.BatchSource``;
  rank ``r`` trains on its share of the samples of that global batch (``RankShare``), so the
  samples seen do not depend on the number of ranks and a run resumed on any number of ranks
  goes on with the batches it would have seen. Each rank builds the whole global batch and keeps
  its share: the data work is not divided between ranks (dividing it would need augmentation
  seeded per sample, which changes every batch of a single-process run).
- The planned (global) batch is split as evenly as it goes (``batch_shares``: 5 on 2 ranks is
  3 + 2); with unequal shares each rank's loss is weighted by ``share x ranks / batch`` so that
  the averaged gradient is that of the global batch's mean loss. Fewer samples than ranks is
  refused. A Dice pooled over the batch (``loss.batch_dice``, and the small classes'
  ``small_classes.batch_dice``) is pooled over the global batch (``Ranks.pool``).
- Reduced across ranks: the training loss of every step, the patch validation's loss and its
  TP/FP/FN counts (so the logged numbers are those of the global batch); gradients by DDP.
- Rank 0 alone writes (plans, train_config, checkpoints, training.log, progress.png) and runs the
  final validation; the other ranks log warnings only. Rank 0 decides the time budget's schedule
  and when the time is up, and the others follow (``Ranks.from_main``, ``StepSync``), so every
  rank stops at the same iteration; a stop request (SIGTERM) on any rank stops all of them there.
- A rank that dies or hangs: every collective has the run's ``runtime.collective_timeout_s`` (and gloo
  notices a closed connection at once); the ranks left raise ``RankLost``, whose message says
  what to do, and torchrun's agent stops the others. On NCCL a collective that times out is
  ended by NCCL's watchdog, which aborts the process with its own message (torch's default
  ``TORCH_NCCL_ASYNC_ERROR_HANDLING``); a peer's failure it reports is a ``RankLost``.
- On a CPU the ranks of one node share its cores: each runs ``cores / ranks`` threads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from typing import Any, Iterator

import numpy as np
import torch

from autoseg.errors import UserFacingError

log = logging.getLogger(__name__)

# the variables torchrun (torch.distributed.run) sets for each process it starts
_TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class RankLost(UserFacingError):
    """Another rank stopped (or hangs) while this one waited for it in a collective."""


def batch_shares(batch_size: int, world: int) -> list[int]:
    """Samples of a global batch of ``batch_size`` per rank, as even as it goes, the larger
    shares first: ``batch_shares(5, 2) == [3, 2]``, ``batch_shares(4, 2) == [2, 2]``. Refused
    (``UserFacingError``) when a rank would get no sample."""
    if batch_size < world:
        raise UserFacingError(
            f"the global batch of {batch_size} sample(s) cannot be split across {world} ranks (each needs at least "
            f"one): use at most {batch_size} processes (--num-gpus {batch_size}) or a larger batch "
            f"(--set sampling.batch_size={world})")
    return [batch_size // world + (r < batch_size % world) for r in range(world)]


@dataclasses.dataclass(frozen=True)
class Ranks:
    """The processes of one run and this process's place among them; ``Ranks()`` is a run on
    one process, where every collective is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str = "cpu"  # where the collectives' tensors live: the rank's GPU for NCCL

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, batch_size: int) -> slice:
        """This rank's samples of a global batch (``batch_shares``)."""
        shares = batch_shares(batch_size, self.world)
        start = sum(shares[:self.rank])
        return slice(start, start + shares[self.rank])

    def loss_weight(self, batch_size: int) -> float:
        """What this rank's mean loss is multiplied by so that DDP's average of the ranks' gradients
        is the gradient of the global batch's mean loss (1 when the shares are equal)."""
        s = self.share(batch_size)
        return (s.stop - s.start) * self.world / batch_size

    def _collective(self, what: str, op):
        try:
            return op()
        except Exception as exc:
            raise self.lost(what, exc) from exc

    def lost(self, what: str, exc: BaseException) -> RankLost:
        return RankLost(f"rank {self.rank} of {self.world}: the other ranks did not answer during {what} ({exc}); "
                        "another rank has stopped (see its messages above) or hangs, so this run ends here. "
                        "checkpoint_latest holds the last saved epoch: resume with --continue, on any number of "
                        "processes")

    def sum(self, values: np.ndarray, what: str) -> np.ndarray:
        """``values`` summed over the ranks (float64)."""
        if not self.active:
            return np.asarray(values, dtype=np.float64)
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        self._collective(what, lambda: torch.distributed.all_reduce(t))
        return t.cpu().numpy()

    def pool(self, sums: torch.Tensor) -> torch.Tensor:
        """``sums`` (over this rank's samples) summed over every rank, differentiably: the gradient
        of a Dice pooled over the global batch reaches each rank's samples (``loss.Pool``). DDP then
        averages the ranks' gradients, and since every rank's loss holds the same pooled Dice, that
        average is the gradient of the global batch's loss."""
        return _SumOverRanks.apply(sums)

    def from_main(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        self._collective(what, lambda: torch.distributed.broadcast_object_list(box, src=0, device=self.device))
        return box[0]

    def check_same(self, value: int, what: str) -> None:
        """Refuse a run whose ranks disagree on ``value`` (e.g. the iteration of the checkpoint
        each of them resumed from)."""
        if not self.active:
            return
        box: list = [None] * self.world
        self._collective(what, lambda: torch.distributed.all_gather_object(box, value))
        if len(set(box)) > 1:
            raise UserFacingError(f"the ranks disagree on {what}: {box} (rank 0 first); every rank must read the "
                                  "same workspace (a shared file system, or the same files copied to every node)")


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) gradient: each rank's input
    gets the gradient that every rank's use of the sum sends back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


def is_collective_failure(exc: BaseException) -> bool:
    """Whether an error raised inside a DDP step (the gradients' all-reduce runs in ``backward``)
    is a lost or timed-out peer rather than the step's own failure (out of memory, a bad input)."""
    if isinstance(exc, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out"))


@dataclasses.dataclass
class StepSync:
    """What the ranks agree on after every step, in one all-reduce of three numbers: the mean
    loss, whether any rank was asked to stop, and whether rank 0 finds the time budget spent."""

    loss: float
    stop: bool
    out_of_time: bool

    @classmethod
    def exchange(cls, ranks: Ranks, loss: float, stop: bool, out_of_time: bool) -> "StepSync":
        total = ranks.sum(np.array([loss, float(stop), float(out_of_time and ranks.main)]), "a training step")
        return cls(float(total[0]) / ranks.world, bool(total[1] > 0), bool(total[2] > 0))


class ShareWeightedLoss(torch.nn.Module):
    """``weight x loss``: a rank's loss weighted by its share of an unevenly split global batch
    (``Ranks.loss_weight``)."""

    def __init__(self, loss: torch.nn.Module, weight: float):
        super().__init__()
        self.loss, self.weight = loss, weight

    def forward(self, output, target):
        return self.weight * self.loss(output, target)


def from_environment() -> Ranks | None:
    """The ranks torchrun describes in the environment; None outside torchrun or for one process."""
    if not all(k in os.environ for k in _TORCHRUN) or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    return Ranks(*(int(os.environ[k]) for k in _TORCHRUN))


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout_s: float) -> Iterator[tuple[Ranks, torch.device]]:
    """The process group of ``ranks`` while the block runs: NCCL with rank ``r`` on GPU
    ``LOCAL_RANK`` when ``device`` is CUDA, else gloo on the CPU; every collective waits at most
    ``timeout_s``. Yields the ranks (with the device of their collectives) and the device to
    train on."""
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserFacingError(f"rank {ranks.rank} would use GPU {ranks.local_rank}, but torch sees "
                                  f"{torch.cuda.device_count()} GPU(s) on this node: start at most that many "
                                  "processes per node (--num-gpus / --nproc_per_node)")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserFacingError(f"training on several processes runs on CUDA (NCCL) or the CPU (gloo), not on "
                              f"{device.type}; use --device cuda or --device cpu")
    ranks = dataclasses.replace(ranks, device=str(device))
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        torch.distributed.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=timeout,
                                             **({"device_id": device} if backend == "nccl" else {}))
    except Exception as exc:
        raise ranks.lost("the start of the process group", exc) from exc
    try:
        yield ranks, device
    finally:
        with contextlib.suppress(Exception):  # after a lost rank the group may not close cleanly
            torch.distributed.destroy_process_group()


def configure_rank_logging(ranks: Ranks, verbose: bool = False) -> None:
    """Rank 0 logs as a single process does; the others only their warnings and errors, each line
    prefixed with the rank."""
    if ranks.main:
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[rank {ranks.rank}] %(levelname)s %(message)s"))
    logging.getLogger("autoseg").setLevel(logging.DEBUG if verbose else logging.WARNING)


def launch_local(num_processes: int, entry, *args,
                 then: str = "checkpoint_latest holds the last saved epoch: fix the cause and resume with --continue"
                 ) -> None:
    """Run ``entry(*args)`` on ``num_processes`` processes of this node under torchrun's agent
    (``torch.distributed.run``'s ``elastic_launch``, standalone rendezvous on a free local port,
    no restarts): when one process fails, the agent stops the others and this raises a
    ``UserFacingError`` naming the ranks that failed and their exit codes, then ``then`` (what to
    do next)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=f"autoseg-{os.getpid()}", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    try:
        elastic_launch(config, entry)(*args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        first = failures[0][1]
        described = ", ".join(f"rank {rank} (exit code {f.exitcode}{f', ' + f.signal_name() if f.exitcode < 0 else ''})"
                              for rank, f in failures)
        raise UserFacingError(f"the training on {num_processes} processes failed: {described}; rank "
                              f"{first.local_rank}'s messages are above. {then}") from None
