"""A fold whose training failed (it diverged) is marked so, and no command uses its model.

Kept free of torch, so that the checks cost nothing where torch is not imported (ONNX prediction,
find_best_config).
"""
from __future__ import annotations

import json
from pathlib import Path

from autoseg.errors import UserFacingError
from autoseg.serialization import save_json

FAILED_MARKER = "training_failed.json"  # a fold whose last run diverged: its model is not used


def mark_failed(fold_dir: str | Path, reason: str, iteration: int) -> None:
    """Record in ``fold_dir`` that its training failed (``refuse_failed`` then stops every use)."""
    save_json({"reason": reason, "iteration": int(iteration)}, Path(fold_dir) / FAILED_MARKER)


def clear_failed(fold_dir: str | Path) -> None:
    (Path(fold_dir) / FAILED_MARKER).unlink(missing_ok=True)


def failed_reason(fold_dir: str | Path) -> str | None:
    """Why the fold's last training run failed, or None when it did not."""
    marker = Path(fold_dir) / FAILED_MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
        return f"{record['reason']} (at iteration {record['iteration']})"
    except (ValueError, KeyError, TypeError):
        return f"see {marker}"


def refuse_failed(fold_dir: str | Path) -> None:
    """Raise ``UserFacingError`` when the fold's training failed."""
    reason = failed_reason(fold_dir)
    if reason is not None:
        raise UserFacingError(f"{fold_dir}: its training failed: {reason}; its model is not used. Train the fold "
                              f"again (with the cause fixed: see training.log there), or delete "
                              f"{Path(fold_dir) / FAILED_MARKER} to use the checkpoints it holds anyway")
