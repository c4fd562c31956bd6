"""The chunk reader: fetch raw chunks (many in flight), decode them into cache slots, gather batches.

Why this exists: this is where the bytes move. For each step of the epoch plan (:mod:`fastload.plan`) the reader
pins the step's chunks in the decoded-chunk cache (:mod:`fastload.cache`); chunks already there (or being decoded
for another batch) are not fetched again. The missing ones are fetched on a pool of I/O threads
(``fetch_concurrency`` requests in flight; local files one read each, remote stores batched per request through
``store.chunk_bytes_many``), decoded with numcodecs straight into their cache slot (the codecs release the GIL;
at most ``decode_workers`` decode at once, one per core, the earliest step first), and the sampling kernels
gather the step's samples from the slots into the caller's batch buffers. While a step gathers, the next step of
the batch is already fetched and decoded when its chunks fit in free slots (a cache filling up: the first
batches); a full cache is never evicted for read-ahead. A remote store's latency is hidden in steady state by
reading ahead *stored* bytes, which need no cache slot: as each step starts, the chunks of the next two steps (in
plan order, into the next batches) that the cache neither holds nor is filling are requested in the background
into a bounded buffer (:mod:`fastload._raw_ahead`), and a step's fetch takes them from there (20 ms per request,
era5-1deg tiles, 2 workers: 75 % -> 95 % of the zero-latency rate). The gather kernels are loaded on a thread of
their own at the start (Numba's first call in a process costs about a second), overlapping the first decodes.

Per chunk there is no Python object: chunks are integer ids, the cache's slot state and the plan's uses are
arrays, and fetch/decode tasks carry up to 32 chunks each (8 or more unless big chunks would put over 8 MB
in one task).

Faults: a transient storage error (an ``OSError`` that is not a missing key) is retried ``retries`` times with
exponential backoff and counted, within the read timeout (which bounds one request with its retries); while the store
is failing (a read failed after all its retries and none has succeeded since) each further read gets one try, and a
task (up to 32 chunks, a request each on a local store, one per group then one per chunk on a remote one) makes no
more requests once it has run ``read_timeout`` seconds: its other chunks fail unread. So a failing store reaches the
consumer after about (read timeout + one request) per task, the tasks on one I/O thread one after another (reads that
fail after 0.25 s, read timeout 0.4 s, retries 0, one I/O thread: the first batch raised after 1.6 s and 6 reads, was
18 s and 72 reads; before the one-try rule, 23 s at the defaults). A permanent error, or corrupt bytes, raises
:class:`~fastload.errors.ChunkReadError` naming the array, chunk and cause, or with ``on_bad_chunk="skip"`` drops the
samples that need the chunk and counts them. A store request that goes unanswered for ``read_timeout`` seconds
(``LoaderConfig.read_timeout_s``; or a task that waited that long for an I/O thread while no thread started or
finished a job) is given up by the step waiting for it: its chunks fail with
:class:`~fastload.errors.ChunkTimeoutError` (a ``ChunkReadError``): the chunk(s) of the request that hung with "no
answer to the request for <file>" (the one raised), the task's others "not read" because of it (with
``on_bad_chunk="skip"``, a warning; a later step that needs them fetches them again, also those of a read-ahead
request given up), and the request is left running on its thread, which then writes into no slot
(:class:`~fastload._io_pool._Task`) and leaves the pool: a new thread takes the queued tasks, up to 4 x
``fetch_concurrency`` threads left so at once (beyond that the store has stopped answering: an error even with
``on_bad_chunk="skip"``); before a queued task is given up, threads in a store request older than ``read_timeout``
that nobody gives up, e.g. read-ahead for a plan given up, leave the pool the same way). A step's second request
given up so fails the step at once (one slow request costs only its own chunks): its other tasks are stopped before
the stuck thread is replaced (queued ones never start, running requests are given up and left running, decodes
under way are waited for) and their chunks fail "not read" (a ``ChunkTimeoutError``); each used to be taken in turn
by the replacement thread and waited out, a read timeout per task (5 on a dead store with one I/O thread, 2 now:
tests/fastload/test_faults.py). A step never releases its
cache slots while an I/O thread may still write into them: a direct read (an uncompressed local chunk read straight
into its slot) is given up like any request, and the slot it reads into is set aside (``ChunkCache.set_aside``: a pin
of no step, which the next plan's ``ChunkCache.reset`` lets through) until the read returns (its thread releases it).
From the moment one is given up, chunks take the ordinary path, which reads into buffers of its own (also the rest of
a task already reading directly), so a dead mount pins one slot per I/O thread at most. A step that cannot be
reserved because set-aside slots leave its array too few (a cache sized for one step, as in process mode) waits for
them at most ``read_timeout``, then fails with a ``ChunkTimeoutError`` naming the hung read(s) (with
``on_bad_chunk="skip"``: the step's samples are dropped, with a warning); a step that fits once the other steps' pins
go waits as long as that takes. The I/O threads are daemon threads (:class:`~fastload._io_pool._IOPool`):
:meth:`ChunkReader.close` waits for them at most its ``timeout`` and leaves one stuck in a store request running,
named in a warning, and neither it nor the interpreter's exit waits for it.

Counters (:class:`IOStats`, defined in :mod:`fastload._io_stats`) are per batch: bytes stored (read), decoded and
useful (what the samples use), chunk hits and misses, retries, skipped samples, and seconds per stage (fetch and
decode summed over threads; plan, gather wall time of the batch's thread). The cache sizing (:func:`plan_cache`,
:func:`sample_chunk_bound`, :class:`CacheLayout`) lives in :mod:`fastload._cache_sizing`; both are re-exported here.
This module orchestrates the steps (reserve, submit, collect, gather); what runs on and around the I/O threads
(fetch tasks, direct reads, read-ahead requests, retries, the read timeout) is
:class:`~fastload._reader_fetch._Fetcher`, a mixin of :class:`ChunkReader` in :mod:`fastload._reader_fetch`; a started
step's tasks (submitting, collecting, stopping them, releasing its slots) are the mixin
:class:`~fastload._reader_tasks._StepTasks`. The decode slots (at most ``decode_workers`` at once, the earliest step
first) are :mod:`fastload._priority_slots`.

Run its tests with ``python -m pytest tests/fastload/test_loader.py tests/fastload/test_faults.py -q``.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._cache_sizing import CacheLayout, plan_cache, sample_chunk_bound
from ._io_pool import _IOPool, _Task
from ._io_stats import IOStats
from ._nvtx import range as nvtx_range
from ._priority_slots import _PrioritySlots
from ._raw_ahead import RawAhead
from ._reader_fetch import _describe_job, _Done, _Fetcher, _GivenUp, _plain_local, _transient  # noqa: F401
from ._reader_tasks import _GROUP, _MIN_TASK, _TASK_BYTES, _first, _Started, _StepTasks  # noqa: F401
from .cache import ChunkCache, Reservation
from .errors import ChunkTimeoutError
from .plan import EpochPlan, Step

__all__ = ["IOStats", "ChunkReader", "CacheLayout", "plan_cache", "sample_chunk_bound"]

log = logging.getLogger("fastload")

_AHEAD_BYTES = 96 * 2**20  # remote stores: bytes read ahead (_reader_fetch._AHEAD_STEPS steps) at most, and at
# most half the cache's size
_READ_TIMEOUT_S = 300.0  # LoaderConfig.read_timeout_s's default
_CLOSE_TIMEOUT_S = 5.0  # how long ChunkReader.close waits for its I/O threads by default


_SKIPPED: Any = object()  # _start: a step given up before it was reserved (its samples dropped)


def _count_stored(got: Mapping[str, int], stats: IOStats, multi: bool) -> None:
    """Add read-ahead bytes (array -> stored bytes) to ``stats``; ``multi``: array keys are "stream/array", counted
    per stream too."""
    for a, n in got.items():
        stats.bytes_stored += n
        if multi:
            stats.stream(a.partition("/")[0]).bytes_stored += n


def warn_given_up(late: list[str], timeout: float | None, where: str) -> None:
    """Warn of read-ahead requests :meth:`ChunkReader.settle_ahead` gave up at the end of ``where`` (an epoch, or a
    process worker's share of it); ``timeout``: the reader's read timeout (None: the settle's own limit,
    :data:`fastload._raw_ahead.SETTLE_UNTIMED_S`)."""
    if late:
        from . import _raw_ahead

        said = (f"{timeout:g} s after they started (loader.read_timeout_s)" if timeout is not None else
                f"{_raw_ahead.SETTLE_UNTIMED_S:g} s after they started (loader.read_timeout_s is None: the epoch's "
                "end waits that long at most)")
        log.warning("fastload: %s: %d read-ahead request(s) still unanswered %s, given up, left running: %s; no "
                    "batch needs their chunks, and their bytes, should they arrive, count in a later batch's "
                    "bytes_stored", where, len(late), said, "; ".join(late))


def start_kernel_warmup(target: Callable[..., None], args: tuple, name: str) -> threading.Thread | None:
    """Start ``target(*args)``, a warm-up that compiles (or loads) gather kernels, on a thread that is no daemon; its
    gathers wait for it first (:func:`await_kernel_warmup`). The Loader's reader (:meth:`ChunkReader.warm`) and the
    rollout loader (:class:`fastload.rollout_data.RolloutLoader`) use it. None when no thread can be started (the
    first gather then loads the kernels itself).

    Not a daemon: it does no I/O and always ends (seconds, a compile on a cold JIT cache), and the interpreter waits
    for it at exit, whereas a compile still running on a daemon thread when the process exits aborts it ('terminate
    called without an active exception', seen in the clean-clone CI's two-process run). So the gathers wait for it
    rather than compile on the loaders' daemon threads, and a close waits for it only within its timeout."""
    t = threading.Thread(target=target, args=args, daemon=False, name=name)
    try:
        t.start()
    except RuntimeError:  # can't start new thread
        return None
    return t


def await_kernel_warmup(warm: threading.Thread | None, stop: Callable[[], bool]) -> None:
    """Wait for the kernel warm-up ``warm`` (:func:`start_kernel_warmup`) before a gather, so that the kernels are
    compiled (on a cold JIT cache) by the warm-up's thread, which is no daemon, never by the thread calling (a
    loader's daemon worker thread: a compile still running on one of them at the process's exit aborts the
    process). Honours ``stop`` (``InterruptedError``): a loader closed during a cold compile stops its reads at
    once. Returns at once when ``warm`` is None or has ended."""
    while warm is not None and warm.is_alive():
        if stop():
            raise InterruptedError("stopped while the gather kernels were being compiled (the kernel warm-up)")
        warm.join(0.05)


class ChunkReader(_StepTasks, _Fetcher):
    """Fetch, decode and gather the steps of an :class:`~fastload.plan.EpochPlan` (thread-safe).

    Parameters
    ----------
    store : fastload.store.Store
        The store (``chunk_bytes``, ``chunk_bytes_many``, ``decode``, ``arrays``, ``source``).
    tokenizer : fastload.sampling.tokenizer.BaseTokenizer
        Gathers token tensors from the cache slots (``gather``, ``month_table``).
    cache : ChunkCache
        The decoded-chunk cache, with one arena per array the fields live in.
    fetch_concurrency : int
        I/O threads (requests in flight).
    decode_workers : int
        Chunks decoded at once.
    retries : int
        Retries of a transient storage error.
    on_bad_chunk : {"raise", "skip"}
        What a chunk that cannot be read or decoded does.
    coefficients : mapping, optional
        ``field -> (mean, std)`` for normalised fields; ``months`` the coefficient months they cover.
    useful_bytes_per_sample : int
        Source bytes one sample uses (for :attr:`IOStats.bytes_useful`).
    name : str
        Thread name prefix.
    read_timeout : float or None
        Seconds a store request may go unanswered before the step waiting for it gives it up (its chunks fail with
        :class:`~fastload.errors.ChunkTimeoutError`); None: wait for ever. An attribute: the thread backends set it.
    """

    def __init__(self, store: Any, tokenizer: Any, cache: ChunkCache, *, fetch_concurrency: int = 16,
                 decode_workers: int = 2, retries: int = 3, on_bad_chunk: str = "raise",
                 coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 months: np.ndarray | None = None, useful_bytes_per_sample: int = 0, jit: bool | None = None,
                 name: str = "fastload-io", read_ahead_bytes: int | None = None,
                 read_timeout: float | None = _READ_TIMEOUT_S):
        from .store import LocalSource
        from .store._codecs import stored_as_is

        self.store = store
        self.tokenizer = tokenizer
        self.cache = cache
        self.retries = int(retries)
        self.read_timeout = read_timeout
        self.on_bad_chunk = on_bad_chunk
        self.coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.months: np.ndarray | None = None
        self.set_coefficients(coefficients, months)
        self.useful = int(useful_bytes_per_sample)
        self.jit = jit
        # remote: one request per _GROUP chunks; local: a few tasks per decode worker and step, of at least
        # _MIN_TASK chunks (a task costs a Future, a pool hand-off and wake-ups, all under the GIL)
        self._group = 0 if isinstance(store.source, LocalSource) else _GROUP
        self._tasks = 2 * max(1, int(decode_workers))
        # multi-stream tokenizers (fastload.streams.MultiStream): array keys are "stream/array", counted per stream
        self._multi = hasattr(tokenizer, "streams")
        self._useful_by_stream = dict(getattr(tokenizer, "useful_bytes_by_stream", None) or {}) if self._multi else {}
        self._decode_slots = _PrioritySlots(max(1, int(decode_workers)))
        self._pool = _IOPool(max(1, int(fetch_concurrency)), name)
        self._stop = threading.Event()
        self._closed = False
        self._warm: threading.Thread | None = None
        self._name = name
        budget = min(_AHEAD_BYTES, cache.nbytes // 2) if read_ahead_bytes is None else int(read_ahead_bytes)
        self._ahead = (RawAhead(budget, store.chunk_bytes_many, abandon=self._pool.abandon,
                                timeout=read_timeout)
                       if self._group and budget > 0 else None)
        self._ahead_plan: Any = None  # the plan the buffer's entries were read for (cleared when it changes)
        self._failing = False  # a chunk failed after all its retries and no read has succeeded since
        # uncompressed chunks of a plain local store are read straight into their cache slot (one copy, page cache
        # to slot: no bytes object, no second copy); anything unusual about a chunk (missing, another size, an
        # error) sends it down the ordinary fetch + decode path, which fills, retries and names it as before
        self._direct_source = store.source if _plain_local(store) else None
        self._direct = {} if self._direct_source is None else {
            a: info for a, info in store.arrays.items() if stored_as_is(info)}  # fmt: skip
        # tasks given up during a direct read that still runs, whose slot the step set aside (released by the task's
        # thread when the read returns); while any is, chunks take the ordinary path
        self._direct_holds: set[_Task] = set()

    # -- public -------------------------------------------------------------------------------------------------
    def read_batch(self, plan: EpochPlan, batch: int, outs: Mapping[str, np.ndarray],
                   should_stop: Callable[[], bool] | None = None) -> tuple[IOStats, np.ndarray]:
        """Gather batch ``batch`` of ``plan`` into ``outs[field][:n]``; return its counters and the kept samples.

        ``outs[field]`` are ``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` arrays (float32, or uint16 bit patterns of
        bfloat16/float16; CPU torch tensors work too). Samples skipped for bad chunks leave the rows at the end
        unwritten; the returned index array (into the batch's samples) says which samples rows ``0..n-1`` hold.
        """
        stop = self._stopper(should_stop)
        stats = IOStats(batches=1)
        if self._ahead is not None:
            self._ahead.timeout = self.read_timeout  # (the attribute may have been set since)
        if self._ahead is not None and plan is not self._ahead_plan:  # a new plan (epoch, iteration, resume):
            self._ahead_plan = plan  # bytes read ahead for the old one would never be taken
            self._ahead.clear()
        t0 = time.perf_counter()
        steps = plan.steps(batch)
        stats.plan_s = time.perf_counter() - t0
        boxes = plan.batch_boxes(batch)
        kept: list[np.ndarray] = []
        row = 0
        # steps overlap by one: the next step's chunks are fetched and decoded while this one gathers, when its
        # slots can be had without waiting (a step never waits for slots while holding another: no deadlock)
        cur: _Started | None = None
        try:
            for i in range(len(steps)):
                if cur is None:
                    cur = self._start(steps[i], stats, stop, block=True)
                    if cur is _SKIPPED:  # (on_bad_chunk='skip': no slots for it; warned)
                        cur = None
                        continue
                assert cur is not None
                nxt = self._start(steps[i + 1], stats, stop, block=False) if i + 1 < len(steps) else None
                started, cur = cur, nxt  # (from here the finally below abandons nxt, and _finish releases started)
                if self._ahead is not None:  # best effort: an error there (planning a later batch) is that
                    try:                      # batch's to raise in its own turn, not this one's (nxt holds pins)
                        self._read_ahead(plan, steps, i + (nxt is not None), stop)
                    except Exception:  # noqa: BLE001
                        log.debug("read-ahead of the steps after batch %s step %s failed", batch, i, exc_info=True)
                    except BaseException:  # an interrupt: the step never gathers, its slots go back unused
                        self._abandon(started)
                        raise
                row = self._finish(started, boxes, outs, row, kept, stats, stop)
        finally:
            if cur is not None:  # a step failed: the one started after it gives its slots back unused
                self._abandon(cur)
        plan.forget(batch)
        if self._ahead is not None:  # stored bytes read ahead: counted as their requests return (not where taken)
            _count_stored(self._ahead.drain_stored(), stats, self._multi)
        sel = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        stats.samples = int(sel.size)
        stats.skipped = int(boxes.shape[0] - sel.size)
        stats.bytes_useful = self.useful * int(sel.size)
        if self._multi:
            for name in self._useful_by_stream:
                st = stats.stream(name)
                st.batches, st.samples, st.skipped = 1, stats.samples, stats.skipped
                st.bytes_useful = self._useful_by_stream[name] * int(sel.size)
        return stats, sel

    def settle_ahead(self, stats: IOStats, stop: Callable[[], bool] | None = None) -> tuple[int, list[str]]:
        """The end of a plan (its last batch is read: no step will take anything more read ahead): settle the
        read-ahead buffer (:meth:`fastload._raw_ahead.RawAhead.settle`: no request still queued is made, each one
        running is waited for at most ``read_timeout`` from its start) and count the stored bytes of the requests
        that returned in ``stats`` (that batch's counters; per stream too), so that an epoch's ``bytes_stored`` is
        the bytes its reads took, not some of them in the next epoch's first batch. Returns the bytes counted and
        the requests still unanswered, given up (``"<array> chunks <chunks>"``; :func:`warn_given_up` names them):
        no batch needs their chunks, and should they answer later, their bytes count in a later batch. With no
        read timeout each is waited for at most :data:`fastload._raw_ahead.SETTLE_UNTIMED_S` from its start; all
        of them at most :data:`fastload._raw_ahead.SETTLE_WAIT_S` in all (one slower, not past its timeout, is left
        running and counts in a later batch).
        ``stop``: looked at while it waits; once true, it returns at once, counting nothing (those bytes count in
        the next batch this reader reads) and giving nothing up."""
        if self._ahead is None:
            return 0, []
        got, late = self._ahead.settle(self.read_timeout, stop)
        _count_stored(got, stats, self._multi)
        return sum(got.values()), [f"{g.array} chunks {g.chunks}" for g in late]

    def warm(self, out_dtype: np.dtype) -> None:
        """Load the gather kernels on a thread of their own now, while the first batch's chunks are fetched and
        decoded (not on an I/O thread: a job that is no store request there would hold up the fetches, and with a
        short read timeout fail them 'not started').

        The first call of a Numba kernel in a process loads it from the JIT cache and initialises Numba (about
        0.6-1 s, mostly imports holding the GIL); run on zero samples here it overlaps the first batch's decodes
        (which release the GIL) instead of following them; on a cold JIT cache it compiles them (seconds), and
        every gather waits for it (:meth:`_await_warm`), so no other thread compiles them. Run with zero boxes
        through the tokenizer's own ``plan`` and ``gather``, it compiles what a batch's gather calls, for one store
        and for a multi-stream config (every stream's kernels) alike. Only with the Numba kernels in use;
        idempotent. ``out_dtype``: the batch buffers' NumPy dtype.
        """
        from .sampling.neighborhood import use_jit

        if self._warm is not None or not use_jit(self.jit, getattr(self.tokenizer, "config", None)):
            return
        if self._closed:
            return
        self._warm = start_kernel_warmup(self._warm_kernels, (np.dtype(out_dtype),), f"{self._name}_warm")

    def _await_warm(self, stop: Callable[[], bool]) -> None:
        """Wait for the kernel warm-up before a gather (:func:`await_kernel_warmup`)."""
        await_kernel_warmup(self._warm, stop)

    def _warm_kernels(self, out_dtype: np.dtype) -> None:
        try:
            b = np.zeros((0, 3), np.int64)
            p = self.tokenizer.plan(b)
            tables = p.slot_tables({a: np.zeros(0, np.int32) for a in p.chunks})
            outs = {f.name: np.empty((0, *f.sample_shape), out_dtype) for f in self.tokenizer.config.fields}
            coefficients, months = self.coefficients, self.months
            month_of = self.tokenizer.month_table(b, months)[1] if coefficients and not self._multi else None
            self.tokenizer.gather({a: self.cache.arena(a) for a in p.chunks}, tables, b, outs,
                                  coefficients=coefficients, month_of=month_of, jit=self.jit)
        except Exception as e:  # noqa: BLE001 - only a head start: the first real gather raises any real problem
            log.debug("fastload: kernel warm-up skipped: %s: %s", type(e).__name__, e)

    def set_coefficients(self, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
                         months: np.ndarray | None) -> None:
        """Use these normalisation coefficients (covering ``months``) from the next batch on; call it only while
        no batch is being read (the loader does at the start of an epoch)."""
        # a shallow copy that keeps the mapping's class and attributes (multi-stream coefficients carry .months)
        self.coefficients = copy.copy(coefficients) if coefficients else None
        self.months = None if months is None else np.asarray(months, np.int64)

    def close(self, timeout: float | None = _CLOSE_TIMEOUT_S) -> list[str]:
        """Stop: cancel queued fetches and wait for the I/O threads, at most ``timeout`` seconds (None: no limit;
        idempotent). A thread still in a store request then (a store that does not answer) is left running: a
        daemon thread that writes into no slot a step still uses and ends when its request returns; a warning names
        it and the chunks it reads. Returns those names and jobs (empty when every thread ended)."""
        if self._closed:
            return []
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.set()
        stuck = self._pool.close(timeout)
        if self._warm is not None:  # the kernel warm-up: no I/O, it ends (see warm); waited for within the timeout
            self._warm.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._warm.is_alive():  # (a cold JIT cache: seconds) not a daemon: the interpreter waits at exit
                log.info("fastload: closing the chunk reader: the gather kernels' warm-up (%s) is still compiling "
                         "after %.3g s; it ends on its own (the process's exit waits for it)", self._warm.name,
                         timeout)
        if self._ahead is not None:
            self._ahead.clear()
        left = [f"{t.name} ({_describe_job(job)})" for t, job in stuck]
        if left:
            log.warning("fastload: closing the chunk reader: %d I/O thread(s) still in a store request after %s (a "
                        "store that does not answer?), left running as daemon threads that end when their request "
                        "returns: %s", len(left), "no limit" if timeout is None else f"{timeout:.3g} s", "; ".join(left))
        return left

    # -- one step -----------------------------------------------------------------------------------------------
    def _stopper(self, should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
        if should_stop is None:
            return self._stop.is_set
        return lambda: self._stop.is_set() or should_stop()

    def _start(self, step: Step, stats: IOStats, stop: Callable[[], bool], block: bool) -> _Started | None:
        """Reserve a step's chunks and submit the fetches and decodes of the missing ones (None: ``block`` is
        False and the slots are not free right now; :data:`_SKIPPED`: ``block`` and ``on_bad_chunk="skip"``, and
        slots set aside for hung direct reads kept the step out for ``read_timeout``: its samples are dropped)."""
        try:
            res = self.cache.reserve(step.index, step.ids, should_stop=stop, block=block,
                                     held_timeout=self.read_timeout)
        except ChunkTimeoutError as e:  # slots set aside for hung direct reads leave the step too few, for longer
            if self.on_bad_chunk != "skip":  # than read_timeout: the store does not answer
                raise
            log.warning("fastload: on_bad_chunk='skip' drops the %d sample(s) of batch %s, step %s: its chunks "
                        "cannot be given cache slots (loader.read_timeout_s = %s): %s", step.stop - step.start,
                        step.batch, step.index, self.read_timeout, e)
            self.cache.uses.finish(step.index, step.ids)  # (no reservation to release: its uses are done)
            return _SKIPPED
        if res is None:
            return None
        stats.chunks += step.n_chunks
        stats.hits += res.hits
        stats.misses += res.n_fill
        if self._multi:
            self._count_streams(res, stats)
        try:
            return _Started(step, res, self._submit(step, res, stop))
        except BaseException:
            self.cache.release(res, step_done=False)
            raise

    def _abandon(self, started: _Started) -> None:
        """Wait for a started step's tasks (none may write into a slot after release) and release it unused."""
        try:
            self._collect(started, IOStats())
        except BaseException:  # noqa: BLE001 - the step is given up; its errors are not the consumer's
            pass
        finally:
            self._release(started, step_done=False)

    def _finish(self, started: _Started, boxes: np.ndarray, outs: Mapping[str, np.ndarray], row: int,
                kept: list[np.ndarray], stats: IOStats, stop: Callable[[], bool]) -> int:
        """Wait for a started step's chunks, gather its samples into ``outs`` from ``row`` on, release it."""
        cache = self.cache
        step, res = started.step, started.res
        done = False
        try:
            bad = self._collect(started, stats)
            for a, errs in cache.wait(res, should_stop=stop).items():
                bad.setdefault(a, {}).update(errs)
            if bad and self.on_bad_chunk != "skip":
                raise _first(e for errs in bad.values() for e in errs.values())
            if bad:
                self._warn_timeouts(step, bad)
            sel = self._good_samples(step, bad)
            n = int(sel.size)
            if n:
                tables = step.plan.slot_tables(res.slots)
                b = boxes[step.start:step.stop]
                if n != b.shape[0]:
                    b = np.ascontiguousarray(b[sel])
                    tables = {f: np.ascontiguousarray(t[sel]) for f, t in tables.items()}
                self._await_warm(stop)  # (before the clock: a wait for the kernels, not gather time)
                t0 = time.perf_counter()
                seconds: dict[str, float] = {}
                with nvtx_range("gather", payload=step.batch):
                    coefficients, months = self.coefficients, self.months
                    month_of = None
                    if coefficients and not self._multi:  # each stream computes its own months
                        _, month_of = self.tokenizer.month_table(b, months)
                    self.tokenizer.gather({a: cache.arena(a) for a in step.plan.chunks}, tables, b,
                                          {f: o[row:row + n] for f, o in outs.items()},
                                          coefficients=coefficients, month_of=month_of, jit=self.jit,
                                          **({"seconds": seconds} if self._multi else {}))
                stats.gather_s += time.perf_counter() - t0
                for name, sec in seconds.items():
                    stats.stream(name).gather_s += sec
                kept.append(sel + step.start)
            done = True
            return row + n
        finally:
            self._release(started, step_done=done)

    def _warn_timeouts(self, step: Step, bad: Mapping[str, Mapping[int, BaseException]]) -> None:
        """Warn when on_bad_chunk='skip' drops chunks because their store requests timed out (not bad chunks: a
        store too slow or stuck for loader.read_timeout_s), naming the first."""
        late = [e for errs in bad.values() for e in errs.values() if isinstance(e, ChunkTimeoutError)]
        if late:
            log.warning("fastload: on_bad_chunk='skip' drops the samples of %d chunk(s) of batch %s whose store "
                        "requests timed out (loader.read_timeout_s = %s), e.g. %s", len(late), step.batch,
                        self.read_timeout, _first(late))

    @staticmethod
    def _count_streams(res: Reservation, stats: IOStats) -> None:
        """Chunks, hits and misses of a multi-stream step per stream (arrays ``"stream/array"``)."""
        for a, ids in res.ids.items():
            st = stats.stream(a.partition("/")[0])
            filled = int(res.fill[a].size) if a in res.fill else 0
            st.chunks += int(ids.size)
            st.misses += filled
            st.hits += int(ids.size) - filled

    def _good_samples(self, step: Step, bad: Mapping[str, Mapping[int, BaseException]]) -> np.ndarray:
        n = step.stop - step.start
        if not bad:
            return np.arange(n, dtype=np.int64)
        ok = np.ones(n, dtype=bool)
        for field, table in step.plan.tables.items():
            pos = list(bad.get(step.plan.arrays[field], ()))
            if pos:
                ok &= ~np.isin(table, pos).reshape(n, -1).any(axis=1)
        return np.flatnonzero(ok).astype(np.int64)
