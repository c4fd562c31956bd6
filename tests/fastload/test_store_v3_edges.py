"""Zarr v3 stores written by zarr-python/xarray with layouts a user's audit found fastload misread or refused:
codecs around ``sharding_indexed`` (a transpose before it, bytes-to-bytes codecs after it), fixed-size string
types (``fixed_length_utf32``, ``null_terminated_bytes``), and arrays on the grid that are not fields (CESM's
``gw(lat)``). Every value is checked against zarr-python's or xarray's reading of the same store."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import warnings
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import (
    AsType,
    BitRound,
    BytesCodec,
    Crc32cCodec,
    Quantize,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

import fastload
from fastload.errors import ChunkReadError, CodecError, ConfigError, SchemaError
from fastload.inspect import describe, format_summary
from fastload.store import open_store
from fastload.store._meta import _v3_dtype

DIMS = ("time", "latitude", "longitude")


@contextlib.contextmanager
def _quiet():
    """zarr-python warns about its unstable string types, consolidated v3 metadata and sharding + codecs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _coords(root, nt, ny, nx):
    for name, vals, attrs in [
        ("time", np.arange(nt) * 6, {"units": "hours since 2000-01-01", "calendar": "standard"}),
        ("latitude", np.linspace(80, -80, ny), {}),
        ("longitude", np.arange(nx) * 360 / nx, {}),
    ]:
        c = root.create_array(name, shape=vals.shape, dtype=vals.dtype, attributes=attrs, dimension_names=(name,))
        c[...] = vals


def _v3_store(path, data, **kw):
    """A per-variable v3 store with field ``v`` (time, latitude, longitude) written by zarr-python with ``kw``."""
    with _quiet():
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        v = root.create_array("v", shape=data.shape, dtype=data.dtype, fill_value=np.nan, dimension_names=DIMS, **kw)
        v[...] = data
        _coords(root, *data.shape)


def _zarr_read(path, name):
    with _quiet():
        return zarr.open_group(str(path), mode="r")[name][...]


def _check_every_chunk(store, path, name="v"):
    """Every inner chunk, read one by one and batched, == zarr-python's read of its region; the whole field too."""
    info = store.arrays[name]
    ref = _zarr_read(path, name)
    idx = list(np.ndindex(*info.grid_shape))
    batched = store.chunk_bytes_many(name, idx)
    for chunk, raw in zip(idx, batched):
        region = tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(chunk, info.chunks, info.shape))
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        one = store.read_chunk(name, chunk)
        assert one.shape == info.chunks
        np.testing.assert_array_equal(one[inside], ref[region], err_msg=f"chunk {chunk}")
        np.testing.assert_array_equal(store.decode(name, raw, chunk)[inside], ref[region], err_msg=f"batched {chunk}")
    np.testing.assert_array_equal(store.read(name)[:, 0], ref)


def _data(shape=(14, 20, 36), seed=0):
    d = np.random.default_rng(seed).standard_normal(shape).astype("f4")
    d[0:3, 0:12, 0:12] = np.nan  # whole inner chunks of fill value: zarr-python leaves them out of their shard
    return d


# -- 1. codecs outside sharding_indexed --------------------------------------------------------------------------
@pytest.mark.parametrize("order,inner", [((0, 2, 1), (3, 4, 6)), ((2, 1, 0), (4, 6, 3)), ((1, 2, 0), (6, 4, 3))])
def test_transpose_before_sharding(tmp_path, order, inner):
    """The shard is transposed, then cut into inner chunks: fastload read zarr's [1, 0] as [0, 1] before.
    (zarr-python checks the inner chunk shape against the untransposed shard, so both must divide: a cube.)"""
    data = _data()
    _v3_store(tmp_path / "s.zarr", data, chunks=(12, 12, 12), filters=[TransposeCodec(order=order)],
              serializer=ShardingCodec(chunk_shape=inner, codecs=[BytesCodec(), ZstdCodec()]), compressors=None)
    s = open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(s.read("v")[:, 0], _zarr_read(tmp_path / "s.zarr", "v"))
    _check_every_chunk(s, tmp_path / "s.zarr")
    assert s.arrays["v"].shard == (12, 12, 12)
    assert s.arrays["v"].chunks == (3, 6, 4)  # the inner chunk in array axes


@pytest.mark.parametrize("compressors,location", [
    ("default", "end"), ([Crc32cCodec()], "end"), ([ZstdCodec(level=3), Crc32cCodec()], "start"),
])  # fmt: skip
def test_bytes_codecs_after_sharding(tmp_path, compressors, location):
    """zarr-python 3.1 appends zstd after a ShardingCodec serializer; the shard is then decoded whole."""
    data = _data()
    kw = {} if compressors == "default" else {"compressors": compressors}
    sharding = ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec(), ZstdCodec()],
                             index_location=location)  # fmt: skip  (a str: an enum in zarr 3.1, a Literal since)
    _v3_store(tmp_path / "s.zarr", data, chunks=(6, 8, 18), serializer=sharding, **kw)
    codecs = json.loads((tmp_path / "s.zarr" / "v" / "zarr.json").read_text())["codecs"]
    chain = [c["name"] for c in codecs]
    assert chain[0] == "sharding_indexed" and len(chain) > 1
    assert codecs[0]["configuration"]["index_location"] == location
    s = open_store(tmp_path / "s.zarr")
    _check_every_chunk(s, tmp_path / "s.zarr")


def test_whole_shard_read_once_for_its_inner_chunks(tmp_path):
    """Reading every inner chunk of a zstd-wrapped shard one by one reads (and decodes) the shard once."""
    _v3_store(tmp_path / "s.zarr", _data(), chunks=(6, 8, 18),
              serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec()]))  # fmt: skip
    s = open_store(tmp_path / "s.zarr")
    keys = []
    get = s.source.get
    s.source.get = lambda key: keys.append(key) or get(key)  # type: ignore[method-assign]
    for chunk in np.ndindex(2, 2, 2):  # the 8 inner chunks of shard (0, 0, 0)
        s.chunk_bytes("v", chunk)
    assert keys == ["v/c/0/0/0"]


def test_whole_shards_from_many_threads(tmp_path):
    """Threads reading the inner chunks of zstd-wrapped shards at once (the reader's pool) get zarr's values, with
    a shard cache too small to hold more than the shard just decoded."""
    _v3_store(tmp_path / "s.zarr", _data(), chunks=(6, 8, 18),
              serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec()]))  # fmt: skip
    s = open_store(tmp_path / "s.zarr")
    ref = _zarr_read(tmp_path / "s.zarr", "v")
    info = s.arrays["v"]
    idx = list(np.ndindex(*info.grid_shape)) * 4
    random.Random(0).shuffle(idx)
    with mock.patch("fastload.store._shard.SHARD_CACHE_BYTES", 1):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda c: s.read_chunk("v", c), idx))
    for chunk, one in zip(idx, got):
        region = tuple(slice(c * n, min((c + 1) * n, m)) for c, n, m in zip(chunk, info.chunks, info.shape))
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        np.testing.assert_array_equal(one[inside], ref[region], err_msg=f"chunk {chunk}")


def test_extract_matches_xarray_on_sharded_then_zstd(tmp_path):
    data = _data((12, 37, 72))
    _v3_store(tmp_path / "s.zarr", data, chunks=(12, 32, 64),
              serializer=ShardingCodec(chunk_shape=(3, 8, 16), codecs=[BytesCodec(), ZstdCodec()]))  # fmt: skip
    cfg = fastload.SamplingConfig.from_dict(dict(batch_size=1, time_step=1, fields={
        "v": dict(num_tokens=[2, 2, 2], token_size=[3, 4, 4], normalization="none")}))  # fmt: skip
    boxes = np.array([[0, 0, 0], [6, 29, 70]])
    got = fastload.extract(tmp_path / "s.zarr", cfg, boxes)["v"].data
    with _quiet():
        ref = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)["v"]
        for b, (t0, y0, x0) in enumerate(boxes):
            a = ref.isel(time=slice(t0, t0 + 6), latitude=slice(y0, y0 + 8), longitude=(x0 + np.arange(8)) % 72).values
            want = a.reshape(2, 3, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3, 5)[None]
            np.testing.assert_array_equal(got[b], want)


def test_corrupt_zstd_wrapped_shard_names_array_and_chunk(tmp_path):
    _v3_store(tmp_path / "s.zarr", _data(), chunks=(6, 8, 18),
              serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec()]))  # fmt: skip
    ref = _zarr_read(tmp_path / "s.zarr", "v")
    f = tmp_path / "s.zarr" / "v" / "c" / "1" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2 :] = b"\x00" * (len(raw) - len(raw) // 2)
    f.write_bytes(bytes(raw))
    s = open_store(tmp_path / "s.zarr")
    with pytest.raises(ChunkReadError, match=r"array 'v', chunk \(2, 0, 0\).*shard \(codecs \['zstd'\]"):
        s.read_chunk("v", (2, 0, 0))
    np.testing.assert_array_equal(s.read_chunk("v", (0, 0, 1)), ref[0:3, 0:4, 9:18])  # other shards still read


def test_unreadable_codec_before_sharding_refused_at_open(tmp_path):
    _v3_store(tmp_path / "s.zarr", _data(), chunks=(12, 12, 12), filters=[TransposeCodec(order=(0, 2, 1))],
              serializer=ShardingCodec(chunk_shape=(3, 4, 6), codecs=[BytesCodec()]), compressors=None)  # fmt: skip
    meta = tmp_path / "s.zarr" / "v" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"][0]["configuration"]["order"] = [0, 1, 1]  # not a permutation
    meta.write_text(json.dumps(doc))
    with pytest.raises(CodecError, match=r"array 'v' .*codec chain \['transpose', 'sharding_indexed'\].*before "
                                         r"'sharding_indexed' fastload reads only 'transpose'"):  # fmt: skip
        open_store(tmp_path / "s.zarr")


_INNER_ZSTD = dict(compressors=None, serializer=ShardingCodec(chunk_shape=(3, 4, 9), codecs=[BytesCodec(), ZstdCodec()]))
_FILTERS = {  # built in the test: zarr-python warns when a numcodecs codec is made
    "bitround": lambda: [BitRound(keepbits=9)],
    "quantize": lambda: [Quantize(digits=3, dtype="<f4")],
    "astype": lambda: [AsType(encode_dtype="<f8", decode_dtype="<f4")],  # the shard holds float64
    "bitround+transpose": lambda: [BitRound(keepbits=9), TransposeCodec(order=(2, 0, 1))],
}
_INNER = {"bitround+transpose": (6, 2, 2)}  # divides the shard (6, 8, 18) as it is and as seen, (18, 6, 8)


@pytest.mark.parametrize("filters,shards", [(f, False) for f in _FILTERS] + [("bitround", True)])
def test_elementwise_filters_before_sharding(tmp_path, filters, shards):
    """Review r1 F4: element-wise numcodecs filters before the sharding codec (zarr-python puts ``filters=`` there
    when given ``serializer=ShardingCodec(...)``; with ``shards=``, inside the inner chain) decode per inner chunk
    and give zarr-python's values (a store with bitround before sharding opened before 1936ce5, refused by it)."""
    kw = dict(chunks=(3, 4, 9), shards=(6, 8, 18)) if shards else dict(chunks=(6, 8, 18), **_INNER_ZSTD)
    if filters in _INNER:
        kw["serializer"] = ShardingCodec(chunk_shape=_INNER[filters], codecs=[BytesCodec(), ZstdCodec()])
    with _quiet():
        made = _FILTERS[filters]()
        _v3_store(tmp_path / "s.zarr", _data(), filters=made, **kw)
    chain = [c["name"] for c in json.loads((tmp_path / "s.zarr" / "v" / "zarr.json").read_text())["codecs"]]
    assert chain[-1] == "sharding_indexed" and len(chain) == (1 if shards else 1 + len(made))
    s = open_store(tmp_path / "s.zarr")
    _check_every_chunk(s, tmp_path / "s.zarr")


def test_fixedscaleoffset_before_sharding(tmp_path):
    """Review r1 F4: numcodecs.fixedscaleoffset before sharding (zarr-python 3.1 cannot write it for a 3-D array,
    so its metadata replaces astype's on a store whose shards hold float64: decoded, x / 4 + 0.5) reads as
    zarr-python reads it."""
    with _quiet():
        _v3_store(tmp_path / "s.zarr", _data(), filters=_FILTERS["astype"](), chunks=(6, 8, 18), **_INNER_ZSTD)
    meta = tmp_path / "s.zarr" / "v" / "zarr.json"
    doc = json.loads(meta.read_text())
    conf = {"offset": 0.5, "scale": 4, "dtype": "<f4", "astype": "<f8"}
    doc["codecs"][0] = {"name": "numcodecs.fixedscaleoffset", "configuration": conf}
    meta.write_text(json.dumps(doc))
    np.testing.assert_allclose(_zarr_read(tmp_path / "s.zarr", "v"), _data() / 4 + 0.5, rtol=1e-6)  # the reference
    _check_every_chunk(open_store(tmp_path / "s.zarr"), tmp_path / "s.zarr")


def test_delta_before_sharding_refused_at_open(tmp_path):
    """Review r1 F4: a codec before sharding that is not element-wise (delta: a running sum along the shard) is
    refused at open, naming the array, the chain and why."""
    with _quiet():
        _v3_store(tmp_path / "s.zarr", _data(), filters=_FILTERS["bitround"](), chunks=(6, 8, 18), **_INNER_ZSTD)
    meta = tmp_path / "s.zarr" / "v" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"][0] = {"name": "numcodecs.delta", "configuration": {"dtype": "<f4"}}
    meta.write_text(json.dumps(doc))
    with pytest.raises(CodecError, match=r"array 'v' .*codec chain \['numcodecs.delta', 'sharding_indexed'\]: "
                                         r"'numcodecs.delta' is not element-wise"):  # fmt: skip
        open_store(tmp_path / "s.zarr")


# -- 2. fixed-size string types ----------------------------------------------------------------------------------
@pytest.mark.parametrize("string", ["U", "S"])
def test_v3_string_coordinate_from_xarray(tmp_path, string):
    """ERA5 from the new CDS: an ``expver`` string coordinate along valid_time, written by xarray as v3."""
    vt = pd.date_range("2024-01-01", periods=6, freq="6h")
    expver = np.array(["0001"] * 3 + ["0005"] * 3, dtype=f"{string}4")
    t2m = np.random.default_rng(0).normal(280, 5, (6, 19, 36)).astype("f4")
    ds = xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), t2m)},
                    coords={"valid_time": vt, "latitude": np.linspace(90, -90, 19), "longitude": np.arange(0, 360, 10.0),
                            "number": 0, "expver": ("valid_time", expver)})  # fmt: skip
    with _quiet():
        ds.to_zarr(tmp_path / "s.zarr", zarr_format=3)
        ref = xr.open_zarr(tmp_path / "s.zarr")
        want_expver, want_t2m = ref["expver"].values, ref["t2m"].values
    s = open_store(tmp_path / "s.zarr")
    assert list(s.fields) == ["t2m"] and s.time.size == 6
    np.testing.assert_array_equal(s.read("t2m")[:, 0], want_t2m)
    got = s._read_coord("expver")
    assert got.dtype.kind == string and got.tolist() == want_expver.tolist()


@pytest.mark.parametrize("endian", ["little", "big"])
def test_v3_fixed_length_utf32_array_reads_as_zarr(tmp_path, endian):
    vals = np.array([["a", "bc", "", "défg"], ["x", "yy", "zzz", "ü"]], dtype="U4")
    _v3_store(tmp_path / "s.zarr", np.zeros((4, 9, 16), "f4"), chunks=(2, 9, 16))
    with _quiet():
        root = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
        a = root.create_array("names", shape=vals.shape, dtype=vals.dtype, chunks=(1, 3), fill_value="n/a",
                              serializer=BytesCodec(endian=endian), dimension_names=("row", "col"))  # fmt: skip
        a[:, :3] = vals[:, :3]  # the last chunk column is never written: it reads as the fill value
        ref = zarr.open_array(str(tmp_path / "s.zarr" / "names"), mode="r")[...]
    s = open_store(tmp_path / "s.zarr")
    assert s._all["names"].dtype == np.dtype("U4") and s._all["names"].fill_value == "n/a"
    got = s._read_coord("names")
    assert got.tolist() == ref.tolist() and got[0, 3] == "n/a"


def test_v3_string_types_parse():
    assert _v3_dtype({"name": "fixed_length_utf32", "configuration": {"length_bytes": 16}}, "w") == np.dtype("U4")
    assert _v3_dtype({"name": "null_terminated_bytes", "configuration": {"length_bytes": 3}}, "w") == np.dtype("S3")
    with pytest.raises(SchemaError, match=r"w: data_type .*fixed_length_utf32.*length_bytes must be a positive "
                                          r"integer multiple of 4, got 6"):  # fmt: skip
        _v3_dtype({"name": "fixed_length_utf32", "configuration": {"length_bytes": 6}}, "w")


def test_string_array_on_the_grid_is_not_a_field(tmp_path):
    data = np.random.default_rng(0).standard_normal((4, 9, 16)).astype("f4")
    _v3_store(tmp_path / "s.zarr", data, chunks=(2, 9, 16))
    with _quiet():
        g = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
        g.create_array("flag", shape=data.shape, dtype="U2", dimension_names=DIMS)[...] = "ok"
    s = open_store(tmp_path / "s.zarr")
    assert list(s.fields) == ["v"] and "dtype <U2" in s.not_fields["flag"]


# -- 3. arrays on the grid that are not fields -------------------------------------------------------------------
def _cesm_like(path, extra):
    lat, lon = np.linspace(90, -90, 19), np.arange(0, 360, 10.0)
    v = np.random.default_rng(0).normal(250, 5, (8, 19, 36)).astype("f4")
    ds = xr.Dataset({"v": (DIMS, v)}, coords={"time": pd.date_range("2020-01-01", periods=8, freq="6h"),
                                              "latitude": lat, "longitude": lon})  # fmt: skip
    for name, (dims, vals) in extra.items():
        ds[name] = (dims, vals)
    with _quiet():
        ds.to_zarr(path, zarr_format=2)
    return ds


def _cfg(field):
    return fastload.SamplingConfig.from_dict(dict(batch_size=1, time_step=1, fields={
        field: dict(num_tokens=[1, 2, 2], token_size=[2, 4, 4], normalization="none")}))  # fmt: skip


def test_auxiliary_latitude_arrays_are_not_fields(tmp_path):
    path = tmp_path / "cesm.zarr"
    ds = _cesm_like(path, {"gw": (("latitude",), np.cos(np.deg2rad(np.linspace(90, -90, 19)))),
                           "lat_edges": (("latitude", "nv"), np.zeros((19, 2)))})  # fmt: skip
    s = open_store(path)
    assert list(s.fields) == ["v"]
    assert s.not_fields == {
        "gw": "dims ('latitude',); a field has dims (time, [level], latitude, longitude)",
        "lat_edges": "dims ('latitude', 'nv'); a field has dims (time, [level], latitude, longitude)",
    }
    text = format_summary(describe(s, sizes="never"))
    assert "gw  not a field: dims ('latitude',)" in text and "lat_edges  not a field: dims ('latitude', 'nv')" in text
    got = fastload.extract(path, _cfg("v"), np.array([[2, 3, 34]]))["v"].data[0]
    ref = ds["v"].isel(time=slice(2, 4), latitude=slice(3, 11), longitude=(34 + np.arange(8)) % 36).values
    np.testing.assert_array_equal(got, ref.reshape(1, 2, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3, 5)[None])
    for field in ("gw", "lat_edges"):
        with pytest.raises(ConfigError, match=rf"fields.{field}: array '{field}' in store .* is not a field: dims"):
            fastload.extract(path, _cfg(field), np.array([[0, 0, 0]]))


def test_no_field_left_names_why_each_array_is_not_one(tmp_path):
    path = tmp_path / "s.zarr"
    _cesm_like(path, {"gw": (("latitude",), np.ones(19))})
    with _quiet():
        g = zarr.open_group(str(path), mode="a")
        del g["v"]
    with pytest.raises(SchemaError, match=r"no data arrays found.*'gw' is not a field: dims \('latitude',\)"):
        open_store(path)
    assert os.path.isdir(path)
