"""Bounded, ordered prefetch on a pool of threads, with errors re-raised in the consumer.

Why this exists: the loader must keep a few batches in preparation while the training loop runs, but never more
than a fixed number (memory is bounded by the ring of batch buffers), and a failure anywhere (the item iterator,
a worker) must reach the training loop as an exception within moments, never as a hang. This module does only
that, for any ``work(item)`` function, and imports nothing from the package (``tests/test_layering.py`` checks)
so it can be read and tested on its own, like PhysicsNeMo's ``io_pump``.

How it works::

    dispatcher thread:  for item in items: acquire(slots)  -> work queue, and its Future -> ordered queue
    worker threads:     take (item, future) from the work queue -> future.set_result(work(item))
    consumer (caller):  next(pump) -> the next Future in order -> wait -> release(slots) -> result or raise

``depth`` bounds the items dispatched but not yet handed to the consumer (a semaphore). Results come out in the
order of ``items``. An exception raised by ``work`` is re-raised by ``next()`` for that item; one raised by the
item iterator is re-raised after the items before it. ``close()`` stops the dispatcher, cancels work not started,
waits for work in progress and joins every thread; it is idempotent and also runs on garbage collection.

Run its tests with ``python -m pytest tests/fastload/test_pump.py -q``.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

__all__ = ["Pump", "PumpClosedError"]

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.05  # how often blocked threads look at the stop flag
_END = object()  # the dispatcher ran out of items


class PumpClosedError(RuntimeError):
    """The pump was used after :meth:`Pump.close`."""


class _Shared:
    """State the threads share; kept apart from :class:`Pump` so threads never hold a reference to the pump
    (garbage collection of an abandoned pump then closes it)."""

    def __init__(self, depth: int):
        self.stop = threading.Event()
        self.slots = threading.Semaphore(depth)
        self.work: queue.SimpleQueue = queue.SimpleQueue()  # (item, future) or None (= a worker should exit)
        self.ordered: queue.SimpleQueue = queue.SimpleQueue()  # Future, _END, or BaseException from items
        self.head: object = None  # the entry taken from `ordered` that the consumer is waiting for


def _dispatch(shared: _Shared, items: Iterator, n_workers: int) -> None:
    try:
        while not shared.stop.is_set():
            while not shared.slots.acquire(timeout=_POLL_S):
                if shared.stop.is_set():
                    return
            try:
                item = next(items)
            except StopIteration:
                shared.slots.release()
                shared.ordered.put(_END)
                return
            except BaseException as e:  # the item iterator failed: the consumer re-raises it in order
                shared.slots.release()
                shared.ordered.put(e)
                return
            fut: Future = Future()
            shared.ordered.put(fut)
            shared.work.put((item, fut))
            del item, fut  # not kept while waiting for a slot (see _work)
    finally:
        for _ in range(n_workers):
            shared.work.put(None)


def _work(shared: _Shared, fn: Callable) -> None:
    while True:
        job = shared.work.get()
        if job is None:
            return
        item, fut = job
        if shared.stop.is_set() or not fut.set_running_or_notify_cancel():
            fut.cancel()
            continue
        try:
            fut.set_result(fn(item))
        except BaseException as e:  # delivered to the consumer by next()
            fut.set_exception(e)
        # hold nothing while idle: a future's exception carries the consumer's frames once re-raised there, and a
        # live thread must never keep those (and so the consumer's iterator and this pump) from collection
        del job, item, fut


def _shutdown(shared: _Shared, threads: list[threading.Thread], timeout: float | None) -> list[Future]:
    """Stop the threads (waiting at most ``timeout`` seconds for all of them); return the futures that were never
    handed to the consumer."""
    shared.stop.set()
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        if t is not threading.current_thread():
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    left = [shared.head] if isinstance(shared.head, Future) else []
    shared.head = None
    while True:
        try:
            x = shared.ordered.get_nowait()
        except queue.Empty:
            break
        if isinstance(x, Future):
            x.cancel()
            left.append(x)
    return left


class Pump(Generic[T, R], Iterator[R]):
    """Run ``work(item)`` for each item on ``workers`` threads, at most ``depth`` items ahead of the consumer.

    Parameters
    ----------
    items : iterable
        The work items, consumed lazily by a dispatcher thread.
    work : callable
        ``work(item) -> result``; runs on a worker thread. Its exceptions are re-raised by :meth:`__next__`.
    depth : int
        Most items dispatched (queued, in progress, or done) but not yet returned by :meth:`__next__`.
    workers : int
        Worker threads.
    name : str
        Prefix of the thread names (visible in ``threading.enumerate()``, py-spy, Nsight).
    on_discard : callable, optional
        Called with each result that was computed but never returned because the pump closed first (for example
        to give a buffer back).
    timeout : float, optional
        Seconds :meth:`__next__` waits for one result before raising ``TimeoutError`` (default: no limit).

    Notes
    -----
    Iterate it (``for r in pump``) or call ``next(pump)``; use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        items: Iterable[T],
        work: Callable[[T], R],
        *,
        depth: int,
        workers: int,
        name: str = "fastload-pump",
        on_discard: Callable[[R], object] | None = None,
        timeout: float | None = None,
    ):
        if depth < 1 or workers < 1:
            raise ValueError(f"Pump: depth and workers must be >= 1, got depth={depth}, workers={workers}")
        self._shared = _Shared(depth)
        self._on_discard = on_discard
        self._timeout = timeout
        self._done = False
        self._closed = False
        it = iter(items)
        self._threads = [threading.Thread(target=_work, args=(self._shared, work), name=f"{name}-worker-{i}",
                                          daemon=True) for i in range(workers)]
        self._threads.append(threading.Thread(target=_dispatch, args=(self._shared, it, workers),
                                              name=f"{name}-dispatch", daemon=True))
        for t in self._threads:
            t.start()
        # close on garbage collection; the finalizer holds no reference to self
        self._finalizer = weakref.finalize(self, _finalize, self._shared, self._threads, on_discard)

    def __iter__(self) -> Pump[T, R]:
        return self

    def __next__(self) -> R:
        if self._closed:
            raise PumpClosedError("this pump is closed")
        if self._done:
            raise StopIteration
        shared = self._shared
        waited = 0.0
        x = self._shared.head
        while x is None:  # the next entry in order; the dispatcher may not have produced it yet
            try:
                x = shared.ordered.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
                self._check_wait(waited)
        if x is _END:
            self._done = True
            raise StopIteration
        if isinstance(x, BaseException):
            self._done = True
            raise x
        fut: Future = x
        self._shared.head = fut  # kept until consumed, so an interrupted wait (Ctrl-C, timeout) can be resumed
        while True:
            try:
                result = fut.result(timeout=_POLL_S)
            except FutureTimeout:
                if not fut.done():
                    waited += _POLL_S
                    self._check_wait(waited)
                    continue
            except BaseException as err:  # noqa: BLE001 - sorted out below, from the future's own state
                if not fut.cancelled() and (not fut.done() or fut.exception() is not err):
                    raise  # an interrupt of this wait (Ctrl-C), not work(item)'s error: resumable, head is kept
            else:
                self._shared.head = None
                shared.slots.release()
                return result
            if fut.cancelled():  # only close() cancels a dispatched future
                raise PumpClosedError("this pump was closed while waiting for a result")
            self._shared.head = None
            shared.slots.release()
            e = fut.exception()  # work(item) raised it (a CancelledError or TimeoutError of its own included)
            if e is None:  # it finished just after the wait timed out
                return fut.result()
            del fut, x  # this frame goes into e's traceback: it must not keep the future (which keeps e)
            raise e

    def _check_wait(self, waited: float) -> None:
        if self._closed or self._shared.stop.is_set():
            raise PumpClosedError("this pump was closed while waiting for a result")
        if self._timeout is not None and waited >= self._timeout:
            raise TimeoutError(f"no result from the pump within {self._timeout} s")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The pump's threads (after :meth:`close`, one still alive is stuck in ``work``)."""
        return tuple(self._threads)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop dispatching, cancel queued work, wait for work in progress and join all threads (idempotent).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the threads (all together); a thread stuck longer in ``work`` is left (it is a
            daemon; :attr:`threads` shows it alive).
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _finalize(self._shared, self._threads, self._on_discard, timeout)

    def __enter__(self) -> Pump[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finalize(shared: _Shared, threads: list[threading.Thread], on_discard: Callable | None,
              timeout: float | None = 10.0) -> None:
    left = _shutdown(shared, threads, timeout)
    if on_discard is None:
        return
    for fut in left:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            on_discard(fut.result())
