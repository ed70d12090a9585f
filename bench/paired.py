"""Two models scored on the same cases: their Dice differences case by case, with a bootstrap interval.

    python bench/paired.py A/summary.json B/summary.json      # two `autoseg evaluate` summaries

prints, per foreground label, the mean and median of Dice(A) - Dice(B) over the cases, a 95%
interval of the mean (bootstrap over the cases, 10,000 resamples, seeded) and in how many cases
each model is higher. The interval says whether a difference is larger than the spread over the
cases for these two trained models; it does not include what another training seed would change.
Used by ``bench/small_structures.py`` (small-class arm against plain) and for the time-to-Dice runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


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
    a = {c["case_id"]: c["metrics"] for c in summary_a["per_case"]}
    b = {c["case_id"]: c["metrics"] for c in summary_b["per_case"]}
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"the two summaries must score the same cases; only in the first: {only_a[:5]}, "
                         f"only in the second: {only_b[:5]}; evaluate both models on the same folder of references")
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


def describe(name: str, d: dict) -> str:
    """One line for a label's entry of ``paired_differences`` (A and B as the caller names them in ``name``)."""
    return (f"{name} per case: mean {d['mean']:+.4f}, median {d['median']:+.4f}, 95% interval "
            f"{d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f}, A higher in {d['a_higher']} and B in {d['b_higher']} "
            f"of {d['cases']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("summary_a", type=Path, help="autoseg evaluate summary of model A")
    p.add_argument("summary_b", type=Path, help="the same cases scored for model B")
    p.add_argument("--boot", type=int, default=10000, help="bootstrap resamples")
    args = p.parse_args(argv)
    first, second = (json.loads(path.read_text()) for path in (args.summary_a, args.summary_b))
    labels = [str(k) for k in first["labels"] if int(k)]
    for label, d in paired_differences(first, second, labels, n_boot=args.boot).items():
        print(describe(f"Dice of label {label}, A - B", d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
