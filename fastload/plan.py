"""The epoch plan: every sample of the epoch, its batch, and the chunks each step of the reader needs.

Why this exists: the loader knows the whole epoch up front, so it can read ahead across batch boundaries and the
decoded-chunk cache can keep exactly the chunks needed again soon (:mod:`fastload.cache`). This module turns
``(seed, epoch, rank, world_size)`` into that knowledge:

- the epoch's sample placements for this rank (:func:`fastload.sampling.geometry.random_boxes`: ranks disjoint,
  together the whole epoch), cut into batches (the last incomplete one dropped or kept);
- per batch, one or more *steps*: groups of the batch's samples whose unique chunks fit the cache's per-step
  capacity (normally one step per batch; a batch is split when its chunks do not fit, e.g. huge chunks and a
  small budget), each with its :class:`~fastload.sampling.chunks.BatchPlan` (unique chunks, index tables);
- per chunk key ``(array, chunk index)``, the sorted steps that use it, which the cache reads as next-use
  distances (Belady).

Chunk planning costs a few milliseconds per batch, so it runs lazily: each batch asked for plans itself and up to
two more, until planning runs ``horizon`` batches ahead of the reader. The first batch is ready at once, and the
cache soon sees the future as far as it can use it. Step numbers are ``batch * batch_size + group``, so they sort in plan order.

Quick look::

    python -c "from fastload.plan import *; import numpy as np; print(split_batches(np.zeros((10, 3)), 4, True))"
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ._nvtx import range as nvtx_range
from .errors import ConfigError
from .sampling.chunks import BatchPlan

__all__ = ["Step", "EpochPlan", "split_batches"]

Key = tuple[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """One unit of the reader's work: samples ``[start, stop)`` of batch ``batch``."""

    index: int
    """Position in plan order (``batch * batch_size + group``); the cache's notion of time."""
    batch: int
    """Batch index in the epoch (this rank's batches, from 0)."""
    start: int
    """First sample of the batch gathered by this step."""
    stop: int
    """One past the last sample."""
    plan: BatchPlan
    """Unique chunks per array and index tables of the step's boxes."""
    keys: tuple[Key, ...]
    """``(array, chunk)`` of every unique chunk, array by array in ``plan.chunks`` order."""


def split_batches(boxes: np.ndarray, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the batches of ``boxes``."""
    n = int(np.asarray(boxes).shape[0])
    stops = list(range(batch_size, n + 1, batch_size))
    out = [(s - batch_size, s) for s in stops]
    if not drop_last and n % batch_size:
        out.append((n - n % batch_size, n))
    return out


class EpochPlan:
    """This rank's epoch: boxes, batches, and (lazily, thread-safely) steps and chunk uses.

    Parameters
    ----------
    boxes : (N, 3) int64
        This rank's sample placements in epoch order.
    planner : callable
        ``planner(boxes) -> BatchPlan`` (a tokenizer's ``plan``, or
        :func:`~fastload.sampling.chunks.plan_batch` with the layouts bound).
    batch_size : int
        Samples per batch.
    drop_last : bool
        Drop the last incomplete batch.
    capacity : mapping, optional
        Most unique chunks of each array one step may need (the cache's per-step share); larger batches are split
        into several steps. ``None``: never split.
    horizon : int
        Batches planned ahead of the furthest batch asked for.
    start_batch : int
        First batch that will be read (resume); earlier batches are never planned.
    batch_stride : int
        Plan only batches ``start_batch, start_batch + batch_stride, ...`` (a worker process that reads every
        ``batch_stride``-th batch plans only its own).
    on_plan : callable, optional
        Called with the seconds spent planning each batch (the loader's "plan" counter).
    """

    def __init__(self, boxes: np.ndarray, planner: Callable[[np.ndarray], BatchPlan], *, batch_size: int,
                 drop_last: bool = True, capacity: Mapping[str, int] | None = None, horizon: int = 8,
                 start_batch: int = 0, batch_stride: int = 1, on_plan: Callable[[int, float], None] | None = None):
        self.boxes = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 3)
        self.planner = planner
        self.batch_size = int(batch_size)
        self.batches = split_batches(self.boxes, self.batch_size, drop_last)
        self.capacity = dict(capacity) if capacity else None
        self.horizon = max(0, int(horizon))
        self.start_batch = int(start_batch)
        self.batch_stride = max(1, int(batch_stride))
        self._on_plan = on_plan
        self._steps: dict[int, tuple[Step, ...]] = {}
        self._planned = self.start_batch  # batches [start_batch, _planned) are planned
        self._lock = threading.Lock()
        self.uses: dict[Key, deque] = {}
        """``key -> sorted steps`` using it: planning appends, the cache's :class:`NextUse` pops finished steps."""

    def __len__(self) -> int:
        return len(self.batches)

    def batch_boxes(self, batch: int) -> np.ndarray:
        """``(B, 3)`` boxes of one batch."""
        lo, hi = self.batches[batch]
        return self.boxes[lo:hi]

    def steps(self, batch: int) -> tuple[Step, ...]:
        """The steps of ``batch`` (planning it, and ``horizon`` batches beyond, if not done yet)."""
        if not self.start_batch <= batch < len(self.batches) or (batch - self.start_batch) % self.batch_stride:
            raise IndexError(f"batch {batch} is not one this plan reads (from {self.start_batch} to "
                             f"{len(self.batches) - 1} in strides of {self.batch_stride})")
        self.ensure(batch)
        # then plan ahead a little per call, so the first batch is not held up by planning the whole horizon
        self.ensure(min(batch + self.horizon * self.batch_stride, self._planned + 2 * self.batch_stride))
        return self._steps[batch]

    def ensure(self, batch: int) -> None:
        """Plan every batch up to and including ``batch`` (clipped to the epoch), in order."""
        last = min(int(batch), len(self.batches) - 1)
        with self._lock:  # planning is in order, so the use lists stay sorted
            while self._planned <= last:
                b = self._planned
                self._steps[b] = self._plan(b)
                for st in self._steps[b]:
                    for k in st.keys:
                        q = self.uses.get(k)
                        if q is None:
                            q = self.uses[k] = deque()
                        q.append(st.index)
                self._planned += self.batch_stride

    def forget(self, batch: int) -> None:
        """Drop the steps of a finished batch, and the use lists emptied by it (memory stays bounded)."""
        with self._lock:
            for st in self._steps.pop(batch, ()):
                for k in st.keys:
                    q = self.uses.get(k)
                    if q is not None and not q:
                        del self.uses[k]

    # -- planning -----------------------------------------------------------------------------------------------
    def _plan(self, batch: int) -> tuple[Step, ...]:
        t0 = time.perf_counter()
        lo, hi = self.batches[batch]
        groups: list[tuple[int, int, BatchPlan]] = []
        with nvtx_range("plan", payload=batch):
            self._split(self.boxes, lo, hi, lo, groups)
        steps = []
        for g, (a, b, p) in enumerate(groups):
            keys = tuple((arr, tuple(c)) for arr, idx in p.chunks.items() for c in idx.tolist())
            steps.append(Step(index=batch * self.batch_size + g, batch=batch, start=a - lo, stop=b - lo,
                              plan=p, keys=keys))
        if self._on_plan is not None:
            self._on_plan(batch, time.perf_counter() - t0)
        return tuple(steps)

    def _split(self, boxes: np.ndarray, lo: int, hi: int, first: int, out: list) -> None:
        p = self.planner(boxes[lo:hi])
        over = self._over(p)
        if not over:
            out.append((lo, hi, p))
            return
        if hi - lo == 1:
            array, n = over
            raise ConfigError(
                f"loader.cache_bytes: one sample (batch sample {lo - first}, box {boxes[lo].tolist()}) needs {n} "
                f"chunks of array {array!r} but the cache holds {self.capacity[array]} per step; "  # type: ignore[index]
                f"raise cache_bytes")
        mid = (lo + hi) // 2
        self._split(boxes, lo, mid, first, out)
        self._split(boxes, mid, hi, first, out)

    def _over(self, p: BatchPlan) -> tuple[str, int] | None:
        if self.capacity is None:
            return None
        for array, idx in p.chunks.items():
            cap = self.capacity.get(array)
            if cap is not None and idx.shape[0] > cap:
                return array, int(idx.shape[0])
        return None
