"""The worker process of the loader's process mode: open the store, then read batches into shared memory.

Why this exists: :mod:`fastload._procs` is the loader's side of the process backend (spawning, the pipe protocol,
the start-up time limits, the ring's shared-memory segments); this is the other end of each pipe, the code a spawned
worker runs. :func:`_child_main` says hello, takes its spec (store, settings, coefficients), opens the store through
:class:`_Announced` (which tells the loader about each storage request of its start, so a hung metadata read can be
given up), builds its own tokenizer, cache and :class:`~fastload.reader.ChunkReader`, and then answers ``epoch`` and
``read`` messages until ``stop`` or until its pipe closes. Its last batch of an epoch settles its reader's read-ahead
(:meth:`~fastload.reader.ChunkReader.settle_ahead`), so that batch counts the stored bytes of the requests still in
flight, and each epoch's ``bytes_stored`` is exact as in thread mode; the settle stops waiting as soon as a message
comes (the loader stopped: ``stop``, or a new ``epoch``), which the worker then answers. Every failure goes back to
the loader, made picklable (:func:`_picklable`). The protocol is described in :mod:`fastload._procs`, which re-exports :func:`_child_main`
(its spawn target is looked up there, so a test can swap it).
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._shm import Segment
from .store import BaseByteSource

__all__: list[str] = []  # private: fastload._procs spawns _child_main


class _Announced(BaseByteSource):
    """A worker's source while it opens the store: ``tell(described key)`` before each request and ``tell(None)``
    after it, so that the loader can give up a request that does not return (``loader.read_timeout_s``)."""

    def __init__(self, inner: BaseByteSource, tell: Callable[[str | None], None]):
        self.inner, self.tell = inner, tell
        self.root = getattr(inner, "root", "")
        self.quiet = False  # set once the store is open: a request of an object that kept this source says nothing

    def _ask(self, key: str, call: Callable[..., Any], *args: Any) -> Any:
        if self.quiet:  # (the main loop's messages share the pipe, unlocked)
            return call(*args)
        self.tell(self.inner.describe(key))
        try:
            return call(*args)
        finally:
            self.tell(None)

    def get(self, key: str) -> bytes | None:
        return self._ask(key, self.inner.get, key)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        return self._ask(key, self.inner.get_range, key, start, length)

    def list_dir(self, prefix: str) -> list[str]:
        return self._ask(prefix, self.inner.list_dir, prefix)

    def exists(self, key: str) -> bool:
        return self._ask(key, self.inner.exists, key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._ask(keys[0] if keys else "", self.inner.get_many, keys)

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        return self._ask(requests[0][0] if requests else "", self.inner.get_ranges, requests)

    def describe(self, key: str = "") -> str:
        return self.inner.describe(key)


def _child_main(conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from multiprocessing.reduction import recv_handle

    from ._backend import build_cache, choose_horizon, chunk_grids, make_tokenizer
    from .config import SamplingConfig
    from .plan import EpochPlan
    from .reader import ChunkReader
    from .store import Store, make_source
    from .store._layout import quiet_not_fields

    lock = threading.Lock()  # (a source may be asked from several threads)

    def tell(key: str | None) -> None:
        with lock:
            conn.send(("io", key))

    try:
        conn.send(("hello",))  # the loader answers with the spec (see the module notes)
        spec = conn.recv()
        tell(spec["path"])  # (an fsspec URL is looked up here)
        source = make_source(spec["path"], spec["storage_options"], spec["latency_ms"], spec["backend"])
        tell(None)
        announced = _Announced(source, tell)
        quiet_not_fields()  # the loader warned of the store's left-out arrays when it opened it
        store = Store(spec["path"], announced, allow_unsafe_codecs=spec["allow_unsafe"],
                      storage_options=spec["storage_options"], backend=spec["backend"])
        config = SamplingConfig.from_dict(spec["config"])
        tok = make_tokenizer(store, config)
        # quiet: a budget below one sample is this worker's share of loader.cache_bytes, which the loader warns of
        # once, naming the setting (each worker warned, calling its share the setting)
        cache, capacity = build_cache(store, tok, config, spec["cache_bytes"], 1, warn=False)
        store.source, announced.quiet = source, True  # opened: the reader reads the plain source (its direct
        # paths test its type)
        reader = ChunkReader(store, tok, cache, fetch_concurrency=spec["fetch_concurrency"], decode_workers=1,
                             retries=spec["retries"], on_bad_chunk=spec["on_bad_chunk"],
                             coefficients=spec["coefficients"], months=spec["months"],
                             useful_bytes_per_sample=spec["useful"], jit=spec["jit"], name="fastload-proc-io",
                             read_ahead_bytes=spec["read_ahead_bytes"], read_timeout=spec["read_timeout_s"])
        conn.send(("opened",))
    except BaseException as e:  # noqa: BLE001 - the loader re-raises it (this worker then exits)
        with contextlib.suppress(OSError, ValueError):
            conn.send(("fatal", _picklable(e)))
        conn.close()
        return
    layout = spec["fields"]  # [(name, shape, dtype str, offset, nbytes)]
    segments: dict[str, dict[str, np.ndarray]] = {}  # the views keep their Segment's mapping alive

    def map_segment(name: str, fd: int) -> None:
        seg = Segment.from_fd(name, fd, spec["nbytes"])
        segments[name] = {f: seg.array[off:off + nb].view(np.dtype(dt)).reshape(shape)
                          for f, shape, dt, off, nb in layout}

    plan = None
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the loader is gone
                return
            if msg[0] == "stop":
                return
            if msg[0] == "epoch":
                _, gen, boxes, first, stride, coef = msg
                try:
                    if coef is not None:  # new normalisation coefficients (the months this epoch uses)
                        reader.set_coefficients(*coef)
                    plan = EpochPlan(boxes, tok.plan, batch_size=spec["batch_size"], drop_last=spec["drop_last"],
                                     capacity=capacity, horizon=0, start_batch=first, batch_stride=stride,
                                     grids=chunk_grids(store))
                    cache.reset(plan.uses)
                    if first < len(plan):
                        plan.horizon = choose_horizon(plan, first, cache, spec["prefetch"])
                except BaseException as e:  # noqa: BLE001 - the loader re-raises it; this worker stays usable
                    plan = None
                    conn.send(("error", gen, None, _picklable(e)))
                    continue
                conn.send(("ready", gen))
                continue
            _, gen, batch, name, forget, fd_follows = msg
            if fd_follows:
                map_segment(name, recv_handle(conn))
            for old in forget:  # buffers the ring replaced: unmapped here once no view is left
                segments.pop(old, None)
            try:
                stats, kept = reader.read_batch(plan, batch, segments[name])
                # its last batch of the epoch counts the read-ahead still in flight (each request waited for at
                # most read_timeout_s from its start; the requests given up go to the loader, which warns); a
                # message from the loader meanwhile (stop, a new epoch: it no longer waits for this batch) ends the
                # wait at once, so the worker answers it promptly (the bytes not settled count in its next batch)
                late = (reader.settle_ahead(stats, conn.poll)[1] if batch + plan.batch_stride >= len(plan)
                        else [])
                conn.send(("done", gen, batch, stats, kept, late))
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the loader
                conn.send(("error", gen, batch, _picklable(e)))
    finally:
        reader.close()
        conn.close()


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"in a loader worker process: {type(e).__name__}: {e}")
