"""A started step's fetch/decode tasks: submitting them, waiting for them, stopping them, releasing the step's slots.

Why this exists apart from ``reader.py``: :class:`fastload.reader.ChunkReader` orchestrates a batch's steps
(reserve, start, finish, gather); what a step's tasks need so that none writes into the step's cache slots after
their release is here: :meth:`_StepTasks._submit` (the tasks of the chunks a step must fill, sized by
``_GROUP``/``_MIN_TASK``/``_TASK_BYTES``), :meth:`_StepTasks._collect` (wait for each, give up a request unanswered
for the read timeout, a second one failing the step at once), :meth:`_StepTasks._stop_task` and
:meth:`_StepTasks._release` (the slots of direct reads still running are set aside). :class:`_StepTasks` is a mixin
of ``ChunkReader``, beside the fetch side :class:`fastload._reader_fetch._Fetcher` whose methods it calls; it uses
the reader's ``cache``, ``read_timeout``, ``_pool``, ``_group``, ``_tasks`` and ``_direct_holds``. The design
(faults, timeouts) is in the module docstring of :mod:`fastload.reader`, which re-exports ``_Started`` and
``_first``.

Run its tests with ``python -m pytest tests/fastload/test_reader.py tests/fastload/test_faults.py -q``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

import numpy as np

from ._io_pool import _Task
from ._io_stats import IOStats
from .cache import Reservation
from .errors import ChunkReadError
from .plan import Step

__all__: list[str] = []  # private: fastload.reader's ChunkReader mixes _StepTasks in


_GROUP = 32  # chunks per request to a remote store, and most chunks per local task
_MIN_TASK = 8  # fewest chunks per local task (an array with fewer to fill gets one task) ...
_TASK_BYTES = 8 * 2**20  # ... unless that would put more than this many decoded bytes in one task: a task decodes
# serially, so big chunks (AtmoRep's 62.5 MB globes) must spread over the decode workers (8 per task made one task
# per batch there: 0.72x samples/s, measured on era5-1deg atmorep chunks, window plan)


@dataclasses.dataclass(slots=True)
class _Started:
    """A step whose chunks are reserved and whose fetch/decode tasks are submitted."""

    step: Step
    res: Reservation
    futures: list[tuple[str, np.ndarray, Future, _Task]]
    stuck: list[tuple[str, _Task]] = dataclasses.field(default_factory=list)  # given up during a direct read


def _first(errors: Any) -> BaseException:
    """The error to raise of a step's failed chunks: a chunk whose store request hung (not one of the chunks that
    were not read because of it), else the first."""
    errors = list(errors)
    return next((e for e in errors if getattr(e, "hung", False)), errors[0])


class _StepTasks:
    """The tasks of a started step, for :class:`fastload.reader.ChunkReader` (a mixin: see the module docstring
    for the attributes it uses)."""

    def _stop_task(self, started: _Started, array: str, fut: Future, task: _Task) -> None:
        """A task whose wait was interrupted (a BaseException in ``_wait_task``) must not write into the step's
        slots after their release: a queued one is cancelled, a running one given up (it touches no slot from then
        on; a direct read in progress has its slot set aside at release, like a hung one), and one already decoding
        into its slots is waited for (a decode ends)."""
        if fut.cancel():
            return
        with task.lock:
            writing = task.writing
            if not writing:
                task.given_up = True
                task.hung = list(task.inflight)
                if task.busy is not None:
                    self._direct_holds.add(task)
        if writing:
            futures_wait([fut])
        else:
            started.stuck.append((array, task))

    def _release(self, started: _Started, step_done: bool) -> None:
        """Release a step's reservation, except the slots of direct reads it gave up that still run: each is set
        aside as a reservation of its own that the read's thread releases when the read returns (a late read must
        not write into a slot another chunk has been given)."""
        res = started.res
        for a, task in started.stuck:
            with task.lock:  # (the thread clears busy under this lock when its read returns)
                if task.busy is None:
                    continue
                chunk = task.hung[0] if task.hung else None
                what = f"the direct read of {self._describe_chunk(a, chunk)}" if chunk is not None else ""
                task.hold = self.cache.set_aside(res, a, task.busy, chunk=chunk, what=what, since=task.since)
                self._direct_holds.add(task)
        self.cache.release(res, step_done=step_done)

    def _submit(self, step: Step, res: Reservation,
                stop: Callable[[], bool]) -> list[tuple[str, np.ndarray, Future, _Task]]:
        """Submit the fetch and decode tasks of every chunk the step must fill: ``(array, positions, future, task)``.

        If anything other than the closed pool's RuntimeError escapes (a MemoryError, an interrupt), the tasks
        submitted so far are cancelled or waited for before it propagates: the caller then releases the step's
        slots, and no task may still write into them."""
        futures: list[tuple[str, np.ndarray, Future, _Task]] = []
        n_fill = res.n_fill
        try:
            for a, pos in res.fill.items():
                arena = self.cache.arena(a)
                fewest = max(1, min(_MIN_TASK, _TASK_BYTES // max(1, arena.itemsize * arena.shape[1])))
                size = self._group or min(_GROUP, max(fewest, -(-n_fill // self._tasks)))
                rows = step.plan.chunks[a]
                for i in range(0, pos.size, size):
                    group = pos[i:i + size]
                    chunks = list(map(tuple, rows[group].tolist()))
                    slots = res.slots[a][group].tolist()
                    task = _Task()
                    try:
                        fut = self._pool.submit(self._fetch_decode, a, chunks, slots, step.index, stop, task)
                    except RuntimeError:  # the pool is shut down: mark the group failed in _collect
                        fut = Future()
                        fut.cancel()
                    futures.append((a, group, fut, task))
        except BaseException:
            for _, _, fut, _ in futures:  # queued tasks never start; running ones are waited for
                fut.cancel()
            futures_wait([fut for _, _, fut, _ in futures])
            raise
        return futures

    def _collect(self, started: _Started, stats: IOStats) -> dict[str, dict[int, BaseException]]:
        """Wait for every task of a started step; return the bad chunks, ``array -> {position: error}`` (``skip``),
        or raise the first unexpected failure."""
        res = started.res
        bad: dict[str, dict[int, BaseException]] = {}
        first: BaseException | None = None
        fatal: ChunkReadError | None = None
        futures, started.futures = started.futures, []
        timeouts = 0
        for n, (a, group, fut, task) in enumerate(futures):  # every task ends before we release: none may write
            try:                                                # into a slot after that
                d = self._wait_task(fut, task)
            except BaseException as e:  # cancelled (closing) or an unexpected bug: fail the group's chunks
                if not fut.done():  # the wait was interrupted (not the task's own error): it may still write
                    self._stop_task(started, a, fut, task)
                for slot in res.slots[a][group].tolist():
                    self.cache.failed(a, slot, e)
                first = first or e
                continue
            if d is None:  # given up (read timeout): the task writes nothing now; its chunks fail, named
                started.stuck.append((a, task))  # (a direct read may still write into one slot: see _release)
                timeouts += 1
                # a second request of the step unanswered too: the store has stopped answering, and the step's
                # other tasks are given up now, before this thread is replaced (its replacement would take the next
                # queued one), not waited out one after another (on a dead store a step with N tasks took
                # N x read_timeout_s to fail). After the first, the others go on: one slow request (with
                # on_bad_chunk='skip') costs only its own chunks
                dead = timeouts >= 2
                if dead:
                    self._stop_tasks(started, futures[n + 1:])
                # its I/O thread, left in the request, leaves the pool (a new one takes the queued tasks) unless
                # too many are left so already: then the store has stopped answering, an error even with 'skip'
                full = task.full or (task.started and not self._pool.abandon(task))
                d = self._given_up(started.step, a, group, task, full)
                for j, e in d.errors.items():
                    self.cache.failed(a, int(res.slots[a][group[j]]), e)
                if full:
                    fatal = fatal or _first(d.errors.values())
                if dead:
                    hung = _first(d.errors.values())
                    self._count(stats, a, d)
                    mine = bad.setdefault(a, {})
                    for j, e in d.errors.items():
                        mine[int(group[j])] = e
                    self._give_up_tasks(started, futures[n + 1:], f"the step gave up its requests when a second "
                                        f"one went unanswered for loader.read_timeout_s = {self.read_timeout:g} s "
                                        f"(array {hung.array!r}, chunk {hung.chunk})", stats, bad)
                    break
            self._count(stats, a, d)
            if d.errors:
                mine = bad.setdefault(a, {})
                for j, e in d.errors.items():
                    mine[int(group[j])] = e
        if first is not None and not isinstance(first, ChunkReadError):
            raise first
        if fatal is not None:
            raise fatal
        return bad
