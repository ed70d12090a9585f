"""What the probe process runs to time candidate training steps (``planners/throughput.py`` starts it
through ``autoseg.capped``, which abandons any step that overruns its cap).

``time_step_rounds`` builds one candidate network (one copy per memory layout), then times one
training step (forward, deep-supervised Dice+CE loss, backward, SGD step) on random data for each
combination of precision and layout it is given: first one untimed warm-up step per combination,
then ``rounds`` interleaved rounds (every combination once per round, the order reversed every other
round, so a slow spell of the machine falls on all of them alike), each round preceded by a fixed
reference convolution. Combinations that cannot win are not timed again: after the warm-up those
slower than ``warmup_drop_factor`` x the fastest warm-up, after the first timed round those slower
than ``drop_factor`` x the fastest. Every piece of work is announced before it starts
and reported when it ends, so the parent knows which step overran its cap.

Events (dicts): ``{"kind": "threads", "one": s, "all": s, "threads": n}`` (the reference on one
thread and on all of them: a quiet machine runs it nearly n times faster on n threads);
``{"kind": "ready"}``; ``{"kind": "start", "combo": i, "round": r}`` then ``{"kind": "step",
"combo": i, "round": r, "seconds": s}`` (round 0 is the warm-up); ``{"kind": "ref", "round": r,
"seconds": s}``; ``{"kind": "drop", "combo": i}``.
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence


def _reference_seconds(torch, conv, x, repeats: int = 3) -> float:
    """Best of ``repeats`` forward passes of the reference convolution (fp32, no gradients)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - started)
    return best


def time_step_rounds(network: dict, patch: Sequence[int], batch: int, in_channels: int, num_classes: int,
                     combos: Sequence[Sequence[str]], rounds: int = 3, drop_factor: float = 1.3,
                     warmup_drop_factor: float = 5.0, seed: int = 0) -> Iterator[dict]:
    """Events of timing one candidate (see the module docstring). ``network``: a ``NetworkPlan`` as
    JSON; ``combos``: ``[precision, memory_format]`` pairs such as ``["fp32", "contiguous"]``."""
    import torch

    from autoseg.device import autocast_dtype, torch_memory_format
    from autoseg.plans import NetworkPlan
    from autoseg.serialization import from_jsonable
    from autoseg.training.loss import build_loss
    from autoseg.training.network import UNet

    plan = from_jsonable(NetworkPlan, network)
    reference = torch.nn.Conv3d(16, 16, 3, padding=1)
    ref_input = torch.randn(1, 16, 16, 32, 32, generator=torch.Generator().manual_seed(seed))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = _reference_seconds(torch, reference, ref_input)
    torch.set_num_threads(threads)
    yield {"kind": "threads", "one": one, "all": _reference_seconds(torch, reference, ref_input), "threads": threads}

    layouts = sorted({fmt for _, fmt in combos})
    nets, opts, inputs = {}, {}, {}
    for fmt in layouts:
        torch.manual_seed(seed)
        layout = torch_memory_format(fmt, plan.dim)
        nets[fmt] = UNet(plan, in_channels, num_classes, deep_supervision=True).to(memory_format=layout)
        opts[fmt] = torch.optim.SGD(nets[fmt].parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        inputs[fmt] = torch.randn(batch, in_channels, *patch,
                                  generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=layout)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in nets[layouts[0]](inputs[layouts[0]])]
    loss_fn = build_loss("dice_ce", False, 1.0, 1.0, len(shapes))
    generator = torch.Generator().manual_seed(seed + 1)
    targets = [torch.randint(0, num_classes, (batch, 1, *s), generator=generator) for s in shapes]
    yield {"kind": "ready"}

    def step(precision: str, fmt: str) -> float:
        started = time.perf_counter()
        opts[fmt].zero_grad(set_to_none=True)
        dtype = autocast_dtype(precision)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(nets[fmt](inputs[fmt]), targets)
        loss.backward()
        opts[fmt].step()
        return time.perf_counter() - started

    active = list(range(len(combos)))
    for r in range(rounds + 1):
        if r:
            yield {"kind": "ref", "round": r, "seconds": _reference_seconds(torch, reference, ref_input, 1)}
        seen = {}
        for i in (active if r % 2 == 0 else active[::-1]):
            yield {"kind": "start", "combo": i, "round": r}
            seen[i] = step(*combos[i])
            yield {"kind": "step", "combo": i, "round": r, "seconds": seen[i]}
        if r <= 1:
            fastest, factor = min(seen.values()), warmup_drop_factor if r == 0 else drop_factor
            for i in list(active):
                if seen[i] > factor * fastest:
                    active.remove(i)
                    yield {"kind": "drop", "combo": i}
