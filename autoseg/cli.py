"""The ``autoseg`` command line.

Each subcommand names its handler as ``"module:function"``; the module is imported only
when that subcommand runs, so ``autoseg --help`` never imports torch. A handler takes
the parsed ``argparse.Namespace`` and returns an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from typing import Callable

from autoseg.device import PRECISIONS

# planners.experiment.PROFILES' names, here so that a wrong one is refused before any work (the
# planners are not imported to parse the command line; a test keeps the two equal)
DEVICE_PROFILES = ("cpu", "gpu-8gb", "gpu-24gb", "gpu-40gb")

CONFIG_CHOICES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def number_in(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` that parses a finite ``kind`` (int or float) and refuses values outside the
    range from ``low`` to ``high`` (None: unbounded; ``*_open``: the bound itself is excluded).

    Example: ``number_in(float, 0, 1, low_open=True)`` takes (0, 1]: '0.25' -> 0.25, while '0' makes
    argparse stop with "argument --step_size: expected a number in (0, 1], found 0" and exit code 2."""
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"{'<' if high_open else '<='} {high:g}"
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        inside = (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
                  and (high is None or (value < high if high_open else value <= high)))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {noun} {allowed}, found {text!r}")
        return value

    return parse


def auto_or(parse: Callable[[str], float]) -> Callable[[str], float | str]:
    """An argparse ``type`` that takes ``auto`` or what ``parse`` takes (with ``parse``'s message)."""

    def parse_or_auto(text: str) -> float | str:
        if text == "auto":
            return text
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("expected ", "expected 'auto' or ", 1)) from None

    return parse_or_auto


def parse_gpus(text: str) -> list[int]:
    """``--gpus 0,1,3`` -> [0, 1, 3]; refused: anything but distinct whole numbers >= 0."""
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"expected distinct GPU indices separated by commas such as 0,1, found {text!r}")
    return gpus


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None,
                   help="workspace folder (default: $AUTOSEG_ROOT, else ./autoseg_data)")


def _dataset(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-d", "--dataset", required=required,
                   help="dataset id (4), folder name (Dataset004_Hippocampus) or name (Hippocampus)")


def _np(p: argparse.ArgumentParser) -> None:
    p.add_argument("-np", "--num-processes", type=number_in(int, 1), default=None,
                   help="worker processes, >= 1 (default: number of CPU cores)")


class _DeprecatedSpelling(argparse.Action):
    """An old option spelling that still works and warns with the new one (``new``)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        logging.getLogger(__name__).warning("%s is deprecated here and will be removed: use %s",
                                            option_string, self.new)
        setattr(namespace, self.dest, values)


def _training(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``train_all``."""
    _dataset(p)
    _root(p)
    p.add_argument("--variant", default=None, help="named TrainConfig variant (default: 'default')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig setting by its section and field, e.g. --set schedule.num_epochs=50 "
                        "(repeatable; the flat names of older versions, e.g. num_epochs, still work)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "mps"))
    workers = number_in(int, 0)
    p.add_argument("-nw", "--num-workers", type=workers, default=None,
                   help="augmentation worker processes, >= 0; 0: in the training process (default: chosen "
                        "from the CPU count)")
    p.add_argument("-np", dest="num_workers", type=workers, action=_DeprecatedSpelling, new="-nw/--num-workers",
                   help="deprecated spelling of -nw/--num-workers (elsewhere, as in nnU-Net, -np is a number of "
                        "processes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoseg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = add("convert_msd", "autoseg.convert_msd:cli_convert_msd",
            "convert a Medical Segmentation Decathlon task folder into the raw layout")
    p.add_argument("-i", "--input", required=True, help="TaskXX_Name folder (Decathlon layout)")
    p.add_argument("-d", "--dataset-id", type=number_in(int, 0, 999), default=None,
                   help="dataset id for the new folder (default: the task number)")
    _root(p)
    _np(p)

    p = add("fingerprint", "autoseg.fingerprint:cli_fingerprint",
            "check a raw dataset and write its fingerprint.json")
    _dataset(p)
    _root(p)
    _np(p)
    p.add_argument("--clean", action="store_true", help="recompute even if up to date")

    p = add("plan", "autoseg.planners.experiment:cli_plan",
            "plan preprocessing and networks from the fingerprint (writes plans.json)")
    _dataset(p)
    _root(p)
    _plan_args(p)

    p = add("transfer_plans", "autoseg.planners.transfer:cli_transfer_plans",
            "plan a target dataset with a source dataset's plans (to fine-tune a model of the source on it)")
    p.add_argument("--source-dataset", required=True, help="the dataset whose plans (and model) are reused")
    p.add_argument("--target-dataset", required=True, help="the dataset to plan with them")
    _root(p)
    _np(p)

    p = add("preprocess", "autoseg.preprocess.run:cli_preprocess",
            "preprocess the raw dataset for the planned configurations")
    _dataset(p)
    _root(p)
    _np(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIG_CHOICES,
                   help="configurations to preprocess (default: all planned)")
    p.add_argument("--clean", action="store_true", help="redo every case, even up-to-date ones")

    p = add("plan_and_preprocess", "autoseg.preprocess.plan_and_preprocess:cli_plan_and_preprocess",
            "check the dataset, fingerprint it, plan, and preprocess")
    _dataset(p)
    _root(p)
    _np(p)
    _plan_args(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIG_CHOICES,
                   help="configurations to preprocess (default: all planned)")
    p.add_argument("--clean", action="store_true", help="redo every stage and case")

    p = add("train", "autoseg.training.run:cli_train", "train one or more folds of one configuration")
    p.add_argument("configuration", choices=CONFIG_CHOICES)
    p.add_argument("folds", nargs="+", metavar="fold",
                   help="0-4, or 'all' to train on every case; several folds share --time-budget")
    _training(p)
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from checkpoint_latest (or extend a finished run)")
    p.add_argument("--val", dest="validate_only", action="store_true",
                   help="only (re)run the final validation of a finished model")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="start from another model's weights: a fold folder or a .pth checkpoint (the matching "
                        "layers are copied; see autoseg transfer_plans)")
    p.add_argument("--time-budget", default=None,
                   help="wall-clock budget such as 30m or 2h for all the folds given, final validation "
                        "included; the schedule is fitted to it")
    p.add_argument("--num-gpus", type=number_in(int, 1), default=1, metavar="N",
                   help="train each fold on N processes of this node with DistributedDataParallel, one per GPU "
                        "(NCCL; with --device cpu: N processes sharing the cores, gloo); the planned batch is "
                        "split across them. Several nodes: start the same command under torchrun instead "
                        "(README, 'Training on several GPUs')")

    p = add("predict", "autoseg.inference.predict:cli_predict", "segment new images")
    p.add_argument("-i", "--input", required=True, help="folder of {case}_{XXXX}.ext images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _dataset(p)
    _root(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIG_CHOICES,
                   help="configuration(s) to use (default: what find_best_config selected)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to average (default: all trained)")
    p.add_argument("--chk", default="checkpoint_final", help="checkpoint name")
    p.add_argument("--variant", default=None, help="training variant (default: 'default')")
    p.add_argument("--step_size", type=number_in(float, 0, 1, low_open=True), default=0.5,
                   help="sliding-window step as a fraction of the patch, in (0, 1] (default 0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--save_probabilities", action="store_true", help="also write softmax as .npz")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip cases already written")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: fp16 on CUDA, bf16 on a CPU where it is measured faster than fp32, else fp32")
    p.add_argument("--no-postprocessing", action="store_true", help="skip the learned postprocessing")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="auto: ONNX Runtime on a CPU in fp32 (no torch import; each checkpoint exported "
                        "once beside itself), else torch")
    p.add_argument("--num-parts", type=number_in(int, 1), default=1, metavar="K",
                   help="split the sorted cases into K parts, one per machine or process (default 1)")
    p.add_argument("--part-id", type=number_in(int, 0), default=0, metavar="I",
                   help="predict only part I (0-based, in [0, K-1]) of --num-parts K: every K-th case from I")
    workers = auto_or(number_in(int, 0))
    p.add_argument("-nwp", "--num-workers-preprocess", type=workers, default="auto", metavar="N",
                   help="worker processes that read and preprocess the next cases while the network runs (nnU-Net's "
                        "-npp), >= 0; 0: in the main process; auto (default): 3 at most with the network on a GPU, "
                        "else 0 (on a CPU the network uses every core)")
    p.add_argument("-nwe", "--num-workers-export", type=workers, default="auto", metavar="N",
                   help="worker processes that resample back, postprocess and write the previous cases while the "
                        "network runs (nnU-Net's -nps), >= 0; 0: in the main process; auto (default): as -nwp")
    p.add_argument("--worker-timeout", type=number_in(float, 0, low_open=True), default=None, metavar="SECONDS",
                   help="longest wait for one case's preprocessing or export in a worker; a worker that takes "
                        "longer, or dies, ends predict naming the case (default 1800)")

    p = add("train_all", "autoseg.training.run:cli_train_all",
            "train all 5 folds of every configuration find_best_config compares, within one time budget")
    _training(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIG_CHOICES,
                   help="configurations to train (default: every planned one; 3d_lowres before its cascade)")
    p.add_argument("--time-budget", default=None,
                   help="total wall-clock budget such as 8h, split across the folds still to train")
    p.add_argument("--gpus", type=parse_gpus, default=None, metavar="LIST",
                   help="train folds at the same time, one process per GPU, e.g. 0,1,2,3 (with --device cpu: "
                        "as many processes, each on its share of the cores); each GPU gets the whole "
                        "--time-budget for its folds")

    p = add("find_best_config", "autoseg.postprocess.selection:cli_find_best_config",
            "choose the best configuration or ensemble and its postprocessing from cross-validation")
    _dataset(p)
    _root(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIG_CHOICES,
                   help="configurations to consider (default: every one with 5 trained folds)")
    p.add_argument("--variant", default=None, help="training variant (default: 'default')")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to use (default: 0 1 2 3 4)")

    p = add("ensemble", "autoseg.inference.ensemble:cli_ensemble",
            "average saved probabilities of several prediction folders")
    p.add_argument("-i", "--input", nargs="+", required=True, help="folders written with --save_probabilities")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--save_probabilities", action="store_true")

    p = add("apply_postprocessing", "autoseg.postprocess.apply_postprocessing:cli_apply_postprocessing",
            "apply the learned postprocessing to a folder of segmentations")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    _dataset(p)
    _root(p)
    p.add_argument("--selection", default=None, help="selection.json (default: the dataset's)")

    p = add("evaluate", "autoseg.postprocess.evaluate:cli_evaluate",
            "compare predicted segmentations with references")
    p.add_argument("-ref", "--reference", required=True, help="folder of reference label images")
    p.add_argument("-pred", "--prediction", required=True, help="folder of predicted label images")
    _dataset(p, required=False)
    _root(p)
    p.add_argument("-o", "--output", default=None, help="summary JSON (default: PRED/summary.json)")
    p.add_argument("--labels", nargs="+", type=int, default=None, help="classes to evaluate")
    p.add_argument("--ignore-label", type=int, default=None, metavar="VALUE",
                   help="reference value of unannotated voxels, left out of every metric (default: the label "
                        "named 'ignore' in the dataset.json of -d)")
    p.add_argument("--nsd-tolerance", type=number_in(float, 0, low_open=True), default=1.0, metavar="MM",
                   help="tolerance of the normalised surface Dice in mm (default 1.0)")

    p = add("report", "autoseg.inference.report:cli_report",
            "write one self-contained HTML page on a dataset: data, plans, training curves, cross-validation, "
            "per-case metrics and overlay pictures")
    _dataset(p)
    _root(p)
    p.add_argument("-o", "--output", default=None, help="HTML file (default: results/<dataset>/report.html)")

    p = add("overlay", "autoseg.overlay:cli_overlay",
            "write one overlay PNG per case: the slice with the most foreground, labels coloured over the image")
    p.add_argument("-i", "--input", required=True, help="folder of {case}_{XXXX}.ext images")
    p.add_argument("-s", "--segmentations", required=True, help="folder of {case}.ext label maps")
    p.add_argument("-o", "--output", required=True, help="output folder for {case}.png")
    p.add_argument("--reference", default=None, help="folder of reference {case}.ext labels, drawn as outlines")

    p = add("export_model", "autoseg.inference.model_archive:cli_export_model",
            "pack a dataset's trained models, plans and selection into a zip")
    _dataset(p)
    _root(p)
    p.add_argument("-o", "--output", required=True)
    p = add("import_model", "autoseg.inference.model_archive:cli_import_model", "unpack a model zip into the workspace")
    p.add_argument("archive")
    _root(p)

    p = add("demo", "autoseg.demo:cli_demo",
            "run the whole pipeline on the bundled Hippocampus subset and print the Dice")
    p.add_argument("--root", default="autoseg_demo", help="workspace folder for the demo (default ./autoseg_demo)")
    return parser


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-profile", default=None, choices=DEVICE_PROFILES,
                   help="hardware to plan for (default: detected; cpu when torch sees no GPU)")
    p.add_argument("--time-budget", default=None,
                   help="cpu profile: the training time you intend per fold (default 30m); the network "
                        "width is chosen from speed measured on this machine to fit it")
    p.add_argument("--network", default="plain", choices=("plain", "resenc"),
                   help="plain U-Net (default) or nnU-Net's residual-encoder U-Net (ResEnc) for every configuration")
    p.add_argument("--force-lowres", action="store_true",
                   help="also plan 3d_lowres and the cascade even where the automatic trigger does not fire")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if args.verbose else "%(message)s",
    )
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    from autoseg.errors import user_errors

    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        print(f"autoseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``autoseg`` program: ``main()``, then the process ends without the interpreter's
    teardown. After torch is imported, Python's finalisation (clearing thousands of modules and
    torch's own exit handlers) takes 0.6-1.1 s on a 2-core machine, longer than a small predict
    run's work per case. Every command has finished its writes (atomic renames, joined worker
    pools) when ``main`` returns; output streams and log files are flushed here first."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
