"""The modules a training step's forward runs, and what a step needs when a batch can hold 0 samples.

Why this exists: with ``loader.on_bad_chunk = "skip"`` a batch whose every sample was skipped for bad chunks is
still handed out, with 0 samples (so every rank takes ``len(loader)`` batches per epoch). :mod:`profiling.loop`
then must not compute a model's loss on it (a mean over nothing) nor update on it alone, yet under
DistributedDataParallel the rank must still join the step's gradient all-reduce, or the others wait for it for
ever. So the module DDP wraps returns :func:`zero_loss` for an empty batch (zero gradients, all-reduced as usual),
and a :class:`SampleCounter` sums the ranks' sample counts without a device sync: it tells every rank whether any
rank had samples this step, and weighs each rank's gradient by its samples (DDP's mean over the ranks would
otherwise count an empty rank as one with samples)::

    step = MultiformerStep(net, {"mse": 1.0})     # the Multiformer's loss; 0, connected to every
    loss = DistributedDataParallel(step)(inputs)  # trainable parameter, for 0 samples
    counter.start(n); counter.weigh(loss).backward()
    if counter.total() > 0:                       # every rank's samples (no rank updates when all had 0)
        counter.scale_grads(net.parameters())     # to the mean over them; then clip and step

A run none of whose steps trained is an error (:func:`check_trained`), as is synthetic mode on a loader whose first
epoch has no sample (:func:`replay_with_samples`).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from fastload.errors import StoreError
from model import MultiformerConfig, multiformer_loss

from .distributed import collective

__all__ = ["zero_loss", "MultiformerStep", "SampleCounter", "sample_counter", "replay_with_samples",
           "check_trained"]


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """0, connected to every trainable parameter of ``module`` (each gets a zero gradient): the loss of a batch of 0
    samples. Its backward still runs DDP's gradient all-reduce, which every rank must join in every step."""
    terms = [p.sum() * 0.0 for p in module.parameters() if p.requires_grad]
    return torch.stack([t.float() for t in terms]).sum()


class MultiformerStep(torch.nn.Module):
    """``forward(inputs) -> loss``: the Multiformer and its loss (``kinds``), the module DistributedDataParallel
    wraps, as :class:`profiling.forecast.RolloutStep` is for a Forecaster. A batch of 0 samples (every one skipped
    for a bad chunk, ``loader.on_bad_chunk = "skip"``) never reaches the model: its loss is :func:`zero_loss`.
    Each field weighs its ``FieldSpec.loss_weight`` (the config of the Multiformer ``net`` is, or wraps), as in the
    Forecaster's rollout loss."""

    def __init__(self, net: torch.nn.Module, kinds: dict[str, float]):
        super().__init__()
        self.net = net
        self.kinds = dict(kinds)
        # the Multiformer's config, found through wrappers (a profiling SlowModel, DDP, compile's _orig_mod)
        self.config = next((m.config for m in net.modules() if isinstance(getattr(m, "config", None),
                                                                          MultiformerConfig)), None)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        if next(iter(inputs.values()))["tokens"].shape[0] == 0:
            return zero_loss(self)
        return multiformer_loss(self.net(inputs), inputs, kinds=self.kinds, config=self.config)[0]


class SampleCounter:
    """Every rank's samples of a step, summed while the step runs, and the gradient of the mean over all of them.

    DDP averages the ranks' gradients over the world size, each rank's a mean over its own samples: a rank with 0
    samples (its zero loss) or fewer than the others would scale the step down or weigh its samples up. So each
    rank backwards its loss times its sample count :meth:`weigh` (a sum over its samples), and once the total ``N``
    is known (:meth:`total`) :meth:`scale_grads` scales the all-reduced gradients by ``world / N`` (before clipping
    and the optimizer):
    every sample weighs the same whichever rank it is on. That is the step one process would take on the ranks'
    union when the loss is a mean over samples; the Multiformer's loss is a mean over weighted tokens, and BERT
    masks a different share of each sample, so there the union step weighs samples by their tokens and this one by
    count: close, not equal (review r8). Without the weighting an empty rank halved the step.

    The count is all-reduced over a gloo group (host tensors: no device sync), started by :meth:`start` after the
    data wait and read by :meth:`total` before the optimizer. Used under DDP with ``loader.on_bad_chunk = "skip"``
    only (:func:`sample_counter`), the one case where ranks' batches can differ in size. Otherwise (``world`` None)
    it counts this process's samples only: no collective, :meth:`weigh` and :meth:`scale_grads` change nothing."""

    def __init__(self, world: int | None, timeout_s: float = 0.0):
        self.world = world
        self.group = None if world is None else dist.new_group(backend="gloo",
                                                               timeout=datetime.timedelta(seconds=timeout_s))
        self.n = 0
        self._count = torch.zeros(1, dtype=torch.int64)
        self._work: Any = None
        self._total: int | None = None

    def start(self, n: int) -> None:
        """Start summing this step's sample count ``n`` over the ranks."""
        self.n = n
        self._total = None
        if self.group is None:
            return
        self._count = torch.tensor([n], dtype=torch.int64)
        self._work = dist.all_reduce(self._count, group=self.group, async_op=True)

    def weigh(self, loss: torch.Tensor) -> torch.Tensor:
        """What this rank backwards: its mean ``loss`` times its samples (0 for an empty batch's zero loss)."""
        return loss if self.group is None else loss * self.n

    def total(self) -> int:
        """The step's samples ``N`` over every rank (this process's alone without a group); changes nothing. The
        first call of a step waits for the sum :meth:`start` began (done by now)."""
        if self.group is None or self.world is None:
            return self.n
        if self._total is None:
            with collective("summing the step's samples over the ranks"):
                self._work.wait()
            self._total = int(self._count)
        return self._total

    def scale_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Scale the gradients of ``params`` (all-reduced by DDP's backward of the :meth:`weigh` ed losses) by
        ``world / N``: the mean over every rank's samples. Nothing without a group or when ``N`` is 0."""
        if self.group is None or self.world is None:
            return
        total = self.total()
        grads = [p.grad for p in params if p.grad is not None]
        if total and grads:
            torch._foreach_mul_(grads, self.world / total)


def sample_counter(cfg: Any, world: int, forecast: bool) -> SampleCounter:
    """The run's :class:`SampleCounter`: summed over the ranks under DDP with ``loader.on_bad_chunk = "skip"`` for the
    Multiformer's :class:`fastload.Loader` reading the store; this process's only otherwise (every batch then holds
    its full count: the rollout loader refuses "skip", synthetic mode replays one batch with samples), with no
    collective per step."""
    if world > 1 and not forecast and cfg.data.mode != "synthetic" and cfg.loader.on_bad_chunk == "skip":
        return SampleCounter(world, cfg.dist_timeout_s)
    return SampleCounter(None)


def replay_with_samples(loader: Any, store: Any) -> Any:
    """Synthetic data mode's :class:`profiling.stall.ReplayLoader` of the loader's first batch with samples (the
    first ones may be empty, every sample skipped for bad chunks); an error naming ``store`` when every batch of the
    epoch was."""
    from .stall import ReplayLoader

    skipped = 0
    for batch in loader:
        if len(batch):
            return ReplayLoader(batch)
        skipped += batch.stats.skipped
    raise StoreError(f"synthetic data mode: every batch of the loader's first epoch was empty: with loader.on_bad_chunk "
                     f"= 'skip', all {skipped} sample(s) needed a bad chunk of {store} and were "
                     f"skipped (the log's warnings name the chunks); nothing to replay")


def check_trained(skipped: dict[str, int], steps: int, store: Any) -> None:
    """An error when none of a run's ``steps`` updated the model: every batch (every rank's, under DDP) was empty,
    each sample skipped for a bad chunk (``loader.on_bad_chunk = "skip"``); ``skipped`` is the loop's counts."""
    if steps and skipped["steps_without_update"] == steps:
        raise StoreError(f"the run trained on 0 samples: with loader.on_bad_chunk = 'skip', every batch of its "
                         f"{steps} step(s) was empty ({skipped['samples']} sample(s) of this rank skipped for bad "
                         f"chunks of {store}; the log's warnings name the chunks); no update was made")
