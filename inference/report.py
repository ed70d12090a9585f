"""``autoseg report``: one self-contained HTML page on a dataset, from what the stages wrote.

The page (default ``results/<dataset>/report.html``) follows the chain of the pipeline:

- the data: ``fingerprint.json`` (cases, channels, spacings, shapes, classes and their sizes);
- the plans: ``plans.json`` per configuration (patch, spacing, batch, network width and depth) with
  the precision the planning chose on this CPU (``throughput.json``) where it timed one;
- training: the curves of every fold (loss, pseudo-Dice per class and its EMA per epoch, from the
  history in ``checkpoint_final.pth``, else ``checkpoint_latest.pth``) as inline SVG;
- cross-validation: ``selection.json`` (every candidate's Dice and lesion F1, the choice, its
  postprocessing and what that changed);
- validation cases: each fold's ``validation/summary.json`` per case, in a table sorted by a click
  on a header;
- pictures: per class the best and the worst validation case (by that class's Dice), a slice
  through the class with the reference as outline and the prediction filled (base64 PNG).

Nothing is loaded from elsewhere when the page is opened. A stage not run yet is a box naming the
command that runs it; nothing missing stops the page from being written.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from autoseg.labels import Regions, class_mask, label_names, regions_of
from autoseg.paths import Workspace
from autoseg.plans import CONFIGURATIONS
from autoseg.report_html import data_uri_img, esc, fmt, line_chart, missing, page, table
from autoseg.training.train_config import saved_setting

log = logging.getLogger(__name__)

CASE_METRICS = ("dice", "hd95", "nsd")  # per class in the per-case table


@dataclass
class Fold:
    """One trained (or training) fold: where it is and what it recorded."""

    configuration: str
    variant: str
    fold: str  # "0".."4" or "all"
    folder: Path
    history: Optional[dict] = None
    checkpoint: str = ""  # the file the history came from
    precision: Optional[str] = None
    problem: Optional[str] = None  # failed training, unreadable checkpoint
    summary: Optional[dict] = None  # validation/summary.json

    @property
    def name(self) -> str:
        return f"{self.configuration} fold {self.fold}" + ("" if self.variant == "default" else f" ({self.variant})")


@dataclass
class Dataset:
    """What the report reads of one dataset; None where a stage has not written it."""

    ws: Workspace
    name: str
    fingerprint: Optional[dict] = None
    plans: object = None  # Plans
    throughput: Optional[dict] = None
    selection: Optional[dict] = None
    folds: list[Fold] = field(default_factory=list)

    @property
    def number(self) -> str:
        return str(int(self.name[7:10]))

    @property
    def labels(self) -> dict:
        source = self.plans.labels if self.plans is not None else (self.fingerprint or {}).get("labels", {})
        return dict(source)

    @property
    def regions(self) -> Optional[Regions]:
        if self.plans is not None:
            return self.plans.regions
        order = (self.fingerprint or {}).get("regions_class_order")
        return regions_of(self.labels, order) if self.labels else None

    @property
    def names(self) -> dict[int, str]:
        """Class name by value (a region by its written value)."""
        return label_names(self.labels, self.regions) if self.labels else {}

    def class_name(self, key) -> str:
        return self.names.get(int(key), f"class {key}")


def _json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        log.warning("%s cannot be read (%s); the report leaves it out", path, exc)
        return None


def read_dataset(ws: Workspace, ident: str | int) -> Dataset:
    """Everything the report shows of dataset ``ident``, read from the workspace ``ws``."""
    from autoseg.plans import load_plans

    name = ws.dataset_name(ident)
    pre, results = ws.preprocessed / name, ws.results / name
    data = Dataset(ws, name, _json(pre / "fingerprint.json"), None, _json(pre / "throughput.json"),
                   _json(results / "selection.json"))
    if (pre / "plans.json").is_file():
        data.plans = load_plans(pre / "plans.json")
    data.folds = [_read_fold(folder) for folder in sorted(results.glob("*/*/fold_*"))
                  if folder.is_dir() and folder.parts[-3] in CONFIGURATIONS]
    return data


def _read_fold(folder: Path) -> Fold:
    from autoseg.training.health import failed_reason

    fold = Fold(folder.parts[-3], folder.parts[-2], folder.name[len("fold_"):], folder)
    reason = failed_reason(folder)
    if reason:
        fold.problem = f"training failed: {reason}"
    for checkpoint in ("checkpoint_final", "checkpoint_latest"):
        path = folder / f"{checkpoint}.pth"
        if path.is_file():
            try:
                state = _load_state(path)
            except Exception as exc:  # a damaged checkpoint is shown, never a reason not to write the page
                fold.problem = f"{path.name} cannot be read: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                continue
            fold.history, fold.checkpoint = state.get("history"), checkpoint
            fold.precision = saved_setting(state.get("train_config"), "runtime.precision")
            break
    fold.summary = _json(folder / "validation" / "summary.json")
    return fold


def _load_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the history only: no weights read


# --- the sections -----------------------------------------------------------------------------------------


def _range(values: list) -> str:
    """Median and range per axis of a list of tuples, e.g. '1.00 x 0.80 x 0.80 (0.9-1.2 x ...)'."""
    arr = np.asarray(values, dtype=float)
    med = " x ".join(f"{v:g}" for v in np.round(np.median(arr, 0), 3))
    spread = " x ".join(f"{lo:g}-{hi:g}" for lo, hi in zip(np.round(arr.min(0), 3), np.round(arr.max(0), 3)))
    return f"{med} (range {spread})"


def fingerprint_section(data: Dataset) -> str:
    fp = data.fingerprint
    if fp is None:
        return missing("fingerprint", f"autoseg plan_and_preprocess -d {data.number}")
    cases = fp.get("cases", [])
    facts = [("cases", len(cases)), ("channels", ", ".join(fp.get("channel_names", []))),
             ("file ending", fp.get("file_ending", "")), ("2D images", "yes" if fp.get("is_2d") else "no")]
    if cases:
        facts += [("spacing (z, y, x) mm, median", _range([c["spacing"] for c in cases])),
                  ("shape (z, y, x), median", _range([c["shape"] for c in cases])),
                  ("shape after cropping, median", _range([c["shape_after_crop"] for c in cases]))]
    facts.append(("cropped / original volume, median", fmt(fp.get("crop_reduction_median"), 3)))
    rows = [[c["name"], c["label"], c["presence_fraction"], c["mean_voxel_fraction"], c["num_components_median"],
             c["component_volume_mm3_median"], c["component_volume_mm3_p10"], c["component_volume_mm3_p90"]]
            for c in fp.get("classes", [])]
    labels = ", ".join(f"{k}: {v}" for k, v in fp.get("labels", {}).items())
    return (table(["", ""], [[k, v if isinstance(v, str) else fmt(v)] for k, v in facts])
            + f"<p>Labels (dataset.json): {esc(labels)}</p><h3>Classes</h3>"
            + table(["class", "value", "in cases (fraction)", "mean voxel fraction", "components (median)",
                     "component mm\u00b3 median", "p10", "p90"], rows))


def plans_section(data: Dataset) -> str:
    plans = data.plans
    if plans is None:
        return missing("plans", f"autoseg plan_and_preprocess -d {data.number}")
    rows = []
    for name, cfg in plans.configurations.items():
        net = cfg.network
        rows.append([name, " x ".join(map(str, cfg.patch_size)), " x ".join(f"{s:g}" for s in cfg.spacing),
                     " x ".join(map(str, cfg.median_shape)), cfg.batch_size, net.features_per_stage[0],
                     "-".join(map(str, net.features_per_stage)), len(net.features_per_stage),
                     ", ".join(cfg.normalization), _planned_precision(data, name)])
    note = (f"<p>Planned for the <code>{esc(plans.device_profile)}</code> profile; "
            f"{esc(len(plans.scored_classes))} scored class(es); network outputs: {esc(plans.num_classes)}"
            + (", one sigmoid per region" if plans.regions else "") + ".</p>")
    return note + table(["configuration", "patch", "spacing (mm)", "median shape", "batch", "width",
                         "features per stage", "depth (stages)", "normalisation", "precision"], rows)


def _planned_precision(data: Dataset, configuration: str) -> str:
    if not data.throughput:
        return "not timed"
    from autoseg.planners.throughput import planned_precision

    try:
        return planned_precision(data.throughput, data.plans, configuration) or "not timed"
    except (KeyError, TypeError, ValueError):
        return "not timed"


def training_section(data: Dataset) -> str:
    if not data.folds:
        return missing("training", f"autoseg train {_first_configuration(data)} 0 1 2 3 4 -d {data.number}")
    classes = list(data.plans.scored_classes) if data.plans is not None else []
    parts = []
    for fold in data.folds:
        parts.append(f"<h3>{esc(fold.name)}</h3>")
        if fold.problem:
            parts.append(f'<p class="missing">{esc(fold.problem)}</p>')
        h = fold.history
        if not h or not h.get("train_loss"):
            parts.append(missing("no epoch recorded", f"autoseg train {fold.configuration} {fold.fold} -d "
                                                      f"{data.number}"))
            continue
        epochs = len(h["train_loss"])
        val = (fold.summary or {}).get("foreground_mean", {}).get("dice")
        state = "finished" if fold.checkpoint == "checkpoint_final" else "in progress (checkpoint_latest)"
        parts.append(f"<p>{esc(epochs)} epoch(s), {esc(state)}; precision {esc(fold.precision or 'unknown')}; "
                     f"final EMA pseudo-Dice {esc(fmt(_last(h.get('ema_dice'))))}; validation mean Dice "
                     f"{esc(fmt(val))}</p>")
        per_class = list(zip(*h["pseudo_dice"])) if h.get("pseudo_dice") else []
        dice = {(data.class_name(classes[k]) if k < len(classes) else f"class {k + 1}"): list(v)
                for k, v in enumerate(per_class)}
        dice["EMA (mean)"] = list(h.get("ema_dice", []))
        parts.append('<div class="charts">'
                     + line_chart({"train loss": h["train_loss"], "val loss": h.get("val_loss", [])}, "loss")
                     + line_chart(dice, "pseudo-Dice", (0.0, 1.0)) + "</div>")
    return "".join(parts) + _untrained(data)


def _first_configuration(data: Dataset) -> str:
    """The configuration to name in a command: 3d_fullres unless the plans lack it (2D images: 2d)."""
    planned = list(data.plans.configurations) if data.plans is not None else []
    return "3d_fullres" if "3d_fullres" in planned or not planned else planned[0]


def _last(values) -> Optional[float]:
    return float(values[-1]) if values else None


def _untrained(data: Dataset) -> str:
    if data.plans is None:
        return ""
    trained = {(f.configuration, f.fold) for f in data.folds}
    lines = [f"autoseg train {c} {' '.join(k for k in '01234' if (c, k) not in trained)} -d {data.number}"
             for c in data.plans.configurations if any((c, k) not in trained for k in "01234")]
    if not lines:
        return ""
    return ('<p class="missing">Folds not yet run; train them with '
            + "; ".join(f"<code>{esc(line)}</code>" for line in lines) + "</p>")


def selection_section(data: Dataset) -> str:
    from autoseg.postprocess.components import Postprocessing
    from autoseg.postprocess.selection import describe_step
    from autoseg.serialization import from_jsonable

    sel = data.selection
    if sel is None:
        return missing("model selection", f"autoseg find_best_config -d {data.number}")
    chosen = "+".join(sel["configurations"])
    candidates = sel.get("candidates", {})
    classes = [k for k in next(iter(candidates.values()), {}) if k != "mean"]
    f1 = sel.get("candidate_lesion_f1", {})
    headers = ["candidate"] + [f"{data.class_name(k)} {m}" for k in classes for m in ("Dice", "lesion F1")] \
        + ["mean Dice", "mean lesion F1"]
    ranked = sorted(candidates.items(), key=lambda kv: -_number(kv[1].get("mean")))
    rows = [[name] + [v for k in classes for v in (scores.get(k), f1.get(name, {}).get(k))]
            + [scores.get("mean"), f1.get(name, {}).get("mean")] for name, scores in ranked]
    post = from_jsonable(Postprocessing, sel["postprocessing"])
    steps = ", ".join(describe_step(s, data.names) for s in post.steps) or "none"
    parts = [f"<p>Chosen: <b>{esc(chosen)}</b> ({esc(sel.get('variant', 'default'))}, folds "
             f"{esc(', '.join(map(str, sel.get('folds', []))))}, {esc(sel.get('checkpoint', ''))}), cross-validation "
             f"Dice {esc(fmt(sel.get('chosen_dice')))}; postprocessing: <b>{esc(steps)}</b> (Dice after "
             f"{esc(fmt(sel.get('postprocessed_dice')))})</p>",
             table(headers, rows, chosen=[name == chosen for name, _ in ranked])]
    effect = sel.get("postprocessing_effect") or {}
    if effect:
        parts.append("<h3>Postprocessing: before and after</h3>")
        parts.append(table(["class", "Dice before", "Dice after", "lesion F1 before", "lesion F1 after"],
                           [[data.class_name(k)] + [effect.get(e, {}).get(k) for e in
                                                    ("dice_before", "dice_after", "lesion_f1_before",
                                                     "lesion_f1_after")] for k in classes]))
    return "".join(parts)


def _number(v) -> float:
    return -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass(frozen=True)
class CaseRow:
    """One validation case of one fold with its metrics (class key as str -> metric -> value)."""

    fold: Fold
    case_id: str
    metrics: dict


def case_rows(data: Dataset) -> list[CaseRow]:
    """Every validated case of every fold, in fold order."""
    return [CaseRow(fold, entry["case_id"], entry.get("metrics", {}))
            for fold in data.folds if fold.summary for entry in fold.summary.get("per_case", [])]


def cases_section(data: Dataset, rows: list[CaseRow]) -> str:
    if not rows:
        return missing("validation of a fold", f"autoseg train {_first_configuration(data)} 0 -d {data.number}")
    classes = sorted({k for r in rows for k in r.metrics}, key=int)
    headers = ["case", "configuration", "fold"] + [f"{data.class_name(k)} {m.upper() if m != 'dice' else 'Dice'}"
                                                    for k in classes for m in CASE_METRICS] + ["mean Dice"]
    body = []
    for r in rows:
        dice = [r.metrics.get(k, {}).get("dice") for k in classes]
        finite = [d for d in dice if d is not None and math.isfinite(d)]
        body.append([r.case_id, r.fold.configuration, r.fold.fold]
                    + [r.metrics.get(k, {}).get(m) for k in classes for m in CASE_METRICS]
                    + [float(np.mean(finite)) if finite else None])
    return ("<p>Click a header to sort. HD95 in mm; NSD: normalised surface Dice at the tolerance of the "
            "validation.</p>" + table(headers, body, sortable=True, table_id="cases"))


def overlays_section(data: Dataset, rows: list[CaseRow]) -> str:
    """Per class, the best and the worst validation case by that class's Dice, among the cases whose
    reference holds the class, from the selected configuration(s) where a selection exists."""
    if data.selection:
        chosen = [r for r in rows if r.fold.configuration in data.selection["configurations"]]
        rows = chosen or rows
    if not rows:
        return missing("validation of a fold", f"autoseg train {_first_configuration(data)} 0 -d {data.number}")
    pictures = _Pictures(data)
    parts = ["<p>A slice through the class: the reference as outline, the prediction filled.</p>"]
    for key in sorted({k for r in rows for k in r.metrics}, key=int):
        scored = [(r.metrics[key]["dice"], r) for r in rows if key in r.metrics
                  and r.metrics[key].get("dice") is not None and math.isfinite(r.metrics[key]["dice"])]
        present = [(d, r) for d, r in scored if r.metrics[key].get("n_ref", 1) > 0] or scored
        if not present:
            continue
        ordered = sorted(present, key=lambda item: item[0])  # stable: of equal Dice, the first is worst
        worst, best = ordered[0], ordered[-1]
        parts.append(f"<h3>{esc(data.class_name(key))}</h3>")
        for label, (dice, row) in (("best", best), ("worst", worst)) if best[1] is not worst[1] else \
                (("best and worst", best),):
            parts.append(pictures.figure(row, int(key), f"{label}: {row.case_id} ({row.fold.name}), Dice "
                                                        f"{fmt(dice)}"))
    return "".join(parts)


class _Pictures:
    """Overlay pictures of validation cases; each case's image is read once."""

    def __init__(self, data: Dataset):
        self.data = data
        self.ending = data.plans.file_ending if data.plans is not None else (data.fingerprint or {}).get(
            "file_ending", ".nii.gz")
        self._images: dict[str, tuple] = {}
        self._raw_cases = None

    def figure(self, row: CaseRow, key: int, caption: str) -> str:
        from autoseg.overlay import busiest_slice, overlay_rgb, png_bytes

        try:
            ref, pred, image, spacing, note = self._read(row)
        except Exception as exc:  # a missing or unreadable file is said in the caption
            return f"<figure><figcaption>{esc(caption)}: no picture ({esc(exc)})</figcaption></figure>"
        ref_mask, pred_mask = class_mask(ref, key, self.data.regions), class_mask(pred, key, self.data.regions)
        z = busiest_slice(ref_mask if ref_mask.any() else pred_mask)
        rgb = overlay_rgb(image[z], pred_mask[z].astype(np.int16) * key, ref_mask[z].astype(np.int16) * key,
                          tuple(spacing[-2:]))
        text = f"{caption}, slice {z}{note}"
        return f"<figure>{data_uri_img(png_bytes(rgb), text)}<figcaption>{esc(text)}</figcaption></figure>"

    def _read(self, row: CaseRow):
        from autoseg.imageio import read_image, read_label

        case, ws = row.case_id, self.data.ws
        reference = ws.preprocessed / self.data.name / "gt_segmentations" / f"{case}{self.ending}"
        if not reference.is_file():
            reference = ws.raw / self.data.name / "labelsTr" / f"{case}{self.ending}"
        ref, geometry = read_label(reference)
        pred = read_label(row.fold.folder / "validation" / f"{case}{self.ending}")[0][0]
        if case not in self._images:
            files = self._image_files(case)
            self._images[case] = (read_image(files)[0][0], "") if files else \
                (np.zeros(ref.shape[1:], np.float32), " (image not found: labels only)")
        image, note = self._images[case]
        return ref[0], pred, image, geometry.spacing, note

    def _image_files(self, case: str) -> list[Path]:
        from autoseg.dataset import load_dataset

        if self._raw_cases is None:
            try:
                spec = load_dataset(self.data.ws.raw / self.data.name)
                self._raw_cases = {c.case_id: list(c.images) for c in spec.training_cases()}
            except Exception as exc:  # no raw dataset here (a model imported alone): labels only
                log.info("no raw images for the pictures: %s", exc)
                self._raw_cases = {}
        files = self._raw_cases.get(case, [])
        return files if files and all(Path(f).is_file() for f in files) else []


# --- the page -----------------------------------------------------------------------------------------------


def build_report(ws: Workspace, ident: str | int) -> str:
    """The report page of dataset ``ident`` in workspace ``ws``, as HTML text."""
    data = read_dataset(ws, ident)
    rows = case_rows(data)
    sections = [("data", "Data (fingerprint)", fingerprint_section(data)),
                ("plans", "Plans", plans_section(data)),
                ("training", "Training curves", training_section(data)),
                ("selection", "Cross-validation and selection", selection_section(data)),
                ("cases", "Validation cases", cases_section(data, rows)),
                ("pictures", "Best and worst cases", overlays_section(data, rows))]
    subtitle = f"workspace {ws.root}; written {time.strftime('%Y-%m-%d %H:%M')}"
    return page(f"autoseg report: {data.name}", sections, subtitle)


def write_report(ws: Workspace, ident: str | int, output: str | os.PathLike | None = None) -> Path:
    """Write the report of dataset ``ident`` to ``output`` (default ``results/<dataset>/report.html``)
    atomically (a temporary file beside it, then a rename); returns its path."""
    from autoseg.errors import UserFacingError

    text = build_report(ws, ident)
    path = Path(output) if output else ws.results_dataset(ident) / "report.html"
    if path.is_dir():
        raise UserFacingError(f"the report output {path} is a folder; give a file name such as {path / 'report.html'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def cli_report(args: argparse.Namespace) -> int:
    path = write_report(Workspace.resolve(args.root), args.dataset, args.output)
    print(f"report written to {path}")
    return 0
