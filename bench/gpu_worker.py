"""The processes bench/gpu.py starts: a tool's command run in-process, with what the GPU
benchmark records of it.

    python bench/gpu_worker.py probe --record R.json [--modules torch ...] [--imports autoseg.cli ...]
    python bench/gpu_worker.py autoseg --record R.json -- train 3d_fullres 0 -d 4 --root WS ...
    python bench/gpu_worker.py nnunet --record R.json -- nnUNetv2_predict -i IN -o OUT ...
    python bench/gpu_worker.py split --record R.json -- PREPROCESSED_DATASET_FOLDER

Stdlib at the top: it runs in autoseg's Python and in nnU-Net's, and ``probe`` must work where
torch is missing. Each mode writes ``--record`` atomically, also when the command fails (then
with ``exit_code`` not 0), and exits with the command's code.

- ``probe``: this Python's version and executable, which of ``--modules`` it cannot find
  (``importlib.util.find_spec``), then, where none is missing, the error of each of ``--imports``
  that fails to import (autoseg's from this repository), torch's version, whether it sees a CUDA
  GPU, the GPU's name and memory, torch's CUDA and cuDNN versions, and the versions of
  ``--versions`` distributions (``importlib.metadata``).
- ``autoseg``: ``autoseg.cli.main(ARGS)``, as the ``autoseg`` command runs it (ending with
  ``os._exit`` as ``autoseg.cli.run`` does), with autoseg imported from this repository where it
  is not installed (``use_repository_autoseg``). For ``train``, it also records every training
  step (``step_s``: the trainer's own ``train_step``, the batch already drawn, ended by a
  synchronisation on CUDA; ``step_start_s``: its start, seconds after autoseg's trainer was
  imported), every epoch's end with the patch validation's pseudo-Dice and its moving average
  (``epochs``), the peak GPU memory torch allocated before the final validation
  (``peak_gpu_mb_training``) and the validation's time.
- ``nnunet``: one of nnU-Net v2's commands (``ENTRY_POINTS``) through the function its console
  script calls, then a normal exit (as the console script).
- ``split``: ``autoseg.training.splits.get_split(FOLDER, 0)``: the fixed 5-fold split autoseg's
  training uses (written to FOLDER/splits.json, kept where it exists).

Every mode that imports torch also records ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated``
at the end of the command (None where CUDA was not used).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {  # nnU-Net v2's console scripts and the functions they call (its entry_points.txt)
    "nnUNetv2_plan_and_preprocess":
        "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
# the parts of autoseg's trainer that ``autoseg`` mode wraps to time the steps and epochs
# where the training steps, epoch ends and final validation are looked up, under autoseg.training
TRAINER_HOOKS = ("fold_run.train_step", "fold_run.FoldRun._end_epoch", "trainer.run_validation")


def write_record(record: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def use_repository_autoseg() -> str:
    """Make ``import autoseg.planners`` etc. work from this repository where autoseg is not installed:
    setup.py maps ``autoseg.planners`` to the top-level ``planners/`` (and so on), so the repository
    root is added to the ``autoseg`` package's path. Returns where autoseg comes from."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import autoseg

    if importlib.util.find_spec("autoseg.planners") is None:
        autoseg.__path__.append(str(REPO))
        return f"{REPO} (not installed: the repository's folders)"
    return str(Path(autoseg.__file__).parent)


def peak_gpu_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2 ** 20


# ---------------------------------------------------------------------------------------------- probe

def probe(modules: list[str], imports: list[str], versions: list[str]) -> dict:
    import importlib.metadata as metadata
    import platform

    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    out: dict = {"python": platform.python_version(), "executable": sys.executable, "missing": missing,
                 "import_errors": {}, "versions": {}, "torch": None, "cuda_available": False}
    for name in imports if not missing else []:
        try:
            if name.split(".")[0] == "autoseg":
                use_repository_autoseg()
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is what the probe reports
            out["import_errors"][name] = f"{type(exc).__name__}: {exc}"
    for dist in versions:
        try:
            out["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out["versions"][dist] = None
    if "torch" not in missing:
        import torch

        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out.update(gpu=torch.cuda.get_device_name(0), gpu_memory_mb=props.total_memory / 2 ** 20,
                       gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version(),
                       compute_capability=f"{props.major}.{props.minor}")
    return out


# ---------------------------------------------------------------------------------------------- autoseg

class TrainRecorder:
    """Wraps autoseg's trainer (``TRAINER_HOOKS``) to record its steps, epochs and final validation."""

    def __init__(self):
        import autoseg.training.fold_run
        import autoseg.training.trainer
        from autoseg import training

        missing = [h for h in TRAINER_HOOKS if not _has_path(training, h)]
        if missing:
            raise SystemExit(f"bench/gpu_worker.py: autoseg.training has no {', '.join(missing)}; "
                             "the worker's hooks (TRAINER_HOOKS) must follow the trainer")
        self.fold_run, self.trainer = autoseg.training.fold_run, autoseg.training.trainer
        self.started = time.perf_counter()
        self.step_s: list[float] = []
        self.step_start_s: list[float] = []
        self.epochs: list[dict] = []
        self.peak_gpu_mb_training: float | None = None
        self.validation_s: float | None = None

    def install(self) -> None:
        f, t, rec = self.fold_run, self.trainer, self
        step, end_epoch, validate = f.train_step, f.FoldRun._end_epoch, t.run_validation

        def timed_step(net, loss_fn, opt, scaler, batch, dev, *args, **kwargs):
            started = time.perf_counter()
            out = step(net, loss_fn, opt, scaler, batch, dev, *args, **kwargs)
            if dev.type == "cuda":
                import torch

                torch.cuda.synchronize(dev)
            rec.step_s.append(time.perf_counter() - started)
            rec.step_start_s.append(started - rec.started)
            return out

        def recorded_end_epoch(run, *args, **kwargs):
            end_epoch(run, *args, **kwargs)
            h = run.history
            dice = h["pseudo_dice"][-1]
            rec.epochs.append({"end_s": time.perf_counter() - rec.started,
                               "pseudo_dice": sum(dice) / len(dice) if dice else None,
                               "ema_pseudo_dice": h["ema_dice"][-1]})

        def timed_validate(*args, **kwargs):
            rec.peak_gpu_mb_training = peak_gpu_mb()
            started = time.perf_counter()
            try:
                return validate(*args, **kwargs)
            finally:
                rec.validation_s = time.perf_counter() - started

        f.train_step, f.FoldRun._end_epoch, t.run_validation = timed_step, recorded_end_epoch, timed_validate

    def record(self) -> dict:
        return {"step_s": self.step_s, "step_start_s": self.step_start_s, "epochs": self.epochs,
                "peak_gpu_mb_training": self.peak_gpu_mb_training, "validation_wall_s": self.validation_s}


def _has_path(module, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def run_autoseg(argv: list[str], record_path: str) -> None:
    started = time.perf_counter()
    record: dict = {"tool": "autoseg", "argv": argv, "autoseg_from": use_repository_autoseg()}
    from autoseg.cli import main

    recorder = None
    if argv[:1] == ["train"]:
        recorder = TrainRecorder()
        recorder.install()
    code = 1
    try:
        code = main(argv)
    finally:
        record.update(exit_code=code, wall_s=time.perf_counter() - started, peak_gpu_mb=peak_gpu_mb())
        if recorder is not None:
            record.update(recorder.record())
        torch = sys.modules.get("torch")
        record["torch"] = torch.__version__ if torch is not None else None
        write_record(record, record_path)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    os._exit(code)  # as the autoseg command ends (autoseg.cli.run): no interpreter teardown


# ---------------------------------------------------------------------------------------------- nnU-Net

def run_nnunet(argv: list[str], record_path: str) -> int:
    if not argv or argv[0] not in ENTRY_POINTS:
        raise SystemExit(f"bench/gpu_worker.py nnunet: expected one of {', '.join(ENTRY_POINTS)} after --, "
                         f"found {argv[:1]}")
    module, function = ENTRY_POINTS[argv[0]].split(":")
    entry = getattr(importlib.import_module(module), function)
    sys.argv = list(argv)
    started = time.perf_counter()
    code = 1
    try:
        result = entry()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:  # argparse and some entry points end this way
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        torch = sys.modules.get("torch")
        write_record({"tool": "nnunet", "argv": argv, "exit_code": code, "wall_s": time.perf_counter() - started,
                      "peak_gpu_mb": peak_gpu_mb(), "torch": torch.__version__ if torch is not None else None},
                     record_path)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("probe", "autoseg", "nnunet", "split"))
    p.add_argument("--record", required=True, help="JSON file to write")
    p.add_argument("--modules", nargs="*", default=[], help="probe: modules that must be importable")
    p.add_argument("--imports", nargs="*", default=[], help="probe: modules to import, where none is missing")
    p.add_argument("--versions", nargs="*", default=[], help="probe: distributions whose versions to record")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, rest = p.parse_args(argv[:cut]), argv[cut + 1:]  # after --: the command, or split's folder
    if args.mode == "probe":
        write_record(probe(args.modules, args.imports, args.versions), args.record)
        return 0
    if args.mode == "split":
        if len(rest) != 1:
            p.error("split takes one folder: the preprocessed dataset")
        use_repository_autoseg()
        from autoseg.training.splits import get_split

        train, val = get_split(Path(rest[0]), 0)
        write_record({"tool": "autoseg", "fold": 0, "train": list(train), "val": list(val)}, args.record)
        return 0
    if not rest:
        p.error(f"{args.mode}: give the command after --")
    if args.mode == "autoseg":
        run_autoseg(rest, args.record)  # does not return
    return run_nnunet(rest, args.record)


if __name__ == "__main__":
    sys.exit(main())
