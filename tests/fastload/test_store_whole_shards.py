"""Whole-shard reads (a bytes-to-bytes codec after ``sharding_indexed``, :mod:`fastload.store._shard`): a hung
request holds up only its own reader, decoded shards are kept within one per-process budget, a batched read holds
one decoded shard at a time, and a failed shard of a batched read is named with its own chunk and file."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from unittest import mock

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

from fastload.errors import ChunkReadError
from fastload.store import _shard, open_store
from tests.fastload.test_faults import HangingSource
from tests.fastload.test_store_v3_edges import DIMS, _coords, _data, _quiet, _v3_store, _zarr_read

_WHOLE = dict(chunks=(6, 8, 18), serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec()]),
              compressors=[ZstdCodec()])  # fmt: skip


def _region(info, chunk):
    region = tuple(slice(c * n, min((c + 1) * n, m)) for c, n, m in zip(chunk, info.chunks, info.shape))
    return region, tuple(slice(0, r.stop - r.start) for r in region)


@pytest.mark.parametrize("batched", [False, True])
def test_hung_shard_read_holds_up_only_its_reader(tmp_path, batched):
    """F1: while one reader's GET of a shard hangs, another reader of an inner chunk of the same shard reads it
    itself and gets zarr's values (it used to wait on the first reader's lock without limit)."""
    _v3_store(tmp_path / "s.zarr", _data(), **_WHOLE)
    ref = _zarr_read(tmp_path / "s.zarr", "v")
    s = open_store(tmp_path / "s.zarr")
    assert s._shards["v"].whole
    hang = HangingSource(s.source, after=0, hang_first=1)  # the first shard request does not answer until released
    s.source = hang
    first = threading.Thread(target=s.chunk_bytes, args=("v", (0, 0, 0)), daemon=True)
    first.start()
    try:
        assert hang.entered.wait(30)
        got: dict = {}

        def second():
            if batched:
                got["raw"] = s.chunk_bytes_many("v", [(1, 1, 1), (0, 1, 0)])[0]
            else:
                got["raw"] = s.chunk_bytes("v", (1, 1, 1))

        t = threading.Thread(target=second, daemon=True)
        t.start()
        t.join(30)  # not a timing check: before the fix it waited for as long as the hung request did
        assert not t.is_alive(), "the second reader waited for the hung request of another thread"
        assert hang.hung == 1 and hang.returned == 0
        region, inside = _region(s.arrays["v"], (1, 1, 1))
        np.testing.assert_array_equal(s.decode("v", got["raw"], (1, 1, 1))[inside], ref[region])
    finally:
        hang.release.set()
        first.join(30)


def _big_store(path, narr, nt=6, ny=256, nx=256):
    """``narr`` zstd-wrapped sharded fields v0.. of (nt, ny, nx) float32: one shard per time step (256 KiB decoded),
    inner chunks (1, 64, 64); smooth values, so a stored shard is small next to its decoded size."""
    base = (np.arange(ny)[:, None] * 0.25 + np.arange(nx)[None, :] * 0.5).astype("f4")
    with _quiet():
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        for a in range(narr):
            v = root.create_array(f"v{a}", shape=(nt, ny, nx), dtype="f4", fill_value=np.nan, dimension_names=DIMS,
                                  chunks=(1, ny, nx), compressors=[ZstdCodec(level=1)],
                                  serializer=ShardingCodec(chunk_shape=(1, 64, 64), codecs=[BytesCodec()]))  # fmt: skip
            v[...] = base[None] + np.arange(nt, dtype="f4")[:, None, None] + a
        _coords(root, nt, ny, nx)
    return ny * nx * 4


def test_decoded_shards_share_one_budget_per_process(tmp_path):
    """F2: the decoded shards kept by all arrays of all open stores stay within one SHARD_CACHE_BYTES together
    (each array used to keep its own SHARD_CACHE_BYTES: here 4 arrays kept 4 x 2 shards). Counted with
    tracemalloc (memory still allocated after the reads) and by the cache's own count; values checked too."""
    shard = _big_store(tmp_path / "a.zarr", 2)
    _big_store(tmp_path / "b.zarr", 2)
    budget = int(2.5 * shard)  # two decoded shards
    stores = [open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")]
    with mock.patch("fastload.store._shard.SHARD_CACHE_BYTES", budget):
        for s in stores:  # warm up (decoders, imports) with the first shard of each array
            for a in ("v0", "v1"):
                s.read_chunk(a, (0, 0, 0))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for s in stores:
                for a in ("v0", "v1"):
                    for t in range(6):  # one inner chunk of every shard: its first value is at (t, 64, 128)
                        got = s.read_chunk(a, (t, 1, 2))
                        assert got[0, 0, 0] == np.float32(64 * 0.25 + 128 * 0.5 + t + int(a[1:]))
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    # what the reads left allocated is what the cache holds (two shards, within the budget), not 4 arrays' worth
    assert retained < budget + shard // 4, (
        f"{retained / 2**10:.0f} KiB still allocated after reading; budget {budget // 1024} KiB, a shard "
        f"{shard // 1024} KiB"
    )
    assert _shard._SHARDS.nbytes <= budget


def test_batched_read_holds_one_decoded_shard_at_a_time(tmp_path):
    """F2: a batched read of inner chunks in 8 shards peaks at about two decoded shards plus the slices (it used to
    hold all 8 decoded shards until it returned), measured with tracemalloc; the slices equal zarr's values."""
    shard = _big_store(tmp_path / "a.zarr", 1, nt=8)
    ref = _zarr_read(tmp_path / "a.zarr", "v0")
    s = open_store(tmp_path / "a.zarr")
    want = [(t, 2, 3) for t in range(8)]
    with mock.patch("fastload.store._shard.SHARD_CACHE_BYTES", 1):
        s.read_chunk("v0", (0, 0, 0))  # warm up
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            raws = s.chunk_bytes_many("v0", want)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert peak < 3 * shard, f"peak {peak / 2**10:.0f} KiB for a batch over 8 shards of {shard // 1024} KiB each"
    for chunk, raw in zip(want, raws):
        region, inside = _region(s.arrays["v0"], chunk)
        np.testing.assert_array_equal(s.decode("v0", raw, chunk)[inside], ref[region])


def test_batched_read_names_the_failed_shard(tmp_path):
    """F7: a corrupt shard in a batched read is reported with the first requested chunk in that shard and the
    shard's file (it named the batch's first chunk and its shard), with the decode error as its cause."""
    _v3_store(tmp_path / "s.zarr", _data(), **_WHOLE)
    f = tmp_path / "s.zarr" / "v" / "c" / "1" / "0" / "0"  # inner chunks (2..3, 0..1, 0..1)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2 :] = b"\x00" * (len(raw) - len(raw) // 2)
    f.write_bytes(bytes(raw))
    s = open_store(tmp_path / "s.zarr")
    with pytest.raises(ChunkReadError) as err:
        s.chunk_bytes_many("v", [(0, 0, 0), (3, 1, 0), (2, 0, 0), (1, 1, 1)])
    assert err.value.chunk == (3, 1, 0)
    assert err.value.path is not None and err.value.path.replace("\\", "/").endswith("s.zarr/v/c/1/0/0")
    assert "batched read of 4 chunks" in str(err.value) and "zstd" in str(err.value)
    assert isinstance(err.value.__cause__, _shard.DecodeError)
    # the other shards still read, singly and batched
    assert s.chunk_bytes_many("v", [(0, 0, 0), (1, 1, 1)])[1] == s.chunk_bytes("v", (1, 1, 1))


def test_a_shard_index_finalized_inside_the_cache_lock_does_not_deadlock():
    """A ShardIndex's finalizer can run from a garbage collection started by an allocation inside the cache's own
    lock, on the thread holding it (review r4: it took the lock again and hung the process for good): dropping an
    array's shards takes no lock, and they go at the next get or put."""
    from fastload.store import _shard

    cache = _shard._ShardCache()
    cache.put((7, (0,)), b"x" * 10)
    cache.put((8, (0,)), b"y" * 5)

    def finalizer_inside_the_lock():
        with cache._lock:
            cache.drop(7)

    t = threading.Thread(target=finalizer_inside_the_lock, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "drop waited for the lock its own thread holds"
    assert cache.get((7, (0,))) is None and cache.get((8, (0,))) == b"y" * 5 and cache.nbytes == 5


def test_bytes_read_count_each_whole_shard_once_as_stored(tmp_path):
    """The reader's bytes_stored for a whole-shard array is what was read from the store: each shard a batch touched,
    once, at its size on disk (it counted the inner chunks' sizes after the shard was decoded: more than was read
    when zstd compresses, and nothing for a shard index)."""
    import fastload

    path = tmp_path / "s.zarr"
    _v3_store(path, _data((12, 37, 72)), chunks=(12, 32, 64),
              serializer=ShardingCodec(chunk_shape=(3, 8, 16), codecs=[BytesCodec()]), compressors=[ZstdCodec()])  # fmt: skip
    cfg = fastload.SamplingConfig.from_dict(dict(batch_size=2, time_step=1, fields={
        "v": dict(num_tokens=[2, 2, 2], token_size=[3, 4, 4], normalization="none")}))  # fmt: skip
    with fastload.Loader(open_store(path), cfg, samples_per_epoch=6, workers=1, fetch_concurrency=1, seed=5) as loader:
        boxes = np.concatenate([b.boxes.numpy() for b in loader])
        stats = loader.stats
    touched = {(y // 32, x // 64) for _, y0, x0 in boxes for y in range(y0, y0 + 8) for x in (x0 + np.arange(8)) % 72}
    on_disk = sum((path / "v" / "c" / "0" / str(j) / str(i)).stat().st_size for j, i in touched)
    assert stats.bytes_stored == on_disk


def _shard_store(path, data=None):
    _v3_store(path, _data((12, 37, 72)) if data is None else data, chunks=(12, 32, 64),
              serializer=ShardingCodec(chunk_shape=(3, 8, 16), codecs=[BytesCodec()]), compressors=[ZstdCodec()])  # fmt: skip
    return lambda *shard: (path / "v" / "c" / "/".join(map(str, shard))).stat().st_size


def test_a_shard_read_for_empty_chunks_only_is_counted_on_the_next_chunk_handed_out(tmp_path):
    """Review r1 S2: a shard read whole for inner chunks that are all empty (fill value, so None) hands out no chunk to
    carry its stored bytes; they are counted on the next chunk the array hands out, so none are lost."""
    from fastload.store import stored_nbytes

    data = _data((12, 37, 72))
    data[0:6, 0:8, 0:16] = np.nan  # inner chunks (0, 0, 0) and (1, 0, 0) of shard (0, 0, 0): not stored
    size = _shard_store(tmp_path / "s.zarr", data)
    s = open_store(tmp_path / "s.zarr")
    first = s.chunk_bytes_many("v", [(0, 0, 0), (1, 0, 0)])
    assert first == [None, None]
    later = s.chunk_bytes_many("v", [(0, 4, 0)])  # an inner chunk of shard (0, 1, 0)
    assert sum(map(stored_nbytes, first + later)) == size(0, 0, 0) + size(0, 1, 0)


def test_read_ahead_dropped_unused_counts_the_shard_read_once(tmp_path):
    """Review r1 S1: read-ahead entries dropped unused add what was read from the store (the whole shard, once),
    not the decoded inner chunks' sizes; also when the first entry was taken and the rest dropped."""
    from fastload._raw_ahead import RawAhead

    size = _shard_store(tmp_path / "s.zarr")
    chunks = [(t, y, x) for t in range(4) for y in range(4) for x in range(4)]  # every inner chunk of shard (0, 0, 0)
    for take in (0, 1):
        s = open_store(tmp_path / "s.zarr")  # nothing cached
        ra = RawAhead(10**9, s.chunk_bytes_many)
        g = ra.claim("v", chunks, est=2000)
        ra.run(g)
        if take:  # (the reader counts no chunk it takes from the buffer: the buffer counted the shard as read)
            assert len(ra.take("v", chunks[:take])) == take
        ra.clear()
        assert sum(ra.drain_stored().values()) == size(0, 0, 0)


def test_a_chunk_that_fails_to_decode_still_counts_the_bytes_read(tmp_path):
    """Review r1 S3: the reader counts stored bytes as read, before decoding: a chunk that fails to decode (skipped
    with on_bad_chunk='skip') still counts the shard it carries."""
    import fastload

    size = _shard_store(tmp_path / "s.zarr")
    cfg = fastload.SamplingConfig.from_dict(dict(batch_size=1, time_step=1, fields={
        "v": dict(num_tokens=[2, 2, 2], token_size=[3, 4, 4], normalization="none")}))  # fmt: skip
    s = open_store(tmp_path / "s.zarr")
    decode = s.decode

    def failing(array, raw, chunk, out=None):
        if tuple(chunk) == (0, 0, 0):
            raise ValueError("corrupt")
        return decode(array, raw, chunk, out)

    s.decode = failing
    with _quiet(), fastload.Loader(s, cfg, boxes=np.array([[0, 0, 0]]), workers=1, fetch_concurrency=1,
                                   on_bad_chunk="skip", seed=1) as loader:  # fmt: skip
        for _ in loader:
            pass
        assert loader.stats.bytes_stored == size(0, 0, 0)


def test_the_rollout_loaders_counter_counts_whole_shards_as_read(tmp_path):
    """Review r1 S4: the counting store behind the rollout loader (extract's requests) adds the bytes read for a
    chunk (a whole shard once), not the decoded inner chunk's size."""
    from fastload.rollout_data import _CountingStore

    size = _shard_store(tmp_path / "s.zarr")
    s = _CountingStore(open_store(tmp_path / "s.zarr"))
    for chunk in [(0, 0, 0), (0, 1, 1), (1, 2, 3)]:  # all in shard (0, 0, 0)
        s.chunk_bytes("v", chunk)
    assert s.stats.bytes_stored == size(0, 0, 0)
