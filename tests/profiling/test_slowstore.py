"""Slow and cold stores: ColdSource serves the same bytes and drops each file's pages before reading it; the page
cache is really dropped and warmed (checked with mincore); latency and modes wired through open_run_store."""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys

import numpy as np
import pytest

from fastload.errors import ConfigError
from fastload.store._source import LatencySource, LocalSource
from profiling.slowstore import (
    ColdSource,
    can_drop_pages,
    chunk_files,
    drop_page_cache,
    open_run_store,
    warm_page_cache,
)
from tests.profiling.loopdata import tiny_store

linux_only = pytest.mark.skipif(not (sys.platform.startswith("linux") and can_drop_pages()),
                                reason="posix_fadvise and mincore are Linux calls")


def resident_fraction(path: str) -> float:
    """Fraction of a file's pages in the page cache, from mincore(2) (independent of posix_fadvise)."""
    size = os.path.getsize(path)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
    assert rc == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec) / pages


def test_chunk_files_are_the_arrays_chunks(tmp_path_factory):
    store_path, _ = tiny_store(tmp_path_factory)
    store = open_run_store(store_path)
    files = chunk_files(store, ["temperature"])
    chunks = [f for f in files if not os.path.basename(f).startswith(".")]
    assert len(chunks) == math.prod(store.arrays["temperature"].grid_shape)  # every chunk written, no others
    assert all(f.startswith(os.path.join(store.path, "temperature")) for f in files)
    with pytest.raises(ConfigError, match="no data array"):
        chunk_files(store, ["latitude"])


@linux_only
def test_cold_source_reads_the_same_bytes_and_drops_first(tmp_path_factory):
    store_path, _ = tiny_store(tmp_path_factory)
    local = LocalSource(store_path)
    cold = ColdSource(local)
    store = open_run_store(store_path)
    keys = [os.path.relpath(f, store.path).replace(os.sep, "/") for f in chunk_files(store, ["t2m"])][:6]
    warm_page_cache([local.describe(k) for k in keys])
    for k in keys:
        path = local.describe(k)
        assert cold.get(k) == local.get(k)
        assert cold.get_range(k, 2, 5) == local.get_range(k, 2, 5)
    assert cold.get_many(keys) == local.get_many(keys)
    assert cold.drops == 3 * len(keys)
    assert cold.get("no/such/key") is None and cold.drops == 3 * len(keys)
    # the drop happens before the read: right after a cold read only what that read brought in is cached
    drop_page_cache([path])
    assert resident_fraction(path) == 0.0


@linux_only
def test_drop_and_warm_page_cache(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(1 << 20))  # dirty pages: drop_page_cache must flush them first
    assert drop_page_cache([str(path)]) == 1
    assert resident_fraction(str(path)) == 0.0
    assert warm_page_cache([str(path)]) == 1 << 20
    assert resident_fraction(str(path)) > 0.9
    assert warm_page_cache([str(path), str(path)], budget_bytes=1) == 1 << 20  # stops once past the budget
    assert drop_page_cache([str(tmp_path / "missing")]) == 0


@linux_only
def test_open_run_store_modes(tmp_path_factory):
    store_path, _ = tiny_store(tmp_path_factory)
    cached = open_run_store(store_path, mode="cached", fields=["t2m"])
    assert isinstance(cached.source, LocalSource)
    t2m = [f for f in chunk_files(cached, ["t2m"]) if not os.path.basename(f).startswith(".")]
    assert min(resident_fraction(f) for f in t2m) == 1.0  # warmed
    cold = open_run_store(store_path, mode="cold", fields=["t2m"])
    assert isinstance(cold.source, ColdSource)
    assert max(resident_fraction(f) for f in t2m) == 0.0  # dropped
    slow = open_run_store(store_path, mode="cold", latency_ms=2.0)
    assert isinstance(slow.source, ColdSource) and isinstance(slow.source.inner, LatencySource)
    assert slow.source.inner.ms == 2.0
    a = cold.read_chunk("t2m", (0, 0, 0))
    b = cached.read_chunk("t2m", (0, 0, 0))
    assert np.array_equal(a, b)
    messages = []
    open_run_store(store_path, mode="cached", log=messages.append)
    assert messages and "warm page cache" in messages[0]


def test_open_run_store_bad_mode(tmp_path_factory):
    store_path, _ = tiny_store(tmp_path_factory)
    with pytest.raises(ConfigError, match="data mode"):
        open_run_store(store_path, mode="hot")


def test_cold_source_refuses_urls():
    class Remote(LocalSource):
        def describe(self, key: str = "") -> str:
            return "s3://bucket/store.zarr/" + key

    if not can_drop_pages():
        pytest.skip("needs posix_fadvise")
    with pytest.raises(ConfigError, match="local stores"):
        ColdSource(Remote("/tmp"))
