"""The epoch plan: every sample of the epoch, its batch, and the chunks each step of the reader needs.

Why this exists: the loader knows the whole epoch up front, so it can read ahead across batch boundaries and the
decoded-chunk cache can keep exactly the chunks needed again soon (:mod:`fastload.cache`). This module turns
``(seed, epoch, rank, world_size)`` into that knowledge:

- the epoch's sample placements for this rank (:func:`fastload.sampling.geometry.random_boxes`: ranks disjoint,
  together the whole epoch), cut into batches (the last incomplete one dropped or kept);
- per batch, one or more *steps*: groups of the batch's samples whose unique chunks fit the cache's per-step
  capacity (one step per batch when they fit; otherwise, e.g. tile chunks and the default budget, runs of
  consecutive samples filling half the capacity), each with its :class:`~fastload.sampling.chunks.BatchPlan`
  (unique chunks, index tables);
- per chunk, the steps that use it (:class:`~fastload.cache.Uses`), which the cache reads as next-use distances
  (Belady). A chunk is an integer id per array: its linear index in the array's chunk grid (``grids``), so the
  reader and the cache handle a step's thousands of chunks as arrays, not as Python objects.

Chunk planning costs a few milliseconds per batch, so it runs lazily: each batch asked for plans itself and up to
two more, until planning runs ``horizon`` batches ahead of the reader. The first batch is ready at once, and the
cache soon sees the future as far as it can use it. Step numbers are ``batch * batch_size + group``, so they sort in plan order.

Quick look::

    python -c "from fastload.plan import *; import numpy as np; print(split_batches(np.zeros((10, 3)), 4, True))"
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ._nvtx import range as nvtx_range
from .cache import Uses
from .errors import ConfigError
from .sampling.chunks import BatchPlan

__all__ = ["Step", "EpochPlan", "split_batches", "chunk_ids"]

Key = tuple[str, tuple[int, ...]]


def chunk_ids(chunks: np.ndarray, grid: tuple[int, ...] | None) -> np.ndarray:
    """Linear ids of ``(U, ndim)`` chunk indices in a chunk grid of shape ``grid`` (C order).

    Without ``grid`` every axis gets ``31 // ndim`` bits (ids stay unique and sorted like the rows; enough for
    small test grids); a chunk index beyond that raises ``ValueError``. Ids must stay below ``2**31``
    (:class:`~fastload.cache.Uses`).
    """
    chunks = np.asarray(chunks, np.int64)
    nd = chunks.shape[1]
    if nd == 0:
        return np.zeros(chunks.shape[0], np.int64)
    dims = tuple(int(g) for g in grid) if grid is not None else (1 << (31 // nd),) * nd
    try:
        return np.ravel_multi_index(tuple(chunks.T), dims).astype(np.int64)
    except ValueError as e:
        raise ValueError(f"chunk indices outside the chunk grid {dims}" + ("" if grid is not None else
                         " (give EpochPlan the store's chunk grids: grids=)")) from e


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
    ids: dict[str, np.ndarray]
    """Per array: the chunk ids (:func:`chunk_ids`) of ``plan.chunks[array]``, in the same order (ascending)."""

    @property
    def n_chunks(self) -> int:
        return sum(int(v.size) for v in self.ids.values())

    @property
    def keys(self) -> tuple[Key, ...]:
        """``(array, chunk)`` of every unique chunk, array by array in ``plan.chunks`` order (for tests and
        reports; the reader works on :attr:`ids`)."""
        return tuple((a, tuple(c)) for a, idx in self.plan.chunks.items() for c in idx.tolist())


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
    grids : mapping, optional
        ``array -> chunk grid shape`` (``store.arrays[a].grid_shape``) for the chunk ids; without it ids pack each
        axis in ``31 // ndim`` bits (see :func:`chunk_ids`).
    """

    def __init__(self, boxes: np.ndarray, planner: Callable[[np.ndarray], BatchPlan], *, batch_size: int,
                 drop_last: bool = True, capacity: Mapping[str, int] | None = None, horizon: int = 8,
                 start_batch: int = 0, batch_stride: int = 1, on_plan: Callable[[int, float], None] | None = None,
                 grids: Mapping[str, tuple[int, ...]] | None = None):
        self.boxes = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 3)
        self.planner = planner
        self.batch_size = int(batch_size)
        self.batches = split_batches(self.boxes, self.batch_size, drop_last)
        self.capacity = dict(capacity) if capacity else None
        self.horizon = max(0, int(horizon))
        self.start_batch = int(start_batch)
        self.batch_stride = max(1, int(batch_stride))
        self._on_plan = on_plan
        self._grids = dict(grids) if grids else {}
        for arr, grid in self._grids.items():  # chunk ids are packed with steps into int64 (cache.Uses)
            if math.prod(int(g) for g in grid) > 1 << 31:
                raise ConfigError(f"array {arr!r}: its chunk grid {tuple(grid)} has {math.prod(grid):,} chunks; "
                                  f"fastload indexes at most 2**31 chunks per array: use larger chunks")  # fmt: skip
        self._steps: dict[int, tuple[Step, ...]] = {}
        self._planned = self.start_batch  # batches [start_batch, _planned) are planned
        self._lock = threading.Lock()
        self.uses = Uses()
        """Steps using each chunk: planning adds each step, the cache finishes it (see :class:`~fastload.cache.Uses`)."""

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
                    self.uses.add(st.index, st.ids)
                self._planned += self.batch_stride

    def forget(self, batch: int) -> None:
        """Drop the steps of a finished batch (memory stays bounded; the cache finished their uses)."""
        with self._lock:
            self._steps.pop(batch, None)

    # -- planning -----------------------------------------------------------------------------------------------
    def _plan(self, batch: int) -> tuple[Step, ...]:
        t0 = time.perf_counter()
        lo, hi = self.batches[batch]
        groups: list[tuple[int, int, BatchPlan]] = []
        with nvtx_range("plan", payload=batch):
            self._split(self.boxes, lo, hi, lo, groups)
        steps = []
        for g, (a, b, p) in enumerate(groups):
            ids = {arr: chunk_ids(idx, self._grids.get(arr)) for arr, idx in p.chunks.items()}
            steps.append(Step(index=batch * self.batch_size + g, batch=batch, start=a - lo, stop=b - lo,
                              plan=p, ids=ids))
        if self._on_plan is not None:
            self._on_plan(batch, time.perf_counter() - t0)
        return tuple(steps)

    def _split(self, boxes: np.ndarray, lo: int, hi: int, first: int, out: list) -> None:
        """Plan ``boxes[lo:hi]`` once; when its chunks exceed the per-step capacity, cut it greedily into runs of
        consecutive samples whose chunks fit in half of it, each a subset of the one plan (no re-planning)."""
        p = self.planner(boxes[lo:hi])
        if not self._over(p):
            out.append((lo, hi, p))
            return
        n = hi - lo
        uses = _sample_uses(p, n)  # array -> (n, K) bool: sample s uses chunk k of p.chunks[array]
        hard = {a: self.capacity.get(a) for a in uses}  # type: ignore[union-attr]
        sizes = {a: m.sum(axis=1) for a, m in uses.items()}
        over = [(int(np.argmax(sizes[a] > c)), i, a) for i, (a, c) in enumerate(hard.items())
                if c is not None and (sizes[a] > c).any()]  # fmt: skip
        if over:  # the first sample (then array) that alone exceeds the capacity
            s, _, a = min(over)
            raise ConfigError(
                f"loader.cache_bytes: one sample (batch sample {lo + s - first}, box {boxes[lo + s].tolist()}) "
                f"needs {int(sizes[a][s])} chunks of array {a!r} but the cache holds {hard[a]} per step; raise "
                "cache_bytes")
        # runs are cut at half the capacity: two workers then pin less of the arena at once, and the cache keeps
        # more for later steps (era5-1deg tiles, 24 batches: 16.4k misses instead of 19.6k cutting at capacity)
        cap = {a: None if c is None else max(1, c // 2) for a, c in hard.items()}
        # the greedy cut on each sample's chunk set as a Python int bit set (a popcount per sample and array, not
        # a few NumPy calls: planning a split AtmoRep batch took ~1 ms of Python for this loop alone)
        bits = {a: [int.from_bytes(row.tobytes(), "little") for row in np.packbits(m, axis=1, bitorder="little")]
                for a, m in uses.items()}  # fmt: skip
        used = dict.fromkeys(uses, 0)
        count = dict.fromkeys(uses, 0)
        start = 0
        for s in range(n):
            new = {a: (b[s] & ~used[a]).bit_count() for a, b in bits.items()}
            if s > start and any(c is not None and count[a] + new[a] > c for a, c in cap.items()):
                out.append((lo + start, lo + s, _subset(p, start, s, uses)))
                start = s
                used = dict.fromkeys(uses, 0)
                new = {a: b[s].bit_count() for a, b in bits.items()}
                count = dict.fromkeys(uses, 0)
            for a, b in bits.items():
                used[a] |= b[s]
                count[a] += new[a]
        out.append((lo + start, hi, _subset(p, start, n, uses)))

    def _over(self, p: BatchPlan) -> tuple[str, int] | None:
        if self.capacity is None:
            return None
        for array, idx in p.chunks.items():
            cap = self.capacity.get(array)
            if cap is not None and idx.shape[0] > cap:
                return array, int(idx.shape[0])
        return None


def _sample_uses(p: BatchPlan, n: int) -> dict[str, np.ndarray]:
    """``array -> (n, K) bool``: which of ``p.chunks[array]``'s K chunks each of the plan's ``n`` samples uses
    (over every field stored in the array)."""
    uses: dict[str, np.ndarray] = {}
    rows = np.arange(n)[:, None]
    for fld, table in p.tables.items():
        a = p.arrays[fld]
        m = uses.get(a)
        if m is None:  # one extra column takes the -1 entries (no chunk), dropped below
            m = uses[a] = np.zeros((n, p.chunks[a].shape[0] + 1), bool)
        m[rows, table.reshape(n, -1)] = True
    return {a: m[:, :-1] for a, m in uses.items()}


def _subset(p: BatchPlan, lo: int, hi: int, uses: Mapping[str, np.ndarray] | None = None) -> BatchPlan:
    """The plan of samples ``[lo, hi)`` of ``p``: only the chunks they use (still sorted), tables renumbered.
    ``uses``: :func:`_sample_uses` of ``p``, when known."""
    if lo == 0 and hi == p.boxes.shape[0]:
        return p
    remap: dict[str, np.ndarray] = {}
    chunks: dict[str, np.ndarray] = {}
    for a, idx in p.chunks.items():
        if uses is not None and a in uses:
            u = np.flatnonzero(uses[a][lo:hi].any(axis=0))
        else:
            parts = [t[lo:hi].ravel() for f, t in p.tables.items() if p.arrays[f] == a]
            u = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
            u = u[u >= 0]
        m = np.full(idx.shape[0] + 1, -1, np.int32)  # the last entry maps -1 (no chunk) to -1
        m[u] = np.arange(u.size, dtype=np.int32)
        remap[a] = m
        chunks[a] = np.ascontiguousarray(idx[u])
    tables = {f: remap[p.arrays[f]][t[lo:hi]] for f, t in p.tables.items()}
    return BatchPlan(boxes=p.boxes[lo:hi], chunks=chunks, tables=tables, arrays=dict(p.arrays))
