"""Training on two processes (gloo on the CPU): real tiny runs of a few iterations.

The ranks are forked from the test process (torch already imported: no start-up cost) and join a
process group as torchrun's processes do; what a test patches before forking (a step that
records the weights, a clock, a rank that dies) holds in them. One test goes through
``autoseg train --num-gpus 2`` itself (torchrun's agent, spawned processes)."""
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.errors import UserFacingError
from autoseg.paths import Workspace
from autoseg.training import distributed, fold_run, trainer
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.dataloader import RankShare
from autoseg.training.train_config import TrainConfig
from synthetic import make_dataset

LIMIT_S = 60  # a run of two ranks that has not ended by then is a hang
REAL_STEP = fold_run.train_step


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """Dataset901_Synth with the cpu profile's 3d_fullres plans, without the step timing that the
    planning adds on that profile (slow on a loaded machine; not what these tests are about)."""
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.planners.experiment import plan_experiment
    from autoseg.plans import save_plans

    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    assert main(["fingerprint", "-d", "901", "-np", "1", "--root", str(root)]) == 0
    pre = Workspace(root).preprocessed_dataset(901)
    save_plans(plan_experiment(load_fingerprint(pre / "fingerprint.json"), "cpu"), pre / "plans.json")
    assert main(["preprocess", "-d", "901", "-np", "1", "-c", "3d_fullres", "--root", str(root)]) == 0
    return Workspace(root)


def small_config(epochs: int = 2, **changes) -> TrainConfig:
    """``changes``: settings by their dotted paths (``**{"loss.batch_dice": True}``)."""
    small = TrainConfig().with_(schedule=dict(num_epochs=epochs, num_iterations_per_epoch=3,
                                              num_val_iterations_per_epoch=1),
                                sampling=dict(num_workers=0, batch_size=2),
                                runtime=dict(precision="fp32", collective_timeout_s=20.0))
    return small.with_(**changes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, target, args: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    ranks = distributed.from_environment()
    outcome = "ok"
    try:
        with distributed.process_group(ranks, torch.device("cpu"), 20.0) as (ranks, _):
            target(ranks, *args)
    except BaseException as exc:  # the outcome goes back to the test, whatever it is
        outcome = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (UserFacingError, KeyboardInterrupt)):
            outcome += "\n" + traceback.format_exc()
    (results / f"rank{rank}.txt").write_text(outcome)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(target, *args, world: int = 2) -> dict[int, str]:
    """``target(ranks, *args)`` on ``world`` forked ranks; each rank's outcome ("ok", or the
    exception's type and message; missing: the rank died)."""
    ctx = multiprocessing.get_context("fork")
    results, port = Path(tempfile.mkdtemp(prefix="ranks")), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, target, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + LIMIT_S
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"ranks still running after {LIMIT_S} s"
    outcomes = {int(p.stem[4:]): p.read_text() for p in results.glob("rank*.txt")}
    shutil.rmtree(results)
    return outcomes


def train(ranks, ws, variant, cfg, resume=False):
    trainer.train_fold(ws, "901", "3d_fullres", 0, cfg, variant=variant, validate=False, resume=resume, ranks=ranks)


def fold_dir(ws: Workspace, variant: str):
    return ws.results / "Dataset901_Synth" / "3d_fullres" / variant / "fold_0"


def recording_steps(monkeypatch, folder, on_step=None):
    """``steps.train_step`` saving each rank's weights after each step as rank{r}_step{n}.pt in
    ``folder``; ``on_step(rank, n)`` runs before step n (1-based)."""
    count = {"n": 0}

    def step(net, *args):
        count["n"] += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if on_step:
            on_step(rank, count["n"])
        out = REAL_STEP(net, *args)
        module = getattr(net, "module", net)
        torch.save(module.state_dict(), folder / f"rank{rank}_step{count['n']}.pt")
        return out

    monkeypatch.setattr(fold_run, "train_step", step)


@pytest.fixture(scope="module")
def straight(ws, tmp_path_factory):
    """A 2-rank run of 2 epochs x 3 iterations, the weights of each rank after every step."""
    steps = tmp_path_factory.mktemp("steps")
    with pytest.MonkeyPatch.context() as mp:
        recording_steps(mp, steps)
        outcomes = run_ranks(train, ws, "ddp", small_config())
    assert outcomes == {0: "ok", 1: "ok"}, outcomes
    return fold_dir(ws, "ddp"), steps


def test_two_ranks_write_one_set_of_files_and_hold_the_same_weights_after_every_step(straight):
    fold, steps = straight
    assert sorted(p.name for p in fold.iterdir()) == sorted([
        "checkpoint_best.pth", "checkpoint_final.pth", "checkpoint_latest.pth", "plans.json", "progress.png",
        "train_config.json", "training.log"])
    log = (fold / "training.log").read_text()
    assert log.count("training Dataset901_Synth") == 1 and "the global batch of 2 is split 1 + 1" in log
    assert sum("pseudo_dice" in line for line in log.splitlines()) == 2  # one line per epoch, rank 0's
    for n in range(1, 7):
        a, b = torch.load(steps / f"rank0_step{n}.pt"), torch.load(steps / f"rank1_step{n}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), f"step {n}"
    first, last = torch.load(steps / "rank0_step1.pt"), torch.load(steps / "rank0_step6.pt")
    assert not all(torch.equal(first[k], last[k]) for k in first)  # the steps did train
    assert load_checkpoint(fold / "checkpoint_final.pth")["iteration"] == 6


def test_two_ranks_follow_the_loss_trajectory_of_one_process_with_the_same_global_batch(ws, straight):
    one = trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(), variant="one", validate=False)
    two = load_checkpoint(straight[0] / "checkpoint_final.pth")["history"]
    alone = load_checkpoint(one / "checkpoint_final.pth")["history"]
    # the same samples: only the order of the float sums differs (tolerance 1e-3 relative)
    np.testing.assert_allclose(two["train_loss"], alone["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["val_loss"], alone["val_loss"], rtol=1e-3)


@pytest.mark.parametrize("batch, batch_dice, split", [(3, False, "2 + 1; each rank's loss is weighted by its share"),
                                                      (2, True, "1 + 1")])
def test_an_uneven_split_and_a_batch_dice_follow_one_process(ws, batch, batch_dice, split):
    """An uneven split weighted to the global batch's mean; a Dice pooled over the global batch.
    Training losses within 1e-4 (2e-5 measured); without the weights 4e-3 apart, without the pooling 2e-4.
    The validation losses within 1e-3: AdamW's first steps move a weight whose gradient is float noise by
    about the learning rate either way."""
    cfg = small_config(1, **{"sampling.batch_size": batch, "loss.batch_dice": batch_dice})
    variant = f"b{batch}_{batch_dice}"
    assert run_ranks(train, ws, variant, cfg) == {0: "ok", 1: "ok"}
    one = trainer.train_fold(ws, "901", "3d_fullres", 0, cfg, variant=variant + "_one", validate=False)
    two = fold_dir(ws, variant)
    assert f"split {split}" in (two / "training.log").read_text()
    two, alone = (load_checkpoint(d / "checkpoint_final.pth")["history"] for d in (two, one))
    np.testing.assert_allclose(two["train_loss"], alone["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["val_loss"], alone["val_loss"], rtol=1e-3)


def test_a_stop_on_one_rank_stops_both_and_the_run_resumes_on_two_or_one(ws, straight, tmp_path, monkeypatch):
    def sigterm_on_rank_one(rank, n):
        if rank == 1 and n == 4:  # a stop asked of rank 1 alone, mid-way through the second epoch
            os.kill(os.getpid(), signal.SIGTERM)

    recording_steps(monkeypatch, tmp_path, sigterm_on_rank_one)
    outcomes = run_ranks(train, ws, "stop", small_config())
    assert outcomes == {0: "KeyboardInterrupt: ", 1: "KeyboardInterrupt: "}, outcomes
    stopped = fold_dir(ws, "stop")
    assert load_checkpoint(stopped / "checkpoint_latest.pth")["iteration"] == 4
    assert not (stopped / "checkpoint_final.pth").exists()
    on_one = fold_dir(ws, "stop_one")
    shutil.copytree(stopped, on_one)

    recording_steps(monkeypatch, tmp_path)
    assert run_ranks(train, ws, "stop", small_config(), True) == {0: "ok", 1: "ok"}
    resumed, whole = (load_checkpoint(d / "checkpoint_final.pth") for d in (stopped, straight[0]))
    assert resumed["iteration"] == 6
    assert all(torch.equal(resumed["network"][k], whole["network"][k]) for k in whole["network"])

    train(None, ws, "stop_one", small_config(), resume=True)  # the same checkpoint, on one process
    alone = load_checkpoint(on_one / "checkpoint_final.pth")
    assert alone["iteration"] == 6
    # the same batches as the two ranks resumed from there (epoch 1's mean: its last two steps)
    np.testing.assert_allclose(alone["history"]["train_loss"], resumed["history"]["train_loss"], rtol=1e-4)


class RankClock:
    """A clock for each rank: rank 0's steps take 2 s, rank 1's 0.1 s (alone, rank 1 would train
    20 times longer)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_stops_every_rank_at_rank_zeros_iteration(ws, tmp_path, monkeypatch):
    clock = RankClock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)

    def tick(rank, n):
        clock.now += 2.0 if rank == 0 else 0.1

    recording_steps(monkeypatch, tmp_path, tick)
    cfg = small_config(**{"schedule.time_budget_s": 60.0, "schedule.fit_width_to_budget": False})
    assert run_ranks(train, ws, "budget", cfg) == {0: "ok", 1: "ok"}
    iteration = load_checkpoint(fold_dir(ws, "budget") / "checkpoint_final.pth")["iteration"]
    last = {r: max(int(p.stem.split("step")[1]) for p in tmp_path.glob(f"rank{r}_step*.pt")) for r in (0, 1)}
    assert last[0] == last[1] == iteration
    assert 15 <= iteration <= 30  # 60 s at 2 s per step, less the final validation's estimate and the margin


def test_a_killed_rank_ends_the_run_with_a_message_in_bounded_time(ws, tmp_path, monkeypatch):
    def die_on_rank_one(rank, n):
        if rank == 1 and n == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    recording_steps(monkeypatch, tmp_path, die_on_rank_one)
    started = time.monotonic()
    outcomes = run_ranks(train, ws, "killed", small_config())
    assert time.monotonic() - started < 30
    assert 1 not in outcomes  # killed: no outcome
    assert outcomes[0].startswith("RankLost: rank 0 of 2: the other ranks did not answer during a training step")
    assert "resume with --continue" in outcomes[0]


def test_batch_shares_and_rank_share_slice_the_global_batch():
    assert distributed.batch_shares(4, 2) == [2, 2] and distributed.batch_shares(5, 2) == [3, 2]
    assert distributed.batch_shares(7, 3) == [3, 2, 2]
    with pytest.raises(UserFacingError, match="batch of 2 sample.* cannot be split across 4 ranks"):
        distributed.batch_shares(2, 4)
    ranks = [distributed.Ranks(rank=r, world=2) for r in (0, 1)]
    assert [r.share(5) for r in ranks] == [slice(0, 3), slice(3, 5)]
    # 3/5 and 2/5 of the global mean: the weights make DDP's average of the two the global mean
    assert [r.loss_weight(5) for r in ranks] == [1.2, 0.8]

    class Source:
        def batch(self, i):
            return {"data": np.arange(5) + 10 * i, "target": [np.arange(5), np.arange(5) * 2]}

    assert RankShare(Source(), ranks[1].share(5)).batch(1)["data"].tolist() == [13, 14]
    assert [t.tolist() for t in RankShare(Source(), ranks[0].share(5)).batch(0)["target"]] == [[0, 1, 2], [0, 2, 4]]


def _exit_on_rank_one() -> None:
    if os.environ["RANK"] == "1":
        sys.exit(3)
    time.sleep(60)  # rank 0 would wait long: the agent stops it


def test_the_local_launcher_stops_the_other_ranks_and_names_the_failed_one():
    started = time.monotonic()
    with pytest.raises(UserFacingError, match=r"failed: rank 1 \(exit code 3\)"):
        distributed.launch_local(2, _exit_on_rank_one)
    assert time.monotonic() - started < 45


def test_under_torchrun_train_all_is_refused_and_only_rank_zero_validates(ws, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(["train_all", "-d", "901", "--root", str(ws.root)]) == 2
    assert "train_all starts its own processes" in capsys.readouterr().err
    # rank 1 of a --val run: nothing to do (the fold is not even trained)
    assert main(["train", "3d_fullres", "4", "-d", "901", "--root", str(ws.root), "--val"]) == 0


@pytest.mark.slow
def test_cli_train_on_two_processes(ws):
    code = main(["train", "3d_fullres", "1", "-d", "901", "--root", str(ws.root), "-np", "0", "--device", "cpu",
                 "--num-gpus", "2", "--set", "num_epochs=1", "--set", "num_iterations_per_epoch=2",
                 "--set", "num_val_iterations_per_epoch=1", "--set", "batch_size=2", "--set", "precision=fp32"])
    assert code == 0
    fold = ws.results / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_1"
    assert load_checkpoint(fold / "checkpoint_final.pth")["iteration"] == 2
    assert (fold / "validation" / "summary.json").is_file()


def test_folds_in_parallel_are_dealt_round_robin_in_two_rounds_with_shares_of_the_budget():
    from autoseg.cli import parse_gpus
    from autoseg.training.parallel_folds import device_runs, stage_budget, stages

    assert parse_gpus("0,1,3") == [0, 1, 3]
    for bad in ("0,0", "-1", "a", ""):
        with pytest.raises(Exception, match="expected distinct GPU indices"):
            parse_gpus(bad)
    runs = [(c, f) for c in ("3d_fullres", "3d_lowres", "3d_cascade_fullres") for f in "01234"]
    first, second = stages(runs)
    assert [c for c, _ in second] == ["3d_cascade_fullres"] * 5 and len(first) == 10
    assert device_runs(first[:5], 2, 0) == [("3d_fullres", f) for f in "024"]
    assert device_runs(first[:5], 2, 1) == [("3d_fullres", f) for f in "13"]
    assert stage_budget(3600, 0, 10, 15) == 2400 and stage_budget(3600, 2600, 5, 5) == 1000


@pytest.mark.slow
def test_train_all_runs_folds_at_once_on_two_cpu_processes(ws):
    code = main(["train_all", "-d", "901", "-c", "3d_fullres", "--root", str(ws.root), "-np", "0", "--device", "cpu",
                 "--gpus", "0,1",
                 "--set", "num_epochs=1", "--set", "num_iterations_per_epoch=1", "--set", "num_val_iterations_per_epoch=1",
                 "--set", "precision=fp32", "--set", "validation_mirroring=false"])
    assert code == 0
    for fold in "01234":
        fold_dir = ws.results / "Dataset901_Synth" / "3d_fullres" / "default" / f"fold_{fold}"
        assert (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file()
