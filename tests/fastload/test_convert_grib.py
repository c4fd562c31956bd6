"""fastload convert reads GRIB (cfgrib): ERA5-like files made here with ecCodes, checked against cfgrib's decoding.

The reference is ``xr.open_dataset(file, engine="cfgrib")`` of each input on its own (one parameter at a time where
cfgrib cannot open the file as one dataset): values (GRIB packing: what cfgrib decodes, not what was written),
coordinates and valid times, exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("cfgrib")
pytest.importorskip("eccodes")

from fastload.cli import main as cli  # noqa: E402
from fastload.config import FieldConfig, SamplingConfig  # noqa: E402
from fastload.convert import convert  # noqa: E402
from fastload.errors import ConfigError, SchemaError, StoreError  # noqa: E402
from fastload.extract import extract  # noqa: E402
from fastload.sampling.geometry import box_to_tokens  # noqa: E402
from fastload.store import open_store  # noqa: E402

from .grib_files import MISSING, Grid, Message, write_grib  # noqa: E402

GLOBAL = Grid(lat0=60.0, lat1=-60.0, lon0=0.0, lon1=330.0, dlat=30.0, dlon=30.0)  # 0 .. 360-dx: wraps
REGIONAL = Grid(lat0=70.0, lat1=40.0, lon0=330.0, lon1=40.0, dlat=10.0, dlon=10.0)  # crosses 0 (330 .. 40)
LEVELS = (850, 500, 250)
PL = {130: ("t", 250.0, 10.0), 133: ("q", 0.005, 0.002)}  # paramId: (cfgrib name, mean, spread)
SFC = {167: ("t2m", 280.0, 5.0), 165: ("u10", 0.0, 5.0), 134: ("sp", 100000.0, 1000.0)}  # 2 m, 10 m, surface
NAMES = {n for n, _, _ in (*PL.values(), *SFC.values())}


def _values(rng, grid, mean, spread):
    return rng.normal(mean, spread, grid.shape)


def _era5_day(path, day, grid, rng, *, edition, hours=(0, 12)):
    """One day of ERA5-like analyses: t, q on three pressure levels, 2t, 10u and sp, at the given hours."""
    msgs = []
    for h in hours:
        time = f"{day}T{h:02d}"
        for p, (_, mean, spread) in PL.items():
            msgs += [Message(p, lev, time, _values(rng, grid, mean, spread)) for lev in LEVELS]
        for p, (_, mean, spread) in SFC.items():
            msgs.append(Message(p, None, time, _values(rng, grid, mean, spread)))
    write_grib(path, msgs, grid, edition=edition)


def _reference(files, name):
    """cfgrib's own decoding of one variable, file by file, joined along time (valid times)."""
    parts = []
    for f in files:
        with xr.open_dataset(f, engine="cfgrib", backend_kwargs={"indexpath": "", "filter_by_keys": {"cfVarName": name}}) as ds:
            da = ds[name].load()
        if "step" in da.dims:  # one forecast run: its lead times are the time axis
            da = da.swap_dims(step="valid_time").drop_vars(["time", "step"]).rename(valid_time="time")
        else:
            da = da.expand_dims("time") if "time" not in da.dims else da
            da = da.assign_coords(time=("time", np.atleast_1d(da.valid_time.values))).drop_vars(["valid_time", "step"])
        parts.append(da)
    return xr.concat(parts, "time", coords="minimal", compat="override", join="exact")


@pytest.fixture(scope="module", params=[2, 1], ids=["grib2", "grib1"])
def era5_days(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"grib{request.param}")
    rng = np.random.default_rng(request.param)
    files = []
    for day in ("2020-01-02", "2020-01-01"):  # written and listed out of time order
        files.append(d / f"era5_{day}.grib")
        _era5_day(files[-1], day, GLOBAL, rng, edition=request.param)
    return files


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_era5_days_convert_by_cli_and_api_equal_cfgribs_decoding(tmp_path, era5_days, capsys):
    before = _listing(era5_days[0].parent)
    out_cli, out_api = tmp_path / "cli.zarr", tmp_path / "api.zarr"
    assert cli(["convert", *map(str, era5_days), str(out_cli), "--chunks", "3,1,4,5", "-q"]) == 0
    assert f"variables {', '.join(sorted(NAMES))}" in capsys.readouterr().out
    convert(era5_days, out_api, chunks=(3, 1, 4, 5), progress=False)
    assert _listing(era5_days[0].parent) == before  # no cfgrib .idx files left beside the inputs
    times = np.datetime64("2020-01-01T00", "ns") + np.arange(4) * np.timedelta64(12, "h")
    for out in (out_cli, out_api):
        ds = xr.open_zarr(out)  # opens as it is
        assert set(ds.data_vars) == NAMES  # u10 too, which cfgrib drops when it opens the file as one dataset
        np.testing.assert_array_equal(ds.time.values, times)
        for name in sorted(NAMES):
            ref = _reference(era5_days[::-1], name)
            np.testing.assert_array_equal(ds.time.values, ref.time.values)
            np.testing.assert_array_equal(ds.latitude.values, ref.latitude.values)  # north to south, as stored
            np.testing.assert_array_equal(ds.longitude.values, ref.longitude.values)
            got = ds[name]
            if "isobaricInhPa" in ref.dims:
                assert got.dims == ("time", "level", "latitude", "longitude")
                np.testing.assert_array_equal(ds.level.values, ref.isobaricInhPa.values)
            else:
                assert got.dims == ("time", "latitude", "longitude")
            assert got.dtype == np.float32 and ref.dtype == np.float32
            np.testing.assert_array_equal(got.values, ref.values)
            assert got.attrs["units"] == ref.attrs["units"] and got.attrs["missing_count"] == 0
        assert ds.latitude.values[0] > ds.latitude.values[-1] and ds.attrs["latitude_order"] == "descending"
        np.testing.assert_array_equal(ds.longitude.values, np.arange(0.0, 360.0, 30.0))
        np.testing.assert_array_equal(ds.level.values, [850.0, 500.0, 250.0])
        assert ds.level.attrs["level_type"] == "pressure" and ds.level.attrs["units"] == "hPa"
        assert ds.attrs["source_files"] == [f.name for f in era5_days]
    a, b = xr.open_zarr(out_cli), xr.open_zarr(out_api)
    xr.testing.assert_identical(a, b)


def test_plain_cfgrib_drops_fields_convert_keeps_them(tmp_path):
    """2t (2 m) beside 10u (10 m): cfgrib's one-dataset open logs 'skipping variable' and leaves u10 out."""
    rng = np.random.default_rng(3)
    _era5_day(tmp_path / "sfc.grib", "2020-01-01", REGIONAL, rng, edition=2)
    with xr.open_dataset(tmp_path / "sfc.grib", engine="cfgrib", backend_kwargs={"indexpath": ""}) as plain:
        assert "u10" not in plain.data_vars  # the behaviour this guards against
    ds = xr.open_zarr(convert([tmp_path / "sfc.grib"], tmp_path / "o.zarr", progress=False))
    assert set(ds.data_vars) == NAMES
    ref = _reference([tmp_path / "sfc.grib"], "u10")
    np.testing.assert_array_equal(ds.u10.values, ref.values)
    np.testing.assert_array_equal(ds.longitude.values, [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 40.0])
    np.testing.assert_array_equal(ds.longitude.values, ref.longitude.values)


def test_one_time_per_file_and_forecast_steps_take_valid_times(tmp_path):
    """Hourly files (cfgrib makes their one time a scalar) and a forecast run (a 'step' axis) join on valid time."""
    rng = np.random.default_rng(4)
    files = []
    for h in (0, 1, 2):  # analyses, one file per hour
        files.append(tmp_path / f"an_{h}.grib2")
        write_grib(files[-1], [Message(167, None, f"2020-01-01T{h:02d}", _values(rng, GLOBAL, 280, 5))], GLOBAL)
    files.append(tmp_path / "fc.grib2")  # forecast from 00 UTC: steps 3 and 6 are valid at 03 and 06 UTC
    write_grib(files[-1], [Message(167, None, "2020-01-01T00", _values(rng, GLOBAL, 280, 5), step=s) for s in (3, 6)],
               GLOBAL)  # fmt: skip
    files.append(tmp_path / "fc9.grib2")  # a file of one lead time: scalar time and step, valid 09 UTC
    write_grib(files[-1], [Message(167, None, "2020-01-01T06", _values(rng, GLOBAL, 280, 5), step=3)], GLOBAL)
    files.append(tmp_path / "fc_runs.grib2")  # runs at 12 and 18 UTC, each at lead time 3: a 'time' axis, valid 15, 21
    write_grib(files[-1], [Message(167, None, f"2020-01-01T{h}", _values(rng, GLOBAL, 280, 5), step=3) for h in (12, 18)],
               GLOBAL)  # fmt: skip
    ds = xr.open_zarr(convert(files, tmp_path / "o.zarr", progress=False))
    hours = np.array([0, 1, 2, 3, 6, 9, 15, 21])
    np.testing.assert_array_equal(ds.time.values, np.datetime64("2020-01-01T00", "ns") + hours * np.timedelta64(1, "h"))
    ref = _reference(files, "t2m")
    np.testing.assert_array_equal(ref.time.values, ds.time.values)
    np.testing.assert_array_equal(ds.t2m.values, ref.values)


def test_missing_points_are_nan_and_counted(tmp_path):
    rng = np.random.default_rng(5)
    v = _values(rng, GLOBAL, 280, 5)
    v[1, 2] = v[3, 0] = MISSING
    write_grib(tmp_path / "m.grib2", [Message(167, None, "2020-01-01T00", v)], GLOBAL)
    ds = xr.open_zarr(convert([tmp_path / "m.grib2"], tmp_path / "o.zarr", progress=False))
    ref = _reference([tmp_path / "m.grib2"], "t2m")
    assert np.isnan(ref.values).sum() == 2
    np.testing.assert_array_equal(ds.t2m.values, ref.values)  # NaN where cfgrib has NaN
    assert ds.t2m.attrs["missing_count"] == 2


def test_no_index_files_beside_the_input_and_a_stale_one_is_not_used(tmp_path):
    """cfgrib's default writes FILE.<hash>.idx next to the input and trusts it while it is newer than the file;
    a file replaced by an older copy (cp -p, rsync -t) would be read with the old file's message offsets."""
    rng = np.random.default_rng(6)
    d = tmp_path / "in"
    d.mkdir()
    path = d / "a.grib2"
    write_grib(path, [Message(130, lev, "2020-01-01T00", _values(rng, GLOBAL, 250, 10)) for lev in LEVELS], GLOBAL)
    with xr.open_dataset(path, engine="cfgrib") as plain:  # cfgrib's default: leaves an index beside the file
        plain.load()
    idx = [p for p in d.iterdir() if p.suffix == ".idx"]
    assert len(idx) == 1
    old = os.stat(path).st_mtime - 3600
    # the same name now holds other data: one level fewer, other values (an older copy put in place)
    write_grib(path, [Message(130, lev, "2020-01-01T00", _values(rng, GLOBAL, 200, 10)) for lev in LEVELS[1:]], GLOBAL)
    os.utime(path, (old, old))
    before = _listing(d)
    for run in ("first", "second"):
        out = convert([path], tmp_path / f"{run}.zarr", progress=False)
        ds = xr.open_zarr(out)
        ref = _reference([path], "t")
        np.testing.assert_array_equal(ds.level.values, [500.0, 250.0])
        np.testing.assert_array_equal(ds.t.values, ref.values)
        assert _listing(d) == before  # nothing written beside the input, the second run as the first


def test_bad_grib_input_fails_early_naming_the_file(tmp_path, capsys):
    rng = np.random.default_rng(7)
    good = tmp_path / "good.grib2"
    _era5_day(good, "2020-01-01", GLOBAL, rng, edition=2)
    data = good.read_bytes()
    (tmp_path / "trunc.grib2").write_bytes(data[: len(data) * 2 // 3 - 7])  # a download cut off mid-message
    with pytest.raises(StoreError, match=r"trunc\.grib2: cannot read as GRIB.*truncated"):
        convert([tmp_path / "trunc.grib2"], tmp_path / "x.zarr", progress=False)
    (tmp_path / "text.grib").write_text("<html>404 Not Found</html>")  # what a failed download saves
    with pytest.raises(StoreError, match=r"text\.grib: cannot read as GRIB.*No valid message"):
        convert([tmp_path / "text.grib"], tmp_path / "x.zarr", progress=False)
    (tmp_path / "tail.grib2").write_bytes(data + b"GRIB\x00\x00\x00garbage")  # a corrupt message after good ones
    with pytest.raises(StoreError, match=r"tail\.grib2: cannot read as GRIB"):
        convert([tmp_path / "tail.grib2"], tmp_path / "x.zarr", progress=False)
    assert cli(["convert", str(tmp_path / "trunc.grib2"), str(tmp_path / "y.zarr"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "trunc.grib2" in err and "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_one_parameter_on_two_level_types_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(8)
    msgs = [Message(130, 850, "2020-01-01T00", _values(rng, GLOBAL, 250, 10)),
            Message(130, None, "2020-01-01T00", _values(rng, GLOBAL, 280, 10))]  # fmt: skip
    write_grib(tmp_path / "two.grib2", msgs, GLOBAL)
    with pytest.raises(SchemaError, match=r"two\.grib2: variable 't' comes on two level types"):
        convert([tmp_path / "two.grib2"], tmp_path / "x.zarr", progress=False)


def test_forecast_runs_times_steps_are_refused_by_name(tmp_path):
    rng = np.random.default_rng(9)
    msgs = [Message(167, None, f"2020-01-01T{h:02d}", _values(rng, GLOBAL, 280, 5), step=s)
            for h in (0, 12) for s in (3, 6)]  # fmt: skip
    write_grib(tmp_path / "fc.grib2", msgs, GLOBAL)
    with pytest.raises(SchemaError, match=r"fc\.grib2: 't2m' has 2 forecast reference times .* 2 lead times"):
        convert([tmp_path / "fc.grib2"], tmp_path / "x.zarr", progress=False)


def test_extract_across_the_seam_equals_the_xarray_crop(tmp_path, era5_days):
    out = convert(era5_days, tmp_path / "o.zarr", chunks=(2, 1, 3, 5), progress=False)
    store = open_store(out)
    assert store.grid.periodic_x  # 0 .. 330 by 30: a global grid
    fields = [FieldConfig(name="t", levels=(250.0, 850.0), num_tokens=(2, 1, 2), token_size=(1, 3, 2),
                          normalization="none"),
              FieldConfig(name="sp", num_tokens=(1, 3, 1), token_size=(2, 1, 4), normalization="none")]  # fmt: skip
    boxes = np.array([[1, 1, 10], [2, 0, 11], [0, 2, 9]])  # columns 10, 11, 0, 1: across the 330 -> 0 seam
    got = extract(store, SamplingConfig(fields=fields, time_step=1), boxes)
    ds = xr.open_zarr(out)
    for f in fields:
        T, H, W = f.box
        crops = []
        for t0, y0, x0 in boxes:
            da = ds[f.name].isel(time=slice(t0, t0 + T), latitude=slice(y0, y0 + H),
                                 longitude=(x0 + np.arange(W)) % ds.sizes["longitude"])  # fmt: skip
            da = da.sel(level=list(f.levels)) if f.levels else da.expand_dims("level", axis=1)
            crops.append(da.transpose("level", "time", "latitude", "longitude").values)
        want = box_to_tokens(np.stack(crops), f.token_size)
        np.testing.assert_array_equal(got[f.name].data, want)


def test_each_file_is_indexed_once_whatever_its_parameters(tmp_path, monkeypatch):
    """Opening once per parameter must not rescan the file per parameter (a full read of a big GRIB each)."""
    from cfgrib import messages

    _era5_day(tmp_path / "d.grib2", "2020-01-01", GLOBAL, np.random.default_rng(10), edition=2)  # 5 parameters
    scans = []
    real = messages.FileIndex.from_fieldset.__func__
    monkeypatch.setattr(messages.FileIndex, "from_fieldset",
                        classmethod(lambda cls, *a, **k: scans.append(a[0].path) or real(cls, *a, **k)))  # fmt: skip
    ds = xr.open_zarr(convert([tmp_path / "d.grib2"], tmp_path / "o.zarr", progress=False))
    assert set(ds.data_vars) == NAMES
    assert scans == [str(tmp_path / "d.grib2")]


def test_a_reduced_gaussian_grid_is_refused_by_name(tmp_path):
    import eccodes as ec

    h = ec.codes_grib_new_from_samples("reduced_gg_pl_grib2")  # ERA5's native grid: one list of points
    try:
        ec.codes_set(h, "paramId", 130)
        with open(tmp_path / "gg.grib2", "wb") as f:
            ec.codes_write(h, f)
    finally:
        ec.codes_release(h)
    with pytest.raises(SchemaError, match=r"gg\.grib2: 't' is on a GRIB grid of type 'reduced_gg'.*regrid"):
        convert([tmp_path / "gg.grib2"], tmp_path / "x.zarr", progress=False)


def test_grib_without_cfgrib_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cfgrib" else real(name, *a))
    write_grib(tmp_path / "a.grib2", [Message(167, None, "2020-01-01T00", np.zeros(GLOBAL.shape))], GLOBAL)
    with pytest.raises(ConfigError, match=r"a\.grib2: reading GRIB needs cfgrib.*pip install cfgrib eccodes"):
        convert([tmp_path / "a.grib2"], tmp_path / "x.zarr", progress=False)


def test_a_grib_file_without_a_grib_suffix_is_read_as_grib(tmp_path):
    """MARS and CDS downloads are often named .data, .bin or nothing; the first bytes say GRIB."""
    rng = np.random.default_rng(11)
    write_grib(tmp_path / "mars.data", [Message(167, None, "2020-01-01T00", _values(rng, GLOBAL, 280, 5))], GLOBAL)
    ds = xr.open_zarr(convert([tmp_path / "mars.data"], tmp_path / "o.zarr", progress=False))
    with xr.open_dataset(tmp_path / "mars.data", engine="cfgrib", backend_kwargs={"indexpath": ""}) as ref:
        np.testing.assert_array_equal(ds.t2m.values[0], ref.t2m.values)
