"""The chunk reader's fetch side: fetch tasks, store requests with retries and the read timeout, direct reads.

Why this exists: :mod:`fastload.reader` orchestrates the steps of a batch (reserve, submit, collect, gather); this
module holds what runs on and around its I/O threads: a fetch/decode task (:meth:`_Fetcher._fetch_decode`), the
direct read of uncompressed local chunks into their slots, the raw read-ahead requests, the retries of transient
errors, and the read timeout (a step waiting for a task gives up a store request that does not answer, and the pool
lets stuck threads go). :class:`_Fetcher` is a mixin of :class:`fastload.reader.ChunkReader`; it uses the reader's
``store``, ``cache``, ``retries``, ``read_timeout``, ``_pool``, ``_ahead``, ``_group``, ``_failing``, ``_direct``,
``_direct_source``, ``_direct_holds`` and ``_decode_slots``. The design (faults, timeouts) is in the module
docstring of :mod:`fastload.reader`.

Run its tests with ``python -m pytest tests/fastload/test_faults.py tests/fastload/test_reader.py -q``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Container
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io_pool import _Task
from ._nvtx import range as nvtx_range
from .errors import ChunkReadError, ChunkTimeoutError, FastloadError
from .plan import EpochPlan, Step
from .store import stored_nbytes
from .store._shard import checked_under

if TYPE_CHECKING:
    from ._io_stats import IOStats
    from .reader import _Started

__all__: list[str] = []  # private: fastload.reader's ChunkReader mixes _Fetcher in

log = logging.getLogger("fastload")

_BACKOFF_S = 0.05  # first retry delay; doubles per retry
_AHEAD_STEPS = 2  # remote stores: steps (in plan order) whose stored bytes are fetched ahead of them
_PLAN_TOKENS = threading.Lock()  # makes a reader's shard check token of a new plan (_Fetcher._check_token)



class _GivenUp(ChunkTimeoutError):
    """A request of a task its step has given up (read timeout): nobody waits for the answer, so it is no evidence
    about the store; :meth:`ChunkReader._fetch_store` re-raises it at once (no per-chunk fallback, no ``_failing``)."""


def _transient(e: BaseException) -> bool:
    """A storage error worth retrying: an OSError (bare, or the cause of a ChunkReadError) that is not a missing
    file or a permission problem, and not corrupt bytes."""
    cause = e.__cause__ if isinstance(e, ChunkReadError) else e
    if not isinstance(cause, OSError) or isinstance(cause, FastloadError):
        return False
    return not isinstance(cause, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


@dataclasses.dataclass(slots=True)
class _Done:
    fetch_s: float = 0.0
    decode_s: float = 0.0
    stored: int = 0
    decoded: int = 0
    retries: int = 0
    errors: dict[int, ChunkReadError] = dataclasses.field(default_factory=dict)  # position in the group -> error
    task: _Task | None = None  # the hand-over with the waiting step (None: a read nobody times)


class _Fetcher:
    """The fetch side of :class:`fastload.reader.ChunkReader` (a mixin: see the module docstring for the attributes
    it uses)."""

    def _stop_tasks(self, started: _Started, futures: list[tuple[str, np.ndarray, Future, _Task]]) -> None:
        """Stop a step's unfinished tasks without waiting for their store requests (:meth:`_stop_task`: queued ones
        never start, running ones are given up, decodes under way are waited for)."""
        for a, _, fut, task in futures:
            if not fut.done():
                self._stop_task(started, a, fut, task)

    def _give_up_tasks(self, started: _Started, futures: list[tuple[str, np.ndarray, Future, _Task]], why: str,
                       stats: IOStats, bad: dict[str, dict[int, BaseException]]) -> None:
        """After :meth:`_stop_tasks`: a task that ended (or was decoding, and was waited for) counts as usual; the
        chunks of the others fail "not read" with ``why`` (into ``bad``)."""
        res = started.res
        for a, group, fut, task in futures:
            d = None
            if fut.done() and not fut.cancelled() and task.writing:  # it ended, or decoded (waited for)
                try:
                    d = fut.result()
                except BaseException:  # noqa: BLE001 - an unexpected failure of a task given up: its chunks fail
                    d = None
            if d is None:
                rows = started.step.plan.chunks[a][group].tolist()
                d = _Done(errors={j: ChunkTimeoutError(a, tuple(c), f"not read: {why}") for j, c in enumerate(rows)})
                for j, e in d.errors.items():
                    self.cache.failed(a, int(res.slots[a][group[j]]), e)
            self._count(stats, a, d)
            if d.errors:
                mine = bad.setdefault(a, {})
                for j, e in d.errors.items():
                    mine[int(group[j])] = e

    def _count(self, stats: IOStats, array: str, d: _Done) -> None:
        """Add a task's counters to the batch's (and its stream's)."""
        for st in [stats, stats.stream(array.partition("/")[0])] if self._multi else [stats]:
            st.fetch_s += d.fetch_s
            st.decode_s += d.decode_s
            st.bytes_stored += d.stored
            st.bytes_decoded += d.decoded
            st.retries += d.retries


    def _wait_task(self, fut: Future, task: _Task) -> _Done | None:
        """The task's result, or None once it is given up: a store request of it (or its wait for an I/O thread)
        has gone unanswered for ``read_timeout`` seconds. Before a queued task is given up, the I/O threads stuck
        in store requests older than that (given up by their waiter, or with none: read-ahead whose entries were
        cleared) leave the pool and the wait starts again (:meth:`_reclaim`); ``task.full``: one could not."""
        limit = self.read_timeout
        if limit is None:
            return fut.result()
        while True:
            with task.lock:
                since = task.since
                queued = since is not None and not task.started
                if queued:  # a busy pool is no reason to give it up, a stuck one is (no thread started or finished one)
                    since = max(since, self._pool.last_progress)  # type: ignore[type-var]
                now = time.monotonic()
                left = limit if since is None else since + limit - now
                if left <= 0 and not queued:
                    task.given_up, task.waited = True, now - since  # type: ignore[operator]
                    task.hung = list(task.inflight)
                    if task.busy is not None:  # a direct read hangs in its slot: from now on chunks take the
                        self._direct_holds.add(task)  # ordinary path (its thread discards it when the read returns)
                    return None
            if left <= 0:  # queued behind threads that made no progress for read_timeout: free the stuck ones
                freed, full = self._reclaim(limit)
                with task.lock:
                    if freed or task.started:  # replacements take the queue (or it began): wait again
                        continue
                    task.given_up, task.waited, task.full = True, now - since, full  # type: ignore[operator]
                    fut.cancel()  # still queued: it never starts
                    return None
            try:
                return fut.result(timeout=left)
            except FutureTimeout:  # (the builtin TimeoutError in 3.11)
                if fut.done():  # finished just after the wait timed out: its own result (or its own error)
                    return fut.result()

    def _reclaim(self, limit: float) -> tuple[int, bool]:
        """Let go of every I/O thread in a store request older than ``limit`` (a fetch task's timed request, or a
        read-ahead request: whoever waits for it gives it up, and one nobody waits for must not keep its thread
        for ever); a read-ahead request let go so gives its byte budget back. Returns how many threads left the
        pool and whether a stuck one stays (:attr:`_IOPool.max_abandoned` threads are left already)."""
        now = time.monotonic()
        ahead = self._ahead
        run = None if ahead is None else ahead.run

        def stuck(fn: Callable[..., Any], args: tuple, began: float) -> bool:
            if args and isinstance(args[-1], _Task):  # a fetch task: only while in a store request (never a decode)
                t = args[-1]
                return t.started and t.since is not None and now - t.since >= limit
            return run is not None and fn == run and now - began >= limit  # not a warm-up or any other job

        jobs, full = self._pool.abandon_stuck(stuck)
        for fn, args in jobs:
            if ahead is not None and fn == run:
                ahead._give_up(args[0])
        return len(jobs), full

    def _given_up(self, step: Step, array: str, group: np.ndarray, task: _Task, full: bool = False) -> _Done:
        """The errors of a given-up task's chunks, naming each chunk and the wait (``full``: the pool has
        abandoned as many threads as it may)."""
        waited, limit = task.waited, self.read_timeout
        cap = (f"{self._pool.max_abandoned} I/O threads (4 x loader.fetch_concurrency) are already left in store "
               f"requests that never answered: the store has stopped answering") if full else ""
        if not task.started:
            why = (f"not started: no I/O thread started or finished a task for {waited:.3g} s (loader.read_timeout_s "
                   f"= {limit:g}), each is in a store request that does not answer"
                   + (f", and {cap}" if full else ""))
        elif full:
            why = f"no answer from the store after {waited:.3g} s (loader.read_timeout_s = {limit:g}), and {cap}"
        else:
            why = (f"no answer from the store after {waited:.3g} s (loader.read_timeout_s = {limit:g}); the request "
                   f"is left running")
        if task.started and task.last and not full:  # the request failed before and was retried
            why = (f"no answer from the store within loader.read_timeout_s = {limit:g} s, which bounds a request "
                   f"with its retries (loader.retries = {self.retries}): {task.attempts} attempts in {waited:.3g} s, "
                   f"the last failure: {task.last}; the request is left running")
        rows = [tuple(c) for c in step.plan.chunks[array][group].tolist()]
        hung = set(task.hung) if task.started else set()
        if not hung:
            return _Done(errors={j: ChunkTimeoutError(array, c, why) for j, c in enumerate(rows)})
        # the chunk(s) whose request hung are named as such (and raised first); the others were not read
        first = next(c for c in rows + sorted(hung) if c in hung)
        errors: dict[int, ChunkReadError] = {}
        for j, c in enumerate(rows):
            if c in hung:
                where = self._describe_chunk(array, c)
                said = why.removeprefix("no answer from the store")
                lead = (f"no answer to the request for {where}" if len(hung) == 1 else  # one request, many chunks:
                        f"no answer to a batched request for {len(hung)} chunks, {where} among them")  # which hung?
                e = ChunkTimeoutError(array, c, lead + (said if said != why else f": {why}"))
                e.hung = True  # type: ignore[attr-defined]  (what ChunkReader raises first)
            else:
                e = ChunkTimeoutError(array, c, f"not read: the task was given up while chunk {first} hung ({why})")
            errors[j] = e
        return _Done(errors=errors)

    def _describe_chunk(self, array: str, chunk: tuple[int, ...]) -> str:
        """The file or URL of a chunk, in words (its key where the store cannot say)."""
        try:
            key = self.store.arrays[array].key(chunk)
        except Exception:  # noqa: BLE001 - a name only
            return f"chunk {chunk}"
        describe = getattr(getattr(self.store, "source", None), "describe", None)
        try:
            return describe(key) if describe is not None else key
        except Exception:  # noqa: BLE001
            return key

    def _fetch_decode(self, array: str, chunks: list[tuple[int, ...]], slots: list[int], step: int,
                      stop: Callable[[], bool], task: _Task | None = None) -> _Done:
        d = _Done(task=task)
        if task is not None and not task.begin():  # given up while queued: its step failed these slots
            return _Done()
        arena = self.cache.arena(array)
        nbytes = arena.itemsize * arena.shape[1]
        good: list[int] = []
        todo = range(len(chunks))
        info = self._direct.get(array)
        # direct reads, unless one given up is still stuck in its slot (the store hangs: the ordinary path, which
        # reads into a buffer of its own, keeps further slots from being held by hung reads)
        if (info is not None and info.chunk_nbytes == nbytes and self.store.source is self._direct_source
                and not self._direct_holds):
            t0 = time.perf_counter()
            with nvtx_range("fetch"):
                rest = self._read_direct(info, chunks, slots, arena, d, good)
            d.fetch_s += time.perf_counter() - t0
            if rest is None:  # given up during a direct read: its step failed these slots (and holds the one read)
                return _Done()
            todo = rest
            if not todo:
                if task is not None and not task.touch_slots():  # (never given up here: no request runs)
                    return _Done()
                self.cache.filled(array, good)
                return d
        group_slots = slots  # d.errors and the cache's failed() use positions in the task's whole group
        if len(todo) != len(chunks):
            chunks, slots = [chunks[j] for j in todo], [slots[j] for j in todo]
        t0 = time.perf_counter()
        with nvtx_range("fetch"), checked_under(self._check_token(step)):  # a shard: one stat per step, not per chunk
            raws, counted = self._fetch(array, chunks, d, stop)
        d.fetch_s += time.perf_counter() - t0
        if task is not None and not task.touch_slots():  # given up (read timeout): its step failed these slots
            return _Done()
        decode = self.store.decode
        # one decode slot per group: one hand-off per group, not per chunk; earlier steps go first
        with self._decode_slots.hold(step):
            t0 = time.perf_counter()
            with nvtx_range("decode"):
                for k, (j, c, slot, raw) in enumerate(zip(todo, chunks, slots, raws)):
                    if isinstance(raw, ChunkReadError):
                        d.errors[j] = raw
                        continue
                    if k not in counted:  # (the read-ahead buffer counted its chunks when their request returned)
                        d.stored += stored_nbytes(raw)  # read, also when it fails to decode
                    try:
                        decode(array, raw, c, out=arena[slot])
                    except ChunkReadError as e:
                        d.errors[j] = e
                        continue
                    except BaseException as e:
                        d.errors[j] = ChunkReadError(array, c, f"decoding failed: {type(e).__name__}: {e}")
                        continue
                    d.decoded += nbytes
                    good.append(slot)
            d.decode_s += time.perf_counter() - t0
        self.cache.filled(array, good)
        for j, e in d.errors.items():
            self.cache.failed(array, group_slots[j], e)
        return d

    def _check_token(self, step: int) -> tuple[object, int]:
        """The token under which a step's shard reads check each local shard once (:func:`checked_under`): the
        step's index in its plan, and an object made once per plan (the cache's ``uses``: one per plan, set by
        ``cache.reset`` for each epoch or resume), so a shard rewritten between two steps, or two epochs, is
        read fresh; within a step a store must not change (the Loader's contract)."""
        uses = self.cache.uses
        mine = getattr(self, "_checks_plan", None)
        if mine is None or mine[0] is not uses:
            with _PLAN_TOKENS:  # (two tasks starting a plan at once must not make two tokens)
                mine = getattr(self, "_checks_plan", None)
                if mine is None or mine[0] is not uses:
                    mine = self._checks_plan = (uses, object())
        return mine[1], step

    def _read_direct(self, info: Any, chunks: list[tuple[int, ...]], slots: list[int], arena: np.ndarray,
                     d: _Done, good: list[int]) -> list[int] | None:
        """Read uncompressed chunks straight into their slots (appended to ``good``); return the positions that
        need the ordinary path: missing chunks (fill value), files of another size and read errors (which that
        path retries and reports naming the chunk). None: the step gave the task up (read timeout) during a read.

        Each read is a store request the waiting step may give up after ``read_timeout`` (a hung NFS mount) like any
        other; since it writes into its slot, the step then keeps that slot pinned (:class:`_Task`'s ``hold``) and
        this thread releases it when the read returns, so a late read never writes into a slot that another chunk
        has since been given. Costs two lock round trips per chunk; no copy."""
        read_into = self._direct_source.read_into  # type: ignore[union-attr]
        nbytes = int(info.chunk_nbytes)
        key = info.key
        task = d.task if self.read_timeout is not None else None
        rest: list[int] = []
        for j, (c, slot) in enumerate(zip(chunks, slots)):
            if j and self._direct_holds:  # a direct read hangs (given up since this task began): no more here
                rest.extend(range(j, len(chunks)))
                break
            if task is not None and not task.begin_direct(slot, tuple(c)):
                return None
            try:
                n = read_into(key(c), arena[slot])
            except (OSError, ValueError, BufferError):  # the ordinary path retries and reports it
                n = None
            finally:
                if task is not None:
                    given_up, hold = task.end_direct()
                    if hold is not None:  # the step set the slot aside: nothing writes into it any more
                        self.cache.release(hold, step_done=False)
                    if given_up:  # (marked hung by the step that gave it up: see _wait_task)
                        self._direct_holds.discard(task)
            if task is not None and given_up:
                return None
            if n == nbytes:
                good.append(slot)
            else:
                rest.append(j)
        done = len(chunks) - len(rest)
        d.stored += done * nbytes
        d.decoded += done * nbytes
        if done:
            self._failing = False
        return rest

    def _read_ahead(self, plan: EpochPlan, steps: tuple[Step, ...], i: int, stop: Callable[[], bool]) -> None:
        """Request the stored bytes of the chunks that the ``_AHEAD_STEPS`` steps after ``steps[i]`` (in plan
        order, into the following batches) need and the cache neither holds nor is filling now."""
        if stop():
            return
        ahead = list(steps[i + 1:i + 1 + _AHEAD_STEPS])
        batch = steps[i].batch
        while len(ahead) < _AHEAD_STEPS:
            batch += plan.batch_stride
            try:
                ahead += plan.steps(batch)[:_AHEAD_STEPS - len(ahead)]
            except (IndexError, KeyError):  # past the epoch's end, or read and forgotten already
                break
        assert self._ahead is not None
        for step in ahead:
            for a, ids in step.ids.items():
                missing = np.flatnonzero(~self.cache.present(a, ids))
                if not missing.size:
                    continue
                arena = self.cache.arena(a)
                est = arena.itemsize * arena.shape[1]
                rows = step.plan.chunks[a][missing].tolist()
                for j in range(0, len(rows), self._group):
                    g = self._ahead.claim(a, list(map(tuple, rows[j:j + self._group])), est, due=step.index)
                    if g is None:
                        continue
                    try:
                        self._pool.submit(self._ahead.run, g)
                    except RuntimeError:  # closed: a step that needs these chunks runs the request itself
                        return

    def _fetch(self, array: str, chunks: list[tuple[int, ...]], d: _Done,
               stop: Callable[[], bool]) -> tuple[list[bytes | None | ChunkReadError], Container[int]]:
        """Raw bytes of ``chunks`` (those read ahead from the read-ahead buffer, the rest from the store), and the
        positions taken from the buffer (their stored bytes are counted already: :meth:`RawAhead.drain_stored`)."""
        if self._ahead is None:
            return self._fetch_store(array, chunks, d, stop), ()
        got = self._ahead.take(array, chunks, timeout=self.read_timeout,
                               timed=lambda fn: self._timed(fn, d, array, chunks[0], chunks))
        if not got:
            return self._fetch_store(array, chunks, d, stop), ()
        rest = [j for j in range(len(chunks)) if j not in got]
        out: list[bytes | None | ChunkReadError] = [got.get(j) for j in range(len(chunks))]
        if rest:
            for j, raw in zip(rest, self._fetch_store(array, [chunks[j] for j in rest], d, stop)):
                out[j] = raw
        return out, got

    def _fetch_store(self, array: str, chunks: list[tuple[int, ...]], d: _Done,
                     stop: Callable[[], bool]) -> list[bytes | None | ChunkReadError]:
        """Raw bytes of ``chunks``, retrying transient errors; a chunk that still fails is its ChunkReadError."""
        if len(chunks) > 1 and self._group:  # remote: one request for the group; local: a read per chunk
            try:
                got = list(self._retry(lambda: self.store.chunk_bytes_many(array, chunks), array, chunks[0], d,
                                       stop, retries=0 if self._failing else self.retries,
                                       inflight=chunks))  # fmt: skip
                self._failing = False
                return got
            except _GivenUp:
                raise
            except ChunkReadError:
                pass  # find out which chunk is at fault: one request each
        out: list[bytes | None | ChunkReadError] = []
        limit, began = self.read_timeout, None if d.task is None else d.task.began
        for c in chunks:
            ran = 0.0 if began is None or limit is None else time.monotonic() - began
            if self._failing and limit is not None and ran > limit:  # read_timeout_s bounds one request; while the
                # store is failing, a task also stops making requests once it has run that long (up to 32 requests
                # one after another: each under the limit, a task took chunks x the request before)
                out.append(ChunkReadError(array, c, f"not read: the store is failing (a read failed after its "
                                                    f"retries and none has succeeded since) and this task has run "
                                                    f"{ran:.3g} s, past loader.read_timeout_s = {limit:g}"))
                continue
            try:
                # while the store is failing (a chunk failed after all its retries, none read since), one try
                # each: a dead store reaches the consumer in seconds, not retries x chunks x backoff
                out.append(self._retry(lambda c=c: self.store.chunk_bytes(array, c), array, c, d, stop,
                                       retries=0 if self._failing else self.retries))  # fmt: skip
                self._failing = False
            except _GivenUp:
                raise
            except ChunkReadError as e:
                out.append(e)
                self._failing = True
        return out

    def _retry(self, fn: Callable[[], Any], array: str, chunk: tuple[int, ...], d: _Done,
               stop: Callable[[], bool], retries: int | None = None,
               inflight: list[tuple[int, ...]] | None = None) -> Any:
        """``fn()``, one store request, retrying transient errors ``retries`` times with exponential backoff.

        With a read timeout, the timeout bounds the request *with* its retries and their backoff: the step waiting
        for the task gives the whole up ``read_timeout`` after the first attempt started (the error says how many
        attempts were made and the last failure), and a retry whose backoff would end past that is not made (the
        store's error is raised, saying so). Per attempt, a request could keep its step waiting up to
        (retries + 1) x read_timeout plus the backoff."""
        retries = self.retries if retries is None else retries
        task = d.task if self.read_timeout is not None else None
        if task is None:
            return self._attempts(fn, array, chunk, d, stop, retries, None)
        return self._timed(lambda: self._attempts(fn, array, chunk, d, stop, retries, task), d, array, chunk,
                           inflight)

    def _attempts(self, fn: Callable[[], Any], array: str, chunk: tuple[int, ...], d: _Done,
                  stop: Callable[[], bool], retries: int, task: _Task | None) -> Any:
        delay = _BACKOFF_S
        since = None if task is None else task.since  # (set by _timed: the first attempt's start)
        deadline = None if since is None or self.read_timeout is None else since + self.read_timeout
        for attempt in range(retries + 1):
            if task is not None:
                if task.given_up:  # (during the backoff) -> _GivenUp, from _timed
                    raise ChunkReadError(array, chunk, f"given up after {attempt} attempt(s)")
                task.attempts = attempt + 1
            try:
                return fn()
            except _GivenUp:
                raise
            except Exception as e:
                if task is not None:
                    task.last = f"{type(e).__name__}: {e}"
                late = deadline is not None and time.monotonic() + delay >= deadline
                if not _transient(e) or attempt == retries or stop() or late:
                    note = (f" (after {attempt} retries)" if attempt else "")
                    if late and _transient(e) and attempt < retries and not stop():
                        note += (f" (no more retries: the next would start {delay:g} s later, past "
                                 f"loader.read_timeout_s = {self.read_timeout:g} from the first attempt, which "
                                 f"bounds a request with its retries)")
                    if isinstance(e, ChunkReadError):
                        if note:
                            raise ChunkReadError(e.array, e.chunk, f"{e.cause}{note}", e.path) from e.__cause__
                        raise
                    raise ChunkReadError(array, chunk, f"{type(e).__name__}: {e}{note}") from e
                d.retries += 1
                log.info("fastload: retrying array %r chunk %s after %s: %s", array, chunk, type(e).__name__, e)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _timed(self, fn: Callable[[], Any], d: _Done, array: str, chunk: tuple[int, ...],
               inflight: list[tuple[int, ...]] | None = None) -> Any:
        """Run one store request (with its retries, from :meth:`_retry`), marked on the task so that its step can
        give it up ``read_timeout`` after it started; a task already given up makes no more requests, and the late
        failure of a given-up request is :class:`_GivenUp` (not the store's error: nobody waits for it)."""
        task = d.task
        if task is None or self.read_timeout is None:
            return fn()
        with task.lock:
            if task.given_up:
                raise _GivenUp(array, chunk, "given up by its step (loader.read_timeout_s)")
            task.since, task.attempts, task.last = time.monotonic(), 1, ""
            task.inflight = [tuple(c) for c in (inflight or [chunk])]  # (named if the step gives the task up)
        try:
            return fn()
        except Exception as e:
            if task.given_up:
                raise _GivenUp(array, chunk, f"given up by its step (loader.read_timeout_s), then failed: "
                                             f"{type(e).__name__}: {e}") from e
            raise
        finally:
            with task.lock:
                task.since = None
                task.inflight = []


def _describe_job(job: tuple[Callable[..., Any], tuple] | None) -> str:
    """What an I/O thread is doing, in words: the array and chunks of a fetch or a read-ahead request."""
    if job is None:
        return "ending"
    fn, args = job
    name = getattr(fn, "__name__", repr(fn))
    if name == "_fetch_decode" and len(args) >= 2:
        what, array, chunks = "fetching", args[0], args[1]
    elif name == "run" and args and hasattr(args[0], "chunks"):
        what, array, chunks = "reading ahead", args[0].array, args[0].chunks
    else:
        return name
    more = f" and {len(chunks) - 1} more" if len(chunks) > 1 else ""
    return f"{what} array {array!r}, chunk {tuple(chunks[0]) if chunks else ()}{more}"


def _plain_local(store: Any) -> bool:
    """Whether the reader may read ``store``'s uncompressed chunks itself: a :class:`Store` on a
    :class:`LocalSource` whose chunk reads nobody has replaced (a wrapper put on the instance or a subclass
    override of ``chunk_bytes``, e.g. to count reads or inject faults, must see every read)."""
    from .store import LocalSource, Store

    if not isinstance(store, Store) or type(store.source) is not LocalSource:
        return False
    methods = ("chunk_bytes", "chunk_bytes_many")  # the reads; decoding an uncompressed chunk is a copy
    if set(methods) & vars(store).keys():
        return False
    return all(getattr(type(store), m, None) is getattr(Store, m, None) for m in methods)
