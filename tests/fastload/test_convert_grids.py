"""fastload convert refuses grids that are not latitude-longitude (review s14 r3 p6: a CORDEX rotated-pole file
became a lat-lon store of latitudes -20..20 where the true ones are 20..60, its 2-D lat/lon dropped), and keeps a
``latitude_longitude`` grid mapping beside the variables that name it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload.convert import convert
from fastload.errors import SchemaError
from fastload.store import open_store

RLAT = np.linspace(-20.0, 20.0, 9)
RLON = np.linspace(-25.0, 15.0, 9)
TIMES = pd.date_range("2000-01-01", periods=4, freq="6h")
ROTATED_POLE = {"grid_mapping_name": "rotated_latitude_longitude", "grid_north_pole_latitude": 39.25,
                "grid_north_pole_longitude": -162.0}  # fmt: skip


def _cordex(ydim="rlat", xdim="rlon", yattrs=None, xattrs=None, mapping=ROTATED_POLE):
    """A CORDEX-like file: tas over (time, rlat, rlon) in rotated degrees, true lat/lon 2-D, grid_mapping."""
    tas = np.random.default_rng(0).random((4, 9, 9)).astype("f4")
    yattrs = {"standard_name": "grid_latitude", "units": "degrees", "axis": "Y"} if yattrs is None else yattrs
    xattrs = {"standard_name": "grid_longitude", "units": "degrees", "axis": "X"} if xattrs is None else xattrs
    lat2 = 40 + RLAT[:, None] + 0 * RLON
    lon2 = 10 + RLON[None, :] + 0 * RLAT[:, None]
    attrs = {"units": "K"} if mapping is None else {"units": "K", "grid_mapping": "crs"}
    data = {"tas": (("time", ydim, xdim), tas, attrs)}
    if mapping is not None:
        data["crs"] = ((), 0, mapping)
    return xr.Dataset(data, coords={
        "time": TIMES, ydim: (ydim, RLAT, yattrs), xdim: (xdim, RLON, xattrs),
        "lat": ((ydim, xdim), lat2, {"standard_name": "latitude", "units": "degrees_north"}),
        "lon": ((ydim, xdim), lon2, {"standard_name": "longitude", "units": "degrees_east"}),
    })  # fmt: skip


@pytest.mark.parametrize(
    "kw, why",
    [
        ({}, "standard_name is 'grid_latitude'"),  # CORDEX as written
        ({"yattrs": {}, "xattrs": {}, "mapping": None}, "'rlat' is the usual name of a rotated-pole axis"),
        ({"ydim": "y", "xdim": "x", "yattrs": {"standard_name": "grid_latitude", "axis": "Y"}, "mapping": None},
         "standard_name is 'grid_latitude'"),  # fmt: skip
        # axes that look geographic (names, units) but a grid_mapping that says they are not
        ({"ydim": "lat", "xdim": "lon", "yattrs": {"units": "degrees_north"}, "xattrs": {"units": "degrees_east"}},
         "grid_mapping 'crs' whose grid_mapping_name is 'rotated_latitude_longitude'"),  # fmt: skip
        ({"ydim": "lat", "xdim": "lon", "yattrs": {"units": "degrees_north"}, "xattrs": {"units": "degrees_east"},
          "mapping": {"grid_mapping_name": "lambert_conformal_conic"}},
         "grid_mapping_name is 'lambert_conformal_conic'"),  # fmt: skip
    ],
)
@pytest.mark.parametrize("pick", [None, ["tas"]])
def test_a_rotated_or_projected_grid_is_refused_naming_file_variable_and_what_is_supported(tmp_path, kw, why, pick):
    src = tmp_path / "cordex.nc"
    _cordex(**kw).to_netcdf(src)
    with pytest.raises(SchemaError) as e:
        convert([src], tmp_path / "c.zarr", variables=pick, progress=False)
    msg = str(e.value)
    assert str(src) in msg and "variable 'tas'" in msg and why in msg, msg
    assert "convert writes regular latitude-longitude grids" in msg and "latitude_longitude" in msg, msg
    assert not (tmp_path / "c.zarr").exists()


def test_a_latitude_longitude_grid_mapping_is_converted(tmp_path):
    lat, lon = np.linspace(60.0, 20.0, 9), np.linspace(-15.0, 25.0, 9)
    ds = _cordex("lat", "lon", {"units": "degrees_north"}, {"units": "degrees_east"},
                 mapping={"grid_mapping_name": "latitude_longitude", "semi_major_axis": 6371229.0})  # fmt: skip
    ds = ds.drop_vars(["lat", "lon"]).assign_coords(lat=("lat", lat, {"units": "degrees_north"}),
                                                    lon=("lon", lon, {"units": "degrees_east"}))  # fmt: skip
    ds.to_netcdf(tmp_path / "ll.nc")
    got = xr.open_zarr(convert([tmp_path / "ll.nc"], tmp_path / "ll.zarr", progress=False))
    np.testing.assert_array_equal(got.latitude.values, lat)
    np.testing.assert_array_equal(got.longitude.values, lon)
    np.testing.assert_array_equal(got.tas.values, ds.tas.values)
    assert got.tas.attrs["grid_mapping"] == "crs"  # and the variable it names is in the store, as in the file
    assert got.crs.attrs == ds.crs.attrs and got.crs.values == ds.crs.values and got.crs.dtype == ds.crs.dtype
    st = open_store(str(tmp_path / "ll.zarr"))  # the scalar crs is no field, and no warning
    assert list(st.fields) == ["tas"] and st.grid.kind == "latlon"
    np.testing.assert_array_equal(st.grid.lat, lat)
