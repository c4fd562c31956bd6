"""How often an open Store checks a local shard against its file (:func:`fastload.store._shard.checked_under`).

A local shard's cached index is checked with one ``stat`` per use; the Loader reads local chunks one at a time, so
that was one ``stat`` per inner chunk (review rv1: 14,859 stats for 14,859 chunk reads, epochs 1.11x slower). Now a
loader step, and an ``extract`` call, check each shard once (a token), and a shard rewritten between two steps,
epochs or calls is still read fresh."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import fastload
from fastload.config import FieldConfig, SamplingConfig
from fastload.extract import extract
from fastload.reader import ChunkReader
from fastload.store import open_store
from fastload.store._shard import checked_under
from fastload.store._source import LocalSource
from tests.fastload.stores import make_per_variable
from tests.fastload.test_store_shard_changes import _rewrite_step0_nan, _xr_read, _xr_store, whole_shard_store
from tests.fastload.test_store_v3_edges import _data, _quiet, _zarr_read

# t: (time 8, level 3, lat 32, lon 64), inner chunks (1, 1, 4, 4), shards (4, 3, 16, 32): 8 shards of 384 chunks
_SHARDS = (4, 3, 16, 32)
_TOK = dict(num_tokens=(2, 4, 4), token_size=(2, 4, 4))


def _store(path, codec="blosc-lz4"):
    make_per_variable(path, zarr_format=3, sharded=True, nt=8, levels=(500.0, 850.0, 1000.0), ny=32, nx=64,
                      chunks=(1, 1, 4, 4), shards=_SHARDS, codec=codec, missing_chunk=False)  # fmt: skip
    return path


def _config():
    return SamplingConfig(fields=(FieldConfig(name="t", levels=(1000.0, 500.0), normalization="none", **_TOK),
                                  FieldConfig(name="sp", normalization="none", **_TOK)),
                          batch_size=4, time_step=1)  # fmt: skip


@pytest.fixture
def stats(monkeypatch):
    """The shard files ``LocalSource.version`` stat'ed, in order."""
    seen: list[str] = []
    orig = LocalSource.version

    def counting(self, key):
        seen.append(key)
        return orig(self, key)

    monkeypatch.setattr(LocalSource, "version", counting)
    return seen


def _rewrite(path, scale):
    """zarr-python rewrites ``t`` and ``sp``: time steps 0 and 4 NaN (the fill value: those inner chunks leave their
    shards, so the others move), the rest times ``scale``. Every shard file changes, and an index read before
    points at the wrong bytes."""
    with _quiet():
        for name in ("t", "sp"):
            a = zarr.open_array(str(path / name), mode="r+")
            new = a[...] * np.asarray(scale, a.dtype)
            new[[0, 4]] = np.nan
            a[...] = new


@pytest.mark.parametrize("compressors", [None, "zstd"])  # zstd: inner chunks; see the whole-shard case below
@pytest.mark.parametrize("how", ["one", "batched"])
def test_a_token_checks_each_shard_once(tmp_path, stats, compressors, how):
    """Under one token the shard is stat'ed once however many of its chunks are read (one stat per chunk, or per
    call, without one); a new token checks it again and reads a shard rewritten since: zarr-python's values."""
    from zarr.codecs import ZstdCodec

    path = str(tmp_path / "s.zarr")
    ds = _xr_store(path, compressors=None if compressors is None else [ZstdCodec()])
    s = open_store(path)
    info = s.arrays["sp"]
    chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]  # 16 inner chunks of one shard

    def read(token):
        with checked_under(token):
            if how == "batched":
                return s.chunk_bytes_many("sp", chunks[:8]) + s.chunk_bytes_many("sp", chunks[8:])
            return [s.chunk_bytes("sp", c) for c in chunks]

    read(None)
    assert len(stats) == (2 if how == "batched" else len(chunks))  # no token: every use (call) checks
    del stats[:]
    read(object())
    assert len(stats) == 1
    _rewrite_step0_nan(path, ds)
    ref = _xr_read(path)
    raws = read(object())
    assert len(stats) == 2
    for c, raw in zip(chunks, raws):
        region = tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, info.chunks))
        np.testing.assert_array_equal(s.decode("sp", raw, c), ref[region])


def test_a_token_checks_a_whole_shard_once(tmp_path, stats):
    """Shards decoded whole (zstd after sharding_indexed): one stat per shard and token, not per chunk; a rewrite
    between tokens is read fresh (values equal zarr-python's)."""
    path = tmp_path / "w.zarr"
    data = _data()
    s = whole_shard_store(path, data)
    info = s.arrays["v"]
    chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]
    n_shards = len({s._shards["v"].local(c)[0] for c in chunks})
    assert len(chunks) > n_shards
    with checked_under(object()):
        for c in chunks:
            s.chunk_bytes("v", c)
    assert len(stats) == n_shards
    with _quiet():
        zarr.open_array(str(path / "v"), mode="r+")[0:6, 0:8, 0:18] = data[0:6, 0:8, 0:18] + 100  # the first shard
    ref = _zarr_read(path, "v")
    with checked_under(object()):
        got = [s.decode("v", s.chunk_bytes("v", c), c) for c in chunks]
    assert len(stats) == 2 * n_shards
    for c, v in zip(chunks, got):
        region = tuple(slice(i * n, min((i + 1) * n, m)) for i, n, m in zip(c, info.chunks, info.shape))
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        np.testing.assert_array_equal(v[inside], ref[region])


def test_loader_checks_each_shard_once_per_step(tmp_path, stats, monkeypatch):
    """The Loader's stats per epoch are at most the (step, shard) pairs its fetches touch (it was one per inner
    chunk read: 14,859 for 14,859 reads in review rv1)."""
    path = _store(tmp_path / "s.zarr")
    s = open_store(str(path))
    fetched: list[tuple[int, str, tuple[int, ...]]] = []  # (step, array, chunk) of every chunk fetched
    orig = ChunkReader._fetch_decode

    def recording(self, array, chunks, slots, step, *a, **k):
        fetched.extend((step, array, tuple(c)) for c in chunks)
        return orig(self, array, chunks, slots, step, *a, **k)

    monkeypatch.setattr(ChunkReader, "_fetch_decode", recording)
    with fastload.Loader(s, _config(), workers=2, samples_per_epoch=32, seed=0, cache_bytes=0, device="cpu") as ld:
        for ep in range(2):
            ld.set_epoch(ep)
            del stats[:], fetched[:]
            n = sum(1 for _ in ld)
            assert n == 8
            cps = {a: s.arrays[a].chunks_per_shard for a in ("t", "sp")}
            pairs = {(st, a, tuple(i // k for i, k in zip(c, cps[a]))) for st, a, c in fetched}
            assert 0 < len(stats) <= len(pairs) < len(fetched), (ep, len(stats), len(pairs), len(fetched))


def test_loader_reads_a_shard_rewritten_between_epochs(tmp_path):
    """A rewrite between two epochs of one Loader is read: epoch 1's batches equal extract's on a store opened
    after the rewrite (and differ from epoch 0's values of the same boxes)."""
    path = _store(tmp_path / "s.zarr")
    cfg = _config()
    s = open_store(str(path))
    with fastload.Loader(s, cfg, workers=2, samples_per_epoch=16, seed=0, cache_bytes=0, device="cpu") as ld:
        ld.set_epoch(0)
        before = [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in b}) for b in ld]
        _rewrite(path, -2.0)
        ld.set_epoch(0)  # the same boxes again, after the rewrite
        after = [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in b}) for b in ld]
    fresh = open_store(str(path))
    for (boxes0, old), (boxes, new) in zip(before, after):
        np.testing.assert_array_equal(boxes0, boxes)
        ref = extract(fresh, cfg, boxes)
        for f in new:
            np.testing.assert_array_equal(new[f], ref[f].data)
            assert not np.array_equal(new[f], old[f], equal_nan=True)


@pytest.mark.parametrize("timeout", [None, 300.0])
def test_extract_checks_each_shard_once_per_call_and_sees_rewrites(tmp_path, stats, timeout):
    """One extract call stats each shard it touches once (it was once per inner chunk); the next call reads a
    shard rewritten in between (values equal extract's on a store opened after the rewrite)."""
    path = _store(tmp_path / "s.zarr")
    cfg = _config()
    s = open_store(str(path))
    boxes = np.array([[0, 0, 0], [2, 16, 40], [4, 8, 20]])
    old = extract(s, cfg, boxes, read_timeout_s=timeout)
    touched = set(stats)
    assert 0 < len(stats) == len(touched)  # each shard file once
    _rewrite(path, 3.0)
    del stats[:]
    new = extract(s, cfg, boxes, read_timeout_s=timeout)
    assert len(stats) == len(set(stats)) == len(touched)
    ref = extract(open_store(str(path)), cfg, boxes, read_timeout_s=timeout)
    for f in ("t", "sp"):
        np.testing.assert_array_equal(new[f].data, ref[f].data)
        assert np.isnan(new[f].data).any() and not np.array_equal(new[f].data, old[f].data, equal_nan=True)


def test_a_hung_index_read_holds_up_no_other_shard(tmp_path):
    """Review rv3: the checks under a token held one lock per array across a shard's stat and index read, so a hung
    index read of one shard (NFS, Lustre) stalled every read of every other shard of the array until it answered
    (2.8 s in the reviewer's probe); the locks are now striped by shard."""
    import threading

    s = open_store(_store(tmp_path / "s.zarr"))
    info = s.arrays["t"]
    si = s._shards["t"]
    a, b = (0, 0, 0, 0), (4, 0, 0, 0)  # inner chunks of two shards (time 0 and time 4)
    assert si.local(a)[0] != si.local(b)[0]
    key_a = info.key(a)
    gate, entered = threading.Event(), threading.Event()
    orig = s.source.get_range

    def get_range(key, start, length):
        if key == key_a:
            entered.set()
            gate.wait(60)  # shard a's index read hangs until the test lets it go
        return orig(key, start, length)

    s.source.get_range = get_range
    token = object()

    def read(c, out):
        with checked_under(token):
            out.append(s.chunk_bytes("t", c))

    got_a: list = []
    got_b: list = []
    ta = threading.Thread(target=read, args=(a, got_a))
    ta.start()
    try:
        assert entered.wait(30)
        tb = threading.Thread(target=read, args=(b, got_b))
        tb.start()
        tb.join(30)  # a hang guard, not a timing check
        assert not tb.is_alive() and got_b, "a read of another shard waited for the hung index read"
    finally:
        gate.set()
        ta.join(30)
    ref = _zarr_read(tmp_path / "s.zarr", "t")
    for c, got in ((a, got_a), (b, got_b)):
        region = tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, info.chunks))
        np.testing.assert_array_equal(s.decode("t", got[0], c), ref[region])
