"""A folder's cases in three steps, with the network's step overlapped with the other two.

Each case is
1. prepared (``prepare_files``): its channel files read and checked, then cropped, normalised
   and resampled to the spacing of every configuration the model runs (``stages_of``: a
   cascade's previous stage included);
2. run through the networks (``run_networks``): the sliding window of every configuration and
   fold, and for a cascade its previous stage's labels mapped back and onto the cascade's grid;
   always in the main process, which holds the models;
3. finished (``finish_case``, ``export_files``): each configuration's probabilities resampled to
   the input's geometry and un-cropped, averaged, turned into labels (argmax, or regions at
   0.5), postprocessed, and written (probabilities first, the segmentation last, atomically).

``predict.segment`` is 1-2-3 in a row. ``run_cases`` runs a folder: serially in the main process
(no workers), or with ``Workers``: ``prepare`` processes read and preprocess the next cases while
the network runs (at most that many prepared cases wait in memory) and ``export`` processes
finish the previous ones (at most that many being finished). The workers are spawned (a fresh
interpreter, never a fork of a process holding torch's threads or a CUDA context) and run at the
lowest CPU priority. The steps compute the same numbers wherever they run, so both ways write the
same files.

Every wait on a worker has a limit (``Workers.timeout_s``, ``--worker-timeout``): a worker that
dies (killed for memory, a crash in a native library) or that has not answered for one case in
that time ends the run with ``WorkerError`` naming the case; the workers are stopped, never
waited for.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from autoseg.errors import UserFacingError

log = logging.getLogger(__name__)

DEFAULT_WORKER_TIMEOUT_S = 1800.0  # the longest wait for one case's preparation or export in a worker


class WorkerError(UserFacingError):
    """A worker process died or hung; the message names the case and how to go on."""


@dataclass(frozen=True)
class Stage:
    """One preprocessing of a case: ``configuration`` of ``plans``."""
    plans: object
    configuration: str


@dataclass
class PreparedCase:
    geometry: object  # ImageGeometry of the input
    inputs: list  # (data (C, z, y, x) float32, CaseProperties) per stage, in ``stages_of`` order


@dataclass(frozen=True)
class Finishing:
    """What the finishing step needs of the model: one stage per predictor (configuration), the
    postprocessing (None: none) and a region-based model's ``regions_class_order``."""
    stages: tuple
    postprocessing: object = None
    regions_class_order: Optional[tuple] = None


@dataclass(frozen=True)
class CaseJob:
    case_id: str
    files: tuple  # the channel files, in channel order
    target: Path  # the segmentation to write
    probabilities: Optional[Path] = None  # the stem of {case}.npz/.json, when they are saved
    problem: str = ""  # why the case cannot be predicted (reported, nothing else done)


@dataclass(frozen=True)
class Failure:
    """A case's step that raised, as its message (worker results travel as plain data)."""
    message: str


@dataclass(frozen=True)
class Workers:
    """Worker processes: ``prepare`` read and preprocess ahead of the network, ``export`` finish
    and write behind it (0: that step runs in the main process); ``timeout_s``: the longest wait
    for one case's step in a worker."""
    prepare: int = 0
    export: int = 0
    timeout_s: float = DEFAULT_WORKER_TIMEOUT_S


def stages_of(predictors: Sequence) -> list[Stage]:
    """The preprocessings ``run_networks`` consumes, in its order: per predictor, its previous
    stages (a cascade's 3d_lowres) first, then its own."""
    stages: list[Stage] = []

    def add(p) -> None:
        if p.configuration.previous_stage:
            if p.previous is None:
                raise ValueError(f"{p.configuration.name} needs its previous stage's predictor (previous=...)")
            add(p.previous)
        stages.append(Stage(p.plans, p.configuration.name))

    for p in predictors:
        add(p)
    return stages


def finishing_of(predictors: Sequence, postprocessing=None) -> Finishing:
    order = predictors[0].plans.regions_class_order
    return Finishing(tuple(Stage(p.plans, p.configuration.name) for p in predictors), postprocessing,
                     None if order is None else tuple(order))


def prepare_case(image: np.ndarray, geometry, stages: Sequence[Stage]) -> PreparedCase:
    """``image`` (C, Z, Y, X) preprocessed for each of ``stages`` (``preprocess_case``)."""
    from autoseg.preprocess.preprocessor import preprocess_case

    inputs = []
    for s in stages:
        data, _, props = preprocess_case(image, geometry, s.plans, s.configuration)
        inputs.append((data, props))
    return PreparedCase(geometry, inputs)


def prepare_files(files: Sequence[Path], stages: Sequence[Stage], num_channels: int) -> PreparedCase:
    """A case's channel files read (``read_image``), checked against the model's ``num_channels``
    and prepared (``prepare_case``)."""
    from autoseg.imageio import read_image

    image, geometry = read_image(list(files))
    if image.shape[0] != num_channels:
        raise UserFacingError(f"{image.shape[0]} channel(s) found, the model expects {num_channels}")
    return prepare_case(image, geometry, stages)


def run_networks(predictors: Sequence, prepared: PreparedCase) -> list:
    """(probabilities at the preprocessed spacing, CaseProperties) per predictor, from
    ``prepared.inputs``. A cascade stage first runs its previous stage, maps that stage's labels
    back to the input (``export_to_original``) and onto its own grid, and adds them as one-hot
    input channels, as in training."""
    from autoseg.preprocess.preprocessor import export_to_original
    from autoseg.preprocess.previous_stage import one_hot, previous_stage_labels, previous_stage_to_grid

    inputs = iter(prepared.inputs)

    def run(p):
        previous_seg = None
        if p.configuration.previous_stage:
            probs, props = run(p.previous)
            previous_seg, _ = export_to_original(probs, props, p.previous.plans, p.previous.configuration.name,
                                                 return_probabilities=False)
        data, props = next(inputs)
        if previous_seg is not None:
            grid = previous_stage_to_grid(previous_seg, props, p.plans, p.configuration.name)
            data = np.concatenate([data, one_hot(grid, previous_stage_labels(p.plans))])
        return p.predict_preprocessed(data), props

    return [run(p) for p in predictors]


def finish_case(outputs: Sequence, finishing: Finishing) -> tuple[np.ndarray, np.ndarray]:
    """The label map (Z, Y, X) and probabilities (K, Z, Y, X) in the input's geometry from
    ``run_networks``' ``outputs``: each mapped back (``export_to_original``), averaged, turned into
    labels, then postprocessed."""
    from autoseg.labels import probabilities_to_labels
    from autoseg.postprocess.components import apply_postprocessing
    from autoseg.preprocess.preprocessor import export_to_original

    probs = None
    for (network_probs, props), stage in zip(outputs, finishing.stages, strict=True):
        _, pr = export_to_original(network_probs, props, stage.plans, stage.configuration)
        probs = pr if probs is None else probs + pr
    probs /= len(outputs)
    seg = probabilities_to_labels(probs, finishing.regions_class_order)
    if finishing.postprocessing is not None:
        seg = apply_postprocessing(seg, finishing.postprocessing, probs)
    return seg, probs


def export_files(outputs: Sequence, finishing: Finishing, geometry, target: Path,
                 probabilities: Optional[Path] = None) -> None:
    """``finish_case``, then the probabilities (``{probabilities}.npz``/``.json``) when asked for and
    the segmentation ``target``, in that order: the segmentation marks the case done for
    ``--continue``."""
    from autoseg.imageio import write_image
    from autoseg.inference.validation import save_probabilities

    seg, probs = finish_case(outputs, finishing)
    if probabilities is not None:
        save_probabilities(probabilities, probs, geometry, finishing.regions_class_order)
    write_image(seg, geometry, target)


def _as_result(step, *args):
    """``step(*args)``, or its exception as a ``Failure`` (one bad case must not stop the others)."""
    try:
        return step(*args)
    except Exception as exc:
        return Failure(str(exc))


def _prepare_step(job: CaseJob, stages, num_channels: int):
    return _as_result(prepare_files, job.files, stages, num_channels)


def _export_step(job: CaseJob, outputs, finishing: Finishing, geometry):
    return _as_result(export_files, outputs, finishing, geometry, job.target, job.probabilities)


def choose_workers(prepare, export, predictors: Sequence, num_cases: int,
                   timeout_s: float = DEFAULT_WORKER_TIMEOUT_S) -> tuple[Workers, str]:
    """``Workers`` for a run of ``num_cases`` cases, and why (for the log). ``prepare`` and
    ``export`` are a number of processes (0: in the main process) or ``"auto"``: with the network
    on a GPU, up to 3 of each (leaving a CPU to the main process); on a CPU none, since the
    network's threads already use every core and the overlap was measured to cost there
    (docs/benchmarks.md, "Scale-out"); none for fewer than 2 cases either."""
    from autoseg.device import usable_cpus

    devices = {getattr(p.device, "type", None) or str(p.device) for p in predictors}
    if num_cases < 2:
        auto, why = 0, "fewer than 2 cases"
    elif devices - {"cpu"}:
        auto, why = max(1, min(3, (usable_cpus() - 1) // 2)), "the network runs on a GPU"
    else:
        auto, why = 0, "the network runs on the CPU and uses every core"
    chosen = Workers(auto if prepare == "auto" else int(prepare), auto if export == "auto" else int(export),
                     float(timeout_s))
    if "auto" not in (prepare, export):
        why = "as asked"
    return chosen, why


class _Step:
    """One step's worker processes, or none (``processes`` 0: a job submitted runs at once, here)."""

    def __init__(self, what: str, processes: int, timeout_s: float):
        self.what, self.timeout_s = what, timeout_s
        self.pending: deque = deque()  # (job, future), oldest first
        self.pool = None
        if processes:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            # spawn: a fresh interpreter that imports numpy and SimpleITK only, never a fork of a
            # process that holds torch's threads or a CUDA context
            self.pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_worker_started,
                                            initargs=(logging.getLogger().getEffectiveLevel(),))

    def submit(self, job: CaseJob, step, *args) -> None:
        if self.pool is None:
            from concurrent.futures import Future

            future = Future()
            future.set_result(step(job, *args))
        else:
            future = self.pool.submit(step, job, *args)
        self.pending.append((job, future))

    def result(self) -> tuple[CaseJob, object]:
        """The oldest job and its result (a ``Failure`` when it raised); ``WorkerError`` when its
        worker died or has not answered within ``timeout_s``."""
        from concurrent.futures import TimeoutError as WaitedTooLong
        from concurrent.futures.process import BrokenProcessPool

        job, future = self.pending.popleft()
        try:
            return job, future.result(timeout=self.timeout_s)
        except WaitedTooLong:
            raise WorkerError(
                f"the {self.what} worker has not finished case {job.case_id} after {self.timeout_s:g} s "
                f"(--worker-timeout): it hangs, or the case needs longer; the cases written so far are kept: "
                f"rerun with --continue, with a longer --worker-timeout or with -nwp 0 -nwe 0 (every step in "
                f"the main process)") from None
        except BrokenProcessPool:
            busy = [job.case_id] + [j.case_id for j, f in self.pending
                                    if not (f.done() and not f.cancelled() and f.exception() is None)]
            raise WorkerError(
                f"a {self.what} worker process ended unexpectedly (killed, e.g. by the out-of-memory killer, "
                f"or crashed) while working on case {', '.join(busy)}; the cases written so far are kept: "
                f"rerun with --continue, with fewer workers, or with -nwp 0 -nwe 0 (every step in the main "
                f"process, where an error is reported with its case)") from None
        except Exception as exc:  # e.g. a result that could not be sent back
            return job, Failure(str(exc))

    def close(self, stop: bool) -> None:
        """Let the workers exit (``stop``: kill them first); never waits for longer than a minute."""
        if self.pool is None:
            return
        # the executor's own processes: it can shut down without waiting, but not end a hung one
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if stop:
                p.kill()
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=30)


def _worker_started(level: int) -> None:
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops the workers
    if hasattr(os, "nice"):
        # the lowest CPU priority: where the cores are all taken (a CPU network), the network's threads
        # are not held back at their barriers by a worker (docs/experiments/threads_under_contention.md)
        os.nice(19)
    logging.basicConfig(level=level, format="%(message)s")


def _report(job: CaseJob, result) -> int:
    if isinstance(result, Failure):
        log.error("case %s failed: %s", job.case_id, result.message)
        return 1
    return 0


def run_cases(jobs: Sequence[CaseJob], predictors: Sequence, finishing: Finishing,
              workers: Workers = Workers()) -> int:
    """Predict ``jobs`` with ``predictors``; return the number of cases that failed, each logged as
    "case X failed: why" (the others go on). Serially in this process, or with ``workers``
    (module docstring); ``WorkerError`` when a worker dies or hangs."""
    from tqdm import tqdm

    stages = stages_of(predictors)
    num_channels = len(predictors[0].plans.channel_names)
    failed = sum(_report(j, Failure(j.problem)) for j in jobs if j.problem)
    queue = iter([j for j in jobs if not j.problem])
    prepare = _Step("preprocessing", workers.prepare, workers.timeout_s)
    export = _Step("export", workers.export, workers.timeout_s)
    ahead, behind = max(1, workers.prepare), max(1, workers.export)
    bar = tqdm(total=sum(not j.problem for j in jobs), desc="predict", unit="case", disable=None)

    def top_up() -> None:  # at most ``ahead`` cases prepared or being prepared
        while len(prepare.pending) < ahead and (job := next(queue, None)) is not None:
            prepare.submit(job, _prepare_step, stages, num_channels)

    def collect() -> int:
        bar.update()
        return _report(*export.result())

    stop = True
    try:
        top_up()
        while prepare.pending:
            job, prepared = prepare.result()
            if prepare.pool is not None:
                top_up()  # the next case is read and preprocessed while the network runs on this one
            outputs = prepared if isinstance(prepared, Failure) else _as_result(run_networks, predictors, prepared)
            if isinstance(outputs, Failure):
                failed += _report(job, outputs)
                bar.update()
            else:
                while len(export.pending) >= behind:
                    failed += collect()
                export.submit(job, _export_step, outputs, finishing, prepared.geometry)
            del prepared, outputs  # the next case's arrays need the memory
            while export.pending and export.pending[0][1].done():
                failed += collect()
            if prepare.pool is None:
                top_up()
        while export.pending:
            failed += collect()
        stop = False
    finally:
        bar.close()
        prepare.close(stop)
        export.close(stop)
    return failed
