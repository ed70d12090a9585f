"""Benchmark: ``autoseg predict`` with every step in the main process against worker processes that
read and preprocess ahead of the network and resample back and write behind it (issue 32,
``inference/overlap.py``).

Reproduce (a workspace with a trained fold of the dataset), on a quiet machine:

    python bench/predict_overlap.py --root WS -d 201 --cases 40 --json bench/out/predict_overlap_201.json
    python bench/predict_overlap.py --root WS -d 130 --cases 12 --json bench/out/predict_overlap_130.json

The dataset's ``imagesTs`` (else ``imagesTr``) images, the first ``--cases`` case ids in sorted
order, are linked into a scratch folder (cycled under new names where the dataset has fewer), and
predicted by the CLI (torch backend, the planned precision, ``--device`` as given) once per
arrangement of workers (``--arrangements``: ``P+E`` for ``-nwp P -nwe E``; ``0+0`` is the serial
path), ``--repeats`` times, the arrangements' order rotating from one repeat to the next so that
a drift of the machine's speed does not favour one. Each run is a whole command: start-up (torch's
import, the models' loading, the workers' start) included, as a user sees it.

Reported per arrangement: the median wall time and its cases/s, the speed-up against ``0+0``, the
peak memory of the process tree (``bench/common.py``), and whether every segmentation it wrote is
byte for byte the serial run's, and the largest share of the machine's CPU time that other
processes took during one of its runs (``/proc/stat`` less the run's own CPU time). On a shared
machine: a run during which others took more than ``--max-other-load`` is measured again, 30 s
later, at most 3 times (then kept, and the share shows it); ``--pause-while FILE`` waits before
each run while FILE exists and redoes a run during which it appeared.

Times in seconds. Prints a markdown table and writes ``--json``.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import machine_info, markdown_table, measure, ratio, raw_cases, write_json  # noqa: E402

PAUSE_LIMIT_S = 3600.0  # --pause-while: the longest wait before one run
RETRIES = 3  # a run disturbed by other processes is measured again at most this often


def dataset_folder(root: Path, dataset: str) -> Path:
    raw = root / "raw"
    found = sorted(raw.glob(f"Dataset{int(dataset):03d}_*")) if dataset.isdigit() else [raw / dataset]
    if not found or not found[0].is_dir():
        raise SystemExit(f"no dataset {dataset} in {raw}: pass -d with a dataset id or folder name there")
    return found[0]


def link_cases(folder: Path, into: Path, count: int) -> list[str]:
    """``count`` cases of ``folder`` (held-out ones when it has them) linked into ``into`` as
    ``case_000`` ...; returns the source case ids in that order."""
    meta, cases = raw_cases(folder)
    held_out = [c for c in cases if c.part == "Ts"]
    pool = held_out or cases
    into.mkdir(parents=True)
    used = []
    for k in range(count):
        case = pool[k % len(pool)]
        for channel, image in enumerate(case.images):
            (into / f"case_{k:03d}_{channel:04d}{meta['file_ending']}").symlink_to(image.resolve())
        used.append(case.case_id)
    return used


def wait_while(path: Path | None) -> None:
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while path is not None and path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} still exists after {PAUSE_LIMIT_S:.0f} s; rerun when it is gone")
        time.sleep(15)


def predict_command(args: argparse.Namespace, images: Path, out: Path, arrangement: str) -> list[str]:
    prepare, export = arrangement.split("+")
    return [sys.executable, "-m", "autoseg.cli", "predict", "-i", str(images), "-o", str(out), "-d", args.dataset,
            "--root", str(args.root), "-c", args.configuration, "-f", *args.folds, "--backend", "torch",
            "--device", args.device, "--step_size", str(args.step_size), "-nwp", prepare, "-nwe", export,
            *(["--disable_tta"] if args.disable_tta else [])]


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``; 0 where unreadable)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this script's finished child processes (the measured commands' trees)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed_run(args: argparse.Namespace, images: Path, out: Path, arrangement: str, log: Path) -> dict:
    """One measured run; measured again (at most ``RETRIES`` times) when ``--pause-while``'s file
    appeared or other processes took more than ``--max-other-load`` of the CPUs meanwhile."""
    for attempt in range(RETRIES + 1):
        wait_while(args.pause_while)
        busy, own = busy_cpu_s(), own_cpu_s()
        m = measure(predict_command(args, images, out, arrangement), log_path=log, timeout_s=args.timeout,
                    check=False)
        others = max(0.0, (busy_cpu_s() - busy) - (own_cpu_s() - own)) / (m.wall_s * (os.cpu_count() or 1))
        if m.returncode != 0 and not m.timed_out:
            raise SystemExit(f"predict failed (exit {m.returncode}); see {log}")
        quiet = others <= args.max_other_load and not (args.pause_while and args.pause_while.exists())
        if quiet or attempt == RETRIES:
            return {"wall_s": None if m.timed_out else m.wall_s, "timed_out": m.timed_out,
                    "peak_tree_rss_mb": m.peak_tree_rss_mb, "other_load": others, "quiet": quiet}
        print(f"other processes took {others:.0%} of the CPUs during a run of {arrangement}: measuring it "
              f"again", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        time.sleep(30)
    raise AssertionError("unreachable")


def same_segmentations(a: Path, b: Path) -> bool:
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="workspace with a trained fold of the dataset")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or folder name under ROOT/raw")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0"])
    p.add_argument("--cases", type=int, default=20, help="images to predict")
    p.add_argument("--arrangements", nargs="+", default=["0+0", "1+1"], help="P+E: -nwp P -nwe E (0+0: serial)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--disable-tta", action="store_true")
    p.add_argument("--timeout", type=float, default=1800.0, help="longest run in seconds")
    p.add_argument("--pause-while", type=Path, default=None, metavar="FILE",
                   help="wait while FILE exists before each run; redo a run during which it appeared")
    p.add_argument("--max-other-load", type=float, default=0.1, metavar="SHARE",
                   help="a run during which other processes took more than this share of the CPUs is measured "
                        "again (default 0.1)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if "0+0" not in args.arrangements:
        args.arrangements.insert(0, "0+0")

    scratch = Path(tempfile.mkdtemp(prefix="bench_predict_overlap_"))
    source = link_cases(dataset_folder(args.root, args.dataset), scratch / "images", args.cases)
    runs: dict[str, list[dict]] = {a: [] for a in args.arrangements}
    for r in range(args.repeats):
        order = args.arrangements[r % len(args.arrangements):] + args.arrangements[:r % len(args.arrangements)]
        for arrangement in order:
            out = scratch / f"out_{arrangement}_{r}"
            runs[arrangement].append(timed_run(args, scratch / "images", out, arrangement,
                                               scratch / f"predict_{arrangement}_{r}.log"))
    rows, summary = [], {}
    for arrangement, measured in runs.items():
        walls = [x["wall_s"] for x in measured]
        wall = None if None in walls else statistics.median(walls)
        same = all(same_segmentations(scratch / f"out_0+0_{r}", scratch / f"out_{arrangement}_{r}")
                   for r in range(args.repeats))
        summary[arrangement] = {"runs": measured, "median_wall_s": wall, "cases_per_s": ratio(args.cases, wall),
                                "peak_tree_rss_mb": max(x["peak_tree_rss_mb"] for x in measured),
                                "same_segmentations_as_serial": same,
                                "largest_other_load": max(x["other_load"] for x in measured)}
    for arrangement, row in summary.items():
        row["speedup"] = ratio(summary["0+0"]["median_wall_s"], row["median_wall_s"])
        rows.append([arrangement, args.cases, row["median_wall_s"], row["cases_per_s"], row["speedup"],
                     row["peak_tree_rss_mb"], row["largest_other_load"], row["same_segmentations_as_serial"]])
    result = {"machine": machine_info(), "dataset": args.dataset, "configuration": args.configuration,
              "folds": args.folds, "cases": args.cases, "source_cases": source, "repeats": args.repeats,
              "tta": not args.disable_tta, "step_size": args.step_size, "device": args.device,
              "scratch": str(scratch), "arrangements": summary}
    print(markdown_table(["-nwp+-nwe", "cases", "wall s (median)", "cases/s", "speed-up", "peak tree RSS MB",
                          "others' CPU share (max)", "same files as serial"], rows))
    print(f"\nscratch folder (outputs and logs): {scratch}")
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
