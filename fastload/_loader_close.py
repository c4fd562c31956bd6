"""Closing a :class:`fastload.loader.Loader`'s backends and rings, and naming the reads a stop leaves running.

Why this exists apart from ``loader.py``: stopping an iteration whose read is stuck in a store request must neither
wait for it for ever nor reuse what it writes into. The loader then retires its backend and ring
(``Loader._retire_backend``) and hands them here: :func:`_close_after` closes them at once on a daemon thread with
bounded waits, and :func:`_doing` names, from each stuck thread's stack, what it waits for (a store request, cache
slots, a Numba compile, ...), for the warnings. :func:`_close_all` is also the loader's finalizer and ``close``. The stop
grace is read from :mod:`fastload._loader_iter` at each call (tests shorten it there). ``_close_all`` and ``_doing``
are importable from :mod:`fastload.loader` too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from . import _loader_iter

log = logging.getLogger("fastload")


def _close_all(things: list[Any], timeout: Any = _loader_iter._GRACE) -> None:
    """Close backends and rings; a thread backend waits for its I/O threads at most ``timeout`` seconds (None: no
    limit; by default the stop grace, read at the call)."""
    if timeout is _loader_iter._GRACE:
        timeout = _loader_iter._STOP_GRACE_S
    from ._backend import ThreadBackend
    from ._ring import BatchRing

    for t in things:  # first: device copies still reading a ring slot (process mode un-pins the slots' memory)
        if isinstance(t, BatchRing):
            t.wait_copies()
    for t in things:
        if isinstance(t, ThreadBackend):
            t.close(timeout)
        elif t is not None:
            t.close()


def _close_after(threads: list[threading.Thread], things: list[Any]) -> None:
    """Close a retired backend and ring now, with a bounded wait, while reads of theirs may still be stuck in a store
    request (safe: a stuck read holds its own references to the buffers it writes into, and writes into no slot it
    has given up); then wait a stop grace for the stuck reads and name those still running (daemon threads, left
    to end when their request returns or after loader.read_timeout_s). Waiting for the reads first kept the old
    cache and ring, and this thread, for ever when a request never answered."""
    grace = _loader_iter._STOP_GRACE_S
    _close_all(things, grace)  # wakes the reads waiting on the cache or a ring slot; cancels the queued fetches
    deadline = time.monotonic() + grace
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    left = [_doing(t) for t in threads if t.is_alive()]
    if left:
        log.warning("fastload: the stopped iteration's cache and ring are closed; %d of its read(s) still running, "
                    "left as daemon threads that end when what they wait for returns (a store request: at most "
                    "loader.read_timeout_s): %s", len(left), "; ".join(left))


_DOING = {  # innermost fastload function (module, name) of a stopped read's thread -> what it waits for
    ("fastload._reader_fetch", "_wait_task"): "waiting for a fetch task of its step: a store request or a decode",
    ("fastload.cache", "wait"): "waiting for chunks another step is reading",
    ("fastload.cache", "reserve"): "waiting for cache slots",
    ("fastload._ring", "acquire"): "waiting for a ring slot's device copy",
    ("fastload.reader", "await_kernel_warmup"): "waiting for the gather kernels' compile",
    # a Numba kernel has no Python frame: the innermost is its Python caller's (or the NumPy twin's)
    ("fastload.sampling.neighborhood", "gather_field"): "gathering its samples (a kernel)",
    ("fastload.sampling.points", "gather_field_points"): "gathering its samples (a kernel)",
    ("fastload.sampling._reference", "gather"): "gathering its samples (NumPy kernels)",
    ("fastload.sampling._mesh_reference", "gather_points"): "gathering its samples (NumPy kernels)",
}


def _doing(t: threading.Thread) -> str:
    """``name (what it does)`` of a stopped iteration's thread, from its current stack: a Numba compile (a cold
    JIT cache) where a ``numba`` frame is on it, else what its innermost ``fastload`` function waits for
    (:data:`_DOING`, keyed on the module and the function's ``co_name``: ``co_qualname`` is Python 3.11+), else
    that function's name and line."""
    frame = sys._current_frames().get(t.ident) if t.ident is not None else None
    inner = None
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("numba."):
            return f"{t.name} (compiling Numba kernels: a cold JIT cache)"
        if inner is None and mod.startswith("fastload"):
            inner = frame
        frame = frame.f_back
    if inner is None:
        return f"{t.name} (not in fastload code)" if t.is_alive() else f"{t.name} (ended)"
    mod, name = inner.f_globals.get("__name__"), inner.f_code.co_name
    what = _DOING.get((mod, name)) or f"in {name}"
    return f"{t.name} ({what}, {mod}:{inner.f_lineno})"
