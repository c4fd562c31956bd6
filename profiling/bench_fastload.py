"""Our side of the comparison: the rows ``fastload`` (the :class:`fastload.Loader`) and ``fastload.extract``.

Why this exists: the harness drives every loader through one small interface (``iter_batches(batches)`` yielding
``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon)}``, ``close()``, and optional I/O ``counters()``), so ours must
look the same as the peers in :mod:`profiling.peers`. Both rows take the harness's explicit boxes:

- ``fastload``: the Loader (thread workers, plan-aware decoded-chunk cache, prefetch ring) drawing the same boxes;
  it reports its own stored/decoded/useful bytes and cache hits, which the table shows. ``fastload-proc`` is the
  same with worker processes (only when asked for).
- ``fastload.extract``: :func:`fastload.extract` (one batch: unique chunks read and decoded once, one-pass
  Numba gather) on ``workers`` threads, one batch per thread, results handed out in order. No cache between
  batches: the floor of what the Loader adds.

Both read through ``fastload.open_store(path, latency_ms=...)`` in the remote-like scenarios.
"""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["FastloadExtractRow", "FastloadLoaderRow", "FastloadProcessRow", "FASTLOAD_ROWS", "DEFAULT_ROWS",
           "fastload_status"]


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
    """The :class:`fastload.Loader` on exactly the harness's plan.

    The Loader draws its own placements (``random_boxes`` from seed, epoch, ``samples_per_window``), so it is
    given the settings that make them the harness's: ``samples_per_epoch`` = the plan's samples, the same seed,
    ``epoch`` = the round, ``samples_per_window`` = the plan's. That is checked before the first batch
    (``epoch_boxes``) and on every batch (``Batch.boxes``); a plan the Loader cannot draw (``aligned``) raises.
    """

    name = "fastload"
    description = "fastload.Loader: plan-aware cache, thread workers, prefetch ring"
    decode_model = "reported"
    mode = "thread"

    def __init__(self, store_path: str, config: Any, *, workers: int = 2, latency_ms: float = 0.0,
                 plan: dict[str, int] | None = None, loader_settings: dict[str, Any] | None = None,
                 **_: Any):  # fmt: skip
        from fastload.store import open_store

        self.store = open_store(store_path, latency_ms=latency_ms)
        self.config = config
        self.workers = max(1, int(workers))  # the Loader needs a worker; workers=0 means "in process" for peers
        self.plan = dict(plan or {})
        self.settings = dict(loader_settings or {})
        self._loader: Any = None
        self._counters: dict[str, float] | None = None

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        from fastload.loader import Loader

        boxes = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
        bs = len(batches[0])
        # random and window plans are the Loader's own placement (drawn from the seed, as in training); other
        # plans (aligned, disjoint) go in as an explicit plan (Loader(boxes=...))
        explicit = self.plan.get("plan", "random") not in ("random", "window")
        self._loader = Loader(
            self.store, self.config, batch_size=bs, workers=self.workers, mode=self.mode, device="cpu",
            samples_per_epoch=len(boxes), seed=int(self.plan.get("seed", 0)), epoch=int(self.plan.get("epoch", 0)),
            samples_per_window=int(self.plan.get("samples_per_window", 1)), boxes=boxes if explicit else None,
            **self.settings,
        )  # fmt: skip
        try:
            drawn = self._loader.epoch_boxes(self._loader.epoch)
            if not np.array_equal(drawn, boxes):
                raise ValueError("the Loader draws other samples than this plan (settings that do not reproduce "
                                 "it)")  # fmt: skip
            for i, batch in enumerate(self._loader):
                if not np.array_equal(batch.boxes.numpy(), batches[i]):
                    raise ValueError(f"batch {i}: the Loader's boxes differ from the plan's")
                yield {k: _to_numpy(v) for k, v in batch.fields.items()}
            st = self._loader.stats
            self._counters = {"cache_hits": float(st.hits), "cache_misses": float(st.misses),
                              "decoded_bytes": float(st.bytes_decoded), "stored_bytes": float(st.bytes_stored),
                              "useful_bytes": float(st.bytes_useful), "fetch_s": float(st.fetch_s),
                              "decode_s": float(st.decode_s), "gather_s": float(st.gather_s),
                              "wait_s": float(st.wait_s)}  # fmt: skip
        finally:
            self.close()

    def counters(self) -> dict[str, float] | None:
        return self._counters

    def close(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.close()


class FastloadProcessRow(FastloadLoaderRow):
    """The Loader with worker processes (shared-memory ring) instead of threads."""

    name = "fastload-proc"
    description = "fastload.Loader with worker processes (mode='process')"
    mode = "process"


def _to_numpy(v: Any) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def fastload_status() -> dict[str, str | None]:
    """``{row: None}`` when it can run, ``{row: reason}`` when not (the Loader or its process mode missing)."""
    out: dict[str, str | None] = {}
    try:
        from fastload.loader import Loader  # noqa: F401

        out["fastload"] = out["fastload-proc"] = None
        if importlib.util.find_spec("fastload._procs") is None:
            out["fastload-proc"] = "the Loader's process mode (fastload._procs) is not in this checkout"
    except ImportError as e:
        out["fastload"] = out["fastload-proc"] = f"fastload.Loader is not available: {e}"
    try:
        from fastload.extract import extract  # noqa: F401

        out["fastload.extract"] = None
    except ImportError as e:
        out["fastload.extract"] = f"fastload.extract is not available: {e}"
    return out


FASTLOAD_ROWS = {r.name: r for r in (FastloadLoaderRow, FastloadExtractRow, FastloadProcessRow)}
"""Our rows by name; ``fastload-proc`` runs only when asked for (``--peers fastload-proc``)."""
DEFAULT_ROWS = ("fastload", "fastload.extract")
