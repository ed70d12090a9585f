"""The regression suite's table and markdown report (``bench/suite.py``): one row per dataset."""
from __future__ import annotations

import math

from common import markdown_table, ratio

HEADERS = ["dataset", "id", "status", "plan_and_preprocess s", "peak RSS MB", "nnU-Net p&p s", "nnU-Net / autoseg",
           "nnU-Net peak RSS MB",
           "configuration", "patch", "spacing mm", "batch", "width", "precision", "iterations", "val Dice",
           "held-out Dice", "held-out per class", "lesion F1", "predict s/case"]


def _axes(values, digits: int = 3) -> str | None:
    if not values:
        return None
    return "x".join(f"{v:g}" if isinstance(v, int) else f"{round(float(v), digits):g}" for v in values)


def _num(value, digits: int = 3) -> str | None:
    """``value`` with ``digits`` decimals as text; None for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{float(value):.{digits}f}"


def table_row(r: dict) -> list:
    """One dataset's cells, in ``HEADERS`` order (None where there is nothing to show)."""
    plan, held = r.get("plan") or {}, r.get("held_out") or {}
    pp, nn = r.get("plan_and_preprocess") or {}, r.get("nnunet")
    status = r["status"] + (f" at {r['failed_step']}" if r.get("failed_step") else "")
    if nn is None:
        nn_s, nn_ratio, nn_rss = "not run", None, None
    elif "error" in nn:
        nn_s, nn_ratio, nn_rss = "failed", None, None
    else:
        nn_s, nn_ratio = _num(nn.get("wall_s"), 1), _num(ratio(nn.get("wall_s"), pp.get("wall_s")), 2)
        nn_rss = _num(nn.get("peak_tree_rss_mb"), 0)
    per_class = ", ".join(f"{k} {_num(v) or 'n/a'}" for k, v in (held.get("dice_per_class") or {}).items()) or None
    return [r["key"], r["dataset_id"], status, _num(pp.get("wall_s"), 1), _num(pp.get("peak_tree_rss_mb"), 0),
            nn_s, nn_ratio, nn_rss, plan.get("configuration") or r.get("configuration"), _axes(plan.get("patch_size")),
            _axes(plan.get("spacing")), plan.get("batch_size"), plan.get("width"), plan.get("precision"),
            r.get("iterations"), _num(r.get("validation_dice")), _num(held.get("dice")), per_class,
            _num(held.get("lesion_f1")) if "lesion_f1" in held else None,
            _num((r.get("predict") or {}).get("s_per_case"), 2)]


def render_table(results: list[dict]) -> str:
    rows = [[("n/a" if v is None else v) for v in table_row(r)] for r in results]
    text = markdown_table(HEADERS, rows)
    problems = [f"- {r['key']}: {r['status']}" + (f" at {r['failed_step']}" if r.get("failed_step") else "")
                + f": {_first_lines(r['error'])}" for r in results if r.get("error")]
    problems += [f"- {r['key']}: nnU-Net plan_and_preprocess failed: {_first_lines(r['nnunet']['error'])}"
                 for r in results if isinstance(r.get("nnunet"), dict) and "error" in r["nnunet"]]
    return text + ("\n\n" + "\n".join(problems) if problems else "")


def _first_lines(text: str, width: int = 400) -> str:
    """A failure in one line: its first line (what ran, how it ended) and, from a log tail, the last
    line (usually the exception)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and not ln.startswith("--- last lines")]
    brief = lines[0] if lines else ""
    if len(lines) > 1:
        brief += f" ... {lines[-1]}"
    return brief if len(brief) <= width else brief[:width] + " ..."


def markdown_report(results: list[dict], machine: dict, commit: str, command: str, started: str) -> str:
    flags = ", ".join(f"{k} {'yes' if machine.get(k) else 'no'}" for k in ("amx_tile", "avx512_bf16"))
    header = (f"Regression suite, {started}: CPU {machine.get('cpu') or 'unknown'} ({machine.get('cores')} cores; "
              f"{flags}), commit {commit}, command `{command}`")
    return header + "\n\n" + render_table(results) + "\n"
