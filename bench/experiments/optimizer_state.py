"""How large the optimizer's running gradient statistics are in one checkpoint against another.

    python bench/experiments/optimizer_state.py A/checkpoint_final.pth B/checkpoint_final.pth

For each parameter tensor of the network (in the order the optimizer holds them), the root mean
square of Adam's second-moment estimate (``exp_avg_sq``: the running mean of the squared gradient,
so its root is a gradient size) in A and in B, and their ratio A / B; then the median ratio and its
range over the convolution weights (tensors of two or more dimensions; biases and norm parameters
are listed, not summarised). AdamW divides every step by the root of that estimate, so a
ratio above 1 means A's steps were divided by more. Used in
docs/experiments/small_class_sampler_cost.md (a higher learning rate for both arms) to ask whether
the small-class loss shortens the anatomy's steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for autoseg


def gradient_sizes(state: dict) -> list[tuple[str, int, float]]:
    """(parameter name, its number of dimensions, root mean square of ``exp_avg_sq``) per tensor
    of a checkpoint's Adam state.

    Names come from the network's state dict in order, skipping buffers (running statistics),
    which the optimizer does not hold; a tensor the optimizer has not stepped yet is left out."""
    params = [(name, value.ndim) for name, value in state["network"].items()
              if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    opt = state["optimizer"]
    order = [pid for group in opt["param_groups"] for pid in group["params"]]
    if len(order) != len(params):
        raise SystemExit(f"the optimizer holds {len(order)} tensors, the network {len(params)}: "
                         f"not a checkpoint of this project's trainer")
    sizes = []
    for (name, ndim), pid in zip(params, order):
        moments = opt["state"].get(pid)
        if moments is None or "exp_avg_sq" not in moments:
            continue
        sizes.append((name, ndim, float(moments["exp_avg_sq"].double().mean().sqrt())))
    return sizes


def compare(a: list[tuple[str, int, float]], b: list[tuple[str, int, float]]
            ) -> list[tuple[str, int, float, float, float]]:
    """(name, dimensions, size in A, size in B, A / B) for the tensors both hold."""
    sizes_b = {name: size for name, _, size in b}
    return [(name, ndim, sa, sizes_b[name], sa / sizes_b[name]) for name, ndim, sa in a if sizes_b.get(name, 0) > 0]


def main(argv: list[str] | None = None) -> None:
    from autoseg.training.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkpoint A (.pth)")
    p.add_argument("b", type=Path, help="checkpoint B (.pth)")
    args = p.parse_args(argv)
    rows = compare(*(gradient_sizes(load_checkpoint(path)) for path in (args.a, args.b)))
    for name, _, sa, sb, ratio in rows:
        print(f"{name:50s} {sa:.3e} {sb:.3e} {ratio:6.2f}")
    weights = [ratio for _, ndim, *_, ratio in rows if ndim >= 2]
    if weights:
        print(f"convolution weights: median A/B {np.median(weights):.2f}, "
              f"range {min(weights):.2f} .. {max(weights):.2f} ({len(weights)} tensors)")


if __name__ == "__main__":
    sys.exit(main())
