"""Synthetic ERA5-like data: opens in xarray, deterministic by seed, has the physical properties it claims."""

from __future__ import annotations

import dataclasses
import os

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr

import fastload.synth as synth
from fastload.cli import main as cli
from fastload.errors import ConfigError
from fastload.synth import PRESETS, SynthConfig, default_dataset, synthesize
from fastload.write import StoreWriter

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "tiny.zarr", "tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny_ds(tiny):
    return xr.open_zarr(tiny).load()


def _files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_tiny_opens_in_xarray_with_era5_coordinates(tiny_ds):
    ds = tiny_ds
    assert set(ds.data_vars) == {"temperature", "velocity_u", "t2m", "total_precip", "orography"}
    np.testing.assert_allclose(ds.latitude.values, np.linspace(90, -90, 61))  # ERA5 order: north to south
    np.testing.assert_allclose(ds.longitude.values, np.arange(120) * 3.0)
    np.testing.assert_array_equal(ds.level.values, [96, 105, 114, 123, 137])
    assert ds.level.attrs["level_type"] == "model"
    times = np.datetime64("2021-01-01T00", "ns") + np.arange(48) * np.timedelta64(1, "h")
    np.testing.assert_array_equal(ds.time.values, times)
    assert ds.temperature.dims == ("time", "level", "latitude", "longitude")
    assert ds.total_precip.dims == ("time", "latitude", "longitude") and ds.orography.dims == ("latitude", "longitude")
    assert ds.temperature.attrs["units"] == "K" and ds.total_precip.attrs["units"] == "mm"
    assert ds.attrs["synth_seed"] == 0 and ds.attrs["synth_preset"] == "tiny"
    assert all(np.isfinite(ds[v].values).all() for v in ds.data_vars)


def test_tiny_is_small_and_chunked_in_spatial_tiles(tiny):
    g = zarr.open_group(tiny, mode="r")
    assert g["temperature"].chunks == (6, 1, 32, 64) and g["t2m"].chunks == (6, 32, 64)
    size = sum(len(b) for b in _files(tiny).values())
    assert size < 20e6


def test_same_seed_same_bytes_different_seed_different_values(tmp_path, tiny, tiny_ds):
    again = synthesize(tmp_path / "again.zarr", "tiny", seed=0, progress=False)
    assert _files(again) == _files(tiny)
    other = xr.open_zarr(synthesize(tmp_path / "other.zarr", "tiny", seed=1, hours=6, progress=False))
    for v in ("temperature", "t2m", "total_precip", "orography"):
        assert not np.array_equal(other[v].values, tiny_ds[v].isel(time=slice(0, 6)).values if "time" in other[v].dims
                                  else tiny_ds[v].values), v  # fmt: skip


def test_values_do_not_depend_on_chunking_or_format(tmp_path, tiny_ds):
    """The noise of step t is keyed by (seed, field, t): re-chunked / v3 / sharded stores hold the same values."""
    a = xr.open_zarr(synthesize(tmp_path / "a.zarr", "tiny", hours=6, chunks=(4, 2, 32, 32), progress=False))
    b = xr.open_zarr(synthesize(tmp_path / "b.zarr", "tiny", hours=6, zarr_format=3, chunks=(2, 1, 32, 64),
                                shards=(4, 1, 64, 128), progress=False))  # fmt: skip
    for v in tiny_ds.data_vars:
        ref = tiny_ds[v].isel(time=slice(0, 6)) if "time" in tiny_ds[v].dims else tiny_ds[v]
        np.testing.assert_array_equal(a[v].values, ref.values)
        np.testing.assert_array_equal(b[v].values, ref.values)


def test_fields_are_smooth_and_autocorrelated(tiny_ds):
    t = tiny_ds.temperature.isel(level=-1).values.astype(np.float64)  # (T, Y, X), 3-degree grid
    x_corr = np.corrcoef(t[..., :-1].ravel(), t[..., 1:].ravel())[0, 1]
    y_corr = np.corrcoef(t[:, :-1].ravel(), t[:, 1:].ravel())[0, 1]
    assert x_corr > 0.95 and y_corr > 0.95
    anom = t - t.mean(axis=0)
    assert np.corrcoef(anom[:-1].ravel(), anom[1:].ravel())[0, 1] > 0.9  # hour-to-hour persistence
    # not white noise: neighbouring anomalies (the random part alone) are still correlated
    assert np.corrcoef(anom[..., :-1].ravel(), anom[..., 1:].ravel())[0, 1] > 0.7
    assert anom.std() > 0.5  # but there is weather


def test_latitude_profile_level_dependence_and_cycles(tiny_ds):
    lat = tiny_ds.latitude.values
    zonal = tiny_ds.t2m.mean(("time", "longitude")).values
    tropics, poles = zonal[np.abs(lat) < 20].mean(), zonal[np.abs(lat) > 70].mean()
    assert tropics - poles > 25
    by_level = tiny_ds.temperature.mean(("time", "latitude", "longitude")).values
    assert np.all(np.diff(by_level) > 0)  # warmer towards the surface (level 137)
    # diurnal: tropical t2m at 15 local solar time beats 03 local solar time
    t2m = tiny_ds.t2m.values
    hours = (tiny_ds.time.values - tiny_ds.time.values.astype("datetime64[D]")) / np.timedelta64(1, "h")
    local = (hours[:, None] + tiny_ds.longitude.values[None, :] / 15.0) % 24  # (T, X)
    trop = t2m[:, np.abs(lat) < 20, :].mean(axis=1)  # (T, X)
    assert trop[np.abs(local - 15) < 1.5].mean() - trop[np.abs(local - 3) < 1.5].mean() > 2.0


def test_seasonal_cycle(tmp_path):
    jan = xr.open_zarr(synthesize(tmp_path / "j.zarr", dataclasses.replace(TINY, hours=2), progress=False))
    jul = xr.open_zarr(synthesize(tmp_path / "l.zarr", dataclasses.replace(TINY, hours=2, start="2021-07-15T00:00"),
                                  progress=False))  # fmt: skip
    north = slice(80, 40)  # descending latitudes
    assert float(jul.t2m.sel(latitude=north).mean()) - float(jan.t2m.sel(latitude=north).mean()) > 10
    south = slice(-40, -80)
    assert float(jan.t2m.sel(latitude=south).mean()) > float(jul.t2m.sel(latitude=south).mean())


def test_precipitation_is_non_negative_and_skewed(tiny_ds):
    tp = tiny_ds.total_precip.values.astype(np.float64)
    assert tp.min() >= 0.0
    assert 0.2 < (tp == 0).mean() < 0.9
    skew = ((tp - tp.mean()) ** 3).mean() / tp.std() ** 3
    assert skew > 2.0
    oro = tiny_ds.orography.values
    assert oro.min() >= 0 and 0.1 < (oro > 0).mean() < 0.7 and oro.max() < 9000


def test_compresses_like_real_data_with_blosc_lz4(tiny_ds):
    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    rng = np.random.default_rng(0)
    for v in ("temperature", "velocity_u", "t2m"):
        raw = np.ascontiguousarray(tiny_ds[v].values)
        ratio = raw.nbytes / len(codec.encode(raw))
        # white noise of the same mean and spread is what synthetic data must not look like
        white = rng.normal(raw.mean(), raw.std(), raw.shape).astype(np.float32)
        white_ratio = white.nbytes / len(codec.encode(white))
        assert ratio > 1.3 and ratio > white_ratio + 0.1, (v, ratio, white_ratio)


def test_atmorep_layout_holds_the_same_values(tmp_path, tiny_ds):
    out = synthesize(tmp_path / "a.zarr", "tiny", layout="atmorep", zarr_format=3, hours=12, progress=False)
    ds = xr.open_zarr(out)
    assert ds.data.dims == ("time", "field", "level", "latitude", "longitude")
    assert ds.data_sfc.dims == ("time", "sfc_field", "latitude", "longitude")
    assert ds.data.attrs["fields"] == ["temperature", "velocity_u"] and ds.data.attrs["level_type"] == "model"
    assert ds.data.attrs["levels"] == [96, 105, 114, 123, 137]
    assert ds.data_sfc.attrs["fields"] == ["t2m", "total_precip"]
    assert ds.attrs["fastload_layout"] == "atmorep" and ds.attrs["sfc_fields"] == ["t2m", "total_precip"]
    assert zarr.open_array(out / "data", mode="r").chunks == (8, 2, 5, 61, 120)  # AtmoRep's own chunking
    for i, name in enumerate(ds.data.attrs["fields"]):
        np.testing.assert_array_equal(ds.data.isel(field=i).values, tiny_ds[name].isel(time=slice(0, 12)).values)
    for i, name in enumerate(ds.data_sfc.attrs["fields"]):
        np.testing.assert_array_equal(ds.data_sfc.isel(sfc_field=i).values, tiny_ds[name].isel(time=slice(0, 12)).values)


def test_writes_one_time_block_of_one_variable_at_a_time(tmp_path, monkeypatch):
    seen = []
    real = StoreWriter.write

    def spy(self, name, block, start=0):
        seen.append((name, np.shape(block)))
        return real(self, name, block, start)

    monkeypatch.setattr(StoreWriter, "write", spy)
    synthesize(tmp_path / "s.zarr", "tiny", hours=12, progress=False)
    assert {n for n, _ in seen} == {"temperature", "velocity_u", "t2m", "total_precip", "orography"}
    assert all(s[0] <= 6 for n, s in seen if n != "orography")  # one chunk of time per write, never the record


def test_interrupted_synthesis_leaves_nothing(tmp_path, monkeypatch):
    from fastload import _synth_fields

    calls = {"n": 0}
    real = _synth_fields._Generator.block

    def flaky(self, t0, t1):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, t0, t1)

    monkeypatch.setattr(_synth_fields._Generator, "block", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "s.zarr", "tiny", hours=24, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_dataset_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLOAD_CACHE", str(tmp_path / "cache"))
    first = default_dataset()
    assert first.parent == tmp_path / "cache" and f"v{synth.SYNTH_VERSION}" in first.name
    stamp = (first / ".zmetadata").stat().st_mtime_ns
    assert default_dataset() == first and (first / ".zmetadata").stat().st_mtime_ns == stamp
    assert "temperature" in xr.open_zarr(first).data_vars
    made = []
    monkeypatch.setattr(synth, "synthesize", lambda path, *a, **k: made.append(path) or path)
    assert default_dataset(tmp_path / "other", seed=3) == tmp_path / "other" / first.name.replace("seed0", "seed3")
    assert made == [tmp_path / "other" / first.name.replace("seed0", "seed3")]


def test_bad_settings_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="preset"):
        synthesize(tmp_path / "x.zarr", "huge")
    with pytest.raises(ConfigError, match="layout"):
        synthesize(tmp_path / "x.zarr", layout="columns")
    with pytest.raises(ConfigError, match="unknown fields"):
        SynthConfig(resolution=3.0, hours=2, level_fields=("ozone",))
    with pytest.raises(ConfigError, match="resolution"):
        SynthConfig(resolution=7.0, hours=2)
    assert not (tmp_path / "x.zarr").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "victim2"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a zarr store"):
        synthesize(folder, "tiny", hours=2, overwrite=True, progress=False)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim2"]


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["synth", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "era5-025" in out and "721x1440" in out
    path = tmp_path / "t.zarr"
    assert cli(["synth", str(path), "--hours", "6", "-q"]) == 0
    assert "wrote" in capsys.readouterr().out and path.is_dir()
    assert cli(["synth", str(path), "--hours", "6", "-q"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(path) in err
    assert cli(["synth", str(tmp_path / "u.zarr"), "--chunks", "6,1,64"]) == 2
    assert "--chunks" in capsys.readouterr().err
    assert cli(["synth", str(tmp_path / "v.zarr"), "--shard", "6,1,64,64"]) == 2  # v2 cannot shard
    assert "zarr_format=3" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["t.zarr"]
