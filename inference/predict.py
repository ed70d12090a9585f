"""``autoseg predict -i IN -o OUT -d DATASET``: segment a folder of new images.

Without ``-c`` the model is what ``find_best_config`` selected (one configuration or an
ensemble, plus its postprocessing). Each case is written as ``{case}{ending}`` with the
input's exact geometry and format, atomically; a case that fails is reported and the others
go on; the exit code is non-zero if any failed.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset import group_channel_files
from autoseg.errors import UserFacingError, output_folder
from autoseg.imageio import FAKE_2D_SPACING, SUPPORTED_ENDINGS
from autoseg.inference.overlap import DEFAULT_WORKER_TIMEOUT_S
from autoseg.paths import Workspace
from autoseg.plans import load_plans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputCase:
    case_id: str
    files: tuple[Path, ...]
    ending: str
    problem: str = ""
    channels: tuple[int, ...] = ()  # the XXXX of each file, in order


def find_input_cases(folder: Path) -> list[InputCase]:
    """Group ``{case}_{XXXX}{ending}`` files into cases; ``UserFacingError`` when there are none."""
    if not folder.is_dir():
        found = "is a file" if folder.exists() else "does not exist"
        raise UserFacingError(f"input folder {folder} {found}; expected a folder of {{case}}_{{XXXX}}.ext images "
                              "(one file per channel, e.g. case_0000.nii.gz)")
    cases: dict[str, InputCase] = {}
    for ending in SUPPORTED_ENDINGS:
        for cid, chans in group_channel_files(folder, ending).items():
            order = tuple(sorted(chans))
            cases.setdefault(cid, InputCase(cid, tuple(chans[k] for k in order), ending, channels=order))
    taken = {p for c in cases.values() for p in c.files}
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p not in taken)
    if not cases:
        found = (f"found {len(others)} other file(s), e.g. {', '.join(others[:3])}" if others
                 else "the folder is empty")
        raise UserFacingError(f"no images named {{case}}_{{XXXX}}.ext (e.g. case_0000.nii.gz) in {folder}: {found}; "
                              f"expected one file per channel ending in one of {', '.join(SUPPORTED_ENDINGS)}")
    if others:
        log.warning("%d file(s) in %s are not {case}_{XXXX} images of a supported format and are not predicted: %s%s",
                    len(others), folder, ", ".join(others[:5]), " ..." if len(others) > 5 else "")
    return [cases[k] for k in sorted(cases)]


def fit_to_model(cases: list[InputCase], folder: Path, channel_names: tuple[str, ...],
                 model_2d: bool) -> list[InputCase]:
    """``cases`` with the problem each has against the model, from the files' names and headers:
    channel files numbered 0000 on without gaps, as many channels as the model was trained on, 2D
    or 3D as its training images. A case with a problem is reported alone when predicted; when no
    case fits, ``UserFacingError`` says why for the first few (nothing can be predicted)."""
    from dataclasses import replace

    checked = [replace(c, problem=c.problem or _misfit(c, channel_names, model_2d)) for c in cases]
    misfits = [c for c in checked if c.problem]
    if checked and len(misfits) == len(checked):
        shown = "; ".join(f"case {c.case_id}: {c.problem}" for c in misfits[:3])
        more = f" (and {len(misfits) - 3} more)" if len(misfits) > 3 else ""
        raise UserFacingError(f"none of the {len(checked)} case(s) in {folder} can be predicted with this model: "
                              f"{shown}{more}")
    return checked


def input_cases_for(folder: Path, plans) -> list[InputCase]:
    """The cases of ``folder``, each with its problem against a model of ``plans``
    (``fit_to_model``; the model is 2D when its training images were)."""
    return fit_to_model(find_input_cases(folder), folder, plans.channel_names,
                        plans.original_median_spacing[0] >= FAKE_2D_SPACING)


def _misfit(case: InputCase, channel_names: tuple[str, ...], model_2d: bool) -> str:
    """Why ``case`` does not fit a model of ``channel_names`` (2D or 3D), or ""."""
    from autoseg.imageio import ImageReadError, read_layout

    n = len(channel_names)
    expected = f"{case.case_id}_0000{case.ending}" + (f" .. {case.case_id}_{n - 1:04d}{case.ending}" if n > 1 else "")
    names = ", ".join(p.name for p in case.files)
    if list(case.channels) != list(range(len(case.channels))):
        return f"channel files are numbered from 0000 without gaps; expected {expected}, found {names}"
    try:
        found, is_2d = read_layout(case.files)
    except ImageReadError as exc:
        return str(exc)
    if found != n:
        return (f"{found} channel(s) found in {names}, the model expects {n} ({', '.join(channel_names)}): "
                f"give {expected}")
    if is_2d != model_2d:
        dims = ("2D", "3D") if is_2d else ("3D", "2D")
        return (f"{names} holds a {dims[0]} image, the model was trained on {dims[1]} images: give {dims[1]} "
                f"images like its training data")
    return ""


def case_part(cases: list, num_parts: int, part_id: int) -> list:
    """The cases of part ``part_id`` (0-based) of ``num_parts``: every ``num_parts``-th case of the
    sorted list, starting at ``part_id``, as nnU-Net's ``-num_parts``/``-part_id`` split them. The
    parts are disjoint, cover every case, and differ in size by at most one; several machines (or
    processes) predicting the parts 0..K-1 into one output folder write each case once.

    Example: cases a b c d e, 2 parts: part 0 is a c e, part 1 is b d."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UserFacingError(f"argument --part-id: expected a whole number in [0, {num_parts - 1}] "
                              f"(--num-parts {num_parts}), found '{part_id}'")
    return list(cases[part_id::num_parts])


def _fold_dirs(ws: Workspace, dataset: str, configuration: str, variant: str, folds, checkpoint: str) -> list[Path]:
    base = ws.results_dataset(dataset) / configuration / variant
    if folds:
        dirs = [base / f"fold_{f}" for f in folds]
    else:
        dirs = sorted(d for d in base.glob("fold_*") if (d / f"{checkpoint}.pth").is_file())
    missing = [d for d in dirs if not (d / f"{checkpoint}.pth").is_file()]
    if missing or not dirs:
        raise UserFacingError(f"no {checkpoint}.pth for {configuration} in {', '.join(str(d) for d in missing) or base}; "
                              f"train it first (autoseg train {configuration} FOLD -d {dataset})")
    return dirs


def planned_precision_here(ws: Workspace, dataset: str, configuration: str, fold_dir: Path, device,
                           precision: str) -> str:
    """``auto`` on a CPU of the kind the dataset was planned on: the precision the planning's timed
    steps chose for this configuration's network (``throughput.json``), so that prediction never
    runs in bf16 where the planning found bf16 slower, or abandoned it at its cap (oneDNN's bf16
    kernels are pathologically slow for some shapes on some CPUs); anything else unchanged (then
    ``autoseg.device.resolve_precision`` decides)."""
    import json

    import torch

    from autoseg.training.resolve import auto_precision, planned_on_this_cpu

    if precision != "auto":
        return precision
    try:
        throughput = json.loads((ws.preprocessed_dataset(dataset) / "throughput.json").read_text())
    except (OSError, ValueError):
        return precision
    dev = torch.device(device)
    if not planned_on_this_cpu(throughput, dev):
        return precision
    chosen, note = auto_precision("auto", dev, None, throughput, load_plans(Path(fold_dir) / "plans.json"),
                                  configuration)
    if note:
        log.info("%s: %s", configuration, note.replace("chosen when planning", "as timed when planning"))
    return chosen


def load_predictor(ws: Workspace, dataset: str, configuration: str, variant: str, folds, checkpoint: str, device,
                   step_size: float = 0.5, tta: bool = True, precision: str = "auto", backend: str = "torch"):
    """The ``Predictor`` of a configuration's folds; a cascade stage also gets its previous stage's.

    The previous stage (3d_lowres) uses the variant the cascade was trained with
    (``previous_stage_variant``, else the same) and the same folds; for cascade fold ``all``
    without a lowres fold ``all`` it uses every trained lowres fold, whose cross-validation
    masks that cascade was trained on.
    """
    from autoseg.inference.predictor import Predictor

    dirs = _fold_dirs(ws, dataset, configuration, variant, folds, checkpoint)
    if backend == "torch":
        precision = planned_precision_here(ws, dataset, configuration, dirs[0], device, precision)
    predictor = Predictor.from_folds(dirs, checkpoint, device, step_size, tta, precision, backend)
    prev = predictor.configuration.previous_stage
    if prev:
        prev_variant = getattr(predictor.train_config, "previous_stage_variant", None) or variant
        prev_folds = folds
        base = ws.results_dataset(dataset) / prev / prev_variant
        if folds and [str(f) for f in folds] == ["all"] and not (base / "fold_all" / f"{checkpoint}.pth").is_file():
            prev_folds = None
        try:
            predictor.previous = load_predictor(ws, dataset, prev, prev_variant, prev_folds, checkpoint, device,
                                                step_size, tta, precision, backend)
        except UserFacingError as exc:
            raise UserFacingError(f"{configuration} runs {prev} ('{prev_variant}') first, and {exc}") from None
    return predictor


def predict_folder(input_dir, output_dir, ws: Workspace, dataset: str, configurations=None, folds=None,
                   checkpoint: str = "checkpoint_final", variant: str = "default", step_size: float = 0.5,
                   tta: bool = True, save_probabilities: bool = False, resume: bool = False, device="auto",
                   postprocess: bool = True, precision: str = "auto", backend: str = "auto", num_parts: int = 1,
                   part_id: int = 0, num_workers_preprocess="auto", num_workers_export="auto",
                   worker_timeout: float = DEFAULT_WORKER_TIMEOUT_S) -> int:
    """Predict every case of ``input_dir`` into ``output_dir``; return the number of failed cases.

    ``backend``: ``torch``, ``onnx`` or ``auto`` (``onnx_backend.choose_backend``). With
    ``num_parts`` > 1 only part ``part_id`` of the sorted cases (``case_part``).
    ``num_workers_preprocess``/``num_workers_export``: worker processes that read and preprocess
    ahead of the network and finish and write behind it, or ``auto`` (``overlap.choose_workers``);
    ``worker_timeout``: the longest wait in seconds for one case's step in a worker."""
    from autoseg.inference.onnx_backend import choose_backend
    from autoseg.inference.overlap import CaseJob, choose_workers, finishing_of, run_cases

    name = ws.dataset_name(dataset)
    configurations, variant, checkpoint, folds, postprocessing = selected_model(ws, name, configurations, variant,
                                                                                folds, checkpoint)
    plans = load_plans(_fold_dirs(ws, name, configurations[0], variant, folds, checkpoint)[0] / "plans.json")
    cases = input_cases_for(Path(input_dir), plans)
    chosen = choose_backend(backend, device, precision)

    def load_all(with_backend: str) -> list:
        if with_backend == "onnx":
            dev = "cpu"
        else:
            from autoseg.device import pick_device

            dev = pick_device(device)
        return [load_predictor(ws, name, c, variant, folds, checkpoint, dev, step_size, tta, precision, with_backend)
                for c in configurations]

    try:
        predictors = load_all(chosen)
    except Exception as exc:  # e.g. a read-only model folder the export cannot be written to
        if backend != "auto" or chosen != "onnx":
            raise
        log.warning("the ONNX backend could not be loaded (%s); predicting with torch", exc)
        chosen, predictors = "torch", load_all("torch")
    if num_parts > 1:
        total = len(cases)
        cases = case_part(cases, num_parts, part_id)
        log.info("part %d of %d (--part-id %d --num-parts %d): %d of the %d cases", part_id + 1, num_parts, part_id,
                 num_parts, len(cases), total)
    out = Path(output_dir)
    reason = ""
    if backend == "auto" and chosen == "onnx":
        pending = [c for c in cases if not (resume and (out / f"{c.case_id}{c.ending}").is_file())]
        reason = _torch_pays_off(predictors, pending, tta)
        if reason:
            chosen, predictors = "torch", load_all("torch")
    log.info("predicting with the %s backend%s", chosen, f" ({reason})" if reason else "")
    output_folder(out)
    jobs = [CaseJob(c.case_id, c.files, out / f"{c.case_id}{c.ending}",
                    out / c.case_id if save_probabilities else None, c.problem)
            for c in cases if not (resume and (out / f"{c.case_id}{c.ending}").is_file())]
    workers, why = choose_workers(num_workers_preprocess, num_workers_export, predictors,
                                  sum(not j.problem for j in jobs), worker_timeout)
    if workers.prepare or workers.export:
        log.info("%d worker process(es) preprocess ahead of the network, %d export behind it (%s)",
                 workers.prepare, workers.export, why)
    return run_cases(jobs, predictors, finishing_of(predictors, postprocessing if postprocess else None), workers)


def selected_model(ws: Workspace, name: str, configurations, variant: str, folds, checkpoint: str):
    """(configurations, variant, checkpoint, folds, postprocessing) to predict with: those given, or
    without ``configurations`` what ``find_best_config`` selected (``folds`` given still win)."""
    from autoseg.postprocess.components import Postprocessing

    if configurations:
        return list(configurations), variant, checkpoint, folds, Postprocessing()
    from autoseg.postprocess.selection import load_selection

    sel = load_selection(ws.results_dataset(name))
    return list(sel.configurations), sel.variant, sel.checkpoint, folds or sel.folds, sel.postprocessing


def segment(predictors: list, image: np.ndarray, geometry, postprocessing=None) -> tuple[np.ndarray, np.ndarray]:
    """One case's label map and probabilities in its own geometry: every predictor (configuration)
    averaged, turned into labels (argmax, or regions at 0.5), then ``postprocessing`` (None: none)."""
    from autoseg.inference.overlap import finish_case, finishing_of, prepare_case, run_networks, stages_of

    prepared = prepare_case(image, geometry, stages_of(predictors))
    return finish_case(run_networks(predictors, prepared), finishing_of(predictors, postprocessing))


def _torch_pays_off(predictors: list, cases: list, tta: bool) -> str:
    """Why torch is the faster backend for this run, or "" (``auto`` has chosen ONNX Runtime).

    torch wins when it has been imported already (to export a network) or when ONNX Runtime's
    slower forward passes (each fold's export record holds both backends' time per pass on this
    machine), over all the passes this run will make, cost more than importing torch
    (``onnx_backend.TORCH_FIXED_SECONDS``)."""
    import sys

    from autoseg.inference.onnx_backend import TORCH_FIXED_SECONDS, forward_passes

    if "torch" in sys.modules:
        return "torch was imported to export the networks to ONNX"
    files = [c.files[0] for c in cases if not c.problem]
    extra, passes = 0.0, 0
    chain = [q for p in predictors for q in (p, p.previous) if q is not None]
    for p in chain:
        n = forward_passes(files, p.configuration, tta, p.step_size)
        passes += n
        extra += n * max(0.0, p.onnx_extra_seconds_per_pass())
    if extra < TORCH_FIXED_SECONDS:
        return ""
    return (f"{passes} forward passes would take {extra:.1f} s longer in ONNX Runtime than in torch, more than "
            f"torch's import (~{TORCH_FIXED_SECONDS:g} s); --backend onnx to use it anyway")


def cli_predict(args: argparse.Namespace) -> int:
    case_part([], args.num_parts, args.part_id)  # a part outside the parts is refused before any work
    ws = Workspace.resolve(args.root)
    failed = predict_folder(args.input, args.output, ws, args.dataset, args.configurations, args.folds,
                            args.chk, args.variant or "default", args.step_size, not args.disable_tta,
                            args.save_probabilities, args.resume, args.device or "auto",
                            not args.no_postprocessing, args.precision, args.backend, args.num_parts, args.part_id,
                            args.num_workers_preprocess, args.num_workers_export,
                            args.worker_timeout or DEFAULT_WORKER_TIMEOUT_S)
    if failed:
        log.error("%d case(s) failed; see the messages above", failed)
        return 1
    return 0
