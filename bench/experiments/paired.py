"""Two models scored on the same cases: their Dice differences case by case, with a bootstrap interval.

    python bench/experiments/paired.py A/summary.json B/summary.json      # two `autoseg evaluate` summaries
    python bench/experiments/paired.py A1.json,A2.json,A3.json B1.json,B2.json   # several training runs per arm

prints, per foreground label, the mean and median of Dice(A) - Dice(B) over the cases, a 95%
interval of the mean (bootstrap over the cases, 10,000 resamples, seeded) and in how many cases
each model is higher. The interval says whether a difference is larger than the spread over the
cases for these two trained models; it does not include what another training seed would change.
Used by ``bench/small_structures.py`` (small-class arm against plain) and for the time-to-Dice runs.

With several runs per arm (comma-separated; e.g. the same training with other seeds) it also
prints each run's mean Dice, each arm's mean and standard deviation over its runs, and a 95%
interval of the difference of the arm means that resamples the runs of each arm as well as the
cases (``run_differences``): the interval to read when asking whether another set of training
runs would give the difference again. The per-case lines then compare the arms' Dice averaged
over their runs.

``--common`` compares only the cases that every summary scores (e.g. a model evaluated on all
held-out cases against the same model on a part of them, changed); without it, different cases
are an error. ``--with-label L`` / ``--without-label L`` keep only the cases whose reference
holds / lacks label L (read from the first summary), e.g. the held-out cases with and without
lesions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def per_case_metrics(summaries: list[dict]) -> list[dict[str, dict]]:
    """Each summary's ``{case_id: metrics}``; all must score the same cases."""
    per_case = [{c["case_id"]: c["metrics"] for c in s["per_case"]} for s in summaries]
    for i, other in enumerate(per_case[1:], 1):
        if other.keys() != per_case[0].keys():
            only_first, only_other = sorted(per_case[0].keys() - other.keys()), sorted(other.keys() - per_case[0].keys())
            name = "the second" if i == 1 else f"summary {i + 1}"
            raise ValueError(f"the summaries must score the same cases; only in the first: {only_first[:5]}, "
                             f"only in {name}: {only_other[:5]}; evaluate all models on the same folder of references")
    return per_case


def common_cases(summaries: list[dict]) -> list[dict]:
    """The summaries with ``per_case`` cut to the cases (by id) that all of them score, each in
    its own order. Example: cases a, b, c and c, b, d -> b, c and c, b."""
    shared = set.intersection(*({c["case_id"] for c in s["per_case"]} for s in summaries))
    if not shared:
        raise ValueError("the summaries have no case in common; evaluate the models on the same references")
    return _only(summaries, shared)


def cases_by_label(summaries: list[dict], label: str, present: bool) -> list[dict]:
    """The summaries with ``per_case`` cut to the cases whose reference holds (``present``) or
    lacks label ``label``, as the first summary's ``n_ref`` says."""
    first = summaries[0]["per_case"]
    missing = [c["case_id"] for c in first if "n_ref" not in c["metrics"].get(label, {})]
    if missing:
        raise ValueError(f"label {label} has no reference voxel count (n_ref) in case(s) {missing[:5]}; "
                         f"choose a label of the dataset and summaries written by autoseg evaluate")
    keep = {c["case_id"] for c in first if (c["metrics"][label]["n_ref"] > 0) == present}
    if not keep:
        raise ValueError(f"no case {'holds' if present else 'lacks'} label {label} in its reference")
    return _only(summaries, keep)


def _only(summaries: list[dict], case_ids: set[str]) -> list[dict]:
    """The summaries with ``per_case`` cut to ``case_ids``."""
    return [{**s, "per_case": [c for c in s["per_case"] if c["case_id"] in case_ids]} for s in summaries]


def paired_differences(summary_a: dict, summary_b: dict, labels: list[str], n_boot: int = 10000,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Per label, the Dice of A minus the Dice of B case by case (two ``autoseg evaluate``
    summaries of the same cases): ``mean``, ``median``, ``ci95`` (2.5 and 97.5 percentiles of the
    mean over ``n_boot`` resamples of the cases with replacement, seeded), ``a_higher`` /
    ``b_higher`` (cases) and ``cases``. Cases whose Dice is undefined in either (NaN, or None:
    both masks empty) are left out.

    Example: Dice of A 0.8, 0.9 and of B 0.7, 0.9 over two cases -> mean 0.05, median 0.05,
    a_higher 1, b_higher 0.
    """
    a, b = per_case_metrics([summary_a, summary_b])
    rng = np.random.default_rng(seed)
    out = {}
    for label in labels:
        d = np.array([(a[k][label]["dice"], b[k][label]["dice"]) for k in sorted(a)], float)  # None -> NaN
        d = d[:, 0] - d[:, 1]
        d = d[np.isfinite(d)]
        if not d.size:
            continue
        means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[label] = {"mean": float(d.mean()), "median": float(np.median(d)), "ci95": [float(low), float(high)],
                      "a_higher": int((d > 0).sum()), "b_higher": int((d < 0).sum()), "cases": int(d.size)}
    return out


def run_differences(runs_a: list[dict], runs_b: list[dict], labels: list[str], n_boot: int = 10000,
                    seed: int = 0) -> dict[str, dict]:
    """Per label, two arms of training runs (``autoseg evaluate`` summaries of the same cases)
    compared at the level of runs: ``a_runs`` / ``b_runs`` (each run's mean Dice over the cases),
    ``a_mean`` / ``b_mean`` and ``a_sd`` / ``b_sd`` (over the runs; sample SD, 0 for one run),
    ``diff`` (``a_mean - b_mean``) and ``ci95``: the 2.5 and 97.5 percentiles of that difference
    over ``n_boot`` resamples that draw, with replacement, the runs of each arm and the cases (the
    same cases for both arms: a two-level bootstrap), seeded. Only the cases whose Dice is defined
    in every run count (``cases``).

    Example: A's runs score 0.80 and 0.90 on every case, B's one run 0.85 -> diff 0, and the
    interval reaches from -0.05 (both draws are the first run, a quarter of the resamples) to +0.05.
    """
    per_run = per_case_metrics([*runs_a, *runs_b])
    cases = sorted(per_run[0])
    rng = np.random.default_rng(seed)
    out = {}
    for label in labels:
        d = np.array([[r[k][label]["dice"] for k in cases] for r in per_run], float)  # None -> NaN
        d = d[:, np.isfinite(d).all(axis=0)]
        if not d.shape[1]:
            continue
        a, b = d[:len(runs_a)], d[len(runs_a):]
        boot = np.empty(n_boot)
        for i in range(n_boot):
            c = rng.integers(0, d.shape[1], d.shape[1])
            boot[i] = (a[rng.integers(0, len(a), len(a))][:, c].mean()
                       - b[rng.integers(0, len(b), len(b))][:, c].mean())
        ma, mb = a.mean(axis=1), b.mean(axis=1)
        out[label] = {"a_runs": ma.tolist(), "b_runs": mb.tolist(), "a_mean": float(ma.mean()),
                      "b_mean": float(mb.mean()), "a_sd": float(ma.std(ddof=1)) if len(ma) > 1 else 0.0,
                      "b_sd": float(mb.std(ddof=1)) if len(mb) > 1 else 0.0, "diff": float(ma.mean() - mb.mean()),
                      "ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])], "cases": int(d.shape[1])}
    return out


def averaged(runs: list[dict]) -> dict:
    """One summary whose per-case Dice is the mean over ``runs`` (undefined in any run: undefined),
    cases matched by id."""
    per_run = per_case_metrics(runs)
    out = []
    for case_id, metrics in per_run[0].items():
        mean = {}
        for label in metrics:
            values = [r[case_id][label]["dice"] for r in per_run]
            mean[label] = {"dice": None if any(v is None for v in values) else float(np.mean(values))}
        out.append({"case_id": case_id, "metrics": mean})
    return {"per_case": out}


def describe(name: str, d: dict) -> str:
    """One line for a label's entry of ``paired_differences`` (A and B as the caller names them in ``name``)."""
    return (f"{name} per case: mean {d['mean']:+.4f}, median {d['median']:+.4f}, 95% interval "
            f"{d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f}, A higher in {d['a_higher']} and B in {d['b_higher']} "
            f"of {d['cases']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("summary_a", help="autoseg evaluate summary of model A (several runs: comma-separated)")
    p.add_argument("summary_b", help="the same cases scored for model B (several runs: comma-separated)")
    p.add_argument("--boot", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--common", action="store_true", help="compare only the cases that all summaries score")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--with-label", metavar="L", help="only the cases whose reference holds label L")
    which.add_argument("--without-label", metavar="L", help="only the cases whose reference lacks label L")
    args = p.parse_args(argv)
    runs_a, runs_b = ([json.loads(Path(path).read_text()) for path in arg.split(",")]
                      for arg in (args.summary_a, args.summary_b))
    runs, n_a = [*runs_a, *runs_b], len(runs_a)
    if args.common:
        runs = common_cases(runs)
        print(f"{len(runs[0]['per_case'])} cases in common")
    split_label = args.with_label or args.without_label
    if split_label:
        runs = cases_by_label(runs, split_label, bool(args.with_label))
        print(f"{len(runs[0]['per_case'])} cases {'with' if args.with_label else 'without'} label {split_label}")
    runs_a, runs_b = runs[:n_a], runs[n_a:]
    labels = [str(k) for k in runs_a[0]["labels"] if int(k)]
    if len(runs_a) > 1 or len(runs_b) > 1:
        for label, d in run_differences(runs_a, runs_b, labels, n_boot=args.boot).items():
            print(f"Dice of label {label}, runs: A {' '.join(f'{x:.4f}' for x in d['a_runs'])} -> mean {d['a_mean']:.4f} "
                  f"(SD {d['a_sd']:.4f}); B {' '.join(f'{x:.4f}' for x in d['b_runs'])} -> mean {d['b_mean']:.4f} "
                  f"(SD {d['b_sd']:.4f}); A - B {d['diff']:+.4f}, 95% interval over runs and cases "
                  f"{d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f} ({d['cases']} cases)")
    first, second = averaged(runs_a), averaged(runs_b)
    for label, d in paired_differences(first, second, labels, n_boot=args.boot).items():
        print(describe(f"Dice of label {label}, A - B" + (" (averaged over runs)" if len(runs_a) + len(runs_b) > 2 else ""), d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
