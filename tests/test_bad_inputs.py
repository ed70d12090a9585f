"""A catalogue of malformed datasets, inputs, options and faults, each run through the CLI as a user
would: every one must end with exit code 2, one message naming the problem, and nothing written or
changed anywhere under the test's folders (file listing, sizes and mtimes compared before/after).

Each row is ``Bad(name, kind, make, words)``: ``kind`` says which workspace the case starts from
("raw": a fresh copy of a tiny raw dataset; "model": the module's trained workspace, used read-only;
"model_copy": a copy of it that the case may damage), ``make(ctx)`` breaks something and returns the
command line, ``words`` must all appear in the message.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from synthetic import ellipsoid_case, make_dataset, write_nifti

DS = "Dataset901_Synth"


@dataclass(frozen=True)
class Ctx:
    root: Path  # the workspace (--root)
    scratch: Path  # a folder beside it for inputs and outputs

    @property
    def raw(self) -> Path:
        return self.root / "raw" / DS

    @property
    def fold0(self) -> Path:
        return self.root / "results" / DS / "3d_fullres" / "default" / "fold_0"


@dataclass(frozen=True)
class Bad:
    name: str
    kind: str
    make: Callable[[Ctx], list]
    words: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------- helpers
def edit_json(ctx: Ctx, **changes) -> None:
    path = ctx.raw / "dataset.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def cut(path: Path, keep: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def image(ctx: Ctx, case: int = 0, channel: int = 0) -> Path:
    return ctx.raw / "imagesTr" / f"case_{case:03d}_{channel:04d}.nii.gz"


def label(ctx: Ctx, case: int = 0) -> Path:
    return ctx.raw / "labelsTr" / f"case_{case:03d}.nii.gz"


def rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], spacing=None, origin=None) -> None:
    """Read ``path``, change its voxels, write it back with its geometry (or the spacing/origin given)."""
    img = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(img)))
    out.SetSpacing(spacing or img.GetSpacing())
    out.SetOrigin(origin or img.GetOrigin())
    out.SetDirection(img.GetDirection())
    sitk.WriteImage(out, str(path))


def with_nan(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(a):
        a = a.astype(np.float32)
        a[0, 0, :3] = value
        return a
    return change


def fingerprint(ctx: Ctx) -> list:
    return ["fingerprint", "-d", "901", "-np", "1", "--root", ctx.root]


def after(change: Callable[[Ctx], None], command: Callable[[Ctx], list]) -> Callable[[Ctx], list]:
    """Break something with ``change``, then run ``command``."""
    def make(ctx: Ctx) -> list:
        change(ctx)
        return command(ctx)
    return make


def raw_case(change: Callable[[Ctx], None]) -> Callable[[Ctx], list]:
    """A broken raw dataset, checked by ``fingerprint`` (the first stage that reads it)."""
    return after(change, fingerprint)


def second_channel(ctx: Ctx, shape_change=None) -> None:
    """Declare a second channel and write it for every case (optionally of another shape for case 0)."""
    edit_json(ctx, channel_names={"0": "MRI", "1": "T2"})
    for src in sorted((ctx.raw / "imagesTr").glob("*_0000.nii.gz")):
        dst = src.with_name(src.name.replace("_0000", "_0001"))
        shutil.copy2(src, dst)
    if shape_change:
        rewrite(image(ctx, 0, 1), shape_change)


def input_folder(ctx: Ctx, cases: dict[str, dict[int, np.ndarray]], ending: str = ".nii.gz") -> Path:
    """Write predict input: case id -> channel -> array (z, y, x) or (h, w) for 2D files."""
    folder = ctx.scratch / "in"
    folder.mkdir(exist_ok=True)
    for cid, channels in cases.items():
        for c, arr in channels.items():
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"{cid}_{c:04d}{ending}"))
    return folder


def volume(seed: int = 1, shape=(12, 14, 13)) -> np.ndarray:
    return ellipsoid_case(shape, np.random.default_rng(seed))[0]


def predict(ctx: Ctx, folder: Path, *extra) -> list:
    return ["predict", "-i", folder, "-o", ctx.scratch / "out", "-d", "901", "--root", ctx.root,
            "-c", "3d_fullres", "-f", "0", "--disable_tta", *extra]


def predict_input(cases: dict, ending: str = ".nii.gz") -> Callable[[Ctx], list]:
    return lambda ctx: predict(ctx, input_folder(ctx, cases, ending))


def train(ctx: Ctx, *extra, config="3d_fullres", fold="1") -> list:
    return ["train", config, fold, "-d", "901", "--root", ctx.root, "-np", "0", *extra]


def set_option(*items: str) -> Callable[[Ctx], list]:
    return lambda ctx: train(ctx, *[a for item in items for a in ("--set", item)])


def damaged_checkpoint(name: str, content: Callable[[bytes], bytes],
                       command: Callable[[Ctx], list]) -> Callable[[Ctx], list]:
    """``name``.pth made from checkpoint_final's bytes by ``content``, then ``command``."""
    def make(ctx: Ctx) -> list:
        final = ctx.fold0 / "checkpoint_final.pth"
        target = ctx.fold0 / f"{name}.pth"
        target.write_bytes(content(final.read_bytes()))
        if name == "checkpoint_latest":
            final.unlink()  # an unfinished run: --continue reads checkpoint_latest
        return command(ctx)
    return make


def model_zip(members: dict[str, bytes]) -> Callable[[Ctx], list]:
    def make(ctx: Ctx) -> list:
        path = ctx.scratch / "model.zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return ["import_model", path, "--root", ctx.root]
    return make


def a_file(ctx: Ctx, name: str) -> Path:
    path = ctx.scratch / name
    path.write_bytes(b"in the way")
    return path


def _failed(ctx: Ctx) -> None:
    from autoseg.training.health import mark_failed

    mark_failed(ctx.fold0, "the loss was NaN for 20 steps in a row", 7)


def _edit_plans(ctx: Ctx, **changes) -> None:
    path = ctx.root / "preprocessed" / DS / "plans.json"
    plans = json.loads(path.read_text())
    plans.update(changes)
    path.write_text(json.dumps(plans))


def _corrupt_zip(ctx: Ctx) -> list:
    path = ctx.scratch / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"results/{DS}/plans.json", b"x" * 200)
    data = bytearray(path.read_bytes())
    data[data.index(b"x" * 200) + 50] = ord("y")  # the stored bytes no longer match their CRC
    path.write_bytes(bytes(data))
    return ["import_model", path, "--root", ctx.root]


def _shape_mismatch(ctx: Ctx) -> list:
    ref, pred = _mkdir(ctx.scratch / "ref"), _mkdir(ctx.scratch / "pred")
    write_nifti(np.zeros((4, 4, 4), np.uint8), ref / "c1.nii.gz")
    write_nifti(np.zeros((4, 4, 5), np.uint8), pred / "c1.nii.gz")
    return ["evaluate", "-ref", ref, "-pred", pred]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _renamed(folder: Path, old: str, new: str) -> Path:
    for p in folder.iterdir():
        p.rename(p.with_name(p.name.replace(old, new)))
    return folder


def _unsupported_files(ctx: Ctx) -> Path:
    folder = _mkdir(ctx.scratch / "jpg")
    for cid in ("a", "b"):
        (folder / f"{cid}_0000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return folder


def _refs(ctx: Ctx) -> Path:
    folder = _mkdir(ctx.scratch / "refs")
    if not any(folder.iterdir()):
        write_nifti(np.zeros((4, 4, 4), np.uint8), folder / "c1.nii.gz")
    return folder



# --------------------------------------------------------------------------------- the catalogue
CATALOGUE = [
    # dataset.json mistakes
    Bad("dataset.json missing", "raw", raw_case(lambda c: (c.raw / "dataset.json").unlink()),
        ("dataset.json is missing",)),
    Bad("dataset.json not JSON", "raw", raw_case(lambda c: (c.raw / "dataset.json").write_text("{'labels': 1,")),
        ("not valid JSON",)),
    Bad("dataset.json a list", "raw", raw_case(lambda c: (c.raw / "dataset.json").write_text("[1, 2]")),
        ("must hold a JSON object", "list")),
    Bad("no labels key", "raw", raw_case(lambda c: edit_json(c, labels=None)), ("missing key 'labels'",)),
    Bad("Decathlon modality key", "raw",
        raw_case(lambda c: edit_json(c, channel_names=None, modality={"0": "MRI"})),
        ("missing key 'channel_names'", "convert_msd")),
    Bad("channel keys not from 0", "raw", raw_case(lambda c: edit_json(c, channel_names={"1": "MRI"})),
        ("channel_names keys must be 0..0", "['1']")),
    Bad("no background label", "raw", raw_case(lambda c: edit_json(c, labels={"outer": 1, "inner": 2})),
        ("background with value 0",)),
    Bad("duplicate label values", "raw",
        raw_case(lambda c: edit_json(c, labels={"background": 0, "outer": 1, "inner": 1})),
        ("label values must be unique",)),
    Bad("label value a string", "raw",
        raw_case(lambda c: edit_json(c, labels={"background": 0, "outer": "1", "inner": 2})),
        ("label 'outer' must map to an integer", "'1'")),
    Bad("unsupported file_ending", "raw", raw_case(lambda c: edit_json(c, file_ending=".jpg")),
        ("file_ending must be one of", "'.jpg'")),
    Bad("negative numTraining", "raw", raw_case(lambda c: edit_json(c, numTraining=-3)),
        ("numTraining must be a non-negative integer", "-3")),
    Bad("numTraining disagrees with the files", "raw", raw_case(lambda c: edit_json(c, numTraining=7)),
        ("numTraining", "7")),
    Bad("file list escapes the folder", "raw",
        raw_case(lambda c: edit_json(c, dataset={"case_000": {"images": ["../x_0000.nii.gz"],
                                                              "label": "labelsTr/case_000.nii.gz"}})),
        ("escapes the dataset folder",)),
    # file layout mistakes
    Bad("labelsTr missing", "raw", raw_case(lambda c: shutil.rmtree(c.raw / "labelsTr")), ("labelsTr",)),
    Bad("an image without its label", "raw", raw_case(lambda c: label(c, 1).unlink()), ("case_001",)),
    Bad("a label without its image", "raw", raw_case(lambda c: image(c, 1).unlink()), ("case_001",)),
    Bad("a declared channel missing", "raw",
        raw_case(lambda c: edit_json(c, channel_names={"0": "MRI", "1": "T2"})), ("case_000", "1 channel(s) found", "declares 2")),
    Bad("files of another ending", "raw", raw_case(lambda c: edit_json(c, file_ending=".nrrd")),
        (".nrrd",)),
    # broken images and labels
    Bad("truncated image", "raw", raw_case(lambda c: cut(image(c, 1), 0.5)),
        ("case_001_0000.nii.gz", "incomplete")),
    Bad("truncated label", "raw", raw_case(lambda c: cut(label(c, 2), 0.66)), ("case_002.nii.gz", "incomplete")),
    Bad("empty image file", "raw", raw_case(lambda c: image(c, 0).write_bytes(b"")), ("case_000_0000.nii.gz",)),
    Bad("image that is not an image", "raw", raw_case(lambda c: image(c, 0).write_text("hello")),
        ("case_000_0000.nii.gz",)),
    Bad("NaN voxels", "raw", raw_case(lambda c: rewrite(image(c, 1), with_nan(np.nan))), ("NaN/inf", "case_001")),
    Bad("infinite voxels", "raw", raw_case(lambda c: rewrite(image(c, 2), with_nan(np.inf))),
        ("NaN/inf", "case_002")),
    # wrong label values
    Bad("undeclared label value", "raw", raw_case(lambda c: rewrite(label(c, 0), lambda a: np.where(a == 2, 5, a))),
        ("case_000", "5")),
    Bad("fractional label values", "raw",
        raw_case(lambda c: rewrite(label(c, 0), lambda a: a.astype(np.float32) * 0.5)),
        ("must be integers",)),
    Bad("a 0/255 mask", "raw",
        raw_case(lambda c: rewrite(label(c, 0), lambda a: (a > 0).astype(np.uint8) * 255)), ("255", "mask // 255")),
    Bad("negative label value", "raw",
        raw_case(lambda c: rewrite(label(c, 1), lambda a: np.where(a == 1, -1, a.astype(np.int16)))),
        ("case_001", "-1")),
    # geometry mismatches
    Bad("label of another shape", "raw", raw_case(lambda c: rewrite(label(c, 0), lambda a: a[:-1])),
        ("case_000", "shape")),
    Bad("label of another spacing", "raw",
        raw_case(lambda c: rewrite(label(c, 0), lambda a: a, spacing=(1.0, 1.0, 2.0))), ("case_000", "spacing")),
    Bad("label of another origin", "raw",
        raw_case(lambda c: rewrite(label(c, 0), lambda a: a, origin=(5.0, 0.0, 0.0))), ("case_000", "origin")),
    Bad("channels of different shapes", "raw",
        raw_case(lambda c: second_channel(c, lambda a: a[:, :-2])), ("case_000", "shape")),
    # bad CLI numbers and options
    Bad("step size 0", "raw", lambda c: predict(c, c.scratch, "--step_size", "0"), ("--step_size", "(0, 1]", "'0'")),
    Bad("step size negative", "raw", lambda c: predict(c, c.scratch, "--step_size", "-0.5"), ("--step_size", "'-0.5'")),
    Bad("step size not a number", "raw", lambda c: predict(c, c.scratch, "--step_size", "half"),
        ("--step_size", "'half'")),
    Bad("negative predict workers", "raw", lambda c: predict(c, c.scratch, "-nwp", "-1"),
        ("--num-workers-preprocess", "'auto' or a whole number >= 0", "'-1'")),
    Bad("predict workers not a number", "raw", lambda c: predict(c, c.scratch, "-nwe", "some"),
        ("--num-workers-export", "'some'")),
    Bad("worker timeout 0", "raw", lambda c: predict(c, c.scratch, "--worker-timeout", "0"),
        ("--worker-timeout", "> 0", "'0'")),
    Bad("zero worker processes", "raw", lambda c: ["fingerprint", "-d", "901", "-np", "0", "--root", c.root],
        ("-np", ">= 1", "'0'")),
    Bad("unknown device profile", "raw",
        lambda c: ["plan_and_preprocess", "-d", "901", "--root", c.root, "--device-profile", "gpu-3gb"],
        ("invalid choice: 'gpu-3gb'",)),
    Bad("dataset id out of range", "raw",
        lambda c: ["convert_msd", "-i", c.scratch, "-d", "1000", "--root", c.root], ("--dataset-id", "'1000'")),
    Bad("NSD tolerance 0", "raw",
        lambda c: ["evaluate", "-ref", c.scratch, "-pred", c.scratch, "--nsd-tolerance", "0"], ("--nsd-tolerance",)),
    Bad("unknown dataset", "raw", lambda c: ["fingerprint", "-d", "555", "--root", c.root], ("555",)),
    Bad("unknown configuration", "raw", lambda c: train(c, config="3d_highres"), ("invalid choice: '3d_highres'",)),
    # bad --set values (checked before any training output is written)
    Bad("--set without =", "model", set_option("num_epochs"), ("--set expects KEY=VALUE",)),
    Bad("--set unknown key", "model", set_option("num_epoch=3"), ("unknown training setting 'num_epoch'",
                                                                   "num_epochs")),
    Bad("--set wrong type", "model", set_option("num_epochs=many"), ("num_epochs=many", "int")),
    Bad("--set infinite lr", "model", set_option("initial_lr=inf"), ("initial_lr", "finite", "inf")),
    Bad("--set NaN weight decay", "model", set_option("weight_decay=nan"), ("weight_decay", "nan")),
    Bad("--set checkpoint every 0 epochs", "model", set_option("checkpoint_every_epochs=0"),
        ("checkpoint_every_epochs must be >= 1", "0")),
    Bad("--set negative batch", "model", set_option("batch_size=-2"), ("batch_size must be >= 1", "-2")),
    Bad("unknown variant", "model", lambda c: train(c, "--variant", "fastt"), ("fastt",)),
    Bad("fold 7", "model", lambda c: train(c, fold="7"), ("fold must be 0-4 or 'all'", "'7'")),
    # unplanned configurations
    Bad("train an unplanned configuration", "model", lambda c: train(c, config="3d_lowres"),
        ("3d_lowres", "not in the plans", "--force-lowres")),
    Bad("predict with an unplanned configuration", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}))[:-5] + ["-c", "3d_lowres", "-f", "0"],
        ("3d_lowres", "train")),
    Bad("predict with an untrained fold", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}))[:-3] + ["-f", "3"], ("fold_3", "train")),
    # predict inputs that do not fit the model
    Bad("predict: two channels for a one-channel model", "model",
        predict_input({"a": {0: volume(), 1: volume(2)}, "b": {0: volume(3), 1: volume(4)}}),
        ("none of the 2 case(s)", "2 channel(s) found", "expects 1 (MRI)")),
    Bad("predict: 2D images for a 3D model", "model",
        predict_input({"a": {0: (volume()[0] * 50).astype(np.uint8)}}, ".png"), ("a 2D image", "trained on 3D images")),
    Bad("predict: files of an unsupported format", "model",
        lambda c: predict(c, _unsupported_files(c)), ("no images", "a_0000.jpg", ".nii.gz")),
    Bad("predict: empty input folder", "model",
        lambda c: predict(c, _mkdir(c.scratch / "empty")), ("no images", "the folder is empty")),
    Bad("predict: missing input folder", "model",
        lambda c: predict(c, c.scratch / "missing"), ("does not exist",)),
    Bad("predict: output is a file", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}), "-o", a_file(c, "out.nii.gz")),
        ("is a file", "expected a folder")),
    Bad("predict: channel files not from 0000", "model",
        lambda c: predict(c, _renamed(input_folder(c, {"a": {0: volume()}}), "a_0000", "a_0001")),
        ("numbered from 0000", "a_0001.nii.gz")),
    # damaged checkpoints
    Bad("predict with a truncated checkpoint", "model_copy",
        damaged_checkpoint("checkpoint_final", lambda b: b[: len(b) // 2],
                           lambda c: predict(c, input_folder(c, {"a": {0: volume()}}), "--backend", "torch")),
        ("checkpoint_final.pth cannot be read", "damaged")),
    Bad("--continue from an empty checkpoint", "model_copy",
        damaged_checkpoint("checkpoint_latest", lambda b: b"",
                           lambda c: train(c, "--continue", "--set", "num_epochs=1", fold="0")),
        ("checkpoint_latest.pth cannot be read", "--continue")),
    Bad("--continue from a truncated checkpoint", "model_copy",
        damaged_checkpoint("checkpoint_latest", lambda b: b[: len(b) * 2 // 3],
                           lambda c: train(c, "--continue", "--set", "num_epochs=1", fold="0")),
        ("checkpoint_latest.pth cannot be read",)),
    # broken model zips
    Bad("import a file that is not a zip", "raw",
        lambda c: ["import_model", a_file(c, "model.zip"), "--root", c.root], ("model.zip", "zip")),
    Bad("import a missing zip", "raw",
        lambda c: ["import_model", c.scratch / "none.zip", "--root", c.root], ("no such file",)),
    Bad("import a zip escaping the workspace", "raw", model_zip({"../evil.txt": b"x"}), ("evil.txt",)),
    Bad("import an empty zip", "raw", model_zip({}), ("model.zip",)),
    Bad("import a zip of something else", "raw", model_zip({"notes/readme.txt": b"hello"}), ("model.zip",)),
    # output paths that are files, other commands' inputs
    Bad("export_model to a folder", "model",
        lambda c: ["export_model", "-d", "901", "--root", c.root, "-o", _mkdir(c.scratch / "dir.zip")],
        ("dir.zip",)),
    Bad("export_model without a trained model", "raw",
        lambda c: ["export_model", "-d", "901", "--root", c.root, "-o", c.scratch / "m.zip"], ("train",)),
    Bad("find_best_config with one of five folds", "model",
        lambda c: ["find_best_config", "-d", "901", "--root", c.root], ("fold",)),
    Bad("ensemble of folders without probabilities", "model",
        lambda c: ["ensemble", "-i", _mkdir(c.scratch / "p1"), _mkdir(c.scratch / "p2"), "-o", c.scratch / "e"],
        ("p1",)),
    Bad("evaluate a missing prediction folder", "raw",
        lambda c: ["evaluate", "-ref", _mkdir(c.scratch / "ref"), "-pred", c.scratch / "nope"], ("nope",)),
    Bad("evaluate writing over a folder", "raw",
        lambda c: ["evaluate", "-ref", _refs(c), "-pred", _refs(c), "-o", _mkdir(c.scratch / "summary.json")],
        ("summary.json",)),
    Bad("apply_postprocessing without a selection", "model",
        lambda c: ["apply_postprocessing", "-i", _refs(c), "-o", c.scratch / "pp", "-d", "901", "--root", c.root],
        ("selection.json", "find_best_config")),
    Bad("train before planning", "raw", lambda c: train(c), ("plan_and_preprocess",)),
    # more of each kind
    Bad("4D image", "raw", raw_case(lambda c: sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(image(c, 0)))] * 2),
                                                              str(image(c, 0)))),
        ("case_000_0000.nii.gz", "4D")),
    Bad("ignore label not the largest", "raw",
        raw_case(lambda c: edit_json(c, labels={"background": 0, "ignore": 1, "inner": 2})), ("ignore",)),
    Bad("regions without their order", "raw",
        raw_case(lambda c: edit_json(c, labels={"background": 0, "outer": [1, 2], "inner": 2})),
        ("regions_class_order",)),
    Bad("imagesTr missing", "raw", raw_case(lambda c: shutil.rmtree(c.raw / "imagesTr")), ("imagesTr",)),
    Bad("fold given twice", "model", lambda c: ["train", "3d_fullres", "1", "1", "-d", "901", "--root", c.root],
        ("fold given twice",)),
    Bad("a time budget that is not a duration", "model", lambda c: train(c, "--time-budget", "soon"), ("soon",)),
    Bad("a negative time budget", "model", lambda c: train(c, "--time-budget=-5m"), ("-5m",)),
    Bad("--set an unknown loss", "model", set_option("loss=dic"),
        ("loss must be one of dice_ce, ce, dice, found 'dic'", "did you mean 'dice'")),
    Bad("--set an unknown loss by its section", "model", set_option("loss.name=dic"),
        ("loss.name must be one of dice_ce, ce, dice, found 'dic'",)),
    Bad("--set zero iterations", "model", set_option("num_iterations_per_epoch=0"), ("num_iterations_per_epoch",)),
    Bad("--set oversampling above 1", "model", set_option("oversample_foreground_percent=2"),
        ("oversample_foreground_percent", "[0, 1]")),
    Bad("validate an untrained fold", "model", lambda c: train(c, "--val", fold="2"), ("fold_2", "train")),
    Bad("an unknown precision", "model", lambda c: predict(c, c.scratch, "--precision", "fp8"),
        ("invalid choice: 'fp8'",)),
    Bad("predict with a fold that is not a number", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}))[:-3] + ["-f", "x"], ("x",)),
    Bad("predict with an unknown checkpoint name", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}), "--chk", "checkpoint_nope"),
        ("checkpoint_nope.pth", "train")),
    Bad("predict with a model whose training failed", "model_copy",
        after(_failed, lambda c: predict(c, input_folder(c, {"a": {0: volume()}}))), ("training failed",)),
    Bad("export a model whose training failed", "model_copy",
        after(_failed, lambda c: ["export_model", "-d", "901", "--root", c.root, "-o", c.scratch / "m.zip"]),
        ("training failed",)),
    Bad("predict with a corrupt selection.json", "model_copy",
        after(lambda c: (c.root / "results" / DS / "selection.json").write_text("{not json"),
              lambda c: predict(c, input_folder(c, {"a": {0: volume()}}))[:-5]), ("selection.json",)),
    Bad("train with corrupt plans", "model_copy",
        after(lambda c: (c.root / "preprocessed" / DS / "plans.json").write_text("[]"), train), ("plans.json",)),
    Bad("train with plans of another schema", "model_copy",
        after(lambda c: _edit_plans(c, schema_version=999), train), ("plans.json", "999")),
    Bad("import a zip with a corrupt member", "raw", _corrupt_zip, ("model.zip",)),
    Bad("import over a different model", "model", model_zip({f"preprocessed/{DS}/plans.json": b"{}"}), ("overwrite",)),
    Bad("evaluate references and predictions of other shapes", "raw", _shape_mismatch,
        ("shape",)),
    Bad("evaluate an empty reference folder", "raw",
        lambda c: ["evaluate", "-ref", _mkdir(c.scratch / "noref"), "-pred", _refs(c)], ("noref",)),
    Bad("predict: output under a file", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}), "-o", a_file(c, "blocker") / "out"),
        ("blocker", "is a file")),
    Bad("predict: input is a file", "model",
        lambda c: predict(c, input_folder(c, {"a": {0: volume()}}) / "a_0000.nii.gz"), ("a_0000.nii.gz", "folder")),
    Bad("ensemble: output is a file", "model",
        lambda c: ["ensemble", "-i", c.root / "predictions", c.root / "predictions", "-o", a_file(c, "e")],
        ("is a file",)),
    Bad("workspace root is a file", "raw", lambda c: ["fingerprint", "-d", "901", "--root", a_file(c, "rootfile")],
        ("rootfile",)),
    Bad("convert a missing Decathlon folder", "raw",
        lambda c: ["convert_msd", "-i", c.scratch / "Task09_Spleen", "--root", c.root], ("Task09_Spleen",)),
]


# --------------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def raw_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_template")
    make_dataset(root / "raw", num_cases=3, shape=(8, 10, 9), vary_shape=False)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace with Dataset901_Synth planned, preprocessed and fold 0 of 3d_fullres trained (one epoch of
    two iterations), and one case predicted with probabilities into predictions/ with each backend (so that
    the ONNX export beside the checkpoint exists)."""
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.planners.experiment import plan_experiment
    from autoseg.plans import save_plans

    root = tmp_path_factory.mktemp("trained")
    make_dataset(root / "raw", num_cases=5, shape=(12, 14, 13))
    r = str(root)
    assert main(["fingerprint", "-d", "901", "-np", "1", "--root", r]) == 0
    pre = root / "preprocessed" / DS  # the cpu profile's plans without the step timing 'autoseg plan' adds
    save_plans(plan_experiment(load_fingerprint(pre / "fingerprint.json"), "cpu"), pre / "plans.json")
    assert main(["preprocess", "-d", "901", "-np", "1", "-c", "3d_fullres", "--root", r]) == 0
    assert main(["train", "3d_fullres", "0", "-d", "901", "--root", r, "-np", "0", "--set", "num_epochs=1",
                 "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1"]) == 0
    ctx = Ctx(root, tmp_path_factory.mktemp("warm"))
    folder = input_folder(ctx, {"a": {0: volume()}})
    for backend in ("torch", "onnx"):
        assert run_cli(predict(ctx, folder, "--backend", backend, "-o", root / "predictions",
                               "--save_probabilities")) == 0
    return root


def listing(*folders: Path) -> dict[str, tuple]:
    """Every file and folder below ``folders``: path -> (size, mtime) for files, None for folders."""
    found = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            st = p.stat()
            found[str(p)] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return found


def run_cli(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:  # argparse refusing an option
        return stop.code


@pytest.mark.parametrize("bad", CATALOGUE, ids=str)
def test_a_bad_input_is_refused_with_a_message_and_changes_nothing(bad, request, tmp_path, capsys):
    if bad.kind == "raw":
        root = tmp_path / "ws"
        shutil.copytree(request.getfixturevalue("raw_template"), root)
    elif bad.kind == "model_copy":
        root = tmp_path / "ws"
        shutil.copytree(request.getfixturevalue("trained"), root)
    else:
        root = request.getfixturevalue("trained")
    scratch = _mkdir(tmp_path / "scratch")
    argv = bad.make(Ctx(root, scratch))
    before = listing(root, scratch)
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    message = err.strip().splitlines()
    assert message and "Traceback" not in err
    for word in bad.words:
        assert word in err, f"{word!r} not in {err!r}"
    assert listing(root, scratch) == before


def test_the_catalogue_is_large_and_its_names_unique():
    assert len(CATALOGUE) >= 40 and len({b.name for b in CATALOGUE}) == len(CATALOGUE)


def test_a_case_that_does_not_fit_beside_good_ones_fails_alone(trained, tmp_path, caplog):
    ctx = Ctx(trained, tmp_path)
    folder = input_folder(ctx, {"good": {0: volume()}, "two": {0: volume(2), 1: volume(3)}})
    (folder / "notes.txt").write_text("not an image")
    assert run_cli(predict(ctx, folder)) == 1  # per-case failures: the others are written, exit code 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]
    assert "1 file(s) in" in caplog.text and "are not predicted: notes.txt" in caplog.text
    assert "case two failed: 2 channel(s) found in two_0000.nii.gz, two_0001.nii.gz, the model expects 1" in caplog.text


def test_a_3d_image_does_not_fit_a_model_trained_on_2d_images(tmp_path):
    from autoseg.errors import UserFacingError
    from autoseg.inference.predict import find_input_cases, fit_to_model

    folder = input_folder(Ctx(tmp_path, tmp_path), {"vol": {0: volume()}})
    with pytest.raises(UserFacingError, match=r"vol_0000.nii.gz holds a 3D image, the model was trained on 2D images"):
        fit_to_model(find_input_cases(folder), folder, ("grey",), model_2d=True)
    from PIL import Image

    png = _mkdir(tmp_path / "png")
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(png / "rgb_0000.png")  # one file, three channels
    assert fit_to_model(find_input_cases(png), png, ("R", "G", "B"), model_2d=True)[0].problem == ""
