"""Fine-tuning against training from scratch on a small dataset, at the same budget.

    python bench/fine_tune.py --root WS --source WS/raw/Dataset201_Hippocampus [--few 20] \
        [--pretrain-budget 10m] [--budget 5m]

From a raw dataset with a held-out part (imagesTs/labelsTs), three datasets are made in WS/raw:
- 207 ``{Name}Pretrain``: every training case but ``--few`` of them (seeded choice);
- 208 ``{Name}Few``: those ``--few`` cases, with the held-out part;
- 209 ``{Name}FewTransfer``: the same files as 208, planned with 207's plans (``transfer_plans``).
Then, one after the other and nothing else running: 207 is planned and trained on all its cases
(fold ``all``, ``--pretrain-budget``); 208 is planned on its own and trained from scratch (fold
``all``, ``--budget``); 209 is preprocessed with 207's plans and trained from 207's weights
(``--pretrained``, the same ``--budget``). Both small-data models predict the held-out images and
are scored on them (``autoseg evaluate``). Writes WS/bench_fine_tune/results.json and prints a
markdown table for docs/benchmarks.md. ``--stage prepare`` stops after the pretraining (its time is
not compared: it may run while the machine is busy); ``--stage compare`` then reuses it and times
only the two compared runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, run_untimed, write_json  # noqa: E402
from raw_datasets import building_folder, raw_cases, write_derived_meta  # noqa: E402
from steps import fold_facts, fold_folder, predict_and_evaluate, train_fold  # noqa: E402

log = logging.getLogger("bench.fine_tune")
PRETRAIN, FEW, TRANSFER = 207, 208, 209


def make_datasets(source: Path, root: Path, few: int, seed: int) -> dict[int, Path]:
    """The three raw datasets (hard links where the file system allows, else copies)."""
    meta, cases = raw_cases(source)
    train = [c for c in cases if c.part == "Tr"]
    held_out = [c for c in cases if c.part == "Ts" and c.label is not None]
    if few >= len(train) or not held_out:
        raise ValueError(f"{source}: needs more than --few {few} training cases and a labelled held-out part")
    chosen = set(random.Random(seed).sample([c.case_id for c in train], few))
    base = meta.get("name", source.name.split("_", 1)[-1])
    parts = {PRETRAIN: (f"{base}Pretrain", [c for c in train if c.case_id not in chosen], []),
             FEW: (f"{base}Few", [c for c in train if c.case_id in chosen], held_out),
             TRANSFER: (f"{base}FewTransfer", [c for c in train if c.case_id in chosen], held_out)}
    folders = {}
    for dataset_id, (name, training, testing) in parts.items():
        final = root / "raw" / f"Dataset{dataset_id:03d}_{name}"
        folders[dataset_id] = final
        if final.is_dir():
            continue
        with building_folder(final, ("imagesTr", "labelsTr", "imagesTs", "labelsTs")) as tmp:
            for part, group in (("Tr", training), ("Ts", testing)):
                for case in group:
                    for path in case.images + (case.label,):
                        kind = "labels" if path == case.label else "images"
                        _link(path, tmp / f"{kind}{part}" / path.name)
            out_meta = dict(meta, name=name, numTraining=len(training),
                            description=f"{base}: {len(training)} training cases (bench/fine_tune.py --seed {seed})")
            write_derived_meta(tmp, out_meta)
    return folders


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def train_and_score(autoseg: str, root: Path, raw: Path, dataset_id: int, budget: str, out: Path,
                    extra=()) -> dict:
    ident = ["-d", str(dataset_id), "--root", str(root)]
    logs = out / f"logs_{dataset_id}"
    fold = fold_folder(root, raw.name, "3d_fullres", "all")
    train = train_fold(autoseg, ident, "3d_fullres", "all", budget, fold, logs, extra)
    _, summary = predict_and_evaluate(autoseg, raw, out / f"pred_{dataset_id}", ident, "3d_fullres", "all", logs)
    return {"dataset": raw.name, "train_wall_s": train.wall_s, **fold_facts(fold), "held_out_cases": summary["num_cases"],
            "dice": {k: v["dice"] for k, v in summary["mean"].items()}, "mean_dice": summary["foreground_mean"]["dice"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="autoseg workspace root")
    p.add_argument("--source", type=Path, required=True, help="raw dataset with imagesTs/labelsTs")
    p.add_argument("--few", type=int, default=20, help="training cases of the small dataset")
    p.add_argument("--pretrain-budget", default="10m")
    p.add_argument("--budget", default="5m", help="the small dataset's training budget, the same for both arms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=("all", "prepare", "compare"), default="all",
                   help="prepare: datasets, plans and pretraining only; compare: the two timed runs on those")
    p.add_argument("--autoseg", default=str(Path(sys.executable).with_name("autoseg")))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.root / "bench_fine_tune"
    raws = make_datasets(args.source, args.root, args.few, args.seed)
    a = args.autoseg
    pretrain_fold = args.root / "results" / raws[PRETRAIN].name / "3d_fullres" / "default" / "fold_all"
    results = {"machine": machine_info(), "few": args.few, "budget": args.budget}
    if args.stage != "compare":
        results["pretrain"] = prepare(args, raws, pretrain_fold)
        write_json(results, out / "prepare.json")
    if args.stage == "prepare":
        return 0
    results["pretrain"] = json.loads((out / "prepare.json").read_text())["pretrain"]
    results["scratch"] = train_and_score(a, args.root, raws[FEW], FEW, args.budget, out)
    write_json(results, out / "results.json")
    results["fine_tuned"] = train_and_score(a, args.root, raws[TRANSFER], TRANSFER, args.budget, out,
                                            ["--pretrained", str(pretrain_fold)])
    write_json(results, out / "results.json")
    labels = sorted(results["scratch"]["dice"])
    rows = [[arm.replace("_", "-"), *[results[arm]["dice"][k] for k in labels], results[arm]["mean_dice"]]
            for arm in ("scratch", "fine_tuned")]
    print(markdown_table(["trained", *[f"class {k} Dice" for k in labels], "mean"], rows))
    return 0


def prepare(args, raws: dict[int, Path], pretrain_fold: Path) -> dict:
    """Plans of the three datasets (207 and 208 with the same --budget, so that the CPU timing picks
    their widths for the same time), 209 preprocessed with 207's plans, and 207 trained on all cases."""
    a, out = args.autoseg, args.root / "bench_fine_tune"
    for dataset_id in (PRETRAIN, FEW):
        run_untimed([a, "plan_and_preprocess", "-d", str(dataset_id), "--root", str(args.root), "-c", "3d_fullres",
                     "--time-budget", args.budget],
                    log_path=out / f"logs_{dataset_id}" / "plan_and_preprocess.log", timeout_s=3600)
    run_untimed([a, "transfer_plans", "--source-dataset", str(PRETRAIN), "--target-dataset", str(TRANSFER), "--root",
                 str(args.root)], log_path=out / f"logs_{TRANSFER}" / "transfer_plans.log", timeout_s=1800)
    run_untimed([a, "preprocess", "-d", str(TRANSFER), "--root", str(args.root), "-c", "3d_fullres"],
                log_path=out / f"logs_{TRANSFER}" / "preprocess.log", timeout_s=1800)
    pretrain = train_fold(a, ["-d", str(PRETRAIN), "--root", str(args.root)], "3d_fullres", "all",
                          args.pretrain_budget, pretrain_fold, out / f"logs_{PRETRAIN}")
    return {"dataset": raws[PRETRAIN].name, "budget": args.pretrain_budget, "train_wall_s": pretrain.wall_s,
            **fold_facts(pretrain_fold)}


if __name__ == "__main__":
    sys.exit(main())
