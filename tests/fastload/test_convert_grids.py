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


# A grid mapping as GDAL and rioxarray write it: no grid_mapping_name, only a WKT (review rv1 F8: 4c77450 refused
# these, "grid_mapping_name is None, not 'latitude_longitude'", where they converted before)
GEOGCS = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
          'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')  # fmt: skip
GEOGCRS = ('GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563,'
           'LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],CS[ellipsoidal,2],'
           'AXIS["geodetic latitude (Lat)",north,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],'
           'AXIS["geodetic longitude (Lon)",east,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]]')  # fmt: skip
_BASE = ('BASEGEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563,'
         'LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]]')  # fmt: skip
PROJCRS = ('PROJCRS["WGS 84 / UTM zone 32N",' + _BASE + ',CONVERSION["UTM zone 32N",METHOD["Transverse Mercator",'
           'ID["EPSG",9807]],PARAMETER["Longitude of natural origin",9,ANGLEUNIT["degree",0.0174532925199433]],'
           'PARAMETER["Scale factor at natural origin",0.9996,SCALEUNIT["unity",1]]],CS[Cartesian,2],'
           'AXIS["easting",east,ORDER[1],LENGTHUNIT["metre",1]],AXIS["northing",north,ORDER[2],'
           'LENGTHUNIT["metre",1]],ID["EPSG",32632]]')  # fmt: skip
PROJCS = ('PROJCS["WGS 84 / UTM zone 32N",' + GEOGCS + ',PROJECTION["Transverse_Mercator"],'
          'PARAMETER["central_meridian",9],PARAMETER["scale_factor",0.9996],UNIT["metre",1],'
          'AUTHORITY["EPSG","32632"]]')  # fmt: skip
ROTATED_WKT2 = ('GEOGCRS["Rotated_pole",' + _BASE + ',DERIVINGCONVERSION["Pole rotation (netCDF CF convention)",'
                'METHOD["Pole rotation (netCDF CF convention)"],PARAMETER["Grid north pole latitude (netCDF CF '
                'convention)",39.25,ANGLEUNIT["degree",0.0174532925199433]]],CS[ellipsoidal,2],'
                'AXIS["longitude",east,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],'
                'AXIS["latitude",north,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]]]')  # fmt: skip


def _wkt_file(path, crs_attrs: dict) -> xr.Dataset:
    """tas over plain 1-D (time, lat, lon) in true degrees, grid_mapping 'crs': a scalar with ``crs_attrs``."""
    lat, lon = np.linspace(60.0, 20.0, 9), np.linspace(-15.0, 25.0, 9)
    tas = np.random.default_rng(1).random((4, 9, 9)).astype("f4")
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), tas, {"units": "K", "grid_mapping": "crs"}),
                     "crs": ((), np.int64(0), crs_attrs)},
                    coords={"time": TIMES, "lat": ("lat", lat, {"units": "degrees_north"}),
                            "lon": ("lon", lon, {"units": "degrees_east"})})  # fmt: skip
    ds.to_netcdf(path)
    return ds


@pytest.mark.parametrize(
    "attrs",
    [
        {"spatial_ref": GEOGCS, "crs_wkt": GEOGCS},  # GDAL's, as rioxarray writes it (the review's probe)
        {"crs_wkt": GEOGCRS},  # WKT2
        {"spatial_ref": "EPSG:4326"},
        {"spatial_ref": GEOGCS.replace('"WGS 84"', '"PROJCS(x) WGS 84"', 1)},  # a quoted name is no node
        {"long_name": "coordinate reference system"},  # no WKT either: the 1-D lat/lon axes decide
    ],
    ids=["geogcs", "geogcrs", "epsg4326", "quoted-name", "no-wkt"],
)
def test_a_grid_mapping_without_grid_mapping_name_but_geographic_or_no_wkt_is_converted(tmp_path, attrs):
    src = tmp_path / "g.nc"
    _wkt_file(src, attrs)
    got = xr.open_zarr(convert([src], tmp_path / "g.zarr", progress=False))
    with xr.open_dataset(src) as ref:  # the independent reference: xarray's reading of the file
        np.testing.assert_array_equal(got.latitude.values, ref.lat.values)
        np.testing.assert_array_equal(got.longitude.values, ref.lon.values)
        np.testing.assert_array_equal(got.time.values, ref.time.values)
        np.testing.assert_array_equal(got.tas.values, ref.tas.values)
        assert got.tas.attrs["grid_mapping"] == "crs"
        assert got.crs.attrs == ref.crs.attrs and got.crs.values == ref.crs.values
        assert got.crs.dtype == ref.crs.dtype


@pytest.mark.parametrize(
    "attrs, why",
    [
        ({"crs_wkt": PROJCRS}, "crs_wkt is a projected CRS (PROJCRS node"),
        ({"spatial_ref": PROJCS, "crs_wkt": PROJCS}, "crs_wkt is a projected CRS (PROJCS node"),
        ({"spatial_ref": PROJCS}, "spatial_ref is a projected CRS (PROJCS node"),
        ({"crs_wkt": ROTATED_WKT2}, "crs_wkt is a derived CRS such as a rotated pole (BASEGEOGCRS node"),
        ({"spatial_ref": PROJCS.replace("Transverse_Mercator", "Rotated_pole")}, "a projected CRS (PROJCS node"),
    ],
    ids=["projcrs", "projcs-both", "projcs-spatial-ref", "rotated-wkt2", "rotated-gdal"],
)
@pytest.mark.parametrize("pick", [None, ["tas"]])
def test_a_grid_mapping_without_grid_mapping_name_and_a_projected_wkt_is_refused(tmp_path, attrs, why, pick):
    src = tmp_path / "p.nc"
    _wkt_file(src, attrs)
    with pytest.raises(SchemaError) as e:
        convert([src], tmp_path / "p.zarr", variables=pick, progress=False)
    msg = str(e.value)
    assert str(src) in msg and "variable 'tas'" in msg and "grid_mapping 'crs' without grid_mapping_name" in msg, msg
    assert why in msg and "not latitude-longitude" in msg, msg
    assert "convert writes regular latitude-longitude grids" in msg, msg
    assert not (tmp_path / "p.zarr").exists()
