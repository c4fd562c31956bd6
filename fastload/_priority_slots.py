"""A counting semaphore that serves its waiters lowest step first: the reader's decode slots.

Why this exists: :class:`~fastload.reader.ChunkReader` lets at most ``decode_workers`` chunks decode at once, and
its I/O threads decode for several steps (the batch the consumer waits for and read-ahead for later ones). A plain
semaphore wakes waiters in no particular order, so the second batch's decodes could hold up the first's. Here a
freed slot goes straight to the waiter of the earliest step, each waiter on a lock of its own (no herd of threads
woken per release). It knows nothing of chunks or caches; ``fastload.reader`` re-exports it. Quick look::

    slots = _PrioritySlots(2)
    with slots.hold(step=3):
        ...  # at most 2 holders at once; waiters get in by step, then by arrival
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator

__all__: list[str] = []  # private: fastload.reader imports _PrioritySlots


class _PrioritySlots:
    """A counting semaphore whose waiters are served lowest step first: the batch the consumer waits for decodes
    before read-ahead for later batches (the first batch is not slowed by the second's decodes). A release hands
    the slot to exactly one waiter (its own lock), so no herd of waiting threads wakes per release."""

    def __init__(self, n: int):
        self._free = int(n)
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, threading.Lock]] = []  # heap of (step, ticket, the waiter's lock)
        self._ticket = itertools.count()

    @contextlib.contextmanager
    def hold(self, step: int) -> Iterator[None]:
        with self._lock:
            if self._free and not self._waiting:  # (a waiter exists only while no slot is free)
                self._free -= 1
                gate = None
            else:
                gate = threading.Lock()
                gate.acquire()
                heapq.heappush(self._waiting, (int(step), next(self._ticket), gate))
        if gate is not None:
            gate.acquire()  # released by the holder that hands its slot over to this waiter
        try:
            yield
        finally:
            with self._lock:
                if self._waiting:
                    heapq.heappop(self._waiting)[2].release()  # the slot passes straight to the earliest step
                else:
                    self._free += 1
