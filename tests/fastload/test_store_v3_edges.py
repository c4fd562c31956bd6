"""Zarr v3 stores written by zarr-python/xarray with layouts a user's audit found fastload misread or refused:
codecs around ``sharding_indexed`` (a transpose before it, bytes-to-bytes codecs after it), fixed-size string
types (``fixed_length_utf32``, ``null_terminated_bytes``), and arrays on the grid that are not fields (CESM's
``gw(lat)``). Every value is checked against zarr-python's or xarray's reading of the same store."""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import (
    BytesCodec,
)

import fastload
from fastload.errors import ConfigError, SchemaError
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
