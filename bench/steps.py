"""The autoseg steps the accuracy benchmarks share: train one time-budgeted fold, predict the
held-out images with it, score them.

    fold = fold_folder(root, raw.name, "3d_fullres", 0)
    train = train_fold(autoseg, ident, "3d_fullres", 0, "5m", fold, logs)     # timed
    predict, summary = predict_and_evaluate(autoseg, raw, pred, ident, "3d_fullres", 0, logs)
    facts = fold_facts(fold)                                               # iterations, precision

``ident`` is the ``-d ID --root WS`` part of every command. Used by fine_tune.py, resenc.py and
regions.py; stdlib only, like common.py.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Sequence

from common import Measurement, measure, run_untimed

ITERATIONS_RE = re.compile(r"training done: .* \((\d+) iterations\)")
PRECISION_RE = re.compile(r"precision (\w+):")
TRAIN_TIMEOUT_S, PREDICT_TIMEOUT_S, EVALUATE_TIMEOUT_S = 7200, 3600, 1800


def fold_folder(root: Path, dataset_name: str, configuration: str, fold, variant: str = "default") -> Path:
    return Path(root) / "results" / dataset_name / configuration / variant / f"fold_{fold}"


def train_fold(autoseg: str, ident: Sequence[str], configuration: str, fold, budget: str, fold_dir: Path,
               logs: Path, extra: Sequence[str] = ()) -> Measurement:
    """``autoseg train CONFIGURATION FOLD --time-budget BUDGET``, timed, from a removed ``fold_dir``."""
    shutil.rmtree(fold_dir, ignore_errors=True)
    return measure([autoseg, "train", configuration, str(fold), *ident, "--time-budget", budget, *extra],
                   log_path=Path(logs) / "train.log", timeout_s=TRAIN_TIMEOUT_S)


def predict_and_evaluate(autoseg: str, raw: Path, pred: Path, ident: Sequence[str], configuration: str, fold,
                         logs: Path, evaluate_ident: Sequence[str] | None = None,
                         summary_name: str = "summary.json") -> tuple[Measurement, dict]:
    """Predict ``raw/imagesTs`` into a fresh ``pred`` with that one fold (timed), then ``autoseg
    evaluate`` against ``raw/labelsTs`` (with ``evaluate_ident``, e.g. another dataset's regions;
    default ``ident``). Returns the predict measurement and the summary read back."""
    shutil.rmtree(pred, ignore_errors=True)
    predict = measure([autoseg, "predict", "-i", Path(raw) / "imagesTs", "-o", pred, *ident, "-c", configuration,
                       "-f", str(fold)], log_path=Path(logs) / "predict.log", timeout_s=PREDICT_TIMEOUT_S)
    run_untimed([autoseg, "evaluate", "-ref", Path(raw) / "labelsTs", "-pred", pred,
                 *(ident if evaluate_ident is None else evaluate_ident), "-o", Path(pred) / summary_name],
                log_path=Path(logs) / "evaluate.log", timeout_s=EVALUATE_TIMEOUT_S)
    return predict, json.loads((Path(pred) / summary_name).read_text())


def fold_facts(fold_dir: Path) -> dict:
    """Iterations trained and the precision used, from a finished fold's training.log (None where the
    log does not say): two arms compared at equal time must show both."""
    log = Path(fold_dir) / "training.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    done, precision = ITERATIONS_RE.findall(text), PRECISION_RE.findall(text)
    return {"iterations": int(done[-1]) if done else None, "precision": precision[-1] if precision else None}
