"""The regression suite's datasets (``bench/suite.py``): how each is made, and the run context.

Each ``DatasetDef`` names its id, dimensionality, the arguments that decide its raw files, and the
step that writes ``WS/raw/DatasetXXX_Name`` (a generator of ``bench/data/`` or a derivation of the
Hippocampus set 201). ``Context`` carries the workspace, the tools and the per-step time limits.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import run_untimed

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
GENERATORS = BENCH / "data"
FOLD = 0
VARIANT = "default"
# timeouts (s) of each step, before --timeout-factor; training gets its budget plus TRAIN_MARGIN
TIMEOUTS = {"make": 1800, "plan": 3600, "predict": 3600, "evaluate": 1800, "nnunet": 3600, "query": 120}
TRAIN_MARGIN = (600.0, 0.5)  # at least 600 s, or half the budget, past the budget


class Skipped(Exception):
    """A dataset that cannot run here (its generator is missing); not a failure."""


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message = step, message


# ---------------------------------------------------------------------------------------------- datasets

@dataclass
class Context:
    """What every step needs: the workspace, the tools and the run's settings."""

    root: Path
    autoseg: Path
    python: Path
    source: Path
    quick: bool
    budget: str
    budget_s: float
    num_processes: int
    timeout_factor: float
    nnunet_venv: Path | None
    skip_existing: bool
    plan_only: bool = False

    def timeout(self, step: str, scale: float = 1.0) -> float:
        """Seconds ``step`` may take: ``TIMEOUTS`` (training: its budget plus ``TRAIN_MARGIN``) x ``scale``
        (the dataset's) x ``--timeout-factor``."""
        if step == "train":
            seconds = self.budget_s + max(TRAIN_MARGIN[0], TRAIN_MARGIN[1] * self.budget_s)
        else:
            seconds = TIMEOUTS[step] * scale
        return seconds * self.timeout_factor


@dataclass(frozen=True)
class DatasetDef:
    """One dataset of the suite: its id, dimensionality, the arguments it is made with and how."""

    key: str
    dataset_id: int
    dim: int  # 2: natural 2D images (2d configuration only); 3: volumes
    make_args: Callable[[Context], dict]  # everything that decides the raw dataset's files
    make: Callable[[Context, dict, Path], None]  # writes WS/raw/DatasetXXX_Name; (ctx, args, log file)
    depends_on: tuple[str, ...] = ()  # datasets whose raw folder this one is derived from
    lesion_label: str | None = None  # the class whose lesion-wise F1 is reported
    timeout_scale: float = 1.0  # large volumes: more time for every step but training

    @property
    def default_configuration(self) -> str:
        return "2d" if self.dim == 2 else "3d_fullres"


def raw_folder(root: Path, dataset_id: int) -> Path | None:
    """``root/raw/Dataset{id:03d}_*`` if there is exactly one such folder, else None."""
    found = [p for p in (root / "raw").glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()]
    if len(found) > 1:
        raise StepFailed("make", f"several raw folders for id {dataset_id}: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def _hippocampus_args(ctx: Context) -> dict:
    return {"source": str(ctx.source), "num_cases": 24 if ctx.quick else None, "holdout": 4 if ctx.quick else 40,
            "seed": 0}


def _make_hippocampus(ctx: Context, args: dict, log_path: Path) -> None:
    from hippocampus_cv import hold_out
    from plan_and_preprocess import make_decathlon_copy

    source = Path(args["source"])
    if not (source / "dataset.json").is_file():
        raise StepFailed("make", f"{source} is not the Decathlon Task04_Hippocampus folder (no dataset.json)")
    with tempfile.TemporaryDirectory(prefix="suite_msd_") as tmp:
        task = make_decathlon_copy(source, Path(tmp), args["num_cases"])
        run_untimed([ctx.autoseg, "convert_msd", "-i", task, "-d", "201", "--root", ctx.root,
                     "-np", str(ctx.num_processes)], log_path=log_path, timeout_s=ctx.timeout("make"))
    raw = raw_folder(ctx.root, 201)
    held = hold_out(raw, args["holdout"], args["seed"])
    with open(log_path, "a") as f:
        f.write(f"held out {len(held)} cases (seed {args['seed']}): {' '.join(held)}\n")


def _derived_args(extra: dict) -> Callable[[Context], dict]:
    return lambda ctx: {"from": _hippocampus_args(ctx), **extra}


def _make_derived(script: str, dataset_id: int, options: Callable[[dict], list[str]]):
    def make(ctx: Context, args: dict, log_path: Path) -> None:
        source = raw_folder(ctx.root, 201)
        run_untimed([ctx.python, GENERATORS / script, "--source", source, "--root", ctx.root, "-d", str(dataset_id),
                     *options(args)], log_path=log_path, timeout_s=ctx.timeout("make"))
    return make


def _generator(script: str, options: Callable[[Context, dict], list[str]]):
    """A make step that runs ``bench/data/<script> --root WS ...``; Skipped while the script is missing."""
    def make(ctx: Context, args: dict, log_path: Path) -> None:
        path = GENERATORS / script
        if not path.is_file():
            raise Skipped(f"{path.relative_to(REPO)} does not exist (yet)")
        run_untimed([ctx.python, path, "--root", ctx.root, *options(ctx, args)], log_path=log_path,
                    timeout_s=ctx.timeout("make"))
    return make


def _flags(args: dict, names: dict[str, str]) -> list[str]:
    """``--flag value`` for each key of ``names`` whose value in ``args`` is not None."""
    out = []
    for key, flag in names.items():
        if args.get(key) is not None:
            out += [flag, str(args[key])]
    return out


DATASETS: dict[str, DatasetDef] = {d.key: d for d in (
    DatasetDef("hippocampus", 201, 3, _hippocampus_args, _make_hippocampus),
    DatasetDef("cine", 130, 3,
               lambda ctx: {"num_train": 6, "num_test": 2, "scale": 0.25, "seed": 0} if ctx.quick
               else {"num_train": 160, "num_test": 40, "scale": None, "seed": 0},
               _generator("make_cine_dataset.py", lambda ctx, a: ["--dataset-id", "130", *_flags(
                   a, {"num_train": "--num-train", "num_test": "--num-test", "seed": "--seed", "scale": "--scale"})])),
    DatasetDef("hippocampus_thick", 202, 3, _derived_args({"factor": 4, "seed": 0}),
               _make_derived("make_thick_slices.py", 202,
                             lambda a: ["--factor", str(a["factor"]), "--seed", str(a["seed"])]),
               depends_on=("hippocampus",)),
    DatasetDef("two_channel", 203, 3, _derived_args({"seed": 0}),
               _make_derived("make_multichannel.py", 203, lambda a: ["--seed", str(a["seed"])]),
               depends_on=("hippocampus",)),
    DatasetDef("hippocampus_sparse", 204, 3, _derived_args({"fraction": 0.1, "seed": 0}),
               _make_derived("make_sparse_labels.py", 204,
                             lambda a: ["--fraction", str(a["fraction"]), "--seed", str(a["seed"])]),
               depends_on=("hippocampus",)),
    DatasetDef("oct2d", 120, 2,
               lambda ctx: {"num_train": 10, "num_test": 3, "height": 96, "width": 128, "seed": 0} if ctx.quick
               else {"num_train": 60, "num_test": 20, "height": 192, "width": 256, "seed": 0},
               _generator("make_2d_dataset.py", lambda ctx, a: ["--dataset-id", "120", *_flags(
                   a, {"num_train": "--num-train", "num_test": "--num-test", "height": "--height",
                       "width": "--width", "seed": "--seed"})])),
    DatasetDef("ct_cascade", 960, 3,
               lambda ctx: {"num_cases": 6, "num_test": 1, "scale": 0.25, "seed": 0} if ctx.quick
               else {"num_cases": 10, "num_test": 2, "scale": 1.0, "seed": 0},
               _generator("make_cascade_dataset.py", lambda ctx, a: ["-d", "960", *_flags(
                   a, {"num_cases": "--num-cases", "num_test": "--num-test", "scale": "--scale", "seed": "--seed"})]),
               timeout_scale=3.0),
    DatasetDef("lesions", 104, 3,
               lambda ctx: {"source": str(ctx.source), "max_cases": 24 if ctx.quick else None,
                            "test_fraction": round(4 / 24 if ctx.quick else 40 / 208, 6), "seed": 0},
               _generator("implant_lesions.py", lambda ctx, a: ["--dataset-id", "104", *_flags(
                   a, {"source": "--source", "max_cases": "--max-cases", "test_fraction": "--test-fraction",
                       "seed": "--seed"})]),
               lesion_label="lesion"),
)}
