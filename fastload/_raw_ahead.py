"""Raw-bytes read-ahead for remote stores: fetch the next steps' chunks before their steps start.

Why this exists: the reader (:mod:`fastload.reader`) fetches a step's missing chunks when the step reserves its
cache slots, and in steady state the cache is full and read-ahead never evicts, so with a slow store every step
starts with a full request latency to wait out. Stored (compressed) bytes need no cache slot: this buffer holds
the raw bytes of chunks the next steps will need, fetched in the background in the reader's usual request groups,
within a byte budget. When a step then fetches its chunks it takes what the buffer has (waiting for a request in
flight rather than requesting a chunk twice) and fetches only the rest.

Rules: a chunk is requested at most once per claim (an entry in the buffer is not claimed again unless its request
was given up); a failed
read-ahead request just drops its entries (the step's own fetch retries and reports the error); an entry is
dropped when consumed; finished entries beyond the budget (only when chunks come out larger than estimated) are
evicted needed-latest first (the largest ``due``, the step's plan position the reader passes to
:meth:`~RawAhead.claim`, then the latest claimed: the nearest steps' chunks, needed soonest, stay; evicting the
oldest dropped exactly those), and the reader clears the buffer when a new plan starts (an epoch, a new iteration, a
resume), so entries read for batches that were never read do not block the budget; dropped bytes count as
wasted. Stored bytes are counted when a request returns (:meth:`RawAhead.drain_stored`, per array: the reader adds
them to the batch it reads then), whether a step takes them later, they are dropped, or they are still buffered at
close; so the step that takes a chunk from the buffer does not count it again (the reader's fetch leaves out the
positions :meth:`RawAhead.take` returned). At the end of a plan (the loader, when it hands out an epoch's last batch)
:meth:`RawAhead.settle` makes no request still queued and waits for those running, each at most ``timeout`` from its
start (30 s with none), so that their bytes count in the epoch they were read for, not the next one; it stops waiting
as soon as its caller is stopped (bytes not settled then count at the next drain). An entry claimed just as another worker fetched the chunk itself stays until that clear (rare; bounded). No threads of its own: the reader runs :meth:`RawAhead.run` on its I/O pool, and a consumer that finds
its chunk's request still queued runs the request itself (no pool thread ever waits for a queued task). A consumer
waits for a request in flight at most ``timeout`` seconds from the request's start (the reader's read timeout):
then the chunk is a :class:`~fastload.errors.ChunkTimeoutError` naming it and the wait, the request's estimated bytes
leave the budget (once: a request that never answers must not switch read-ahead off), the reader's pool lets its
thread go, and the late answer is dropped. Only that consumer's step fails so: a later one needing a chunk of a
request given up (by a consumer, the sweep or a clear) or older than the timeout takes nothing from it and fetches
the chunk itself, and the chunk may be claimed again (a hang once failed it at once for the rest of the plan). A
request nobody waits for gives its estimate back the same way: at the
clear that drops its entries, or (run by a consumer whose step gave it up) at the next claim or clear once older
than the timeout; its thread goes only when the reader's pool needs it. A request that waited for a thread longer
than the timeout (queued behind stuck ones) is not made: its steps fetch their chunks.

Run its tests with ``python -m pytest tests/fastload/test_reader.py -q -k ahead``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ChunkReadError, ChunkTimeoutError
from .store import stored_nbytes

__all__ = ["RawAhead"]

Key = tuple[str, tuple[int, ...]]

_QUEUED, _RUNNING, _DONE, _FAILED = range(4)
SETTLE_UNTIMED_S = 30.0  # with no read timeout, how long settle() waits for a request, at most, from its start
SETTLE_WAIT_S = 2.0
"""The most :meth:`RawAhead.settle` waits in all, from its call: an epoch's last batch is held no longer for requests
no step needs (it exists for exact per-epoch byte counts, and the training loop waits on it). A request still
running then, not yet past its read timeout, is left running: its bytes count at a later drain (the next batch the
reader reads), and it is not named."""
_SETTLE_SLICE_S = 0.02  # settle() with a stop: how often it looks at the stop while it waits


class _Group:
    """One read-ahead request: chunks of one array, fetched together."""

    __slots__ = ("array", "chunks", "est", "order", "state", "started", "raws", "event", "abandoned", "let_go",
                 "claimed")

    def __init__(self, array: str, chunks: list[tuple[int, ...]], est: int, order: tuple[float, int]):
        self.array = array
        self.chunks = chunks
        self.est = est  # bytes counted against the budget while in flight
        self.order = order  # (due, claim sequence): when its chunks are needed; the largest is evicted first
        self.state = _QUEUED
        self.started = 0.0  # time.monotonic() when the request started (state _RUNNING)
        self.claimed = time.monotonic()
        self.raws: list[bytes | None] | None = None
        self.event = threading.Event()
        self.abandoned = False  # a consumer gave it up (read timeout): its estimate is out of the budget already
        self.let_go = False  # and its thread was let go (the abandon hook ran)


class _Raw:
    """A finished entry: the stored bytes of one chunk (None: the chunk is missing from the store)."""

    __slots__ = ("raw", "size", "stored", "order")

    def __init__(self, raw: bytes | None, order: tuple[float, int]):
        self.raw = raw
        self.size = 0 if raw is None else len(raw)  # memory held
        self.stored = stored_nbytes(raw)  # bytes read from the store (a whole shard's, on the chunk carrying them)
        self.order = order


class RawAhead:
    """A bounded buffer of stored chunk bytes fetched ahead of their steps (thread-safe).

    Parameters
    ----------
    budget : int
        Most bytes held (finished entries plus the estimated size of requests in flight).
    fetch_many : callable
        ``fetch_many(array, chunks) -> list[bytes | None]`` (``store.chunk_bytes_many``).
    abandon : callable, optional
        ``abandon(group)``: called when a consumer gives up a request that an I/O thread runs (``run(group)``), so
        that the pool can let that thread go (``_IOPool.abandon``).
    timeout : float, optional
        The read timeout (``take``'s ``timeout`` also sets it): a request running longer than this is given up at
        the next :meth:`claim` or :meth:`clear` even when nobody waits for it (its entries were cleared), so that
        its estimate leaves the budget and its thread may go.
    """

    def __init__(self, budget: int, fetch_many: Callable[[str, list[tuple[int, ...]]], Sequence[bytes | None]],
                 abandon: Callable[[_Group], Any] | None = None, timeout: float | None = None):
        self.budget = int(budget)
        self.timeout = timeout
        self._running: set[_Group] = set()  # requests running, not given up
        self._fetch_many = fetch_many
        self._abandon = abandon
        self._lock = threading.Lock()
        self._open: set[_Group] = set()  # requests claimed that have not returned (or failed) yet, given up too
        self._entries: OrderedDict[Key, _Group | _Raw] = OrderedDict()
        self._held = 0  # bytes of finished entries
        self._flight = 0  # estimated bytes of requests in flight
        self._mean: dict[str, float] = {}  # mean stored bytes per chunk seen, per array
        self._seq = 0  # claims so far (orders the entries of one due)
        self.requested = 0
        """Chunks requested ahead."""
        self.used = 0
        """Chunks taken by a step's fetch."""
        self.wasted_bytes = 0
        """Bytes fetched ahead and dropped unused (evicted over the budget, or cleared)."""
        self.fetched_bytes = 0
        """Stored bytes of every request that returned (also those dropped, or still buffered)."""
        self._unreported: dict[str, int] = {}  # array -> fetched bytes not yet drained (drain_stored)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def claim(self, array: str, chunks: Sequence[tuple[int, ...]], est: int,
              due: int | None = None) -> _Group | None:
        """Register a request for those of ``chunks`` not in the buffer yet, as many as the budget allows
        (``est``: an upper guess of one chunk's stored bytes, used until real sizes are seen; ``due``: when they
        are needed, e.g. the step's plan position, None: after everything claimed with a due). Over the budget,
        the entries with the largest ``due`` go first, and of one ``due`` the latest claimed. Returns the group
        to pass to :meth:`run` on an I/O thread, or None when there is nothing to request."""
        self._sweep()
        with self._lock:
            each = max(1, int(self._mean.get(array, est)))
            room = (self.budget - self._held - self._flight) // each
            # (an entry of a request given up, e.g. hung, does not count: the chunk may be requested again)
            todo = [c for c in chunks if not self._live(self._entries.get((array, c)))][:max(0, room)]
            if not todo:
                return None
            self._seq += 1
            g = _Group(array, todo, each * len(todo), (math.inf if due is None else float(due), self._seq))
            for c in todo:
                self._entries[(array, c)] = g
            self._flight += g.est
            self._open.add(g)
            self.requested += len(todo)
            return g

    def run(self, group: _Group) -> None:
        """Do ``group``'s request unless a consumer has taken it over, or it waited for a thread longer than
        :attr:`timeout` (queued behind stuck requests: its steps fetch their own chunks by now, and a store that
        hangs would keep the thread too); finished chunks become entries."""
        with self._lock:
            if group.state != _QUEUED:
                return
            group.state, group.started = _RUNNING, time.monotonic()
            stale = self.timeout is not None and group.started - group.claimed >= self.timeout
            if not stale:
                self._running.add(group)
        if stale:
            self._finish(group, None)  # (its entries go: a step fetches them)
            return
        self._request(group)

    def take(self, array: str, chunks: Sequence[tuple[int, ...]], *, timeout: float | None = None,
             timed: Callable[[Callable[[], Any]], Any] | None = None) -> dict[int, bytes | None | ChunkReadError]:
        """Position in ``chunks`` -> stored bytes, for the chunks the buffer has or is fetching (waiting for those
        in flight; running a still-queued request here). Chunks not returned must be fetched by the caller.

        ``timeout``: seconds a request in flight may have run (from its start) before its chunks are given up: they
        come back as :class:`~fastload.errors.ChunkTimeoutError` (None: wait for ever). ``timed(fn) -> fn()`` runs a
        request this call takes over (the caller's own request: it may time it)."""
        got: dict[int, bytes | None | ChunkReadError] = {}
        wait: list[tuple[int, _Group]] = []
        mine: list[_Group] = []
        stale: set[_Group] = set()
        if timeout is not None:
            self.timeout = timeout
        now = time.monotonic()
        with self._lock:
            for j, c in enumerate(chunks):
                e = self._entries.pop((array, c), None)
                if e is None:
                    continue
                if isinstance(e, _Group) and e.state == _RUNNING and (
                        e.abandoned or (timeout is not None and now - e.started >= timeout)):
                    # given up already (by another step, the sweep or clear) or older than the timeout: a hang
                    # earlier must not fail this step at once; the caller fetches the chunk itself
                    stale.add(e)
                    continue
                if isinstance(e, _Raw):
                    self._held -= e.size
                    self.used += 1
                    got[j] = e.raw
                    continue
                if e.state == _QUEUED:  # not started: do it here rather than wait for a pool thread
                    e.state, e.started = _RUNNING, time.monotonic()
                    self._running.add(e)  # (its caller's step may give it up: then _sweep returns its budget)
                    mine.append(e)
                wait.append((j, e))
        for g in stale:  # (nobody waits for it: its thread goes only when the pool needs it)
            self._give_up(g, let_go=False)
        for g in mine:
            self._request(g, timed)
        for j, g in wait:
            if timeout is None:
                g.event.wait()
            elif not g.event.wait(max(0.0, g.started + timeout - time.monotonic())):
                waited = time.monotonic() - g.started  # the late answer finds its entry gone and is dropped
                self._give_up(g)
                got[j] = ChunkTimeoutError(array, chunks[j], f"no answer from the store after {waited:.3g} s to a "
                                        f"read-ahead request (read timeout {timeout:g} s, loader.read_timeout_s); "
                                        f"the request is left running")
                continue
            if g.state == _DONE:
                assert g.raws is not None
                got[j] = g.raws[g.chunks.index(chunks[j])]
                with self._lock:
                    self.used += 1
        return got

    def drain_stored(self) -> dict[str, int]:
        """``array -> stored bytes`` fetched ahead since the last call (for the per-batch counters): every request
        that returned, counted once, whatever becomes of its bytes (the chunks a step takes come out marked as
        counted: see the module notes)."""
        with self._lock:
            out, self._unreported = self._unreported, {}
            return out

    def settle(self, timeout: float | None = None, stop: Callable[[], bool] | None = None
               ) -> tuple[dict[str, int], list[_Group]]:
        """The end of a plan (no step will take anything more from this buffer): the requests not started yet are
        not made, each one running is waited for until ``timeout`` seconds after its start (None: until
        :data:`SETTLE_UNTIMED_S` after it; no step needs its chunks, so the last batch is not held for ever), and
        all of them for at most :data:`SETTLE_WAIT_S` from this call (one still running then, not past its
        timeout, is left running and not returned: its bytes count at a later drain), and
        the stored bytes of every request that returned are drained (:meth:`drain_stored`), so that they count in
        the plan they were read for. Returns those bytes and the requests still unanswered, given up (a request
        that never answers; should one answer later, its bytes count at a later drain).

        ``stop`` (e.g. an iteration's ``stop.is_set``, or a process worker's ``conn.poll``) is looked at every
        few milliseconds while it waits: once true, settle returns at once ``({}, [])``, draining nothing and
        giving nothing up (the bytes of the requests that returned, and of those that return later, count at the
        next drain: the next batch this reader reads)."""
        with self._lock:
            running = [g for g in self._open if g.state == _RUNNING]
            queued = [g for g in self._open if g.state == _QUEUED]
            for g in queued:  # (run() now skips it: nobody needs its chunks)
                g.state = _RUNNING
        for g in queued:
            self._finish(g, None)
        limit = SETTLE_UNTIMED_S if timeout is None else timeout
        late = []
        t_end = time.monotonic() + SETTLE_WAIT_S
        for g in running:
            if g.abandoned:  # (given up already, by a clear at a new plan, a step or the sweep: nobody waits for it,
                continue  # and a stopped iteration's hung request must not hold the next one's end)
            end = min(g.started + limit, t_end)
            while not g.event.is_set():
                if stop is not None and stop():
                    return {}, []  # (stopped: counted at the next drain; nothing given up here)
                left = end - time.monotonic()
                if left <= 0:
                    break
                g.event.wait(left if stop is None else min(left, _SETTLE_SLICE_S))
            if not g.event.is_set() and not g.abandoned and time.monotonic() >= g.started + limit:
                late.append(g)  # (one given up before, by a step or an earlier settle, is not named again; one
                # only slower than SETTLE_WAIT_S is left running, its bytes counted at a later drain)
        for g in late:  # (nobody waits for it: its thread goes only when the pool needs it)
            self._give_up(g, let_go=False)
        return self.drain_stored(), late

    def clear(self) -> None:
        """Drop every finished entry (counted as wasted); requests in flight finish into nothing, and those whose
        entries this drops (or running longer than :attr:`timeout`) give their estimate back now: nobody will wait
        for them (their threads are let go only by the reader's pool, when it needs them)."""
        self._sweep()
        orphans: set[_Group] = set()
        with self._lock:
            for k, e in list(self._entries.items()):
                if isinstance(e, _Raw):
                    self._waste(e.stored)
                elif e.state == _RUNNING:
                    orphans.add(e)
                del self._entries[k]
            self._held = 0
        for g in orphans:  # nobody waits for their chunks now (a consumer that took some gives it up in its turn)
            self._give_up(g, let_go=False)

    # -- internals ----------------------------------------------------------------------------------------------
    @staticmethod
    def _live(e: _Group | _Raw | None) -> bool:
        """Whether an entry holds its chunk (bytes, or a request not given up)."""
        return e is not None and not (isinstance(e, _Group) and e.abandoned)

    def _request(self, g: _Group, timed: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        raws: list[bytes | None] | None = None
        try:
            fetch = self._fetch_many
            got = list(fetch(g.array, g.chunks) if timed is None else timed(lambda: fetch(g.array, g.chunks)))
            raws = got if len(got) == len(g.chunks) else None
        except Exception:  # noqa: BLE001 - read-ahead only: the step's own fetch retries and raises
            raws = None
        finally:  # whatever happened (even a BaseException), waiters in take() are released
            self._finish(g, raws)

    def _sweep(self) -> None:
        """Give up the requests that have run longer than :attr:`timeout`: whoever waits for one gives it up at
        that age anyway, and one nobody waits for (run by a consumer whose step gave it up) would hold its estimate
        for as long as it hangs."""
        if self.timeout is None:
            return
        now = time.monotonic()
        with self._lock:
            old = [g for g in self._running if now - g.started >= self.timeout]
        for g in old:
            self._give_up(g, let_go=False)

    def _give_up(self, g: _Group, let_go: bool = True) -> None:
        """A consumer no longer waits for ``g`` (read timeout): its estimate leaves the budget now (a request that
        never answers must not switch read-ahead off), and its thread may go (``let_go``: the abandon hook; not for
        a request nobody waits for, whose thread the pool lets go only when queued tasks need one: a store that
        hangs a moment must not spend the pool's bound on abandoned threads on read-ahead)."""
        with self._lock:
            if g.state != _RUNNING:  # (finished: _finish took its estimate out)
                return
            if not g.abandoned:  # the estimate leaves the budget once
                g.abandoned = True
                self._flight -= g.est
                self._running.discard(g)
            # the thread goes once, when a consumer gives the group up, also after clear() or the sweep gave it up
            # without letting its thread go
            let_go = let_go and not g.let_go
            g.let_go = g.let_go or let_go
        if let_go and self._abandon is not None:
            self._abandon(g)

    def _finish(self, g: _Group, raws: list[bytes | None] | None) -> None:
        with self._lock:
            self._open.discard(g)
            self._running.discard(g)
            if not g.abandoned:  # (a given-up group's estimate left the budget when it was given up)
                self._flight -= g.est
            g.raws = raws
            g.state = _FAILED if raws is None else _DONE
            if raws:  # read from the store: counted now, once (whether taken, dropped or still held at close)
                n = sum(map(stored_nbytes, raws))
                self.fetched_bytes += n
                self._unreported[g.array] = self._unreported.get(g.array, 0) + n
            for c, raw in zip(g.chunks, raws or [None] * len(g.chunks)):
                k = (g.array, c)
                if self._entries.get(k) is not g:
                    continue  # taken by a consumer (who reads g.raws), or cleared
                if raws is None:
                    del self._entries[k]
                    continue
                e = _Raw(raw, g.order)
                self._entries[k] = e
                self._held += e.size
            if raws:
                seen = sum(0 if r is None else len(r) for r in raws) / len(raws)
                m = self._mean.get(g.array)
                self._mean[g.array] = seen if m is None else 0.8 * m + 0.2 * seen
            self._evict()
        g.event.set()

    def _evict(self) -> None:
        """While over the budget, drop the finished entries needed latest: largest ``due``, then latest claimed
        (call with the lock held)."""
        if self._held <= self.budget:
            return
        done = [(e.order, k) for k, e in self._entries.items() if isinstance(e, _Raw)]
        done.sort(reverse=True)
        for _, k in done:
            e = self._entries.pop(k)
            assert isinstance(e, _Raw)
            self._held -= e.size
            self._waste(e.stored)
            if self._held <= self.budget:
                return

    def _waste(self, n: int) -> None:
        self.wasted_bytes += n  # (counted in drain_stored when fetched)

