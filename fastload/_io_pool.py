"""The reader's I/O threads (:class:`_IOPool`) and what a step knows of one fetch task (:class:`_Task`).

Why this exists: :mod:`fastload.reader` runs every store request on these threads, and a store request may never
answer. ``concurrent.futures.ThreadPoolExecutor`` joins its threads at close and at the interpreter's exit (daemon
or not), and keeps a thread in a hung request for ever; this pool's threads are daemon threads, its close is bounded,
and a job its waiter has given up (the reader's read timeout) leaves its thread to it, outside the pool, so a new
thread takes the queued jobs (at most ``4 * n`` threads abandoned at once). :class:`_Task` is the hand-over between
a fetch task and the step waiting for it: the step gives the task up only while its store request is older than the
read timeout, and the task checks under a lock before it touches a slot.

Run its tests with ``python -m pytest tests/fastload/test_faults.py tests/fastload/test_reader.py -q``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__: list[str] = []  # private: fastload.reader imports _IOPool and _Task


class _PoolState:
    """What an :class:`_IOPool`'s threads share (not the pool itself, so an abandoned pool is collected)."""

    def __init__(self, n: int, name: str):
        self.n, self.name = n, name
        self.cond = threading.Condition()
        self.queue: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self.idle = 0  # threads waiting for a job
        self.closed = False
        self.threads: list[threading.Thread] = []  # the pool's threads (at most n), not the abandoned ones
        self.abandoned: set[threading.Thread] = set()  # left in a given-up job: they end when it returns
        self.running: dict[threading.Thread, tuple[Callable[..., Any], tuple]] = {}  # thread -> its job
        self.began: dict[threading.Thread, float] = {}  # thread -> time.monotonic() when its job started
        self.numbers = itertools.count()  # thread names
        self.progress = time.monotonic()  # when a thread last started or finished a job

    def shut(self) -> None:
        """No more jobs: cancel the queued ones, wake the idle threads (they end)."""
        with self.cond:
            self.closed = True
            while self.queue:
                self.queue.popleft()[0].cancel()
            self.cond.notify_all()

    def spawn(self) -> None:
        """Start a thread if a queued job waits for one and the pool has room (call with ``cond`` held)."""
        if len(self.queue) > self.idle and len(self.threads) < self.n:
            t = threading.Thread(target=_pool_worker, args=(self,), name=f"{self.name}_{next(self.numbers)}",
                                 daemon=True)
            t.start()  # (may raise: the thread is counted only once it runs)
            self.threads.append(t)


def _pool_worker(state: _PoolState) -> None:
    me = threading.current_thread()
    while True:
        with state.cond:
            if me in state.abandoned:  # its job was given up and it has been replaced: it ends here
                state.abandoned.discard(me)
                return
            while not state.queue and not state.closed:
                state.idle += 1
                state.cond.wait()
                state.idle -= 1
            if not state.queue:
                return
            fut, fn, args = state.queue.popleft()
        if fut.set_running_or_notify_cancel():
            # when it began first: abandon_stuck reads `began` of every running thread (without it a job just
            # taken would be judged by the pool's last progress, and a healthy request let go)
            state.progress = state.began[me] = time.monotonic()
            state.running[me] = (fn, args)
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - delivered to whoever waits on the future
                fut.set_exception(e)
            finally:
                state.progress = time.monotonic()
                state.running.pop(me, None)
                state.began.pop(me, None)
        del fut, fn, args  # hold nothing while idle


class _IOPool:
    """The reader's I/O threads: ``ThreadPoolExecutor.submit``, on daemon threads, with a bounded close.

    A thread stuck in a store request that never answers must keep neither :meth:`close` nor the interpreter's exit
    waiting (``concurrent.futures`` joins its threads at exit, daemon or not): :meth:`close` cancels the queued
    jobs, waits for the threads at most ``timeout`` seconds and returns those still running with their jobs; they
    end when their job returns. Threads start on demand, up to ``n``; an abandoned pool is shut when collected.

    Nor may such a thread keep its place in the pool: a job its waiter has given up (:meth:`abandon`) leaves its
    thread to it, outside the pool's count, and a new thread takes the queued jobs; the abandoned thread ends when
    that job returns. At most ``4 * n`` threads are abandoned at once (:attr:`max_abandoned`), so a store that
    answers nothing cannot start threads without end."""

    def __init__(self, n: int, name: str):
        self._state = _PoolState(max(1, int(n)), name)
        self._finalizer = weakref.finalize(self, self._state.shut)
        self.max_abandoned = 4 * self._state.n

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on an I/O thread; RuntimeError once the pool is closed, or when no thread runs and
        none can be started (the job is then not queued)."""
        st = self._state
        fut: Future = Future()
        with st.cond:
            if st.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            st.queue.append((fut, fn, args))
            try:
                st.spawn()
            except RuntimeError:  # can't start new thread: a running thread takes the job later, if one runs
                if not st.threads:
                    st.queue.pop()
                    raise
            st.cond.notify()
        return fut

    @property
    def last_progress(self) -> float:
        """``time.monotonic()`` when a thread last started or finished a job (or the pool was made): a queued job
        waits because the threads are stuck only while this is old."""
        return self._state.progress

    def abandon(self, arg: Any) -> bool:
        """Give up the thread running the job whose arguments include ``arg`` (by identity): its waiter will not
        wait for it any more. The thread leaves the pool (a new one takes the queued jobs) and ends when the job
        returns. False when :attr:`max_abandoned` threads are abandoned already (the thread stays in the pool);
        True otherwise, also when no thread runs such a job (it has returned). A thread given up counts as progress
        (:attr:`last_progress`), as in :meth:`abandon_stuck`: a queued job is not given up for the wait the stuck
        one caused before its replacement could start."""
        st = self._state
        with st.cond:
            for t, (_, args) in list(st.running.items()):
                if t in st.threads and any(a is arg for a in args):
                    if len(st.abandoned) >= self.max_abandoned:
                        return False
                    st.threads.remove(t)
                    st.abandoned.add(t)
                    st.progress = time.monotonic()  # its replacement takes the queued jobs: their waits count anew
                    with contextlib.suppress(RuntimeError):  # (no thread can start: the others take the jobs)
                        st.spawn()
                    break
        return True

    def abandon_stuck(self, stuck: Callable[[Callable[..., Any], tuple, float], bool]
                      ) -> tuple[list[tuple[Callable[..., Any], tuple]], bool]:
        """Give up every pool thread whose job ``stuck(fn, args, began)`` says is stuck (``began``: when the job
        started; called with the pool's lock held: it must take no lock), as :meth:`abandon` does, e.g. a request
        nobody waits for that has run longer than the read timeout. Returns the jobs given up and whether a stuck
        one stays in the pool because :attr:`max_abandoned` threads are abandoned already. A thread given up here
        counts as progress (:attr:`last_progress`): its replacement takes the queued jobs."""
        st = self._state
        jobs: list[tuple[Callable[..., Any], tuple]] = []
        full = False
        with st.cond:
            for t, (fn, args) in list(st.running.items()):
                began = st.began.get(t)
                if began is None or t not in st.threads or not stuck(fn, args, began):
                    continue
                if len(st.abandoned) >= self.max_abandoned:
                    full = True
                    break
                st.threads.remove(t)
                st.abandoned.add(t)
                jobs.append((fn, args))
            if jobs:
                st.progress = time.monotonic()
                with contextlib.suppress(RuntimeError):  # (no thread can start: the others take the jobs)
                    while len(st.threads) < st.n and len(st.queue) > st.idle:
                        before = len(st.threads)
                        st.spawn()
                        if len(st.threads) == before:
                            break
                st.cond.notify_all()
        return jobs, full

    def close(self, timeout: float | None) -> list[tuple[threading.Thread, tuple[Callable[..., Any], tuple] | None]]:
        """Cancel the queued jobs and wait for the threads (abandoned ones too), at most ``timeout`` seconds in all
        (None: no limit); return ``(thread, (fn, args))`` of those still running (idempotent)."""
        st = self._state
        self._finalizer.detach()
        st.shut()
        with st.cond:
            threads = list(st.threads) + sorted(st.abandoned, key=lambda t: t.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [(t, st.running.get(t)) for t in threads if t.is_alive()]


class _Task:
    """What the step waiting for one fetch/decode task knows of it, so that it can give up a store request that
    does not answer without the task writing into the step's slots afterwards.

    ``since``: when the task's current store request started (before the task runs: when it was queued); None
    between requests, and while it decodes into its slots. The waiting step gives the task up only while ``since``
    is older than the read timeout; the task looks at ``given_up`` under the lock before it touches a slot
    (:meth:`begin`, :meth:`touch_slots`), and from then on it is never given up (so decodes are not bounded by the
    read timeout).

    A direct read (an uncompressed local chunk read straight into its slot) is a store request that writes into a
    slot, so it may be given up while it writes: ``busy`` is that slot while the read runs (set and cleared under
    the lock). A step that gives the task up then must keep that slot out of use until the read returns: it puts
    the slot's pin aside in ``hold`` (under the lock, only while ``busy`` is still set), and the task's thread
    releases ``hold`` when the read returns (:meth:`end_direct`)."""

    __slots__ = ("lock", "since", "started", "given_up", "waited", "full", "busy", "hold", "attempts", "last",
                 "inflight", "hung", "began", "writing")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = time.monotonic()  # queued: waiting for an I/O thread
        self.started = False
        self.given_up = False
        self.waited = 0.0  # seconds the request (or the queue) had kept the step waiting when it gave up
        self.full = False  # given up while queued behind stuck threads the pool could not let go (its cap)
        self.busy: int | None = None  # the slot a direct read is writing into now
        self.hold: Any = None  # that slot's pin, set aside by the step that gave the task up (a Reservation)
        self.attempts = 0  # attempts of the current store request (retries + 1 so far)
        self.last = ""  # the last failed attempt's error, in words
        self.inflight: list[tuple[int, ...]] = []  # the chunks the current store request asks for
        self.hung: list[tuple[int, ...]] = []  # ``inflight`` when the step gave the task up (the chunks that hung)
        self.began: float | None = None  # time.monotonic() when the task started on its thread
        self.writing = False  # past touch_slots: it decodes into its slots (never given up from then on)

    def begin(self) -> bool:
        """The task starts on an I/O thread; False: its step gave it up while it was queued (do nothing; it stays
        not ``started``, so its step neither lets its thread go nor names a store request for it)."""
        with self.lock:
            if self.given_up:
                return False
            self.since, self.started, self.began = None, True, time.monotonic()
            return True

    def begin_direct(self, slot: int, chunk: tuple[int, ...]) -> bool:
        """A direct read of ``chunk`` into ``slot`` starts (a store request: the step may give it up); False: the
        task is given up (read nothing)."""
        with self.lock:
            if self.given_up:
                return False
            self.since, self.busy, self.inflight = time.monotonic(), slot, [chunk]
            return True

    def end_direct(self) -> tuple[bool, Any]:
        """The direct read has returned: ``(given_up, hold)``; ``hold`` (not None only when the step gave the task up
        during the read and set the slot aside) is for the caller to release now."""
        with self.lock:
            self.since = self.busy = None
            self.inflight = []
            hold, self.hold = self.hold, None
            return self.given_up, hold

    def touch_slots(self) -> bool:
        """The task is about to write into its slots; False: its step gave it up (write nothing, report nothing)."""
        with self.lock:
            self.since = None
            self.writing = not self.given_up
            return self.writing
