"""Store.check(config) and Store.level_indices: a config that cannot be sampled from a store fails with a
ConfigError naming the field and the numbers; so do a time axis with no regular stretch, a box spanning several
time points of a store without time, normalisation of a timeless store and local normalisation of a static field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastload import extract
from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.store import open_store
from tests.fastload.stores import make_atmorep, make_per_variable
from tests.fastload.test_time_axis import gap_times, write_xr, xr_cfg


@pytest.fixture(scope="module")
def pv(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "pv.zarr"
    make_per_variable(path, nt=6, ny=9, nx=16, regional=True)
    return open_store(path)


@pytest.fixture(scope="module")
def ar(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "ar.zarr"
    make_atmorep(path, nt=6)
    return open_store(path)


def _cfg(*fields, time_step=1, streams=()):
    return SamplingConfig(fields=tuple(fields), time_step=time_step, streams=streams)


def _f(name, levels=None, num_tokens=(2, 2, 2), token_size=(3, 4, 4), **kw):
    return FieldConfig(name=name, levels=levels, num_tokens=num_tokens, token_size=token_size, **kw)


def test_valid_config_passes(pv, ar):
    pv.check(_cfg(_f("t", [850, 500]), _f("sp"), _f("orog", normalization="global")))
    ar.check(_cfg(_f("temperature", [137, 96]), _f("t2m")))


def test_unknown_field(pv):
    with pytest.raises(ConfigError, match=r"fields\.wind: not in store .*\['(orog|q|sp|t)'"):
        pv.check(_cfg(_f("wind", [500])))


def test_missing_levels_named_with_available(pv, ar):
    with pytest.raises(ConfigError, match=r"fields\.t\.levels: \[700, 925\] not in the store's pressure levels \[500, 850\]"):
        pv.check(_cfg(_f("t", [500, 700, 925])))
    with pytest.raises(ConfigError, match=r"\[100\] not in the store's model levels \[96, 105, 114, 123, 137\]"):
        ar.check(_cfg(_f("temperature", [100])))


def test_levels_on_a_field_without_levels(pv, ar):
    with pytest.raises(ConfigError, match=r"fields\.sp\.levels: the field has no level axis.*omit 'levels'"):
        pv.check(_cfg(_f("sp", [500])))
    with pytest.raises(ConfigError, match=r"fields\.t2m\.levels: the field has no level axis"):
        ar.check(_cfg(_f("t2m", [96])))


def test_no_levels_for_a_field_with_levels(pv):
    with pytest.raises(ConfigError, match=r"fields\.t\.levels: the field has levels \[500, 850\].*say which"):
        pv.check(_cfg(_f("t")))


@pytest.mark.parametrize("fields,time_step,match", [
    ((_f("t", [500], num_tokens=(1, 5, 1), token_size=(1, 2, 4)),), 1, r"fields\.t: .*spans 10 grid points in latitude.*grid has 9"),
    ((_f("sp", num_tokens=(1, 1, 17), token_size=(1, 1, 1)),), 1, r"fields\.sp: .*spans 17 grid points in longitude.*grid has 16"),
    ((_f("sp", num_tokens=(7, 1, 1), token_size=(1, 1, 1)),), 1, r"fields\.sp: one sample spans 7 time steps.*store has 6"),
    ((_f("sp", num_tokens=(3, 1, 1), token_size=(1, 1, 1)),), 3, r"spans 7 time steps \(3 points x time_step 3\)"),
])  # fmt: skip
def test_box_must_fit(pv, fields, time_step, match):
    with pytest.raises(ConfigError, match=match):
        pv.check(_cfg(*fields, time_step=time_step))


def test_static_field_ignores_time_extent(pv):
    pv.check(_cfg(_f("orog", num_tokens=(9, 1, 1), token_size=(1, 1, 1), normalization="none")))  # 9 steps > 6,
    # but orog has no time


def test_streams(pv):
    streams = (StreamConfig(name="era", path="a"), StreamConfig(name="ocean", path="b"))
    cfg = _cfg(_f("t", [500], stream="era"), _f("thetao", [5], stream="ocean"), streams=streams)
    pv.check(cfg, stream="era")  # only era's fields are checked here
    with pytest.raises(ConfigError, match="thetao"):
        pv.check(cfg, stream="ocean")
    with pytest.raises(ConfigError, match=r"has streams \['era', 'ocean'\]"):
        pv.check(cfg)
    with pytest.raises(ConfigError, match="stream 'nope'"):
        pv.check(cfg, stream="nope")


def test_level_indices(pv, ar):
    np.testing.assert_array_equal(pv.level_indices("t", [850, 500.0]), [1, 0])
    np.testing.assert_array_equal(ar.level_indices("velocity_u", [137, 105, 96]), [4, 1, 0])
    np.testing.assert_array_equal(pv.level_indices("sp", None), [0])
    with pytest.raises(ConfigError, match=r"\[1000\] not in"):
        pv.level_indices("t", [1000])
    with pytest.raises(ConfigError, match="not in store"):
        pv.level_indices("nope", [1])


def test_packed_field_refused(tmp_path):
    import json

    make_per_variable(tmp_path / "s.zarr")
    f = tmp_path / "s.zarr" / "sp" / ".zattrs"
    attrs = json.loads(f.read_text())
    f.write_text(json.dumps({**attrs, "scale_factor": 0.5, "add_offset": 1000.0}))
    s = open_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match=r"fields\.sp: stored packed \(attributes \['add_offset', 'scale_factor'\]\)"):
        s.check(_cfg(_f("sp")))


# ------------------------------------------------------- the time axis and static fields (stores written by xarray)
def test_an_axis_irregular_everywhere_is_refused(tmp_path):
    hours = np.cumsum([0, 1, 3, 7, 2, 11, 5, 6, 13, 4, 9, 8])  # steps 1, 3, 7, 2, 11, 5, 6, ... h: median 6 h, never 3 in a row
    time = pd.Timestamp("2000-01-01") + pd.to_timedelta(hours, "h")
    write_xr(tmp_path / "irr.zarr", time)
    store = open_store(tmp_path / "irr.zarr")
    msg = (r"store .*irr\.zarr: its time axis has no regular stretch for a sample of 4 time points x time_step 1"
           r": no window has its points 6 h apart \(time_step x the median step 6 h\); the first irregular step is "
           r"time index 0 -> 1: 2000-01-01T00:00 -> 2000-01-01T01:00 \(1 h\)")
    with pytest.raises(ConfigError, match=msg):
        store.check(xr_cfg(nt=2, tt=2))
    with pytest.raises(ConfigError, match=msg):
        extract(store, xr_cfg(nt=2, tt=2), [[0, 0, 0]])
    store.check(xr_cfg(nt=1, tt=1))  # one time point per sample: no spacing to get wrong


def test_a_store_with_a_gap_passes_and_says_so(tmp_path, caplog):
    import logging

    write_xr(tmp_path / "gap.zarr", gap_times())
    with caplog.at_level(logging.INFO, logger="fastload"):
        open_store(tmp_path / "gap.zarr").check(xr_cfg(nt=2, tt=2))
    assert "has gaps: 3 of 44 sample windows cross one and are never drawn" in caplog.text
    assert "time index 9 -> 10: 2000-01-03T06:00 -> 2000-01-03T18:00 (12 h)" in caplog.text


@pytest.fixture(scope="module")
def timeless(tmp_path_factory):
    path = tmp_path_factory.mktemp("notime") / "notime.zarr"
    truth = write_xr(path, None)
    return open_store(path), truth


def test_a_timeless_store_samples_one_time_point(timeless):
    store, truth = timeless
    msg = (r"fields\.tas: the store has no time axis .*: num_tokens\[0\] \* token_size\[0\] must be 1, "
           r"got 2 \* 3 = 6 time points")
    with pytest.raises(ConfigError, match=msg):
        store.check(xr_cfg(nt=2, tt=3))
    with pytest.raises(ConfigError, match=msg):  # extract returned 6 identical copies with made-up t_index
        extract(store, xr_cfg(nt=2, tt=3), [[0, 0, 0]])
    out = extract(store, xr_cfg(nt=1, tt=1), [[0, 2, 3]])["tas"]
    np.testing.assert_array_equal(out.data[0, 0, 0, :, :, 0].transpose(0, 2, 1, 3).reshape(4, 6),
                                  truth["tas"][2:6, 3:9])


def test_a_timeless_store_normalises_nothing(timeless):
    store, _ = timeless
    with pytest.raises(ConfigError, match=r"fields\.tas: normalization = 'global' uses monthly coefficients, but "
                                          r"the store has no time axis .*set normalization = 'none'"):
        store.check(xr_cfg(nt=1, tt=1, norm="global"))


def test_local_normalisation_of_a_static_field_is_refused(tmp_path):
    """Local normalisation of orography gave all zeros: (x - x) / floored std."""
    write_xr(tmp_path / "d.zarr", pd.date_range("2000-01-01", periods=12, freq="6h").values)
    store = open_store(tmp_path / "d.zarr")
    msg = (r"fields\.orog: the field is static \(no time axis in .*d\.zarr\): local normalisation makes it "
           r"constant.*set normalization = 'global' \(one mean and std over the grid\) or 'none'")
    cfg = xr_cfg(nt=1, tt=1, name="orog", norm="local", norm_path=str(tmp_path / "no-norm-needed.zarr"))
    with pytest.raises(ConfigError, match=msg):
        store.check(cfg)
    with pytest.raises(ConfigError, match=msg):  # at check time: before any coefficient store is opened
        extract(store, cfg, [[0, 0, 0]])
    store.check(xr_cfg(nt=1, tt=1, name="orog", norm="global"))


def test_float32_levels_are_found_by_the_values_written(tmp_path):
    """A float32 level coordinate holds 850.3 as 850.2999877929688: ``levels = [850.3]`` was refused (0.1 passed
    only by the absolute tolerance), though xarray's ``sel(level=850.3)`` finds it; now matched within 1e-6
    relative, the nearest level, as the coefficient store matches (reviewer R3, session 16)."""
    import xarray as xr

    lev = np.array([0.1, 7.5, 850.3, 850.31], dtype="float32")
    rng = np.random.default_rng(5)
    v = rng.standard_normal((6, 4, 12, 24)).astype("float32")
    ds = xr.Dataset({"x": (("time", "level", "latitude", "longitude"), v)},
                    coords={"time": pd.date_range("2000-01-01", periods=6, freq="h"),
                            "level": ("level", lev, {"units": "hPa"}), "latitude": np.linspace(90, -90, 12),
                            "longitude": np.arange(0, 360, 15.0)})
    path = tmp_path / "lev32.zarr"
    ds.to_zarr(path, mode="w", zarr_format=2)
    store = open_store(path)
    assert store.level_indices("x", [850.3, 0.1, 850.31, 7.5]).tolist() == [2, 0, 3, 1]
    want = ds.x.sel(level=[850.3, 7.5]).isel(time=slice(0, 2), latitude=slice(0, 6), longitude=slice(0, 8)).values
    cfg = _cfg(_f("x", levels=(850.3, 7.5), num_tokens=(1, 2, 2), token_size=(2, 3, 4), normalization="none"))
    got = extract(store, cfg, np.array([[0, 0, 0]]))["x"].data[0]  # (L, nt, nlat, nlon, tt, tlat, tlon)
    np.testing.assert_array_equal(got.transpose(0, 1, 4, 2, 5, 3, 6).reshape(2, 2, 6, 8), want.transpose(1, 0, 2, 3))
    with pytest.raises(ConfigError, match=r"fields\.x\.levels: \[850\.35\] not in the store's pressure levels"):
        store.level_indices("x", [850.35])
