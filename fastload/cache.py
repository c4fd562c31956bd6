"""The decoded-chunk cache: slot arenas under a byte budget, evicting by the plan's next use (Belady).

Why this exists: decoding is the bottleneck (one core decodes about 3 GB/s), so a chunk that the epoch plan needs
again soon must stay decoded, and memory must stay bounded. Because the whole epoch's plan is known up front, the
cache knows for every chunk the next *step* (a batch, or a group of one batch's samples) that needs it, and evicts
the unpinned chunk whose next use is furthest away: first the chunks never needed again (oldest first), then the
rest by distance. This is Belady's optimal policy, exact here because the future is known.

Memory: one 2-D arena per array, ``slots[n_slots, chunk_elems]`` of the array's dtype, allocated once (pages are
touched only when a slot is first filled). A chunk lives in one slot, in the layout ``store.decode`` writes, so the
gather kernels read it in place through the slot table.

Concurrency: several steps are prepared at once. :meth:`ChunkCache.reserve` pins, all or nothing, every chunk a step
needs: a chunk already present is a hit (even while another step is still filling it: it is fetched once), a missing
one gets a slot that the caller must fill and then report with :meth:`ChunkCache.filled`. Reservations are granted
in step order, so a later step never starves the one the consumer is waiting for, and a step holds nothing while it
waits, so reservations cannot deadlock. :meth:`ChunkCache.release` unpins after the gather.

Run its tests with ``python -m pytest tests/fastload/test_cache.py -q``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChunkCache", "Reservation", "NextUse", "CacheClosedError", "size_arenas", "NEVER"]

NEVER = np.iinfo(np.int64).max
"""Next-use value of a chunk no later step needs."""

Key = tuple[str, tuple[int, ...]]  # (array name, chunk index)


class CacheClosedError(RuntimeError):
    """The cache was closed while a step waited on it."""


class NextUse:
    """For each chunk key, the steps that still need it; the first of them is its next use.

    Parameters
    ----------
    uses : mutable mapping
        ``key -> sorted steps`` that need the chunk. The plan appends later steps (as ``collections.deque``)
        while the cache runs: it plans ahead lazily. Finished steps are removed from the front, so memory stays
        bounded by the planning horizon however long the epoch. Other sequences (lists, arrays) are converted to
        deques on first use.
    start : int
        First step of this run (resume): earlier uses count as finished.
    """

    def __init__(self, uses: MutableMapping[Hashable, Any], start: int = 0):
        self._uses = uses
        self._ahead: dict[Hashable, set[int]] = {}
        self._start = int(start)

    def _queue(self, key: Hashable) -> deque | None:
        u = self._uses.get(key)
        if u is None or isinstance(u, deque):
            return u
        q = deque(int(s) for s in u if s >= self._start)
        self._uses[key] = q
        return q

    def next(self, key: Hashable) -> int:
        """The earliest unfinished step that needs ``key`` (:data:`NEVER` if none)."""
        u = self._queue(key)
        return int(u[0]) if u else NEVER

    def finish(self, key: Hashable, step: int) -> None:
        """Record that ``step`` no longer needs ``key``."""
        u = self._queue(key)
        if not u:
            return
        if u[0] == step:
            u.popleft()
            ahead = self._ahead.get(key)
            if ahead:
                while u and u[0] in ahead:
                    ahead.discard(u.popleft())
                if not ahead:
                    del self._ahead[key]
        else:  # finished out of order: dropped once the steps before it finish
            self._ahead.setdefault(key, set()).add(int(step))


class _FreeSlots:
    """Free slot numbers: the never-used ones as a counter (arenas may have many slots), then a list."""

    __slots__ = ("_fresh", "_n", "_back")

    def __init__(self, n: int):
        self._fresh = 0
        self._n = int(n)
        self._back: list[int] = []

    def __len__(self) -> int:
        return self._n - self._fresh + len(self._back)

    def __bool__(self) -> bool:
        return len(self) > 0

    def pop(self) -> int:
        if self._back:
            return self._back.pop()
        if self._fresh >= self._n:
            raise IndexError("no free slot")
        self._fresh += 1
        return self._fresh - 1

    def append(self, slot: int) -> None:
        self._back.append(slot)


class _Ready:
    """A one-shot ``threading.Event`` for one chunk: one lock, no Condition (one is made per chunk fetched)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()  # held until set(); waiters block on it

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Mark ready and wake every waiter (called once, under the cache's lock)."""
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=timeout):
            self._lock.release()  # let the next waiter through
        return self._set


@dataclass(slots=True, eq=False)
class _Entry:
    key: Key
    slot: int
    pins: int = 0
    ready: _Ready = field(default_factory=_Ready)
    error: BaseException | None = None
    version: int = 0


@dataclass(slots=True)
class Reservation:
    """What :meth:`ChunkCache.reserve` granted one step.

    Attributes
    ----------
    step : int
        The step.
    slots : dict
        ``key -> slot`` for every key of the step.
    to_fill : list
        Keys this step must fetch, decode into their slot, then report with :meth:`ChunkCache.filled`.
    to_wait : list
        Keys another step is still filling; :meth:`ChunkCache.wait` on them before reading.
    hits : int
        Keys that were present or already being filled (not fetched by this step).
    """

    step: int
    slots: dict[Key, int]
    to_fill: list[Key]
    to_wait: list[Key]
    hits: int
    _entries: list[_Entry]


def size_arenas(budget: int, chunk_nbytes: Mapping[str, int], min_slots: Mapping[str, int],
                weight: Mapping[str, float] | None = None) -> dict[str, int]:
    """Slots per array: at least ``min_slots``, the rest of ``budget`` shared by ``weight`` (default: bytes).

    Returns the minimum when the budget is smaller than that (the caller decides whether that is an error).
    """
    n = {a: int(min_slots[a]) for a in chunk_nbytes}
    spare = budget - sum(n[a] * chunk_nbytes[a] for a in n)
    if spare <= 0:
        return n
    w = dict(weight) if weight else {a: float(n[a] * chunk_nbytes[a]) for a in n}
    total = sum(w.values()) or 1.0
    for a in n:
        n[a] += int(spare * w[a] / total) // max(1, chunk_nbytes[a])
    return n


class ChunkCache:
    """Decoded chunks in per-array slot arenas; pins while in use; evicts by next use.

    Parameters
    ----------
    arenas : mapping
        ``array -> (n_slots, chunk_elems, dtype)``.
    uses : mapping
        ``(array, chunk) -> sorted int array`` of the plan's steps that need each chunk (see :class:`NextUse`).
    start_step : int
        First step of this run (on resume).
    """

    def __init__(self, arenas: Mapping[str, tuple[int, int, np.dtype]], uses: MutableMapping[Key, Any], *,
                 start_step: int = 0):
        self._arena = {a: np.empty((int(n), int(e)), dtype=np.dtype(dt)) for a, (n, e, dt) in arenas.items()}
        for a, arr in self._arena.items():
            if arr.shape[0] < 1:
                raise ValueError(f"cache arena of array {a!r} needs at least one slot")
        self._free = {a: _FreeSlots(arr.shape[0]) for a, arr in self._arena.items()}
        self._unpinned = dict.fromkeys(self._arena, 0)  # ready entries with no pins
        self._heap: dict[str, list] = {a: [] for a in self._arena}  # (-next_use, seq, version, entry)
        self._table: dict[Key, _Entry] = {}
        self._next = NextUse(uses, start_step)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._waiting: list[int] = []  # heap of steps waiting for a reservation
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- arenas -------------------------------------------------------------------------------------------------
    def arena(self, array: str) -> np.ndarray:
        """The slot arena of ``array``: ``(n_slots, chunk_elems)``."""
        return self._arena[array]

    @property
    def nbytes(self) -> int:
        """Bytes of all arenas (the budget actually used)."""
        return sum(a.nbytes for a in self._arena.values())

    def n_slots(self, array: str) -> int:
        return self._arena[array].shape[0]

    def __contains__(self, key: Key) -> bool:
        with self._cond:
            e = self._table.get(key)
            return e is not None and e.ready.is_set() and e.error is None

    # -- reservations -------------------------------------------------------------------------------------------
    def reserve(self, step: int, keys: Iterable[Key], *, should_stop: Callable[[], bool] | None = None,
                poll: float = 0.05) -> Reservation:
        """Pin every chunk ``step`` needs, giving slots to the missing ones (all or nothing, in step order).

        Blocks while the arenas are full of pinned chunks or an earlier step is waiting. ``should_stop`` is polled
        while waiting; when it returns true (or the cache is closed) :class:`CacheClosedError` is raised.
        """
        keys = list(dict.fromkeys(keys))
        need: dict[str, int] = {}
        for a, _ in keys:
            if a not in self._arena:
                raise KeyError(f"no cache arena for array {a!r}")
            need[a] = need.get(a, 0) + 1
        for a, n in need.items():
            if n > self._arena[a].shape[0]:
                raise ValueError(f"step {step} needs {n} chunks of array {a!r} at once but its cache arena has "
                                 f"{self._arena[a].shape[0]} slots")
        with self._cond:
            heapq.heappush(self._waiting, step)
            try:
                while not (self._waiting[0] == step and self._fits(keys)):
                    if self._closed or (should_stop is not None and should_stop()):
                        raise CacheClosedError("the chunk cache was closed while a step waited for slots")
                    self._cond.wait(poll)
                return self._grant(step, keys)
            finally:
                self._waiting.remove(step)
                heapq.heapify(self._waiting)
                self._cond.notify_all()

    def _fits(self, keys: Sequence[Key]) -> bool:
        missing: dict[str, int] = {}
        mine_unpinned: dict[str, int] = {}
        for k in keys:
            e = self._table.get(k)
            if e is None:
                missing[k[0]] = missing.get(k[0], 0) + 1
            elif e.pins == 0:
                mine_unpinned[k[0]] = mine_unpinned.get(k[0], 0) + 1
        return all(n <= len(self._free[a]) + self._unpinned[a] - mine_unpinned.get(a, 0)
                   for a, n in missing.items())

    def _grant(self, step: int, keys: Sequence[Key]) -> Reservation:
        slots: dict[Key, int] = {}
        to_fill: list[Key] = []
        to_wait: list[Key] = []
        entries: list[_Entry] = []
        hits = 0
        for k in keys:  # pin what is present first, so eviction below cannot take it
            e = self._table.get(k)
            if e is None:
                continue
            if e.pins == 0:
                self._unpinned[k[0]] -= 1
            e.pins += 1
            e.version += 1
            slots[k] = e.slot
            entries.append(e)
            hits += 1
            if not e.ready.is_set():
                to_wait.append(k)
        for k in keys:
            if k in slots:
                continue
            slot = self._take_slot(k[0])
            e = _Entry(k, slot, pins=1)
            self._table[k] = e
            slots[k] = slot
            entries.append(e)
            to_fill.append(k)
        self.hits += hits
        self.misses += len(to_fill)
        return Reservation(step, slots, to_fill, to_wait, hits, entries)

    def _take_slot(self, array: str) -> int:
        if self._free[array]:
            return self._free[array].pop()
        heap = self._heap[array]
        while heap:
            _, _, version, e = heapq.heappop(heap)
            if e.pins == 0 and e.version == version and self._table.get(e.key) is e:
                del self._table[e.key]
                self._unpinned[array] -= 1
                self.evictions += 1
                return e.slot
        raise AssertionError(f"no evictable slot for array {array!r} although _fits said so")

    # -- filling ------------------------------------------------------------------------------------------------
    def filled(self, key: Key, error: BaseException | None = None) -> None:
        """Report that the slot of ``key`` holds the decoded chunk, or that filling it failed with ``error``.

        A failed chunk leaves the cache (its slot is freed when its pins are released), so a later step tries
        again; steps waiting on it get ``error`` from :meth:`wait`.
        """
        with self._cond:
            e = self._table[key]
            if error is not None:
                e.error = error
                del self._table[key]
            e.ready.set()

    def abandon(self, key: Key, error: BaseException) -> None:
        """Like ``filled(key, error)`` if ``key`` is still being filled; nothing if it was already reported."""
        with self._cond:
            e = self._table.get(key)
            if e is not None and not e.ready.is_set():
                e.error = error
                del self._table[key]
                e.ready.set()

    def wait(self, res: Reservation, key: Key, *, should_stop: Callable[[], bool] | None = None,
             poll: float = 0.05) -> None:
        """Block until another step has filled ``key``; re-raise its error if filling failed."""
        e = next(x for x in res._entries if x.key == key)
        while not e.ready.wait(poll):
            if self._closed or (should_stop is not None and should_stop()):
                raise CacheClosedError("the chunk cache was closed while a step waited for a chunk")
        if e.error is not None:
            raise e.error

    def release(self, res: Reservation, step_done: bool = True) -> None:
        """Unpin the chunks of a reservation; with ``step_done`` their next use moves past ``res.step``."""
        with self._cond:
            for e in res._entries:
                if step_done:
                    self._next.finish(e.key, res.step)
                e.pins -= 1
                if e.pins > 0:
                    continue
                a = e.key[0]
                if self._table.get(e.key) is not e:  # failed: drop it, give the slot back
                    self._free[a].append(e.slot)
                    continue
                if not e.ready.is_set():  # released before it was filled (the filler gave up): drop it
                    del self._table[e.key]
                    self._free[a].append(e.slot)
                    continue
                self._unpinned[a] += 1
                e.version += 1
                nu = self._next.next(e.key)
                heapq.heappush(self._heap[a], (-nu, next(self._seq), e.version, e))
                if len(self._heap[a]) > 4 * self._arena[a].shape[0] + 64:
                    self._compact(a)
            res._entries = []
            self._cond.notify_all()

    def _compact(self, array: str) -> None:
        self._heap[array] = [r for r in self._heap[array]
                             if r[3].pins == 0 and r[3].version == r[2] and self._table.get(r[3].key) is r[3]]
        heapq.heapify(self._heap[array])

    def reset(self, uses: MutableMapping[Key, Any], start_step: int = 0) -> None:
        """Start a new plan (a new epoch, or a resume): keep the decoded chunks, rank them by the new ``uses``.

        Nothing may be pinned (every step of the previous plan finished or gave up).
        """
        with self._cond:
            if any(e.pins for e in self._table.values()):
                raise RuntimeError("ChunkCache.reset while chunks are pinned by a running step")
            self._next = NextUse(uses, start_step)
            self._waiting.clear()
            self._closed = False
            for a in self._heap:
                self._heap[a] = []
            for e in self._table.values():
                e.version += 1
                heapq.heappush(self._heap[e.key[0]], (-self._next.next(e.key), next(self._seq), e.version, e))

    def close(self) -> None:
        """Wake every waiter with :class:`CacheClosedError` (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def resident(self) -> set[Key]:
        """Keys decoded and present now (for tests and reports)."""
        with self._cond:
            return {k for k, e in self._table.items() if e.ready.is_set() and e.error is None}
