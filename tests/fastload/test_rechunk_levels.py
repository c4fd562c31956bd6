"""rechunk writes the source's level coordinate as stored: its values and dtype (review s14 r3 p2: an int64
``level`` became float64, the store's FieldInfo.levels, so ``ds.sel(level=500)`` code saw another dtype); it hands
the writer the source's latitudes and longitudes as stored too (a float32 latitude as float32)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from fastload.rechunk import rechunk
from fastload.synth import synthesize
from fastload.write import StoreWriter


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("levels", [np.array([1000, 850, 500]), np.array([1000, 850, 500], dtype=np.int32),
                                    np.array([1000.0, 850.5, 500.0], dtype=np.float32),
                                    np.array([100000.0, 85000.0, 50000.0])])  # fmt: skip
def test_a_per_variable_level_coordinate_keeps_its_values_and_dtype(tmp_path, levels, zarr_format):
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(90, -90, 5), np.arange(0, 360, 90.0)
    ds = xr.Dataset({"t": (("time", "level", "latitude", "longitude"), rng.normal(size=(4, 3, 5, 4)).astype("f4"))},
                    coords={"time": pd.date_range("2000-01-01", periods=4, freq="6h"),
                            "level": ("level", levels, {"units": "hPa"}), "latitude": lat, "longitude": lon})  # fmt: skip
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=zarr_format, consolidated=zarr_format == 2)
    got = xr.open_zarr(rechunk(tmp_path / "s.zarr", tmp_path / "o.zarr", chunks=(2, 1, 5, 4), progress=False))
    assert got.level.dtype == levels.dtype
    np.testing.assert_array_equal(got.level.values, levels)
    assert got.level.attrs["units"] == "hPa"
    np.testing.assert_array_equal(got.t.sel(level=levels[1]).values, ds.t.sel(level=levels[1]).values)


def test_an_atmorep_level_array_keeps_its_values_and_dtype(tmp_path):
    src = synthesize(tmp_path / "a.zarr", "tiny", hours=12, layout="atmorep", progress=False)
    want = zarr.open_group(str(src), mode="r")["level"][...]
    assert want.dtype == np.int64  # synth writes model level numbers as int64
    got = xr.open_zarr(rechunk(src, tmp_path / "o.zarr", chunks=(6, 1, 61, 120), progress=False))
    assert got.level.dtype == want.dtype
    np.testing.assert_array_equal(got.level.values, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_writer_gets_the_source_latitudes_and_longitudes_as_stored(tmp_path, monkeypatch, dtype):
    lat, lon = np.linspace(60, 30, 7).astype(dtype), np.arange(-20, 20, 5.0).astype(dtype)
    ds = xr.Dataset({"t": (("time", "lat", "lon"), np.ones((3, 7, 8), "f4"))},
                    coords={"time": pd.date_range("2000-01-01", periods=3), "lat": lat, "lon": lon})  # fmt: skip
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=2, consolidated=True)
    given = []
    real = StoreWriter.set_grid
    monkeypatch.setattr(StoreWriter, "set_grid", lambda self, y, x, **k: given.append((y, x)) or real(self, y, x, **k))
    got = xr.open_zarr(rechunk(tmp_path / "s.zarr", tmp_path / "o.zarr", progress=False))
    (y, x), = given
    assert y.dtype == x.dtype == np.dtype(dtype)  # what the writer keeps is write.py's set_grid's to say
    np.testing.assert_array_equal(y, lat)
    np.testing.assert_array_equal(x, lon)
    np.testing.assert_array_equal(got.lat.values, lat)
    np.testing.assert_array_equal(got.lon.values, lon)
