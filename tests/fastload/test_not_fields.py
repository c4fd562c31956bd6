"""Arrays on the grid that cannot be fields (``Store.not_fields``) are never dropped without a word: the tools that go
over all the fields (stats, rechunk) log and print each one with why, asking for one by name says why it is not a
field, and opening a store warns of an array that spans the grid but is not a field (a field written wrong)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from fastload.codec_choice import measure_codecs
from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.norm import Normalizer
from fastload.rechunk import copy_plan, rechunk
from fastload.rechunk import main as rechunk_main
from fastload.stats import StatsConfig, compute_stats
from fastload.stats import main as stats_main
from fastload.store import open_store
from fastload.streams import MultiStream

NT, NY, NX = 8, 19, 36
U10_WHY = "dims ('time', 'longitude', 'latitude'); a field has dims (time, [level], latitude, longitude)"
Z_WHY = "dimension 'level' has no 1-D coordinate array 'level' giving level values"


def _write(path, *, typo=True):
    """t2m (a field), gw(latitude) (an auxiliary array), and with ``typo`` u10 written lon-first and z whose level
    coordinate was dropped (real fields written wrong); without it, u10 as a field (for its coefficients)."""
    rng = np.random.default_rng(0)
    t2m = rng.normal(280, 5, (NT, NY, NX)).astype("f4")
    u10 = rng.normal(0, 5, (NT, NY, NX)).astype("f4")
    data = {"t2m": (("time", "latitude", "longitude"), t2m), "gw": (("latitude",), np.cos(np.linspace(-1.5, 1.5, NY)))}
    if typo:
        data["u10"] = (("time", "longitude", "latitude"), u10.transpose(0, 2, 1))
        data["z"] = (("time", "level", "latitude", "longitude"), rng.normal(5e4, 1e3, (NT, 3, NY, NX)).astype("f4"))
    else:
        data["u10"] = (("time", "latitude", "longitude"), u10)
    ds = xr.Dataset(data, coords={"time": pd.date_range("2020-01-01", periods=NT, freq="6h"),
                                  "latitude": np.linspace(90, -90, NY), "longitude": np.arange(0, 360, 10.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray/zarr's own notes on v2 stores
        ds.to_zarr(path, zarr_format=2)
    return ds


@pytest.fixture
def typo(tmp_path):
    path = tmp_path / "typo.zarr"
    return path, _write(path)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastload"]


def test_opening_warns_of_an_array_that_spans_the_grid_but_is_not_a_field(typo, caplog):
    path, _ = typo
    with caplog.at_level(logging.WARNING, logger="fastload"):
        s = open_store(path)
    assert list(s.fields) == ["t2m"] and set(s.not_fields) == {"u10", "z", "gw"}
    got = _warnings(caplog)
    assert f"{path}: array 'u10' spans the grid ('latitude', 'longitude') but is not a field, so fastload leaves " \
           f"it out: {U10_WHY}" in got
    assert any("array 'z' spans the grid" in m and Z_WHY in m for m in got)
    assert not any("'gw'" in m for m in got)  # gw(latitude) is an auxiliary array, not a field gone wrong
    assert len(got) == 2


def test_stats_of_all_fields_says_which_arrays_it_leaves_out_and_why(typo, tmp_path, caplog, capsys):
    path, ds = typo
    s = open_store(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastload"):
        out = compute_stats(s, tmp_path / "n.zarr", StatsConfig(progress=False))
    got = _warnings(caplog)
    assert f"stats: array 'u10' of {path} is not a field and is left out: {U10_WHY}" in got
    assert f"stats: array 'z' of {path} is not a field and is left out: {Z_WHY}" in got
    assert any("array 'gw'" in m and "dims ('latitude',)" in m for m in got)
    g = zarr.open_group(str(out), mode="r")
    assert sorted(g.group_keys()) == ["t2m"]
    month = list(g["t2m/month"][...]).index(1)  # every time step is in January
    t2m = ds["t2m"].values.astype(np.float64)
    np.testing.assert_allclose(np.ravel(g["t2m/global_mean"][...])[month], t2m.mean(), rtol=1e-10)

    assert stats_main([str(path), "--out", str(tmp_path / "n2.zarr"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert f"no coefficients for u10: not a field: {U10_WHY}" in printed
    assert f"no coefficients for z: not a field: {Z_WHY}" in printed


def test_stats_asked_for_an_array_that_is_not_a_field_says_why(typo, tmp_path, capsys):
    path, _ = typo
    s = open_store(path)
    with pytest.raises(ConfigError, match=r"stats: field 'u10': array 'u10' in store .* is not a field: dims "
                                          r"\('time', 'longitude', 'latitude'\)"):
        compute_stats(s, tmp_path / "n.zarr", StatsConfig(fields=("u10",), progress=False))
    with pytest.raises(ConfigError, match=r"field 'nope': not in store .*; it has \['t2m'\]"):
        compute_stats(s, tmp_path / "n.zarr", StatsConfig(fields=("t2m",), transforms={"nope": "log1p"},
                                                         progress=False))  # fmt: skip
    assert stats_main([str(path), "--out", str(tmp_path / "n.zarr"), "--fields", "z", "-q"]) == 2
    assert f"field 'z': array 'z' in store {path} is not a field: {Z_WHY}" in capsys.readouterr().err


def test_rechunk_leaves_out_a_field_written_wrong_saying_why(typo, tmp_path, caplog, capsys):
    path, ds = typo
    s = open_store(path)
    _, extras, left_out = copy_plan(s)
    assert left_out == {"u10": f"not a field: {U10_WHY}", "z": f"not a field: {Z_WHY}"}
    assert [n for n, _ in extras] == ["gw"]  # an auxiliary array is still copied as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastload"):
        out = rechunk(s, tmp_path / "r.zarr", chunks=(4, 1, 19, 36), progress=False)
    got = _warnings(caplog)
    assert f"rechunk: array 'u10' of {path} is not a field and is left out: {U10_WHY}" in got
    assert f"rechunk: array 'z' of {path} is not a field and is left out: {Z_WHY}" in got
    copy = xr.open_zarr(out)
    assert sorted(copy.data_vars) == ["gw", "t2m"]
    np.testing.assert_array_equal(copy["t2m"].values, ds["t2m"].values)

    assert rechunk_main([str(path), str(tmp_path / "r2.zarr"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert f"not copied: u10: not a field: {U10_WHY}" in printed and f"not copied: z: not a field: {Z_WHY}" in printed
    assert "copied as it is" in printed and "u10                  float32" not in printed


def test_rechunk_asked_for_an_array_that_is_not_a_field_says_why(typo, tmp_path):
    path, _ = typo
    s = open_store(path)
    for call in (lambda: copy_plan(s, ["t2m", "u10"]),
                 lambda: rechunk(s, tmp_path / "r.zarr", fields=["u10"], progress=False)):  # fmt: skip
        with pytest.raises(ConfigError, match=r"fields: 'u10': array 'u10' in store .* is not a field: dims "
                                              r"\('time', 'longitude', 'latitude'\)"):
            call()
    with pytest.raises(ConfigError, match=r"fields: 'nope': not in store .*; it has \['t2m'\]"):
        rechunk(s, tmp_path / "r.zarr", fields=["nope"], progress=False)


def test_coefficients_checked_against_a_store_where_the_field_is_not_one_say_why(typo, tmp_path):
    path, _ = typo
    good = tmp_path / "good.zarr"
    _write(good, typo=False)
    norm = compute_stats(open_store(good), tmp_path / "n.zarr", StatsConfig(fields=("u10",), progress=False))
    n = Normalizer(norm)
    n.check_field(open_store(good), "u10", None, None)  # fits the store it was computed from
    with pytest.raises(ConfigError, match=r"field 'u10': array 'u10' in store .* is not a "
                                          r"field: dims \('time', 'longitude', 'latitude'\)"):
        n.check_field(open_store(path), "u10", None, None)


def test_measuring_codecs_on_an_array_that_is_not_a_field_says_why(typo):
    path, _ = typo
    with pytest.raises(ConfigError, match=r"field: 'u10': array 'u10' in store .* is not a field: dims"):
        measure_codecs(open_store(path), field="u10", block=(2, 1, 19, 36))


def _field(name, stream):
    return FieldConfig(name=name, stream=stream, num_tokens=(1, 1, 1), token_size=(1, 4, 4), normalization="none")


def test_a_stream_asked_for_an_array_that_is_not_a_field_says_why(typo, tmp_path):
    path, _ = typo
    ref = tmp_path / "ref.zarr"
    _write(ref, typo=False)
    cfg = SamplingConfig(streams=(StreamConfig(name="era5", path=str(ref)), StreamConfig(name="obs", path=str(path))),
                         fields=(_field("t2m", "era5"), _field("u10", "obs")))  # obs's only field: not one
    with pytest.raises(ConfigError, match=r"fields.u10 of stream 'obs': array 'u10' in store .* is not a field: "
                                          r"dims \('time', 'longitude', 'latitude'\)"):
        MultiStream(cfg)
    missing = dataclasses.replace(cfg, fields=(_field("t2m", "era5"), _field("nope", "obs")))
    with pytest.raises(ConfigError, match=r"fields.nope: not in stream 'obs' \(.*\); it has \['t2m'\]"):
        MultiStream(missing)


def test_process_workers_do_not_repeat_the_open_time_warning(tmp_path, capfd):
    """The loader warns of left-out arrays when it opens the store; its worker processes, which reopen it with
    unconfigured logging, print nothing more (review r4: once more per worker, on stderr)."""
    from fastload import Loader
    from fastload.config import FieldConfig, SamplingConfig

    _write(tmp_path / "typo.zarr")
    cfg = SamplingConfig(fields=(FieldConfig(name="t2m", num_tokens=(1, 1, 1), token_size=(1, 4, 4),
                                             normalization="none"),), batch_size=2)  # fmt: skip
    with Loader(tmp_path / "typo.zarr", cfg, workers=2, mode="process", samples_per_epoch=4) as loader:
        assert sum(len(b.boxes) for b in loader) == 4
    assert "spans the grid" not in capfd.readouterr().err


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_dates_over_the_grid_are_not_a_field(tmp_path, caplog, zarr_format):
    """A datetime variable over the grid (xarray writes it as integers with CF units '... since ...') is left out
    with why and warned of, not sampled as a field of numbers; t2m beside it reads as written."""
    rng = np.random.default_rng(1)
    t2m = rng.normal(280, 5, (NT, NY, NX)).astype("f4")
    seen = np.datetime64("2020-01-01T00:00:00", "ns") + rng.integers(0, 10**6, (NT, NY, NX)).astype("m8[s]")
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m),
                     "seen": (("time", "latitude", "longitude"), seen)},
                    coords={"time": pd.date_range("2020-01-01", periods=NT, freq="6h"),
                            "latitude": np.linspace(90, -90, NY), "longitude": np.arange(0, 360, 10.0)})
    path = tmp_path / "dates.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray/zarr's own notes
        ds.to_zarr(path, zarr_format=zarr_format)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        s = open_store(path)
    assert list(s.fields) == ["t2m"]
    stored = zarr.open_array(str(path / "seen"), mode="r")  # as xarray coded them
    units = stored.attrs["units"]
    assert " since " in units and stored.dtype.kind in "iu"
    why = f"it holds dates coded as numbers (units {units!r}); a field must hold values, not dates"
    assert s.not_fields == {"seen": why}
    assert _warnings(caplog) == [f"{path}: array 'seen' spans the grid ('latitude', 'longitude') but is not a field, "
                                 f"so fastload leaves it out: {why}"]
    np.testing.assert_array_equal(s.read("t2m")[:, 0], t2m)


@pytest.mark.parametrize("units", ["K since 273.15", "mm accumulated since 00 UTC", "days since last rain"])
def test_units_that_only_contain_since_stay_a_field(tmp_path, caplog, units):
    """Review r1 D1: only CF date units ('<time unit> since <date>') make an array dates; a field whose units merely
    contain 'since' stays a field and reads as written."""
    rng = np.random.default_rng(2)
    vals = rng.normal(5, 1, (NT, NY, NX)).astype("f4")
    ds = xr.Dataset({"v": (("time", "latitude", "longitude"), vals, {"units": units}),
                     "d": (("time", "latitude", "longitude"), rng.integers(0, 9, (NT, NY, NX)).astype("i4"),
                           {"units": "hours since 1979-01-01"})},
                    coords={"time": pd.date_range("2020-01-01", periods=NT, freq="6h"),
                            "latitude": np.linspace(90, -90, NY), "longitude": np.arange(0, 360, 10.0)})
    path = tmp_path / "since.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, zarr_format=2)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        s = open_store(path)
    assert list(s.fields) == ["v"] and list(s.not_fields) == ["d"]
    np.testing.assert_array_equal(s.read("v")[:, 0], vals)


def test_python_m_fastload_store_lists_the_arrays_left_out(typo, capsys):
    """``python -m fastload.store`` names every array that is not a field, with why (it listed the fields only)."""
    from fastload.store.__main__ import main as store_main

    path, _ = typo
    assert store_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"  not a field 'u10': {U10_WHY}" in out.splitlines()
    assert f"  not a field 'z': {Z_WHY}" in out.splitlines()
