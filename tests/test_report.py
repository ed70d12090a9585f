"""``autoseg report`` and ``autoseg overlay`` on a tiny workspace trained by the real pipeline (once per
module): the page is read back with html.parser (and, where Chromium is installed, loaded in it)."""
import base64
import io
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoseg.cli import main
from autoseg.report_html import line_chart
from synthetic import make_dataset, write_nifti

FOLDS = ("0", "1")


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> str:
    """Dataset901_Synth planned (cpu profile, without the step timing), folds 0 and 1 of 3d_fullres
    trained for 2 epochs and validated, and the selection made by find_best_config."""
    from autoseg.fingerprint_types import load_fingerprint
    from autoseg.planners.experiment import plan_experiment
    from autoseg.plans import save_plans

    root = tmp_path_factory.mktemp("ws")
    make_dataset(root / "raw")
    r = str(root)
    assert main(["fingerprint", "-d", "901", "-np", "1", "--root", r]) == 0
    pre = root / "preprocessed" / "Dataset901_Synth"
    save_plans(plan_experiment(load_fingerprint(pre / "fingerprint.json"), "cpu"), pre / "plans.json")
    assert main(["preprocess", "-d", "901", "-np", "1", "-c", "3d_fullres", "--root", r]) == 0
    assert main(["train", "3d_fullres", *FOLDS, "-d", "901", "--root", r, "-np", "0", "--set", "num_epochs=2",
                 "--set", "num_iterations_per_epoch=2", "--set", "num_val_iterations_per_epoch=1",
                 "--set", "validation_mirroring=false"]) == 0
    assert main(["find_best_config", "-d", "901", "-c", "3d_fullres", "-f", *FOLDS, "--root", r]) == 0
    return r


class Page(HTMLParser):
    """The parts of a report page the tests look at: tables (id, class, header texts, rows of
    (text, data-value) cells), images, scripts, svg charts, every attribute value and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.images, self.scripts, self.svgs, self.polylines = [], [], [], 0, 0
        self.attributes, self.tags, self.text = [], [], []
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if tag == "table":
            self.tables.append({"id": a.get("id"), "class": a.get("class"), "headers": [], "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", a.get("data-value")]
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "svg":
            self.svgs += 1
        elif tag == "polyline":
            self.polylines += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell:
            kind, text, value = self._cell
            if kind == "th":
                self.tables[-1]["headers"].append(text)
            else:
                self.tables[-1]["rows"][-1].append((text, value))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell:
            self._cell[1] += data

    def table(self, table_id: str) -> dict:
        return next(t for t in self.tables if t["id"] == table_id)


@pytest.fixture(scope="module")
def report(trained_root) -> Path:
    assert main(["report", "-d", "901", "--root", trained_root]) == 0
    return Path(trained_root) / "results" / "Dataset901_Synth" / "report.html"


def summaries(root: str) -> dict[str, dict]:
    fold_dir = Path(root) / "results" / "Dataset901_Synth" / "3d_fullres" / "default"
    return {k: json.loads((fold_dir / f"fold_{k}" / "validation" / "summary.json").read_text()) for k in FOLDS}


def test_report_lists_every_validation_case_with_its_metrics(trained_root, report):
    page = Page(report.read_text())
    cases = page.table("cases")
    assert cases["class"] == "sortable"
    assert cases["headers"][:3] == ["case", "configuration", "fold"]
    assert "outer Dice" in cases["headers"] and "inner HD95" in cases["headers"]
    rows = {(row[0][0], row[2][0]): row for row in cases["rows"][1:]}  # row 0: the header row
    expected = [(entry, k) for k, summary in summaries(trained_root).items() for entry in summary["per_case"]]
    assert len(expected) >= 3 and len(rows) == len(expected)
    for entry, fold in expected:
        row = rows[(entry["case_id"], fold)]
        for label, name in (("1", "outer"), ("2", "inner")):
            for metric, title in (("dice", "Dice"), ("hd95", "HD95"), ("nsd", "NSD")):
                cell_text, cell_value = row[cases["headers"].index(f"{name} {title}")]
                value = entry["metrics"][label][metric]
                if value is None or not math.isfinite(value):
                    assert cell_value == ""
                else:
                    assert float(cell_value) == pytest.approx(value) and cell_text == f"{value:.4f}"
    assert not list(report.parent.glob(".report.html.tmp*"))  # written atomically, nothing left beside it


def test_report_holds_the_selection_the_curves_and_the_pictures(trained_root, report):
    page = Page(report.read_text())
    text = "".join(page.text)
    selection = json.loads((Path(report.parent) / "selection.json").read_text())
    candidates = next(t for t in page.tables if t["headers"] and t["headers"][0] == "candidate")
    assert candidates["rows"][1][0][0] == "3d_fullres"
    mean_dice = candidates["rows"][1][candidates["headers"].index("mean Dice")]
    assert float(mean_dice[1]) == pytest.approx(selection["candidates"]["3d_fullres"]["mean"])
    assert "Chosen: 3d_fullres" in text and "postprocessing:" in text
    # one loss and one pseudo-Dice chart per fold, two epochs: lines, not dots
    assert "3d_fullres fold 0" in text and "3d_fullres fold 1" in text
    assert page.svgs == 2 * len(FOLDS) and page.polylines >= 2 * len(FOLDS)
    # best and worst validation case of each class as embedded PNGs
    assert len(page.images) >= 2 * 2
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert picture.format == "PNG" and max(picture.size) >= 256
    assert "best:" in text and "worst:" in text


def test_report_loads_nothing_from_elsewhere(report):
    text = report.read_text()
    page = Page(text)
    assert "link" not in page.tags and "iframe" not in page.tags
    assert all("src" not in s for s in page.scripts) and len(page.scripts) == 1
    for tag, name, value in page.attributes:
        if name in ("src", "href"):
            assert value.startswith(("data:", "#")), (tag, name, value)
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text


def test_report_of_a_dataset_not_yet_planned_names_the_commands(workspace):
    make_dataset(workspace / "raw")
    out = workspace / "elsewhere" / "page.html"
    assert main(["report", "-d", "Synth", "--root", str(workspace), "-o", str(out)]) == 0
    text = "".join(Page(out.read_text()).text)
    assert text.count("not yet run") >= 4
    for command in ("autoseg plan_and_preprocess -d 901", "autoseg train 3d_fullres 0 1 2 3 4 -d 901",
                    "autoseg find_best_config -d 901"):
        assert command in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_in_a_headless_browser_loads_and_sorts(report, tmp_path):
    """Chromium loads the page without a script error, the tables and pictures are in its DOM, and a
    click on the 'outer Dice' header orders the case rows by that Dice."""
    headers = Page(report.read_text()).table("cases")["headers"]
    column = headers.index("outer Dice") + 1
    page = tmp_path / "clicked.html"
    page.write_text(report.read_text().replace(
        "</body>", f"<script>document.querySelector('#cases th:nth-child({column})').click();</script></body>"))
    run = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Uncaught" not in run.stderr and "CONSOLE" not in run.stderr, run.stderr[-2000:]
    dom = Page(run.stdout)
    assert len(dom.table("cases")["rows"]) > 3 and len(dom.images) >= 4 and dom.svgs == 2 * len(FOLDS)
    assert dom.table("cases")["headers"][column - 1] == "outer Dice"
    assert ("th", "aria-sort", "ascending") in dom.attributes  # the page's script ran and took the click
    values = [float(row[column - 1][1]) for row in dom.table("cases")["rows"][1:]]
    assert values == sorted(values) and len(values) >= 3


def _overlay_inputs(folder: Path, cases=("a", "b")) -> tuple[Path, Path]:
    """Images of 6 x 16 x 16 noise and, per case, label 1 on rows/columns 4-7 of slice 3 only."""
    rng = np.random.default_rng(0)
    for case in cases:
        write_nifti(rng.normal(0, 1, (6, 16, 16)).astype(np.float32), folder / "images" / f"{case}_0000.nii.gz")
        seg = np.zeros((6, 16, 16), np.uint8)
        seg[3, 4:8, 4:8] = 1
        seg[1, 10, 10] = 1  # fewer voxels: slice 3 is the one drawn
        write_nifti(seg, folder / "seg" / f"{case}.nii.gz")
    return folder / "images", folder / "seg"


def test_overlay_writes_one_png_per_case_with_the_label_in_colour(tmp_path):
    images, segs = _overlay_inputs(tmp_path)
    assert main(["overlay", "-i", str(images), "-s", str(segs), "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "a.png").convert("RGB")).astype(int)
    assert picture.shape == (256, 256, 3)  # 16 x 16 scaled by 16
    inside, outside = picture[6 * 16 + 8, 6 * 16 + 8], picture[12 * 16 + 8, 2 * 16 + 8]
    assert outside[0] == outside[1] == outside[2]  # grey image
    assert inside[0] - inside[1] > 40  # label 1 blended in red


def test_overlay_draws_the_reference_as_outline(tmp_path):
    images, segs = _overlay_inputs(tmp_path)
    assert main(["overlay", "-i", str(images), "-s", str(segs), "-o", str(tmp_path / "out"),
                 "--reference", str(segs)]) == 0
    picture = np.asarray(Image.open(tmp_path / "out" / "a.png").convert("RGB")).astype(int)
    border, middle = picture[4 * 16 + 8, 4 * 16 + 8], picture[6 * 16 + 8, 6 * 16 + 8]
    assert tuple(border) == (230, 25, 75)  # the outline in label 1's own colour
    assert tuple(middle) != (230, 25, 75)


def test_overlay_names_missing_and_mismatching_cases(tmp_path, capsys):
    images, segs = _overlay_inputs(tmp_path, cases=("a", "b", "c"))
    (images / "c_0000.nii.gz").unlink()
    (segs / "b.nii.gz").unlink()
    assert main(["overlay", "-i", str(images), "-s", str(segs), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "without an image" in err and "c_0000.nii.gz" in err and "without a segmentation" in err and " b" in err
    assert not (tmp_path / "out").exists()  # nothing written before the cases pair up

    (images / "b_0000.nii.gz").unlink()
    write_nifti(np.zeros((6, 16, 15), np.uint8), segs / "c.nii.gz")
    write_nifti(np.zeros((6, 16, 16), np.float32), images / "c_0000.nii.gz")
    assert main(["overlay", "-i", str(images), "-s", str(segs), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "c (image (6, 16, 16), segmentation (6, 16, 15))" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]

    assert main(["overlay", "-i", str(images), "-s", str(segs), "-o", str(segs)]) == 2
    assert "is one of the input folders" in capsys.readouterr().err


def test_a_chart_breaks_its_line_where_a_value_is_missing():
    svg = line_chart({"loss": [1.0, math.nan, 0.5, 0.4], "dice": [None, 0.2, 0.3, None]}, "t")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1  # loss: a dot, then a line; dice: a line
