"""bench/experiments/optimizer_state.py: the size of Adam's second-moment estimate, per tensor, in two checkpoints."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "experiments"))

from optimizer_state import compare, gradient_sizes, main  # noqa: E402


def checkpoint(second_moments: list[list[float] | None]) -> dict:
    """A checkpoint of a conv (3-d weight, bias) and a batch norm (weight, bias, running stats),
    with ``exp_avg_sq`` per parameter in that order (None: not stepped yet)."""
    network = {"conv.weight": torch.zeros(2, 1, 2), "conv.bias": torch.zeros(2),
               "norm.weight": torch.zeros(2), "norm.bias": torch.zeros(2),
               "norm.running_mean": torch.zeros(2), "norm.running_var": torch.ones(2),
               "norm.num_batches_tracked": torch.tensor(3)}
    state = {i: {"exp_avg": torch.zeros(len(v)), "exp_avg_sq": torch.tensor(v)}
             for i, v in enumerate(second_moments) if v is not None}
    return {"network": network, "optimizer": {"state": state, "param_groups": [{"params": [0, 1, 2, 3]}]}}


def test_sizes_are_the_root_mean_square_of_the_second_moment_named_by_parameter():
    # conv weight: mean of (1, 4, 9, 2) = 4 -> 2; bias: mean of (0.25, 0.25) -> 0.5; the norm's bias
    # not stepped (left out); running statistics are buffers, not optimizer tensors
    sizes = gradient_sizes(checkpoint([[1, 4, 9, 2], [0.25, 0.25], [16, 0], None]))
    assert [(n, d) for n, d, _ in sizes] == [("conv.weight", 3), ("conv.bias", 1), ("norm.weight", 1)]
    assert [s for *_, s in sizes] == pytest.approx([2.0, 0.5, 8 ** 0.5])


def test_compare_divides_a_by_b_for_the_tensors_both_hold(tmp_path, capsys):
    a = checkpoint([[4, 4, 4, 4], [1, 1], [1, 1], [1, 1]])
    b = checkpoint([[1, 1, 1, 1], [4, 4], None, [1, 1]])
    rows = compare(gradient_sizes(a), gradient_sizes(b))
    assert [(n, r) for n, *_, r in rows] == [("conv.weight", 2.0), ("conv.bias", 0.5), ("norm.bias", 1.0)]
    torch.save(a, tmp_path / "a.pth")
    torch.save(b, tmp_path / "b.pth")
    main([str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    # only the conv weight has two or more dimensions: the summary is its ratio alone
    assert "convolution weights: median A/B 2.00, range 2.00 .. 2.00 (1 tensors)" in capsys.readouterr().out


def test_a_checkpoint_of_another_layout_is_refused():
    bad = checkpoint([[1, 1, 1, 1], [1, 1], [1, 1], [1, 1]])
    bad["optimizer"]["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(SystemExit, match="the optimizer holds 2 tensors, the network 4"):
        gradient_sizes(bad)
