"""Shards that change under an open Store, and shard indexes that are corrupt (:mod:`fastload.store._shard`).

An open Store caches each shard's index. On local files it checks the shard file's ``(size, mtime_ns, inode)``
before using the cached entry, so a shard rewritten by xarray/zarr-python reads as a fresh open reads it (it used to
return another inner chunk's bytes, silently); remote stores are a snapshot, and a read past a shard's new end says
the store changed since it was opened. Every index entry is checked (review r2, findings 1 and 2)."""

from __future__ import annotations

import struct
import warnings

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

from fastload.errors import ChunkReadError
from fastload.store import open_store
from tests.fastload.test_store_sources import _copy_to_memory
from tests.fastload.test_store_v3_edges import _data, _quiet, _v3_store, _zarr_read


def _xr_store(path, compressors=None):
    """A per-variable v3 store written by xarray: ``sp`` (time 4, lat 8, lon 16), one shard, inner chunks
    (1, 4, 8)."""
    rng = np.random.default_rng(0)
    t = pd.date_range("2000-01-01", periods=4, freq="6h")
    ds = xr.Dataset({"sp": (("time", "latitude", "longitude"), rng.standard_normal((4, 8, 16)).astype("f4"))},
                    coords={"time": t, "latitude": np.linspace(90, -90, 8), "longitude": np.arange(16) * 22.5})
    enc = {"sp": {"chunks": (1, 4, 8), "shards": (4, 8, 16), "compressors": compressors}}
    with _quiet():
        ds.to_zarr(path, zarr_format=3, encoding=enc, consolidated=False)
    return ds


def _rewrite_step0_nan(path, ds):
    """xarray's region write of time step 0 as NaN: zarr-python drops those inner chunks from the shard, so the
    other inner chunks move to other offsets (the shard shrinks)."""
    r = ds.isel(time=[0]).drop_vars(["latitude", "longitude"])
    r["sp"][:] = np.nan
    with _quiet():
        r.to_zarr(path, region={"time": slice(0, 1)}, consolidated=False)


def _xr_read(path):
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, consolidated=False)["sp"].values


@pytest.mark.parametrize("compressors", [None, "zstd"])
@pytest.mark.parametrize("how", ["one", "batched"])
@pytest.mark.parametrize("url", [False, True])
def test_shard_rewritten_under_an_open_store_reads_its_new_values(tmp_path, compressors, how, url):
    """High, finding 1: after xarray rewrote the shard (step 0 as NaN), the open store returned another step's
    values for steps 0 and 1, and a 'truncated shard' error for steps 2 and 3. (``url``: the same files through
    fsspec's ``file://``, also checked.)"""
    path = str(tmp_path / "s.zarr")
    ds = _xr_store(path, compressors=None if compressors is None else [ZstdCodec()])
    s = open_store(f"file://{path}" if url else path)
    np.testing.assert_array_equal(s.read("sp")[:, 0], ds["sp"].values)  # every shard index cached
    _rewrite_step0_nan(path, ds)
    ref = _xr_read(path)
    assert np.isnan(ref[0]).all() and not np.isnan(ref[1:]).any()
    info = s.arrays["sp"]
    chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]
    raws = s.chunk_bytes_many("sp", chunks) if how == "batched" else [s.chunk_bytes("sp", c) for c in chunks]
    for c, raw in zip(chunks, raws):
        region = tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, info.chunks))
        np.testing.assert_array_equal(s.decode("sp", raw, c), ref[region])


def whole_shard_store(path, data):
    """``data`` as a v3 array "v" in shards of (6, 8, 18) decoded whole (zstd after sharding_indexed), opened."""
    _v3_store(path, data, chunks=(6, 8, 18), serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec()]),
              compressors=[ZstdCodec()])  # fmt: skip
    s = open_store(path)
    assert s._shards["v"].whole
    return s


def test_whole_shard_rewritten_under_an_open_store_reads_its_new_values(tmp_path):
    """Finding 1 for shards decoded whole (zstd after sharding_indexed): the decoded shard cached per process is
    keyed by the file's version, so the rewritten shard is read again."""
    path = tmp_path / "s.zarr"
    data = _data()
    s = whole_shard_store(path, data)
    s.read("v")
    with _quiet():
        z = zarr.open_array(str(path / "v"), mode="r+")
        z[0:6, 0:8, 0:18] = data[0:6, 0:8, 0:18] + 100  # the first shard rewritten
        z[6:9, 8:12, 0:9] = np.nan  # an inner chunk of another shard dropped
    ref = _zarr_read(path, "v")
    np.testing.assert_array_equal(s.read("v")[:, 0], ref)
    info = s.arrays["v"]
    chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]
    for c, raw in zip(chunks, s.chunk_bytes_many("v", chunks)):
        region = tuple(slice(i * n, min((i + 1) * n, m)) for i, n, m in zip(c, info.chunks, info.shape))
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        np.testing.assert_array_equal(s.decode("v", raw, c)[inside], ref[region])


@pytest.mark.parametrize("how", ["one", "batched"])
def test_a_shard_written_after_it_was_read_as_missing_is_read(tmp_path, how):
    """A cached 'shard missing' is checked too: the shard zarr-python writes later reads as its values."""
    path = tmp_path / "s.zarr"
    data = _data()
    kw = dict(chunks=(7, 10, 18), shards=(7, 10, 18), compressors=None)
    with _quiet():
        _v3_store(path, np.full_like(data, np.nan), **kw)  # no shard written: all fill value
    s = open_store(path)
    assert np.isnan(s.read("v")).all()
    with _quiet():
        zarr.open_array(str(path / "v"), mode="r+")[...] = data
    ref = _zarr_read(path, "v")
    got = s.read("v")[:, 0] if how == "one" else None
    if how == "batched":
        info = s.arrays["v"]
        chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]
        got = np.empty_like(ref)
        for c, raw in zip(chunks, s.chunk_bytes_many("v", chunks)):
            region = tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, info.chunks))
            got[region] = s.decode("v", raw, c)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("how", ["one", "batched"])
def test_remote_shard_that_shrank_is_a_clear_error(tmp_path, how):
    """Remote stores are a snapshot (no per-read HEAD): a read past the rewritten shard's end must not pass for
    data; the error names the shard and says the store changed since it was opened."""
    local = str(tmp_path / "s.zarr")
    ds = _xr_store(local)
    url = _copy_to_memory(local)
    s = open_store(url)
    s.read("sp")
    _rewrite_step0_nan(local, ds)
    fs = fsspec.filesystem("memory")
    key = s.arrays["sp"].key((0, 0, 0))
    with open(f"{local}/{key}", "rb") as f:
        fs.pipe_file(f"{url}/{key}", f.read())
    with pytest.raises(ChunkReadError, match=r"changed since it was opened .*reopen it") as e:
        if how == "one":
            s.chunk_bytes("sp", (3, 1, 1))
        else:
            s.chunk_bytes_many("sp", [(3, 0, 0), (3, 1, 1)])
    assert key in str(e.value) and "(3, 1, 1)" in str(e.value)
    assert e.value.chunk == (3, 1, 1)  # the chunk that failed, not the batch's first
    fresh = open_store(url)  # reopened: zarr's values
    np.testing.assert_array_equal(fresh.read("sp")[:, 0], _xr_read(local))


# -- finding 2: every index entry is checked ---------------------------------------------------------------------
_BAD = [(2**64 - 1, 16, "corrupt index"), (2**63 + 5, 16, "corrupt index"), (0, 2**63 + 1, "corrupt index"),
        (2**62, 2**62, "corrupt index"), (0, 2**62, "past the end"), (2**40, 96, "past the end")]  # fmt: skip


@pytest.mark.parametrize("off,nb,what", _BAD)
@pytest.mark.parametrize("whole", [False, True])
def test_corrupt_index_entry_is_a_decode_error_naming_shard_and_entry(tmp_path, off, nb, what, whole):
    """Medium, finding 2: an index without crc32c whose entry is neither empty nor a range in the shard escaped
    as OverflowError/MemoryError, or read as the fill value (offset 2**64-1 with nbytes 16)."""
    path = tmp_path / "s.zarr"
    data = np.arange(8 * 6 * 8, dtype="f4").reshape(8, 6, 8)  # two shards along time
    shard = ShardingCodec(chunk_shape=(2, 3, 4), codecs=[BytesCodec()], index_codecs=[BytesCodec()])
    _v3_store(path, data, chunks=(4, 6, 8), serializer=shard, compressors=[ZstdCodec()] if whole else None)
    f = path / "v" / "c" / "0" / "0" / "0"
    b = bytearray(f.read_bytes())
    if whole:
        import numcodecs

        b = bytearray(numcodecs.Zstd().decode(bytes(b)))
    struct.pack_into("<QQ", b, len(b) - 16 * 8 + 16, off, nb)  # entry 1: inner chunk (0, 0, 1)
    f.write_bytes(numcodecs.Zstd().encode(bytes(b)) if whole else bytes(b))
    s = open_store(path)
    for read in (lambda: s.chunk_bytes("v", (0, 0, 1)), lambda: s.chunk_bytes_many("v", [(0, 0, 0), (0, 0, 1)])):
        with pytest.raises(ChunkReadError, match=what) as e:
            read()
        msg = str(e.value)
        assert "'v/c/0/0/0'" in msg and "index entry 1 (inner chunk (0, 0, 1))" in msg, msg
        assert f"offset {off} + nbytes {nb}" in msg, msg
    # the other shard and zarr's read of an intact store are untouched
    np.testing.assert_array_equal(open_store(path).read_chunk("v", (2, 1, 1)), data[4:6, 3:6, 4:8])


# -- finding 5: a failed batched read names the chunk that failed ------------------------------------------------
@pytest.mark.parametrize("whole", [False, True])
def test_failed_batched_read_names_the_failing_chunk(tmp_path, whole):
    """Low, finding 5: the error of a batched read named the batch's first chunk (``.chunk``) while its message
    named the chunk that failed; both now name the failing one (a bad index entry of a requested chunk)."""
    path = tmp_path / "s.zarr"
    data = np.arange(4 * 6 * 8, dtype="f4").reshape(4, 6, 8)
    shard = ShardingCodec(chunk_shape=(2, 3, 4), codecs=[BytesCodec()], index_codecs=[BytesCodec()])
    _v3_store(path, data, chunks=(4, 6, 8), serializer=shard, compressors=[ZstdCodec()] if whole else None)
    f = path / "v" / "c" / "0" / "0" / "0"
    import numcodecs

    b = bytearray(numcodecs.Zstd().decode(f.read_bytes()) if whole else f.read_bytes())
    struct.pack_into("<QQ", b, len(b) - 16 * 8 + 16 * 7, 2**40, 96)  # entry 7: inner chunk (1, 1, 1)
    f.write_bytes(numcodecs.Zstd().encode(bytes(b)) if whole else bytes(b))
    with pytest.raises(ChunkReadError, match=r"inner chunk \(1, 1, 1\)") as e:
        open_store(path).chunk_bytes_many("v", [(0, 0, 0), (1, 1, 1)])
    assert e.value.chunk == (1, 1, 1)


def test_truncated_shard_in_a_batched_read_names_the_failing_chunk(tmp_path):
    """Finding 5 with the reviewer's p19: an inner chunk cut off the end of its shard (index at the start, so
    the index reads whole) is named as the error's chunk, as the message names it."""
    path = tmp_path / "s.zarr"
    data = np.arange(4 * 6 * 8, dtype="f4").reshape(4, 6, 8)
    shard = ShardingCodec(chunk_shape=(2, 3, 4), codecs=[BytesCodec()], index_location="start")
    _v3_store(path, data, chunks=(4, 6, 8), serializer=shard, compressors=None)
    f = path / "v" / "c" / "0" / "0" / "0"
    s = open_store(path)
    s.chunk_bytes_many("v", [(0, 0, 0), (1, 1, 1)])  # indexes cached, then the shard loses its last bytes
    b = f.read_bytes()
    with open(f, "r+b") as fh:  # in place, same inode: only the size tells
        fh.truncate(len(b) - 5)
    with pytest.raises(ChunkReadError, match=r"\(1, 1, 1\)") as e:
        s.chunk_bytes_many("v", [(0, 0, 0), (1, 1, 1)])
    assert e.value.chunk == (1, 1, 1), str(e.value)
    with pytest.raises(ChunkReadError, match="past the end") as e:  # a fresh store: at the index check
        open_store(path).chunk_bytes_many("v", [(0, 0, 0), (1, 1, 1)])
    assert e.value.chunk == (1, 1, 1), str(e.value)
