"""The modules a training step's forward runs, and what a step needs when a batch can hold 0 samples.

Why this exists: with ``loader.on_bad_chunk = "skip"`` a batch whose every sample was skipped for bad chunks is
still handed out, with 0 samples (so every rank takes ``len(loader)`` batches per epoch). :mod:`profiling.loop`
then must not compute a model's loss on it (a mean over nothing) nor update on it alone, yet under
DistributedDataParallel the rank must still join the step's gradient all-reduce, or the others wait for it for
ever. So the module DDP wraps returns :func:`zero_loss` for an empty batch (zero gradients, all-reduced as usual),
and :func:`sample_counter` tells every rank, without a device sync, whether any rank had samples this step::

    step = MultiformerStep(net, {"mse": 1.0})     # profiling.forecast.RolloutStep for a Forecaster
    loss = DistributedDataParallel(step)(inputs)  # 0, connected to every trainable parameter, for 0 samples
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["zero_loss", "MultiformerStep", "sample_counter"]


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """0, connected to every trainable parameter of ``module`` (each gets a zero gradient): the loss of a batch of 0
    samples. Its backward still runs DDP's gradient all-reduce, which every rank must join in every step."""
    terms = [p.sum() * 0.0 for p in module.parameters() if p.requires_grad]
    return torch.stack([t.float() for t in terms]).sum()


class MultiformerStep(torch.nn.Module):
    """``forward(inputs) -> loss``: the Multiformer and its loss (``kinds``), the module DistributedDataParallel
    wraps, as :class:`profiling.forecast.RolloutStep` is for a Forecaster. A batch of 0 samples (every one skipped
    for a bad chunk, ``loader.on_bad_chunk = "skip"``) never reaches the model: its loss is :func:`zero_loss`."""

    def __init__(self, net: torch.nn.Module, kinds: dict[str, float]):
        super().__init__()
        self.net = net
        self.kinds = dict(kinds)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        from model import multiformer_loss

        if next(iter(inputs.values()))["tokens"].shape[0] == 0:
            return zero_loss(self)
        return multiformer_loss(self.net(inputs), inputs, kinds=self.kinds)[0]


def sample_counter(timeout_s: float) -> Callable[[int], Callable[[], int]]:
    """``start(n) -> total()``: every rank's samples of a step, summed while the step runs by an all-reduce over a
    gloo group (host tensors: no device sync), started after the data wait, read before the optimizer. Used under
    DDP with ``loader.on_bad_chunk = "skip"`` only, the one case where a rank's batch can hold 0 samples."""
    import datetime

    import torch.distributed as dist

    from .distributed import collective

    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def start(n: int) -> Callable[[], int]:
        count = torch.tensor([n], dtype=torch.int64)
        work = dist.all_reduce(count, group=group, async_op=True)

        def total() -> int:
            with collective("summing the step's samples over the ranks"):
                work.wait()
            return int(count)

        return total

    return start
