"""The decoded-chunk cache: slot arenas under a byte budget, evicting by the plan's next use (Belady).

Why this exists: decoding is the bottleneck (one core decodes about 3 GB/s), so a chunk that the epoch plan needs
again soon must stay decoded, and memory must stay bounded. Because the whole epoch's plan is known up front, the
cache knows for every chunk the next *step* (a batch, or a group of one batch's samples) that needs it, and evicts
the unpinned chunk whose next use is furthest away: first the chunks never needed again (oldest first), then the
rest by distance. This is Belady's optimal policy, exact here because the future is known (:class:`Uses`).

Memory: one 2-D arena per array, ``slots[n_slots, chunk_elems]`` of the array's dtype, allocated once (pages are
touched only when a slot is first filled). A chunk lives in one slot, in the layout ``store.decode`` writes, so the
gather kernels read it in place through the slot table.

Speed: a batch of a tile-chunked store touches thousands of chunks, so nothing here is per-chunk Python. A chunk is
an integer id per array (its linear index in the array's chunk grid); the state of every slot (chunk id, pins,
filling/ready/failed, last release) lives in NumPy arrays, and a step's lookups, pins, evictions and releases are a
few array operations per array.

Concurrency: several steps are prepared at once. :meth:`ChunkCache.reserve` pins, all or nothing, every chunk a step
needs: a chunk already present is a hit (even while another step is still filling it: it is fetched once), a missing
one gets a slot that the caller must fill and then report with :meth:`ChunkCache.filled` (or
:meth:`ChunkCache.failed`). Reservations are granted in step order, so a later step never starves the one the
consumer is waiting for, and a step holds nothing while it waits, so reservations cannot deadlock.
:meth:`ChunkCache.release` unpins after the gather.

Run its tests with ``python -m pytest tests/fastload/test_cache.py -q``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CacheBusyError, ChunkTimeoutError, FastloadError

__all__ = ["ChunkCache", "Reservation", "Uses", "CacheClosedError", "size_arenas", "NEVER"]

NEVER = np.iinfo(np.int64).max
"""Next-use value of a chunk no later step needs."""

_SHIFT = 32  # a use is packed as chunk_id << 32 | step
_LOW = (1 << _SHIFT) - 1
_FREE, _FILLING, _READY, _FAILED = 0, 1, 2, 3


class CacheClosedError(FastloadError, RuntimeError):
    """The cache was closed while a step waited on it (a ``FastloadError``, so the CLI prints its message; still a
    ``RuntimeError``, which the reader catches as "closed")."""


class Uses:
    """The planned steps that need each chunk, per array, as one sorted array of packed ``(id, step)`` pairs.

    The plan :meth:`add`\\ s each step as it plans it (ahead of the reader); the cache :meth:`finish`\\ es a step when
    it is done, which drops its pairs, so memory stays bounded by the planning horizon however long the epoch, and
    :meth:`next` is the earliest unfinished step needing a chunk (also when steps finish out of order).
    Thread-safe. Chunk ids must be below ``2**31`` and steps below ``2**32``.
    """

    def __init__(self) -> None:
        self._pairs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, step: int, ids: Mapping[str, np.ndarray]) -> None:
        """Record that ``step`` needs chunks ``ids[array]`` (int64, unique)."""
        step = int(step)
        if not 0 <= step <= _LOW:
            raise ValueError(f"step {step} outside [0, 2**32)")
        with self._lock:
            for a, v in ids.items():
                v = np.asarray(v, np.int64)
                if v.size and (v.min() < 0 or v.max() >= 1 << 31):
                    raise ValueError(f"array {a!r}: chunk ids must be in [0, 2**31) (a chunk grid of at most 2**31 "
                                     f"chunks), got {int(v.min())}..{int(v.max())}")
                new = (v << _SHIFT) | step
                old = self._pairs.get(a)
                # two sorted runs: a stable sort merges them in linear time
                self._pairs[a] = np.sort(np.concatenate([old, new]) if old is not None else new, kind="stable")

    def finish(self, step: int, arrays: Any) -> None:
        """Drop ``step``'s pairs from ``arrays``: it no longer needs them."""
        with self._lock:
            for a in arrays:
                p = self._pairs.get(a)
                if p is not None and p.size:
                    keep = (p & _LOW) != step
                    if not keep.all():
                        self._pairs[a] = p[keep]

    def next(self, array: str, ids: np.ndarray) -> np.ndarray:
        """Earliest unfinished step needing each of ``ids`` (:data:`NEVER` where none), int64."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            p = self._pairs.get(array)
        if p is None or not p.size or not ids.size:
            return np.full(ids.shape, NEVER, np.int64)
        pos = np.minimum(np.searchsorted(p, ids << _SHIFT), p.size - 1)
        got = p[pos]
        return np.where((got >> _SHIFT) == ids, got & _LOW, NEVER)

    def pairs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``array -> (chunk ids, steps)`` of every unfinished use, sorted by id then step (for tests and reports)."""
        with self._lock:
            return {a: (p >> _SHIFT, p & _LOW) for a, p in self._pairs.items()}

    def __len__(self) -> int:
        """Pairs held (for memory checks)."""
        with self._lock:
            return sum(int(p.size) for p in self._pairs.values())


@dataclass(slots=True)
class Reservation:
    """What :meth:`ChunkCache.reserve` granted one step (per array, aligned with the ids it was given).

    Attributes
    ----------
    step : int
        The step.
    ids : dict
        ``array -> (U,) int64`` chunk ids of the step.
    slots : dict
        ``array -> (U,) int32`` the slot of every chunk.
    fill : dict
        ``array -> int64`` positions (into ``ids``) this step must fetch, decode into their slot, then report with
        :meth:`ChunkCache.filled` / :meth:`ChunkCache.failed`; arrays with nothing to fill are left out.
    wait : dict
        ``array -> int64`` positions another step is still filling; :meth:`ChunkCache.wait` before reading.
    hits : int
        Chunks present or already being filled (not fetched by this step).
    """

    step: int
    ids: dict[str, np.ndarray]
    slots: dict[str, np.ndarray]
    fill: dict[str, np.ndarray]
    wait: dict[str, np.ndarray]
    hits: int
    _held: bool = field(default=True, repr=False)
    _orphan: bool = field(default=False, repr=False)  # set aside from its step (:meth:`ChunkCache.set_aside`)
    _aside: Any = field(default=None, repr=False)  # set aside: (chunk index, what holds it, time.monotonic() since)

    @property
    def n_fill(self) -> int:
        return sum(int(v.size) for v in self.fill.values())


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


class _Arena:
    """The slots of one array and their state, as arrays."""

    __slots__ = ("data", "key", "pins", "state", "seq", "errors")

    def __init__(self, n: int, elems: int, dtype: Any):
        self.data = np.empty((n, elems), dtype=dtype)
        self.key = np.full(n, -1, np.int64)  # chunk id held (-1: free, or failed and no longer findable)
        self.pins = np.zeros(n, np.int32)
        self.state = np.zeros(n, np.int8)
        self.seq = np.zeros(n, np.int64)  # release stamp: among equal next uses the oldest goes first
        self.errors: dict[int, BaseException] = {}

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The slot holding each id, -1 where absent."""
        present = np.flatnonzero(self.key >= 0)
        if not present.size or not ids.size:
            return np.full(ids.shape, -1, np.int32)
        order = present[np.argsort(self.key[present])]
        keys = self.key[order]
        pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
        return np.where(keys[pos] == ids, order[pos], -1).astype(np.int32)


class ChunkCache:
    """Decoded chunks in per-array slot arenas; pins while in use; evicts by next use.

    Parameters
    ----------
    arenas : mapping
        ``array -> (n_slots, chunk_elems, dtype)``.
    uses : Uses, optional
        The plan's next uses (a mapping, e.g. ``{}``, or None: none known yet; see :meth:`reset`).
    """

    def __init__(self, arenas: Mapping[str, tuple[int, int, Any]], uses: Uses | Mapping | None = None):
        self._arenas = {a: _Arena(int(n), int(e), np.dtype(dt)) for a, (n, e, dt) in arenas.items()}
        for a, ar in self._arenas.items():
            if ar.data.shape[0] < 1:
                raise ValueError(f"cache arena of array {a!r} needs at least one slot")
        self._uses = uses if isinstance(uses, Uses) else Uses()
        self._seq = 0
        self._cond = threading.Condition()
        self._waiting: list[int] = []  # heap of steps waiting for a reservation
        self._holders: dict[int, int] = {}  # step -> its reservations not released yet (for reset's message)
        self._orphans: list[Reservation] = []  # set aside from their steps, not released yet (:meth:`set_aside`)
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- arenas -------------------------------------------------------------------------------------------------
    def arena(self, array: str) -> np.ndarray:
        """The slot arena of ``array``: ``(n_slots, chunk_elems)``."""
        return self._arenas[array].data

    @property
    def nbytes(self) -> int:
        """Bytes of all arenas (the budget actually used)."""
        return sum(a.data.nbytes for a in self._arenas.values())

    def n_slots(self, array: str) -> int:
        return self._arenas[array].data.shape[0]

    @property
    def uses(self) -> Uses:
        return self._uses

    # -- reservations -------------------------------------------------------------------------------------------
    def reserve(self, step: int, ids: Mapping[str, np.ndarray], *, should_stop: Callable[[], bool] | None = None,
                poll: float = 0.05, block: bool = True, held_timeout: float | None = None) -> Reservation | None:
        """Pin every chunk ``step`` needs (``ids[array]``: unique int64 chunk ids), giving slots to the missing
        ones (all or nothing, in step order).

        Blocks while the arenas are full of pinned chunks or an earlier step is waiting. ``should_stop`` is polled
        while waiting; when it returns true (or the cache is closed) :class:`CacheClosedError` is raised.

        ``held_timeout``: the longest a step waits for slots set aside (:meth:`set_aside`, hung reads): while the
        step would not fit even once every step's pins were gone, because set-aside slots leave its array too few,
        it waits for them at most this long (None: for ever), then raises
        :class:`~fastload.errors.ChunkTimeoutError` naming the hung read(s), how long they hang and the setting
        (the reader passes ``loader.read_timeout_s``). A step that would fit once the steps' pins go waits as before.

        ``block=False`` is a look-ahead: it returns None unless no earlier step waits and the missing chunks fit
        in *free* slots (it never evicts, so reading ahead cannot push out a chunk the plan wants; a step that
        holds slots may look ahead this way, where waiting could deadlock).
        """
        ids = {a: np.asarray(v, np.int64) for a, v in ids.items()}
        for a, v in ids.items():
            if a not in self._arenas:
                raise KeyError(f"no cache arena for array {a!r}")
            if v.size > self._arenas[a].data.shape[0]:
                raise ValueError(f"step {step} needs {v.size} chunks of array {a!r} at once but its cache arena has "
                                 f"{self._arenas[a].data.shape[0]} slots")
        with self._cond:
            if not block:
                if self._closed:
                    raise CacheClosedError("the chunk cache is closed")
                if self._waiting and self._waiting[0] < step:
                    return None
                found = {a: self._arenas[a].lookup(v) for a, v in ids.items()}
                return self._grant(step, ids, found) if self._fits(found, evict=False) else None
            heapq.heappush(self._waiting, step)
            blocked: float | None = None  # since when set-aside slots alone keep this step out
            try:
                while True:
                    found = {a: self._arenas[a].lookup(v) for a, v in ids.items()}
                    if self._waiting[0] == step and self._fits(found):
                        return self._grant(step, ids, found)
                    if self._closed or (should_stop is not None and should_stop()):
                        raise CacheClosedError("the chunk cache was closed while a step waited for slots")
                    short = self._short_of_aside(found) if held_timeout is not None and self._orphans else None
                    if short is None:
                        blocked = None
                    else:
                        now = time.monotonic()
                        blocked = now if blocked is None else blocked
                        if now - blocked >= held_timeout:  # type: ignore[operator]
                            raise self._aside_error(step, ids, short, now - blocked, held_timeout, now)
                    self._cond.wait(poll)
            finally:
                self._waiting.remove(step)
                heapq.heapify(self._waiting)
                self._cond.notify_all()

    def _short_of_aside(self, found: Mapping[str, np.ndarray]) -> str | None:
        """An array whose set-aside slots leave too few for the step even with no step's pins (None: none)."""
        for a, s in found.items():
            aside = np.zeros(self._arenas[a].data.shape[0], bool)
            for r in self._orphans:
                if a in r.slots:
                    aside[r.slots[a]] = True
            usable = int((~aside).sum()) + int(aside[s[s >= 0]].sum())  # (a hit in a set-aside slot is usable)
            if s.size > usable:
                return a
        return None

    def _aside_error(self, step: int, ids: Mapping[str, np.ndarray], array: str, waited: float,
                     limit: float | None, now: float) -> ChunkTimeoutError:
        hung = [r for r in self._orphans if array in r.slots]
        n = self._arenas[array].data.shape[0]
        what = []
        for r in hung:
            chunk, note, since = r._aside or ((), "", now)
            what.append(f"{note or f'chunk {tuple(chunk)}'} (slot {int(r.slots[array][0])}, hanging for "
                        f"{now - since:.3g} s)")
        first = hung[0]._aside[0] if hung and hung[0]._aside else (int(hung[0].ids[array][0]),) if hung else ()
        return ChunkTimeoutError(
            array, tuple(first),
            f"step {step} needs {int(ids[array].size)} of the {n} cache slots of array {array!r} at once, and "
            f"{len(hung)} are set aside for given-up reads that still hang: {'; '.join(what)}; waited {waited:.3g} s "
            f"for them (loader.read_timeout_s = {limit:g}): the store is not answering")

    def _fits(self, found: Mapping[str, np.ndarray], evict: bool = True) -> bool:
        for a, s in found.items():
            missing = int((s < 0).sum())
            if not missing:
                continue
            ar = self._arenas[a]
            idle = ar.pins == 0
            free = int((idle & (ar.key < 0)).sum())
            if not evict:
                if missing > free:
                    return False
                continue
            evictable = int((idle & (ar.state == _READY) & (ar.key >= 0)).sum())
            hit = s[s >= 0]
            mine = int((ar.pins[hit] == 0).sum())  # my hits are pinned by me, not evicted for me
            if missing > free + evictable - mine:
                return False
        return True

    def _grant(self, step: int, ids: Mapping[str, np.ndarray], found: Mapping[str, np.ndarray]) -> Reservation:
        slots: dict[str, np.ndarray] = {}
        fill: dict[str, np.ndarray] = {}
        wait: dict[str, np.ndarray] = {}
        hits = 0
        for a, s in found.items():  # pin what is present first, so eviction below cannot take it
            ar = self._arenas[a]
            hit = s >= 0
            ar.pins[s[hit]] += 1  # a step's ids are unique: no slot twice
            hits += int(hit.sum())
            w = np.flatnonzero(hit & (ar.state[np.maximum(s, 0)] == _FILLING))
            if w.size:
                wait[a] = w
        for a, s in found.items():
            miss = np.flatnonzero(s < 0)
            if miss.size:
                ar = self._arenas[a]
                got = self._take_slots(a, ar, miss.size)
                s = s.copy()
                s[miss] = got
                ar.key[got] = ids[a][miss]
                ar.pins[got] = 1
                ar.state[got] = _FILLING
                fill[a] = miss
            slots[a] = s
        n_fill = sum(int(v.size) for v in fill.values())
        self._holders[step] = self._holders.get(step, 0) + 1
        self.hits += hits
        self.misses += n_fill
        return Reservation(step, dict(ids), slots, fill, wait, hits)

    def _take_slots(self, array: str, ar: _Arena, n: int) -> np.ndarray:
        idle = ar.pins == 0
        free = np.flatnonzero(idle & (ar.key < 0))
        if free.size >= n:
            return free[:n].astype(np.int32)
        need = n - free.size
        cand = np.flatnonzero(idle & (ar.state == _READY) & (ar.key >= 0))
        nxt = self._uses.next(array, ar.key[cand])
        order = np.lexsort((ar.seq[cand], -nxt))  # furthest next use first (NEVER first), then oldest
        if order.size < need:
            raise AssertionError(f"no evictable slot for array {array!r} although _fits said so")
        victims = cand[order[:need]]
        ar.key[victims] = -1
        ar.state[victims] = _FREE
        self.evictions += int(need)
        return np.concatenate([free, victims]).astype(np.int32)

    # -- filling ------------------------------------------------------------------------------------------------
    def filled(self, array: str, slots: Any) -> None:
        """Report that ``slots`` of ``array`` hold their decoded chunks (wakes the steps waiting on them)."""
        with self._cond:
            ar = self._arenas[array]
            s = np.asarray(slots, np.int64)
            s = s[ar.state[s] == _FILLING]  # a slot already failed (abandoned) stays failed
            ar.state[s] = _READY
            self._cond.notify_all()

    def failed(self, array: str, slot: int, error: BaseException) -> None:
        """Report that filling ``slot`` failed with ``error``: the chunk leaves the cache (a later step tries again;
        its slot is freed once unpinned) and the steps waiting on it get ``error`` from :meth:`wait`."""
        with self._cond:
            ar = self._arenas[array]
            if ar.state[slot] == _FILLING:
                ar.state[slot] = _FAILED
                ar.key[slot] = -1
                ar.errors[int(slot)] = error
            self._cond.notify_all()

    def wait(self, res: Reservation, *, should_stop: Callable[[], bool] | None = None,
             poll: float = 0.05) -> dict[str, dict[int, BaseException]]:
        """Block until every chunk of ``res.wait`` is filled; return the failed ones, ``array -> {position:
        error}`` (empty when all are good)."""
        bad: dict[str, dict[int, BaseException]] = {}
        if not res.wait:
            return bad
        with self._cond:
            while True:
                if all((self._arenas[a].state[res.slots[a][w]] != _FILLING).all() for a, w in res.wait.items()):
                    break
                if self._closed or (should_stop is not None and should_stop()):
                    raise CacheClosedError("the chunk cache was closed while a step waited for a chunk")
                self._cond.wait(poll)
            for a, w in res.wait.items():
                ar = self._arenas[a]
                for pos in w[ar.state[res.slots[a][w]] == _FAILED].tolist():
                    bad.setdefault(a, {})[int(pos)] = ar.errors[int(res.slots[a][pos])]
        return bad

    def release(self, res: Reservation, step_done: bool = True) -> None:
        """Unpin the chunks of a reservation; with ``step_done`` the step's uses are finished (next uses move on).

        Chunks this step was to fill and never reported are failed first (their waiters get an error, not a hang).
        """
        if not res._held:
            return
        with self._cond:
            res._held = False
            if res._orphan:  # belongs to no step (of this plan or any later one)
                self._orphans = [r for r in self._orphans if r is not res]
            else:
                left = self._holders.pop(res.step, 1) - 1
                if left:
                    self._holders[res.step] = left
            self._seq += 1
            for a, s in res.slots.items():
                ar = self._arenas[a]
                f = res.fill.get(a)
                if f is not None:
                    left = s[f][ar.state[s[f]] == _FILLING]
                    if left.size:
                        err = CacheClosedError(f"step {res.step} gave up filling these chunks")
                        for slot in left.tolist():
                            ar.errors[int(slot)] = err
                        ar.state[left] = _FAILED
                        ar.key[left] = -1
                ar.pins[s] -= 1
                ar.seq[s] = self._seq
                idle = s[ar.pins[s] == 0]
                dead = idle[ar.state[idle] == _FAILED]
                if dead.size:
                    ar.state[dead] = _FREE
                    for slot in dead.tolist():
                        ar.errors.pop(int(slot), None)
            if step_done:
                self._uses.finish(res.step, res.ids)
            self._cond.notify_all()

    def set_aside(self, res: Reservation, array: str, slot: int, *, chunk: tuple[int, ...] | None = None,
                  what: str = "", since: float | None = None) -> Reservation:
        """Take ``slot`` of ``array`` out of the step's ``res`` (changed in place) into a reservation of its own,
        which belongs to no step: its pin outlives the step and the plan (:meth:`reset` lets it through), until
        :meth:`release` of it. For a slot a given-up request may still write into (a direct read into its slot that
        hangs): released when that request returns, the slot is free again (its chunk failed: by then, or at that
        release if it was never reported). ``chunk`` (the chunk's index), ``what`` (the request, in words) and
        ``since`` (``time.monotonic()`` when it started) name it in the error of a step that cannot be reserved
        because of it (:meth:`reserve`'s ``held_timeout``)."""
        with self._cond:
            s = res.slots[array]
            p = int(np.flatnonzero(s == slot)[0])
            keep = np.arange(s.size) != p
            part = Reservation(res.step, {array: res.ids[array][p:p + 1]}, {array: s[p:p + 1]}, {}, {}, 0,
                               _orphan=True)
            part._aside = (tuple(chunk) if chunk is not None else (int(res.ids[array][p]),), what,
                           time.monotonic() if since is None else since)
            for name in ("fill", "wait"):
                pos = getattr(res, name)
                if array in pos:
                    mask = np.zeros(s.size, bool)
                    mask[pos[array]] = True
                    if mask[p] and name == "fill":  # (failed at release if it was never reported)
                        part.fill[array] = np.zeros(1, np.int64)
                    pos[array] = np.flatnonzero(mask[keep])
            res.ids[array], res.slots[array] = res.ids[array][keep], s[keep]
            self._orphans.append(part)
            return part

    def reset(self, uses: Uses | Mapping | None) -> None:
        """Start a new plan (a new epoch, or a resume): keep the decoded chunks, rank them by the new ``uses``.

        Nothing may be pinned by a step (every step of the previous plan finished or gave up and released its
        reservation); else :class:`~fastload.errors.CacheBusyError` names the arrays and steps holding chunks, and
        the cache is left as it was. Slots set aside (:meth:`set_aside`) stay pinned and out of use meanwhile.
        """
        with self._cond:
            pins = {a: ar.pins.copy() for a, ar in self._arenas.items()}
            for r in self._orphans:
                for a, s in r.slots.items():
                    np.subtract.at(pins[a], s, 1)
            pinned = {a: int((p > 0).sum()) for a, p in pins.items() if (p > 0).any()}
            if pinned:
                raise CacheBusyError(
                    f"ChunkCache.reset: {sum(pinned.values())} chunk(s) of array(s) {sorted(pinned)} are still pinned "
                    f"by step(s) {sorted(self._holders)} of the running plan; release every Reservation first "
                    f"(ChunkCache.release, with step_done=False for a step that gave up) and wait for the steps still "
                    f"running before starting a new plan (a Loader does this itself: there, it is a bug)")
            self._uses = uses if isinstance(uses, Uses) else Uses()
            self._waiting.clear()
            self._closed = False

    def close(self) -> None:
        """Wake every waiter with :class:`CacheClosedError` (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def present(self, array: str, ids: np.ndarray) -> np.ndarray:
        """Whether each chunk id of ``array`` is held now, decoded or being filled (bool, like ``ids``); what a
        read-ahead of raw bytes must skip so that no chunk is fetched twice."""
        with self._cond:
            return self._arenas[array].lookup(np.asarray(ids, np.int64)) >= 0

    def resident(self) -> set[tuple[str, int]]:
        """``(array, chunk id)`` of the chunks decoded and present now (for tests and reports)."""
        with self._cond:
            return {(a, int(k)) for a, ar in self._arenas.items()
                    for k in ar.key[(ar.key >= 0) & (ar.state == _READY)].tolist()}
