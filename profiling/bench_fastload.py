"""Our side of the comparison: the rows ``fastload`` (the :class:`fastload.Loader`) and ``fastload.extract``.

Why this exists: the harness drives every loader through one small interface (``iter_batches(batches)`` yielding
``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon)}``, ``close()``, and optional I/O ``counters()``), so ours must
look the same as the peers in :mod:`profiling.peers`. Both rows take the harness's explicit boxes:

- ``fastload``: the Loader (thread workers, plan-aware decoded-chunk cache, prefetch ring), fed the same boxes;
  it reports its own stored/decoded/useful bytes and cache hits, which the table shows.
- ``fastload.extract``: :func:`fastload.extract` (one batch: unique chunks read and decoded once, one-pass
  Numba gather) on ``workers`` threads, one batch per thread, results handed out in order. No cache between
  batches: the floor of what the Loader adds.

Both read through ``fastload.open_store(path, latency_ms=...)`` in the remote-like scenarios.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["FastloadExtractRow", "FastloadLoaderRow", "FASTLOAD_ROWS", "fastload_status"]


class FastloadExtractRow:
    """``fastload.extract`` per batch on ``workers`` threads with ``workers + 1`` batches in flight."""

    name = "fastload.extract"
    description = "fastload.extract per batch (unique chunks once, Numba gather) on worker threads"
    decode_model = "unique"

    def __init__(self, store_path: str, config: Any, *, workers: int = 2, latency_ms: float = 0.0, **_: Any):
        from fastload.extract import extract
        from fastload.store import open_store

        self._extract = extract
        self.store = open_store(store_path, latency_ms=latency_ms)
        self.config = config
        self.workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None

    def _one(self, boxes: np.ndarray) -> dict[str, np.ndarray]:
        out = self._extract(self.store, self.config, boxes)
        return {k: np.asarray(v.data) for k, v in out.items()}

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fastload-extract")
        pending: collections.deque[Future] = collections.deque()
        it = iter(batches)
        try:
            for b in it:
                pending.append(self._pool.submit(self._one, np.asarray(b, dtype=np.int64)))
                if len(pending) > self.workers:
                    break
            while pending:
                out = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self._pool.submit(self._one, np.asarray(nxt, dtype=np.int64)))
                yield out
        finally:
            self.close()

    def counters(self) -> dict[str, float] | None:
        return None

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class FastloadLoaderRow:
    """The :class:`fastload.Loader` over the harness's explicit boxes."""

    name = "fastload"
    description = "fastload.Loader: plan-aware cache, thread workers, prefetch ring"
    decode_model = "reported"

    def __init__(self, store_path: str, config: Any, *, workers: int = 2, latency_ms: float = 0.0,
                 cache_bytes: int | None = None, prefetch: int | None = None, **_: Any):  # fmt: skip
        from fastload.store import open_store

        self.store = open_store(store_path, latency_ms=latency_ms)
        self.config = config
        self.workers = int(workers)
        self.cache_bytes = cache_bytes
        self.prefetch = prefetch
        self._loader: Any = None
        self._counters: dict[str, float] | None = None

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        from fastload import Loader

        boxes = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
        kw: dict[str, Any] = {"workers": self.workers, "batch_size": len(batches[0]), "device": "cpu",
                              "boxes": boxes}  # fmt: skip
        if self.cache_bytes is not None:
            kw["cache_bytes"] = self.cache_bytes
        if self.prefetch is not None:
            kw["prefetch"] = self.prefetch
        self._loader = Loader(self.store, self.config, **kw)
        try:
            for batch in self._loader:
                yield {k: _to_numpy(v) for k, v in _fields_of(batch).items()}
            self._counters = _counters_of(self._loader)
        finally:
            self.close()

    def counters(self) -> dict[str, float] | None:
        return self._counters

    def close(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.close()


def _to_numpy(v: Any) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def _fields_of(batch: Any) -> dict[str, Any]:
    fields = getattr(batch, "fields", batch)
    return dict(fields)


def _counters_of(loader: Any) -> dict[str, float] | None:
    c = getattr(loader, "counters", None)
    if callable(c):
        c = c()
    if c is None:
        return None
    d = c if isinstance(c, dict) else getattr(c, "to_dict", lambda: vars(c))()
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float))}


def fastload_status() -> dict[str, str | None]:
    """``{row: None}`` when it can run, ``{row: reason}`` when not (e.g. the Loader takes no explicit boxes)."""
    import fastload

    out: dict[str, str | None] = {}
    loader = getattr(fastload, "Loader", None)
    if loader is None:
        out["fastload"] = "fastload.Loader is not available in this checkout"
    elif "boxes" not in inspect.signature(loader).parameters:
        out["fastload"] = "fastload.Loader takes no explicit boxes, so it cannot be fed the same samples"
    else:
        out["fastload"] = None
    try:
        from fastload.extract import extract  # noqa: F401

        out["fastload.extract"] = None
    except ImportError as e:
        out["fastload.extract"] = f"fastload.extract is not available: {e}"
    return out


FASTLOAD_ROWS = {r.name: r for r in (FastloadLoaderRow, FastloadExtractRow)}
