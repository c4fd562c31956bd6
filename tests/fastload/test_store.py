"""open_store reads back what zarr-python wrote: every layout x zarr format x sharding x codec, checked against the
NumPy data written, zarr-python reading the same chunks, and xarray opening the same store."""

from __future__ import annotations

import concurrent.futures
import json
import random
import warnings

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr

from fastload.store import ArrayInfo, Grid, open_store
from fastload.store.__main__ import main as store_main
from tests.fastload.conformance import assert_chunks_equal
from tests.fastload.stores import CODECS, make_atmorep, make_curvilinear, make_per_variable

MATRIX = [(2, False, c) for c in CODECS] + [(3, s, c) for s in (False, True) for c in CODECS]


def _chunk_region(info: ArrayInfo, chunk: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(chunk, info.chunks, info.shape))


def _compare_all_chunks_with_zarr(store, path):
    """Every chunk of every data array: fastload's decoded chunk == zarr-python's read of the same region."""
    group = zarr.open_group(str(path), mode="r")
    for name, info in store.arrays.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: "numcodecs codecs are not in the v3 spec" (the lz4 stores)
            ref = group[name][...]
        for chunk in np.ndindex(*info.grid_shape):
            got = store.read_chunk(name, chunk)
            assert got.shape == info.chunks and got.dtype == info.dtype and got.flags.c_contiguous
            region = _chunk_region(info, chunk)
            inside = tuple(slice(0, r.stop - r.start) for r in region)
            np.testing.assert_array_equal(got[inside], ref[region], err_msg=f"{name} chunk {chunk}")


@pytest.mark.parametrize("zarr_format,sharded,codec", MATRIX)
def test_per_variable_reads_back(tmp_path, zarr_format, sharded, codec):
    path = tmp_path / "pv.zarr"
    truth = make_per_variable(path, zarr_format=zarr_format, sharded=sharded, codec=codec)
    store = open_store(path)
    assert store.layout == "per_variable" and store.zarr_format == zarr_format
    assert set(store.fields) == {"t", "q", "sp", "orog"}
    for name in ("t", "q"):
        np.testing.assert_array_equal(store.read(name), truth[name])
    np.testing.assert_array_equal(store.read("sp")[:, 0], truth["sp"])
    np.testing.assert_array_equal(store.read("orog")[0, 0], truth["orog"])
    _compare_all_chunks_with_zarr(store, path)
    if sharded:
        assert store.arrays["t"].shard == (4, 2, 8, 12) and store.arrays["t"].chunks == (2, 1, 4, 6)


@pytest.mark.parametrize("zarr_format,sharded,codec", MATRIX)
def test_atmorep_reads_back(tmp_path, zarr_format, sharded, codec):
    path = tmp_path / "ar.zarr"
    truth = make_atmorep(path, zarr_format=zarr_format, sharded=sharded, codec=codec)
    store = open_store(path)
    assert store.layout == "atmorep"
    for i, name in enumerate(truth["fields"]):
        np.testing.assert_array_equal(store.read(name), truth["data"][:, i])
    for i, name in enumerate(truth["sfc_fields"]):
        np.testing.assert_array_equal(store.read(name)[:, 0], truth["data_sfc"][:, i])
    _compare_all_chunks_with_zarr(store, path)


@pytest.mark.parametrize("zarr_format,sharded", [(2, False), (3, False), (3, True)])
def test_xarray_opens_the_same_values(tmp_path, zarr_format, sharded):
    path = tmp_path / "pv.zarr"
    make_per_variable(path, zarr_format=zarr_format, sharded=sharded, consolidated=True)
    store = open_store(path)
    assert store.consolidated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray/zarr: consolidated metadata in v3 is not in the spec
        ds = xr.open_zarr(path, mask_and_scale=False)
    for name, f in store.fields.items():
        np.testing.assert_array_equal(store.read(name).reshape(ds[name].shape), ds[name].values)
        assert f.units == ds[name].attrs.get("units")
    np.testing.assert_array_equal(store.time, ds["time"].values)
    np.testing.assert_array_equal(store.grid.lat, ds["latitude"].values)
    np.testing.assert_array_equal(store.grid.lon, ds["longitude"].values)
    np.testing.assert_array_equal(store.fields["t"].levels, ds["level"].values)


def test_per_variable_schema(tmp_path):
    truth = make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True)
    s = open_store(tmp_path / "s.zarr")
    g = s.grid
    assert isinstance(g, Grid) and g.kind == "latlon" and (g.ny, g.nx) == (9, 16)
    assert g.periodic_x and g.lat_descending and g.dims == ("latitude", "longitude")
    np.testing.assert_array_equal(g.lat, truth["latitude"])
    assert s.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(s.time, truth["time"])
    t, sp, orog = s.fields["t"], s.fields["sp"], s.fields["orog"]
    assert (t.array, t.field_index, t.level_type, t.has_time, t.units) == ("t", None, "pressure", True, "K")
    assert t.axes == (0, None, 1, 2, 3) and t.num_levels == 2 and t.dtype == np.float32
    np.testing.assert_array_equal(t.levels, [500, 850])
    assert sp.levels is None and sp.axes == (0, None, None, 1, 2) and sp.num_levels == 1
    assert not orog.has_time and orog.axes == (None, None, None, 0, 1)
    assert set(s.arrays) == {"t", "q", "sp", "orog"}  # coordinates are not data arrays
    info = s.arrays["t"]
    assert info.grid_shape == (2, 2, 3, 3) and info.chunk_nbytes == 2 * 1 * 4 * 6 * 4
    assert np.isnan(info.fill_value) and info.dims == ("time", "level", "latitude", "longitude")
    assert info.codecs[0]["name"] == "sharding_indexed"


def test_regional_ascending_grid(tmp_path):
    make_per_variable(tmp_path / "r.zarr", regional=True, lat_descending=False, lat_name="lat", lon_name="lon")
    g = open_store(tmp_path / "r.zarr").grid
    assert not g.periodic_x and not g.lat_descending and g.dims == ("lat", "lon")


def test_level_type_from_attribute_or_units(tmp_path):
    from fastload.store._cf import level_type_of

    make_per_variable(tmp_path / "a.zarr", level_type=None)  # no level_type attribute, units "1": unknown
    assert open_store(tmp_path / "a.zarr").fields["t"].level_type is None
    make_per_variable(tmp_path / "b.zarr", level_type="model")
    assert open_store(tmp_path / "b.zarr").fields["t"].level_type == "model"
    assert level_type_of("level", {"units": "hPa"}) == "pressure"
    assert level_type_of("plev", {"units": "Pa"}) == "pressure"
    assert level_type_of("depth", {"units": "m", "positive": "down"}) == "depth"
    assert level_type_of("height", {"units": "m"}) == "height"
    assert level_type_of("hybrid", {}) == "model"


def test_atmorep_schema(tmp_path):
    truth = make_atmorep(tmp_path / "a.zarr", zarr_format=3, level_coord=True)
    s = open_store(tmp_path / "a.zarr")
    assert list(s.fields) == ["temperature", "velocity_u", "t2m", "msl"]
    f = s.fields["velocity_u"]
    assert (f.array, f.field_index, f.level_type, f.axes) == ("data", 1, "model", (0, 1, 2, 3, 4))
    np.testing.assert_array_equal(f.levels, truth["levels"])
    m = s.fields["msl"]
    assert (m.array, m.field_index, m.levels, m.level_type, m.axes) == ("data_sfc", 1, None, "surface", (0, 1, None, 2, 3))
    assert s.grid.dims == ("lat", "lon") and s.grid.periodic_x
    np.testing.assert_array_equal(s.read("velocity_u", t=[1, 3], level_idx=[4, 0], y=slice(2, 5), x=[15, 0, 1]),
                                  truth["data"][[1, 3], 1][:, [4, 0]][:, :, 2:5][..., [15, 0, 1]])  # fmt: skip


def test_atmorep_without_surface(tmp_path):
    truth = make_atmorep(tmp_path / "a.zarr", sfc_fields=None)
    s = open_store(tmp_path / "a.zarr")
    assert list(s.arrays) == ["data"] and list(s.fields) == list(truth["fields"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_curvilinear_grid(tmp_path, zarr_format):
    truth = make_curvilinear(tmp_path / "o.zarr", zarr_format=zarr_format, periodic_x=True)
    s = open_store(tmp_path / "o.zarr")
    g = s.grid
    assert g.kind == "curvilinear" and g.periodic_x and g.dims == ("y", "x") and g.lat.shape == (7, 10)
    assert not g.lat_descending
    np.testing.assert_array_equal(g.lon, truth["longitude"])
    f = s.fields["thetao"]
    assert f.level_type == "depth" and f.units == "degC"
    np.testing.assert_array_equal(s.read("thetao"), truth["thetao"])  # NaN land survives
    make_curvilinear(tmp_path / "p.zarr", zarr_format=zarr_format, periodic_x=False)
    assert not open_store(tmp_path / "p.zarr").grid.periodic_x


@pytest.mark.parametrize("zarr_format,sharded", [(2, False), (3, False), (3, True)])
def test_missing_chunks_read_as_fill_value(tmp_path, zarr_format, sharded):
    make_per_variable(tmp_path / "s.zarr", zarr_format=zarr_format, sharded=sharded)
    s = open_store(tmp_path / "s.zarr")
    assert s.chunk_bytes("q", (0, 0, 0, 0)) is None  # first time chunk of q is all NaN: never written
    assert s.chunk_bytes("q", (1, 0, 0, 0)) is not None
    got = s.read_chunk("q", (0, 1, 2, 2))
    assert got.shape == (2, 1, 4, 6) and np.isnan(got).all()
    slots = np.zeros((2, s.arrays["q"].chunk_nbytes // 4), np.float32)
    s.read_chunk("q", (0, 0, 1, 1), out=slots[1])
    assert np.isnan(slots[1]).all() and (slots[0] == 0).all()


def test_whole_missing_shard(tmp_path):
    make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, chunks=(4, 1, 4, 6), shards=(4, 1, 8, 12))
    s = open_store(tmp_path / "s.zarr")
    assert s.source.get(s.arrays["q"].key((0, 0, 0, 0))) is None  # the shard object itself is absent
    assert s.chunk_bytes("q", (0, 0, 0, 0)) is None
    assert s.chunk_bytes_many("q", [(0, 0, 0, 0), (0, 1, 2, 2)]) == [None, None]
    assert all(b is not None for b in s.chunk_bytes_many("t", [(0, 0, 0, 0), (0, 1, 2, 2)]))


@pytest.mark.parametrize("zarr_format,sharded", [(2, False), (3, True)])
def test_decode_into_slot(tmp_path, zarr_format, sharded):
    make_per_variable(tmp_path / "s.zarr", zarr_format=zarr_format, sharded=sharded)
    s = open_store(tmp_path / "s.zarr")
    info = s.arrays["t"]
    arena = np.full((3, info.chunk_nbytes // 4), -1.0, np.float32)
    raw = s.chunk_bytes("t", (1, 1, 0, 1))
    view = s.decode("t", raw, (1, 1, 0, 1), out=arena[2])
    assert view.shape == info.chunks and np.shares_memory(view, arena)
    assert_chunks_equal(view, s.read_chunk("t", (1, 1, 0, 1)))
    assert (arena[:2] == -1).all()
    with pytest.raises(ValueError, match="bytes"):
        s.decode("t", raw, (1, 1, 0, 1), out=np.empty(7, np.float32))


def test_read_wraps_longitude_on_global_grid(tmp_path):
    truth = make_per_variable(tmp_path / "s.zarr")
    s = open_store(tmp_path / "s.zarr")
    x = np.arange(-3, 5)
    got = s.read("t", t=slice(1, 4), level_idx=[1, 0], y=slice(3, 8), x=x)
    np.testing.assert_array_equal(got, truth["t"][1:4][:, [1, 0]][:, :, 3:8][..., x % 16])
    assert s.read("orog", t=[3], y=[0], x=[0]).shape == (1, 1, 1, 1)
    with pytest.raises(IndexError, match="y"):
        s.read("t", y=[9])
    make_per_variable(tmp_path / "r.zarr", regional=True)
    with pytest.raises(IndexError, match="x"):
        open_store(tmp_path / "r.zarr").read("t", x=[16])


@pytest.mark.parametrize("sep", [".", "/"])
def test_key_encodings(tmp_path, sep):
    data = np.arange(5 * 9 * 16, dtype=np.float32).reshape(5, 9, 16)
    for zf, enc in [(2, None), (3, {"name": "v2", "separator": sep}), (3, {"name": "default", "separator": sep})]:
        path = tmp_path / f"k{zf}{enc and enc['name']}.zarr"
        _latlon_store(path, zf, data, chunk_key_encoding=enc or {"name": "v2", "separator": sep})
        s = open_store(path)
        assert s.arrays["v"].separator == sep
        np.testing.assert_array_equal(s.read("v")[:, 0], data)


def _latlon_store(path, zarr_format, data, **kw):
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    nt, ny, nx = data.shape
    dims = ("time", "latitude", "longitude")
    extra = {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}} if zarr_format == 2 else {"dimension_names": dims}
    v = root.create_array("v", shape=data.shape, chunks=(2, 4, 6), dtype=data.dtype, **extra, **kw)
    v[...] = data
    for name, vals, dim, attrs in [
        ("time", np.arange(nt) * 6, "time", {"units": "hours since 2000-01-01", "calendar": "standard"}),
        ("latitude", np.linspace(80, -80, ny), "latitude", {}),
        ("longitude", np.arange(nx) * 360 / nx, "longitude", {}),
    ]:
        a = {**attrs, "_ARRAY_DIMENSIONS": [dim]} if zarr_format == 2 else attrs
        extra = {} if zarr_format == 2 else {"dimension_names": (dim,)}
        c = root.create_array(name, shape=vals.shape, dtype=vals.dtype, attributes=a, **extra)
        c[...] = vals
    return root


def test_v2_f_order_big_endian_and_filters(tmp_path):
    data = np.random.default_rng(0).integers(-1000, 1000, (5, 9, 16)).astype(">i4")  # Delta is exact on ints
    _latlon_store(tmp_path / "f.zarr", 2, data, order="F", filters=[numcodecs.Delta(dtype=">i4")],
                  compressors=numcodecs.Zlib(level=1))  # fmt: skip
    s = open_store(tmp_path / "f.zarr")
    assert s.arrays["v"].order == "F" and s.arrays["v"].dtype == np.dtype("int32")
    got = s.read("v")[:, 0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, data.astype(np.int32))
    _compare_all_chunks_with_zarr(s, tmp_path / "f.zarr")


def test_v3_transpose_big_endian_crc32c(tmp_path):
    from zarr.codecs import BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec

    data = np.random.default_rng(1).standard_normal((5, 9, 16))
    _latlon_store(tmp_path / "t.zarr", 3, data, filters=[TransposeCodec(order=(2, 0, 1))],
                  serializer=BytesCodec(endian="big"), compressors=[ZstdCodec(level=1), Crc32cCodec()])  # fmt: skip
    s = open_store(tmp_path / "t.zarr")
    assert [c["name"] for c in s.arrays["v"].codecs] == ["transpose", "bytes", "zstd", "crc32c"]
    np.testing.assert_array_equal(s.read("v")[:, 0], data)
    _compare_all_chunks_with_zarr(s, tmp_path / "t.zarr")


def test_many_threads_read_identical_chunks(tmp_path):
    make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, nt=12)
    expect_store = open_store(tmp_path / "s.zarr")
    jobs = [(n, c) for n, info in expect_store.arrays.items() for c in np.ndindex(*info.grid_shape)]
    expect = {j: expect_store.read_chunk(*j) for j in jobs}
    s = open_store(tmp_path / "s.zarr")  # fresh: threads race to fill the shard-index cache
    work = jobs * 4
    random.Random(0).shuffle(work)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda j: (j, s.read_chunk(*j)), work))
    for j, arr in got:
        assert_chunks_equal(arr, expect[j])


def test_store_metadata_is_read_once_and_json_clean(tmp_path):
    make_per_variable(tmp_path / "s.zarr", zarr_format=2)
    s = open_store(tmp_path / "s.zarr")
    json.dumps([dict(c) for c in s.arrays["t"].codecs])  # codecs stay plain metadata dicts
    assert s.arrays["t"].codecs[0]["id"] == "blosc"


def test_python_m_fastload_store(tmp_path, capsys):
    make_atmorep(tmp_path / "a.zarr")
    assert store_main([str(tmp_path / "a.zarr")]) == 0
    out = capsys.readouterr().out
    assert "layout=atmorep" in out and "'temperature'" in out
    assert store_main([str(tmp_path / "missing.zarr")]) == 1
    assert "no such file" in capsys.readouterr().err
