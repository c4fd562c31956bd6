"""Open a store as a run should see it: as it is, slowed down (latency per request), warm, or cold.

Why this module exists: how much a training run stalls on data depends on where the bytes come from. The
data-stall methodology (Mohan et al., "Analyzing and Mitigating Data Stalls in DNN Training", VLDB 2021) compares
a run whose chunk files sit in the page cache (``cached``: only preparation, i.e. decode and gather, can stall)
with one that reads them from the device (``cold``: fetch stalls too), and with one that does not load at all
(``synthetic``, see :mod:`profiling.stall`). ``--store-latency-ms N`` adds N ms to every storage request
(:class:`fastload.store._source.LatencySource`, through ``open_store(latency_ms=N)``), to see how a run would fare
on a parallel file system or an object store before moving there.

- :func:`warm_page_cache` reads the store's chunk files once, so the run starts warm.
- :func:`drop_page_cache` flushes and drops them (``posix_fadvise(POSIX_FADV_DONTNEED)``, Linux).
- :class:`ColdSource` wraps the store's byte source and drops a file's pages right before each read of it, so
  every read goes to the device even when the same chunk is read again; the loader's own decoded-chunk cache
  still works (that is a feature of the loader, not of the page cache).

How to run it::

    store = open_run_store("era5.zarr", mode="cold", latency_ms=5)     # then fastload.Loader(store, ...)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastload.errors import ConfigError
from fastload.store import Store, open_store
from fastload.store._source import BaseByteSource

__all__ = ["ColdSource", "can_drop_pages", "check_cold_workers", "chunk_files", "drop_page_cache", "warm_page_cache",
           "open_run_store"]


def can_drop_pages() -> bool:
    """Whether this OS lets a process drop a file's pages from the page cache (``posix_fadvise``)."""
    return hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


def _drop(path: str, *, flush: bool = False) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    try:
        if flush:
            try:
                os.fsync(fd)  # dirty pages (a store written moments ago) cannot be dropped
            except OSError:
                pass  # read-only file systems: their pages are clean anyway
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


class ColdSource(BaseByteSource):
    """A local byte source whose reads always miss the page cache: each file's pages are dropped before it is read.

    Parameters
    ----------
    inner : BaseByteSource
        A local source (``LocalSource``, possibly inside a ``LatencySource``): :meth:`describe` must give the
        file path of a key.

    Attributes
    ----------
    drops : int
        Files dropped so far (all threads).
    """

    def __init__(self, inner: BaseByteSource):
        if not can_drop_pages():
            raise ConfigError("data mode 'cold' needs os.posix_fadvise (Linux); this platform has none")
        if "://" in inner.describe(""):
            raise ConfigError(f"data mode 'cold' works on local stores only, not {inner.describe('')!r}")
        self.inner = inner
        self.root = getattr(inner, "root", "")
        self.drops = 0
        self._lock = threading.Lock()

    def _cold(self, key: str) -> None:
        if _drop(self.inner.describe(key)):
            with self._lock:
                self.drops += 1

    def get(self, key: str) -> bytes | None:
        self._cold(key)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        self._cold(key)
        return self.inner.get_range(key, start, length)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        for k in keys:
            self._cold(k)
        return self.inner.get_many(keys)

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        for k in dict.fromkeys(k for k, _, _ in requests):
            self._cold(k)
        return self.inner.get_ranges(requests)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_dir(self, prefix: str) -> list[str]:
        return self.inner.list_dir(prefix)

    def describe(self, key: str = "") -> str:
        return self.inner.describe(key)

    def __repr__(self) -> str:
        return f"ColdSource({self.inner!r})"


def check_cold_workers(data_mode: str, loader_mode: str, where: str) -> None:
    """Refuse cold reads with worker processes: each worker reopens the store from its path with plain reads
    (``fastload._procs``), so :class:`ColdSource`, a wrapper of this process's store, would drop no page there and
    warm reads would be reported as cold (the Loader refuses such a store, but only after the pages were dropped)."""
    if data_mode == "cold" and loader_mode == "process":
        raise ConfigError(f"{where} = 'cold' with loader.mode = 'process': worker processes reopen the store with "
                          f"plain file reads, which do not drop its pages first; cold reads need loader.mode = "
                          f"'thread' (the default)")


def chunk_files(store: Store, arrays: Iterable[str] | None = None) -> list[str]:
    """Paths of the files under the folders of a local store's data arrays (chunks, shards, their metadata)."""
    if "://" in store.path:
        raise ConfigError(f"{store.path}: page-cache control needs a local store, not a URL")
    out: list[str] = []
    for name in (store.arrays if arrays is None else arrays):
        if name not in store.arrays:
            raise ConfigError(f"{store.path}: no data array {name!r}; arrays: {sorted(store.arrays)}")
        for dirpath, _, files in os.walk(os.path.join(store.path, *name.split("/"))):
            out.extend(os.path.join(dirpath, f) for f in sorted(files))
    return out


def drop_page_cache(files: Iterable[str]) -> int:
    """Flush and drop the page-cache pages of ``files``; returns how many files were dropped."""
    if not can_drop_pages():
        raise ConfigError("dropping the page cache needs os.posix_fadvise (Linux); this platform has none")
    return sum(_drop(f, flush=True) for f in files)


def warm_page_cache(files: Iterable[str], *, budget_bytes: int | None = None) -> int:
    """Read ``files`` once so that their pages are cached; stops past ``budget_bytes``. Returns bytes read."""
    total = 0
    for f in files:
        if budget_bytes is not None and total >= budget_bytes:
            break
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    return total


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def open_run_store(path: str | os.PathLike[str], *, mode: str = "cached", latency_ms: float = 0.0,
                   fields: Iterable[str] | None = None, warm: bool = True, log: Any = None,
                   storage_options: Mapping[str, Any] | None = None, backend: str = "auto") -> Store:
    """Open ``path`` for a run in data mode ``mode`` with ``latency_ms`` of simulated latency per request.

    Parameters
    ----------
    mode : {"cached", "cold", "synthetic"}
        ``cached``: warm the page cache with the files of ``arrays`` first (local stores; at most half the free
        memory); ``cold``: drop their pages now and before every read (:class:`ColdSource`); ``synthetic``: as
        ``cached`` (the run replays one batch; the store only makes it).
    fields : iterable of str, optional
        The fields the run reads: only their arrays' files are warmed or dropped (default: all arrays).
    warm : bool
        Warm the page cache in ``cached`` mode (a training run on a large store skips it).
    log : callable, optional
        Progress messages (``print``).
    storage_options, backend
        As :func:`fastload.store.open_store` takes them (a remote store's client options; how bytes are read).
    """
    if mode not in ("cached", "cold", "synthetic"):
        raise ConfigError(f"data mode: expected 'synthetic', 'cached' or 'cold', got {mode!r}")
    store = open_store(path, latency_ms=latency_ms, storage_options=storage_options, backend=backend)
    local = "://" not in store.path
    arrays = None if fields is None else sorted({store.fields[f].array for f in fields if f in store.fields})
    if mode == "cold":
        if not local:
            raise ConfigError(f"data mode 'cold' works on local stores only, not {store.path!r}")
        n = drop_page_cache(chunk_files(store, arrays))
        if log:
            log(f"cold page cache: dropped {n} chunk files of {store.path}; every read drops its file first")
        return Store(store.path, ColdSource(store.source))
    if local and warm:
        files = chunk_files(store, arrays)
        free = _memory_bytes()
        budget = free // 2 if free else None
        size = sum(os.path.getsize(f) for f in files)
        read = warm_page_cache(files, budget_bytes=budget)
        if log:
            note = "" if read >= size else f" (of {size / 1e6:,.1f} MB: half the free memory)"
            log(f"warm page cache: read {read / 1e6:,.1f} MB of chunk files{note}")
    return store
