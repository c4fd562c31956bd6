"""Zarr v3 stores written by zarr-python/xarray with layouts a user's audit found fastload misread or refused:
codecs around ``sharding_indexed`` (a transpose before it, bytes-to-bytes codecs after it), fixed-size string
types (``fixed_length_utf32``, ``null_terminated_bytes``), and arrays on the grid that are not fields (CESM's
``gw(lat)``). Every value is checked against zarr-python's or xarray's reading of the same store."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import (
    BytesCodec,
)

from fastload.errors import SchemaError
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
