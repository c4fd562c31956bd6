"""``bytes_stored`` with read-ahead (review s13 r4 item 6): the loader's counters add up to exactly the bytes the
store handed out, also with several workers and a cache of one sample, where read-ahead entries are taken, dropped,
or still buffered when the epoch ends. Read-ahead bytes are counted when their request returns; before, a step
counted what it took and the buffer what it dropped, so entries still buffered at the end were never counted
(77532 of 79024 bytes, 2 workers) and bytes dropped at a new epoch went to the next epoch's first batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fastload._raw_ahead import RawAhead
from fastload.loader import Loader
from fastload.store import BaseByteSource, open_store, stored_nbytes
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")


class _Counting(BaseByteSource):
    """Counts the bytes of every chunk a source hands out (not a LocalSource: read as a remote store, so the reader
    reads ahead)."""

    def __init__(self, inner: BaseByteSource):
        self.inner = inner
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        raw = self.inner.get(key)
        with self._lock:
            self.bytes += 0 if raw is None else len(raw)
        return raw

    def get_range(self, key, start, length):
        raw = self.inner.get_range(key, start, length)
        with self._lock:
            self.bytes += 0 if raw is None else len(raw)
        return raw

    def list_dir(self, prefix):
        return self.inner.list_dir(prefix)

    def describe(self, key=""):
        return self.inner.describe(key)


@pytest.mark.parametrize(("cache_bytes", "read_ahead", "workers"),
                         [(1, None, 2), (1, None, 3), (60000, 2000, 1), (60000, 2000, 3)])
def test_bytes_stored_equals_the_bytes_the_store_handed_out(tmp_path, cache_bytes, read_ahead, workers):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    store = open_store(tmp_path / "s.zarr")
    src = store.source = _Counting(store.source)
    with Loader(store, cfg, samples_per_epoch=24, workers=workers, cache_bytes=cache_bytes, seed=3,
                read_ahead_bytes=read_ahead, device="cpu") as loader:
        for epoch in range(2):
            for b in loader:
                ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
                for f in cfg.field_names:
                    assert np.array_equal(b[f].numpy(), ref[f], equal_nan=True)
            ahead = loader._backend.reader._ahead
            assert ahead is not None and ahead.requested > 0  # (the reader did read ahead)
            assert loader.stats.bytes_stored == src.bytes, (epoch, ahead.requested, ahead.used, len(ahead))


def test_raw_ahead_counts_each_request_once_when_it_returns():
    sizes = {(0,): 10, (1,): 20, (2,): 30}
    ahead = RawAhead(1000, lambda array, chunks: [bytes(sizes[c]) for c in chunks])
    g = ahead.claim("a", [(0,), (1,), (2,)], est=10)
    ahead.run(g)
    assert ahead.drain_stored() == {"a": 60} and ahead.drain_stored() == {}  # counted when fetched, once
    got = ahead.take("a", [(1,)])
    assert got[0] == bytes(20) and stored_nbytes(got[0]) == 0  # taken: marked counted (the step adds 0)
    ahead.clear()  # (0,) and (2,) dropped: counted already, not again
    assert ahead.drain_stored() == {} and ahead.wasted_bytes == 40 and ahead.fetched_bytes == 60
    g = ahead.claim("b", [(0,)], est=10)
    assert ahead.take("b", [(0,)]) == {0: bytes(10)}  # run by the consumer itself: counted as it returns
    assert ahead.drain_stored() == {"b": 10}
