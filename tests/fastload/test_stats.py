"""fastload.stats: coefficients equal a NumPy computation on the same data (global and local, NaNs, log1p, time
range, levels, both layouts and zarr formats, several passes); interruption leaves no store; CLI errors."""

from __future__ import annotations

import importlib.util
import os
import signal

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from fastload.errors import ConfigError, SchemaError, StoreError, StoreNotFoundError
from fastload.norm import months_of
from fastload.stats import StatsConfig, compute_stats, main, missing_markers
from fastload.store import open_store

LEVELS = (96.0, 105.0, 114.0)


def write_per_variable(path, *, fmt=3, nt=44, start="2000-01-25", freq="6h", ny=9, nx=12, levels=LEVELS,
                       chunks=(7, 1, 4, 5), nan_frac=0.1, seed=0, regional=False, dtype="f4", offset=0.0,
                       scale=1.0):  # fmt: skip
    """A small per-variable store written by xarray; returns the NumPy arrays it holds and the times."""
    rng = np.random.default_rng(seed)
    time = pd.date_range(start, periods=nt, freq=freq).values
    lat = np.linspace(80, -80, ny)
    lon = np.arange(nx) * (2.0 if regional else 360.0 / nx)
    temp = (offset + scale * rng.normal(size=(nt, len(levels), ny, nx))).astype(dtype)
    temp += np.arange(len(levels), dtype=dtype)[None, :, None, None] * 3  # level dependence
    temp[rng.random(temp.shape) < nan_frac] = np.nan
    temp[:, 0, 1, 2] = np.nan  # a grid point with no data at all on one level
    precip = rng.exponential(2.0, size=(nt, ny, nx)).astype(dtype)
    precip[rng.random(precip.shape) < nan_frac] = np.nan
    orog = rng.normal(size=(ny, nx)).astype(dtype)
    ds = xr.Dataset(
        {
            "temperature": (("time", "level", "latitude", "longitude"), temp),
            "precip": (("time", "latitude", "longitude"), precip),
            "orography": (("latitude", "longitude"), orog),
        },
        coords={"time": time, "level": list(levels), "latitude": lat, "longitude": lon},
    )
    enc = {"temperature": {"chunks": chunks}, "precip": {"chunks": (chunks[0], *chunks[2:])},
           "orography": {"chunks": chunks[2:]}}  # fmt: skip
    ds.to_zarr(path, mode="w", encoding=enc, zarr_format=fmt, consolidated=False)
    return {"temperature": temp, "precip": precip, "orography": orog}, time


def write_atmorep(path, *, nt=30, ny=6, nx=8, fields=("t", "q"), levels=LEVELS, chunks=(5, 2, 2, 3, 8), seed=1):
    """A small AtmoRep-layout store: ``data`` (time, field, level, lat, lon) plus coordinates."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(nt, len(fields), len(levels), ny, nx)).astype("f4")
    data[rng.random(data.shape) < 0.05] = np.nan
    g = zarr.open_group(path, mode="w", zarr_format=3)
    a = g.create_array("data", shape=data.shape, chunks=chunks, dtype="f4", fill_value=np.nan,
                       dimension_names=("time", "field", "level", "lat", "lon"),
                       attributes={"fields": list(fields), "levels": list(levels)})  # fmt: skip
    a[...] = data
    hours = np.arange(nt) * 24
    t = g.create_array("time", shape=(nt,), dtype="i8", dimension_names=("time",),
                       attributes={"units": "hours since 2001-01-15 00:00:00", "calendar": "standard"})  # fmt: skip
    t[...] = hours
    la = g.create_array("lat", shape=(ny,), dtype="f8", dimension_names=("lat",))
    la[...] = np.linspace(75, -75, ny)
    lo = g.create_array("lon", shape=(nx,), dtype="f8", dimension_names=("lon",))
    lo[...] = np.arange(nx) * 360.0 / nx
    time = np.datetime64("2001-01-15", "ns") + hours.astype("timedelta64[h]")
    return {f: data[:, i] for i, f in enumerate(fields)}, time


def reference(x, months, transform=None):
    """Per-month NumPy statistics of ``x`` (T, L, NY, NX): global (12, L) and local (12, L, NY, NX), NaN-aware."""
    x = x.astype(np.float64)
    if transform == "log1p":
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log1p(x)
    x = np.where(np.isfinite(x), x, np.nan)
    L, ny, nx = x.shape[1:]
    gm, gs = np.full((12, L), np.nan), np.full((12, L), np.nan)
    lm, ls = np.full((12, L, ny, nx), np.nan), np.full((12, L, ny, nx), np.nan)
    with np.errstate(invalid="ignore"):
        for m in np.unique(months):
            sub = x[months == m]
            for li in range(L):
                s = sub[:, li]
                if np.isfinite(s).any():
                    gm[m, li], gs[m, li] = np.nanmean(s), np.nanstd(s)
                ok = np.isfinite(s).any(axis=0)
                cnt = np.isfinite(s).sum(axis=0)
                tot = np.where(np.isfinite(s), s, 0).sum(axis=0)
                mean = np.where(ok, tot / np.maximum(cnt, 1), np.nan)
                var = np.where(np.isfinite(s), (s - mean) ** 2, 0).sum(axis=0) / np.maximum(cnt, 1)
                lm[m, li] = mean
                ls[m, li] = np.where(ok, np.sqrt(var), np.nan)
    return gm, gs, lm, ls


def read_group(path, field):
    g = zarr.open_group(str(path), mode="r")[field]
    return (g["global_mean"][...], g["global_std"][...], g["local_mean"][...], g["local_std"][...], dict(g.attrs))


def assert_stats(path, field, x, months, transform=None, rtol=1e-5):
    gm, gs, lm, ls, attrs = read_group(path, field)
    rgm, rgs, rlm, rls = reference(x, months, transform)
    np.testing.assert_allclose(gm, rgm, rtol=rtol, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(gs, rgs, rtol=rtol, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(lm, rlm, rtol=rtol, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ls, rls, rtol=rtol, atol=1e-5, equal_nan=True)
    assert attrs["months_present"] == sorted(int(m) + 1 for m in np.unique(months))
    return attrs


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("memory", [2**30, 1])  # one pass for everything, or one pass per (field, level)
def test_global_and_local_equal_numpy_with_nans(tmp_path, fmt, memory):
    data, time = write_per_variable(tmp_path / "d.zarr", fmt=fmt)  # 44 steps of 6 h from Jan 25: Jan and Feb
    out = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr",
                        StatsConfig(memory_bytes=memory, zarr_format=fmt, progress=False))  # fmt: skip
    months = months_of(time)
    assert set(np.unique(months)) == {0, 1}
    attrs = assert_stats(out, "temperature", data["temperature"], months)
    assert attrs["levels"] == list(LEVELS) and attrs["grid_shape"] == [9, 12] and attrs["transform"] is None
    assert attrs["missing_values"] == int(np.isnan(data["temperature"]).sum())
    assert attrs["counts"][0] == int(np.isfinite(data["temperature"][months == 0]).sum())
    assert_stats(out, "precip", data["precip"][:, None], months)
    # the point without data on level 96 has NaN local coefficients; months without data are NaN
    _, _, lm, ls, _ = read_group(out, "temperature")
    assert np.isnan(lm[:, 0, 1, 2]).all() and np.isnan(ls[:, 0, 1, 2]).all()
    assert np.isnan(lm[2:]).all()
    root = zarr.open_group(out, mode="r")
    assert root.attrs["fastload_norm"] == 1 and root.attrs["source"] == os.path.abspath(tmp_path / "d.zarr")


def test_two_runs_for_one_output_in_one_process_each_build_their_own_temporary(tmp_path):
    """Two stats runs writing the same output at once in one process (threads, --overwrite): each builds its own
    temporary and the output is a complete coefficient store (they shared one: both failed with FileNotFoundError
    as each removed or renamed the other's; review s11 r5, left open by the writers' fix)."""
    import threading

    data, time = write_per_variable(tmp_path / "d.zarr")
    errors = []

    def run():
        try:
            compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False, overwrite=True))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_stats(tmp_path / "n.zarr", "temperature", data["temperature"], months_of(time))
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_log1p_transform_and_invalid_values(tmp_path):
    data, time = write_per_variable(tmp_path / "d.zarr")
    out = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr",
                        StatsConfig(transforms={"precip": "log1p"}, fields=("precip",), progress=False))  # fmt: skip
    attrs = assert_stats(out, "precip", data["precip"][:, None], months_of(time), transform="log1p")
    assert attrs["transform"] == "log1p"
    assert list(zarr.open_group(out, mode="r").attrs["fields"]) == ["precip"]
    # log1p of x <= -1 is left out and counted
    p = data["precip"].copy()
    p[0, 0, :3] = -1.5
    xr.Dataset({"precip": (("time", "latitude", "longitude"), p)}).to_zarr(
        tmp_path / "d.zarr", mode="r+", consolidated=False, region={"time": slice(None), "latitude": slice(None), "longitude": slice(None)}
    )
    out2 = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n2.zarr",
                         StatsConfig(transforms={"precip": "log1p"}, fields=("precip",), progress=False))  # fmt: skip
    attrs = assert_stats(out2, "precip", p[:, None], months_of(time), transform="log1p")
    assert attrs["excluded_nonfinite"] == 3


def test_numerically_stable_for_large_offsets(tmp_path):
    # float64 data around 1e8 with unit spread: a naive sum of squares would lose every digit of the variance
    data, time = write_per_variable(tmp_path / "d.zarr", dtype="f8", offset=1e8, nan_frac=0.0)
    out = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(fields=("temperature",),
                        progress=False))  # fmt: skip
    gm, gs, _, ls, _ = read_group(out, "temperature")
    x, months = data["temperature"], months_of(time)
    np.testing.assert_allclose(gs[0], np.nanstd(x[months == 0], axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(ls[1, 2], x[months == 1][:, 2].std(axis=0), rtol=1e-5)


def test_selection_of_fields_levels_and_time_range(tmp_path):
    data, time = write_per_variable(tmp_path / "d.zarr", nt=60)
    cfg = StatsConfig(fields=("temperature",), levels=(114, 96), time_range=("2000-01-30", "2000-02-05T12:00"),
                      progress=False)  # fmt: skip
    out = compute_stats(open_store(str(tmp_path / "d.zarr")), tmp_path / "n.zarr", cfg)
    keep = (time >= np.datetime64("2000-01-30")) & (time <= np.datetime64("2000-02-05T12:00"))
    x = data["temperature"][keep][:, [0, 2]]  # stored in the store's level order
    attrs = assert_stats(out, "temperature", x, months_of(time[keep]))
    assert attrs["levels"] == [96.0, 114.0] and attrs["time_steps"] == int(keep.sum())
    assert list(zarr.open_group(out, mode="r").group_keys()) == ["temperature"]


@pytest.mark.parametrize("start, end", [("2000-01-26", "2000-01-26"), ("2000-01-26T06", "2000-02"),
                                        ("2000-01-25T12:00", "2000-01-26T06:00")])  # fmt: skip
def test_time_range_end_includes_its_whole_unit_as_xarray(tmp_path, start, end):
    data, time = write_per_variable(tmp_path / "d.zarr", freq="3h")
    compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr",
                  StatsConfig(fields=("precip",), time_range=(start, end), progress=False))  # fmt: skip
    sel = xr.open_zarr(tmp_path / "d.zarr", consolidated=False).sel(time=slice(start, end))
    keep = np.isin(time, sel.time.values)
    attrs = assert_stats(tmp_path / "n.zarr", "precip", data["precip"][keep][:, None], months_of(time[keep]))
    assert attrs["time_steps"] == sel.sizes["time"] > 1


@pytest.mark.parametrize("start, end", [("1000-01-01", None), (None, "2300-01-01"), ("2300-01-01T00:00", None),
                                        ("1677-09-21T00:12:43.145224192", None),
                                        (None, "2262-04-11T23:47:16.854775808"),
                                        (None, "2300-01-01T00:00:00.000000000")])  # fmt: skip
def test_time_range_outside_the_ns_range_is_refused_naming_the_setting_value_and_range(start, end):
    """NumPy wrapped such a date when it converted it to ns (1000-01-01 became 2169-02-08), or raised a bare
    OverflowError (>= 2.5); the ends of the range are pandas' Timestamp bounds, one ns past them is refused."""
    bad = start or end
    rng = f"{pd.Timestamp.min.isoformat()} .. {pd.Timestamp.max.isoformat()}"
    with pytest.raises(ConfigError, match=f"stats.time_range: '{bad}' is outside .*{rng}"):
        StatsConfig(time_range=(start, end))


@pytest.mark.parametrize("start, end, t0, keep", [
    ("2262-04-10T12", "2262-04-11", "2262-04-10", lambda t: t >= np.datetime64("2262-04-10T12")),
    (pd.Timestamp.min.isoformat(), pd.Timestamp.max.isoformat(), "2262-04-10", lambda t: t == t),
    (pd.Timestamp.min.isoformat(), "1677-09-22T12", "1677-09-22", lambda t: t <= np.datetime64("1677-09-22T12")),
])  # fmt: skip
def test_time_range_at_the_ns_range_ends_selects_the_steps_inside(tmp_path, start, end, t0, keep):
    """An end whose day runs past the ns range (2262-04-11) selected nothing (< 2.5) or overflowed (>= 2.5);
    pandas' Timestamp bounds select every step. (xarray's sel cannot slice at these ends: pandas overflows.)"""
    data, time = write_per_variable(tmp_path / "d.zarr", nt=8, start=t0)
    compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr",
                  StatsConfig(fields=("precip",), time_range=(start, end), progress=False))  # fmt: skip
    k = keep(time)
    attrs = assert_stats(tmp_path / "n.zarr", "precip", data["precip"][k][:, None], months_of(time[k]))
    assert attrs["time_steps"] == int(k.sum()) > 1


def test_static_field_counts_for_every_month(tmp_path):
    data, _ = write_per_variable(tmp_path / "d.zarr")
    out = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(fields=("orography",),
                        progress=False))  # fmt: skip
    gm, gs, lm, ls, attrs = read_group(out, "orography")
    assert attrs["static"] and attrs["months_present"] == list(range(1, 13)) and attrs["levels"] is None
    np.testing.assert_allclose(gm[:, 0], np.full(12, data["orography"].astype(np.float64).mean()), rtol=1e-6)
    np.testing.assert_allclose(ls, 0.0)
    np.testing.assert_allclose(lm[5, 0], data["orography"], rtol=1e-6)


def test_atmorep_chunks_are_read_once_per_pass(tmp_path, monkeypatch):
    write_atmorep(tmp_path / "a.zarr")  # chunks (5, 2, 2, 3, 8): every chunk holds both fields and 1-2 levels
    store = open_store(str(tmp_path / "a.zarr"))
    seen = []
    real = store.read_chunk
    monkeypatch.setattr(store, "read_chunk", lambda a, c, *r, **k: seen.append((a, tuple(c))) or real(a, c, *r, **k))
    compute_stats(store, tmp_path / "n.zarr", StatsConfig(progress=False))
    grid = store.arrays["data"].grid_shape
    assert len(seen) == len(set(seen)) == int(np.prod(grid))


def test_atmorep_layout(tmp_path):
    data, time = write_atmorep(tmp_path / "a.zarr")
    out = compute_stats(str(tmp_path / "a.zarr"), tmp_path / "n.zarr", StatsConfig(memory_bytes=3000,
                        progress=False))  # fmt: skip
    months = months_of(time)
    assert set(np.unique(months)) == {0, 1}
    for f in ("t", "q"):
        assert_stats(out, f, data[f], months)


def test_bad_input(tmp_path):
    write_per_variable(tmp_path / "d.zarr")
    d = str(tmp_path / "d.zarr")
    with pytest.raises(ConfigError, match="nope"):
        compute_stats(d, tmp_path / "n.zarr", StatsConfig(fields=("nope",)))
    with pytest.raises(ConfigError, match="500"):
        compute_stats(d, tmp_path / "n.zarr", StatsConfig(levels={"temperature": (500,)}))
    with pytest.raises(ConfigError, match="time_range"):
        compute_stats(d, tmp_path / "n.zarr", StatsConfig(time_range=("1990-01-01", "1990-02-01")))
    with pytest.raises(ConfigError, match="transforms"):
        StatsConfig(transforms={"precip": "sqrt"})
    with pytest.raises(ConfigError, match="their own store"):
        compute_stats(d, d, StatsConfig(overwrite=True))
    with pytest.raises(ConfigError, match="their own store"):
        compute_stats(d, os.path.join(d, "norm"), StatsConfig(overwrite=True))
    os.makedirs(tmp_path / "exists.zarr")
    with pytest.raises(ConfigError, match="overwrite"):
        compute_stats(d, tmp_path / "exists.zarr")
    assert not (tmp_path / "n.zarr").exists()


def test_overwrite_never_deletes_the_data_store_or_other_files(tmp_path):
    victim = tmp_path / "victim"
    write_per_variable(victim / "data.zarr")
    (victim / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="source"):
        compute_stats(str(victim / "data.zarr"), victim, StatsConfig(overwrite=True, progress=False))
    (tmp_path / "afile").write_text("keep me too")
    with pytest.raises(ConfigError, match="not a zarr store"):
        compute_stats(str(victim / "data.zarr"), tmp_path / "afile", StatsConfig(overwrite=True, progress=False))
    assert sorted(os.listdir(victim)) == ["data.zarr", "notes.txt"]
    assert (tmp_path / "afile").read_text() == "keep me too"
    assert sorted(os.listdir(tmp_path)) == ["afile", "victim"]
    open_store(str(victim / "data.zarr"))  # intact


def test_a_failed_rename_keeps_the_old_coefficients(tmp_path, monkeypatch):
    write_per_variable(tmp_path / "d.zarr")
    out = tmp_path / "n.zarr"
    compute_stats(str(tmp_path / "d.zarr"), out, StatsConfig(fields=("precip",), progress=False))
    real = {"rename": os.rename, "replace": os.replace}

    def failing(name):
        def move(src, dst):
            if os.path.basename(src).startswith("n.zarr.tmp-") and os.fspath(dst) == str(out):  # the finished store's move
                raise OSError("disk full")
            return real[name](src, dst)
        return move

    monkeypatch.setattr(os, "rename", failing("rename"))
    monkeypatch.setattr(os, "replace", failing("replace"))
    monkeypatch.setattr("fastload._write_atomic._renameat2", lambda: None)  # the two renames (exchange: test_write)
    with pytest.raises((OSError, StoreError), match="disk full"):
        compute_stats(str(tmp_path / "d.zarr"), out, StatsConfig(overwrite=True, progress=False))
    monkeypatch.undo()
    assert list(zarr.open_group(out, mode="r").group_keys()) == ["precip"]  # the old store, intact
    assert sorted(os.listdir(tmp_path)) == ["d.zarr", "n.zarr"]


def test_interrupt_leaves_no_store(tmp_path, monkeypatch):
    write_per_variable(tmp_path / "d.zarr")
    store = open_store(str(tmp_path / "d.zarr"))
    calls = {"n": 0}
    real = store.read_chunk

    def flaky(array, chunk, *a, **k):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(array, chunk, *a, **k)

    monkeypatch.setattr(store, "read_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        compute_stats(store, tmp_path / "n.zarr", StatsConfig(progress=False))
    assert sorted(os.listdir(tmp_path)) == ["d.zarr"]  # neither the output nor a partial folder


def test_sigint_during_a_coefficient_write_leaves_no_partial_store(tmp_path, monkeypatch):
    write_per_variable(tmp_path / "d.zarr")
    real = zarr.Array.__setitem__
    log = []

    def interrupted_write(self, key, value):
        if self.ndim == 4 and not log:  # the first local_mean write
            os.kill(os.getpid(), signal.SIGINT)
            log.append("signal sent")
        real(self, key, value)
        if log:
            log.append("write finished")

    monkeypatch.setattr(zarr.Array, "__setitem__", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    assert log[:2] == ["signal sent", "write finished"]  # Ctrl-C acted only once zarr's write was done
    assert sorted(os.listdir(tmp_path)) == ["d.zarr"]


def _int_store(path, fmt, fill, attrs=None, dtype="i2"):
    """An int16 (or ``dtype``) (time, latitude, longitude) store written with zarr-python, values 0..20, the last
    chunk never written (it reads as the fill value)."""
    rng = np.random.default_rng(3)
    nt, ny, nx = 8, 4, 6
    data = rng.integers(0, 21, (nt, ny, nx)).astype(dtype)
    g = zarr.open_group(path, mode="w", zarr_format=fmt)

    def arr(name, dims, values=None, **kw):
        a_attrs = dict(kw.pop("attributes", {}))
        extra = {"dimension_names": dims} if fmt == 3 else {}
        if fmt == 2:
            a_attrs["_ARRAY_DIMENSIONS"] = list(dims)
        a = g.create_array(name, attributes=a_attrs, **extra, **kw)
        if values is not None:
            a[...] = values
        return a

    hours = np.arange(nt) * 6
    arr("time", ("time",), hours, shape=(nt,), dtype="i8", attributes={"units": "hours since 2000-01-30"})
    arr("latitude", ("latitude",), np.linspace(60, 30, ny), shape=(ny,), dtype="f8")
    arr("longitude", ("longitude",), np.linspace(0, 50, nx), shape=(nx,), dtype="f8")
    v = arr("v", ("time", "latitude", "longitude"), shape=data.shape, chunks=(4, ny, nx), dtype=dtype,
            fill_value=fill, attributes=attrs or {})  # fmt: skip
    v[:4] = data[:4]
    if fmt == 2:
        zarr.consolidate_metadata(path)  # v2 only: the null/0 fill value must be found in .zmetadata too
    return np.datetime64("2000-01-30", "ns") + hours.astype("timedelta64[h]")


@pytest.mark.parametrize(
    "fmt, fill, attrs",
    [(2, -999, None), (2, 0, None), (2, None, None), (3, -999, None), (3, -999, {"_FillValue": -999}),
     (2, None, {"missing_value": 7})],
)  # fmt: skip
def test_fill_values_are_missing_as_xarray_decodes_them(tmp_path, fmt, fill, attrs):
    time = _int_store(tmp_path / "d.zarr", fmt, fill, attrs)
    ref = xr.open_zarr(tmp_path / "d.zarr", consolidated=fmt == 2).v.values  # NaN where xarray masks
    if fmt == 2 and fill == 0 and not attrs:  # except zarr's default fill 0: data, as the loader reads it
        ref = xr.open_zarr(tmp_path / "d.zarr", consolidated=True, mask_and_scale=False).v.values.astype("f8")
        assert (ref == 0).sum() > 0
    compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    got = assert_stats(tmp_path / "n.zarr", "v", ref[:, None], months_of(time))
    assert got["missing_values"] == int(np.isnan(ref).sum())


_F7 = "AAAAAAAAHEA="  # 7.0 as the base64 of a little-endian float64: how xarray writes a float _FillValue in v3

# What xr.open_zarr (the reference) masks as NaN, and what fastload masks: the precedence of xarray's zarr backend
# (v2: attributes["_FillValue"] = zarr_array.fill_value, so a non-null fill_value wins over the attribute; v3: only
# the attribute) and fastload's one exception, a v2 fill_value of 0 read as unset (missing_markers' docstring).
# Values 0..20 are stored, and -999, 0 or 5 in the never-written chunk.
FILL_PRECEDENCE = [
    # fmt, dtype, fill_value, attributes, xarray masks, fastload masks
    (2, "i2", -999, {"_FillValue": 5}, [-999], [-999]),  # both set and different: fill_value
    (2, "i2", None, {"_FillValue": 5}, [5], [5]),  # fill_value null: the attribute
    (2, "i2", -999, None, [-999], [-999]),
    (2, "i2", 5, {"_FillValue": 5}, [5], [5]),
    (2, "i2", None, None, [], []),
    (2, "i2", -999, {"_FillValue": 5, "missing_value": 7}, [-999, 7], [-999, 7]),  # missing_value too
    (2, "i2", None, {"_FillValue": 5, "missing_value": 7}, [5, 7], [5, 7]),
    (2, "i2", None, {"missing_value": [7, 9]}, [7, 9], [7, 9]),
    (2, "f4", np.nan, {"_FillValue": 5}, [], []),  # fill_value NaN wins: 5 is data
    (2, "f4", 5.0, {"_FillValue": "NaN"}, [5], [5]),
    (2, "f4", None, {"_FillValue": 7.0}, [7], [7]),
    (2, "i2", 0, None, [0], []),  # the exception: zarr's default 0 is data ...
    (2, "f4", 0.0, None, [0], []),
    (2, "i2", 0, {"missing_value": 7}, [0, 7], [7]),
    (2, "i2", 0, {"_FillValue": 5}, [0], [5]),  # ... read as null, so the attribute applies
    (2, "i2", 0, {"_FillValue": 0}, [0], [0]),  # unless it says 0
    (3, "i2", -999, {"_FillValue": 5}, [5], [5]),  # v3: the attribute, never the fill_value
    (3, "i2", -999, None, [], []),
    (3, "i2", 0, None, [], []),
    (3, "i2", 0, {"_FillValue": 5}, [5], [5]),
    (3, "i2", -999, {"missing_value": 7}, [7], [7]),
    (3, "f4", np.nan, {"_FillValue": _F7}, [7], [7]),
    (3, "f4", 5.0, None, [], []),
]


@pytest.mark.parametrize("fmt, dtype, fill, attrs, xr_masks, masks", FILL_PRECEDENCE)
@pytest.mark.filterwarnings("ignore:variable 'v' has multiple fill values")  # xarray says it masks both
def test_missing_values_follow_xarrays_precedence(tmp_path, fmt, dtype, fill, attrs, xr_masks, masks):
    """fastload masks the stored values xr.open_zarr masks (v2: fill_value over _FillValue), but a v2 fill_value of
    0; its fill value for writers (declared_fill_value) is xarray's without exception; the loader's gathered values
    (extract: the loader's kernels and layouts) are xarray's, NaN where fastload masks and the stored value else."""
    from fastload.config import FieldConfig, SamplingConfig
    from fastload.extract import extract
    from fastload.write import declared_fill_value

    path = tmp_path / "d.zarr"
    _int_store(path, fmt, fill, attrs, dtype)
    raw = xr.open_zarr(path, consolidated=fmt == 2, mask_and_scale=False).v.values.astype("f8")
    ref = xr.open_zarr(path, consolidated=fmt == 2).v.values
    assert sorted(np.unique(raw[np.isnan(ref) & ~np.isnan(raw)]).tolist()) == xr_masks  # what xarray does
    store = open_store(path)
    assert sorted(float(m) for m in missing_markers(store, "v")) == masks
    declared = declared_fill_value(store, "v")
    xr_fill = xr.open_zarr(path, consolidated=fmt == 2).v.encoding.get("_FillValue")
    if xr_fill is None or np.isnan(float(xr_fill)):
        assert declared is None or np.isnan(declared)
    else:
        assert float(declared) == float(xr_fill)
    cfg = SamplingConfig(fields=[FieldConfig(name="v", num_tokens=(1, 1, 1), token_size=raw.shape, normalization="none")],
                         batch_size=1, out_dtype="float32")  # fmt: skip
    got = extract(store, cfg, np.array([[0, 0, 0]]))["v"].data[0, 0, 0, 0, 0]  # the whole array: (T, NY, NX)
    want = np.where(np.isin(raw, masks), np.nan, raw).astype("f4")
    np.testing.assert_array_equal(got, want)
    if masks == xr_masks:
        np.testing.assert_array_equal(got, ref.astype("f4"))


@pytest.mark.parametrize("attr", [1e20, float(np.float32(1e20))])
def test_a_float_fill_value_masks_only_values_it_equals_exactly_as_xarray_does(tmp_path, attr):
    """A float32 field whose _FillValue attribute is the double 1e20 (which no float32 equals: the stored values
    are float32(1e20)) masks nothing in xarray; the float32 value itself (CMIP's 1e20f) masks them. fastload gives
    what xr.open_zarr gives (it rounded the attribute to float32 and masked both)."""
    from fastload.config import FieldConfig, SamplingConfig
    from fastload.extract import extract

    path = tmp_path / "d.zarr"
    g = zarr.open_group(path, mode="w", zarr_format=2)
    data = np.arange(24, dtype="f4").reshape(2, 3, 4)
    data[0, 1, 2] = data[1, 0, 0] = np.float32(1e20)
    for name, dims, values in (("time", ("time",), np.array([0, 6])), ("latitude", ("latitude",), [50.0, 40, 30]),
                               ("longitude", ("longitude",), [0.0, 10, 20, 30]), ("v", ("time", "latitude", "longitude"), data)):
        a = g.create_array(name, shape=np.shape(values), dtype=np.asarray(values).dtype, fill_value=None,
                           attributes={"_ARRAY_DIMENSIONS": list(dims)})
        a[...] = values
    g["time"].attrs["units"] = "hours since 2000-01-01"
    g["v"].attrs["_FillValue"] = attr
    zarr.consolidate_metadata(path)
    ref = xr.open_zarr(path).v.values
    assert np.isnan(ref).sum() == (0 if attr == 1e20 else 2)  # what xarray does
    store = open_store(path)
    assert len(missing_markers(store, "v")) == (0 if attr == 1e20 else 1)
    cfg = SamplingConfig(fields=[FieldConfig(name="v", num_tokens=(1, 1, 1), token_size=(2, 3, 4),
                                             normalization="none")], batch_size=1)
    for jit in (True, False):
        got = extract(store, cfg, np.array([[0, 0, 0]]), jit=jit)["v"].data[0, 0, 0, 0, 0]
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("fill, masked", [(-999, True), (0, False)])
def test_the_loader_masks_declared_missing_values_as_stats_leaves_them_out(tmp_path, caplog, fill, masked):
    """Stats leave a declared fill value out; the loader gives NaN there, as xarray decodes it, and says which
    fields it masks when it opens the store (zarr's default fill 0 is data in both, and not reported)."""
    from fastload.config import FieldConfig, SamplingConfig
    from fastload.extract import extract
    from fastload.loader import Loader
    from fastload.store import open_store

    _int_store(tmp_path / "d.zarr", 2, fill)
    cfg = SamplingConfig(fields=[FieldConfig(name="v", num_tokens=(1, 1, 1), token_size=(2, 2, 3), normalization="none")],
                         batch_size=2)
    with caplog.at_level("INFO", logger="fastload"):
        Loader(str(tmp_path / "d.zarr"), cfg, samples_per_epoch=4).close()
    said = [r.getMessage() for r in caplog.records if "missing values" in r.getMessage()]
    assert bool(said) == masked
    if masked:
        assert "'v': [-999]" in said[0] and "d.zarr" in said[0]
    ref = xr.open_zarr(tmp_path / "d.zarr", consolidated=True, mask_and_scale=masked).v.values.astype("f4")
    got = extract(open_store(tmp_path / "d.zarr"), cfg, np.array([[3, 0, 0]]))["v"].data  # across written/unwritten
    assert np.array_equal(got[0, 0, 0, 0, 0], ref[3:5, 0:2, 0:3], equal_nan=True)
    assert np.isnan(got).any() == masked


@pytest.mark.parametrize("declared", [1e20, -1e20, 40000, float("nan")])
def test_a_fill_value_the_dtype_cannot_hold_marks_nothing(tmp_path, declared):
    """A declared value int16 data cannot hold (1e20 would be cast to 0, 40000 to -25536) is in no stored value:
    it marks nothing, so every 0 stays in the coefficients (and in the loader's output); NaN is skipped too."""
    _int_store(tmp_path / "d.zarr", 2, None, {"_FillValue": declared})
    store = open_store(tmp_path / "d.zarr")
    assert missing_markers(store, "v") == ()
    compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))


def test_a_fill_value_that_is_not_a_number_is_refused(tmp_path):
    _int_store(tmp_path / "d.zarr", 2, None, {"_FillValue": "minus one"})
    with pytest.raises(SchemaError, match="minus one.*expected a number"):
        missing_markers(open_store(tmp_path / "d.zarr"), "v")


def test_packed_fields_are_refused(tmp_path):
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), np.full((4, 3, 5), 285.0))},
                    coords={"time": pd.date_range("2000-01-01", periods=4, freq="6h").values,
                            "latitude": [10.0, 0.0, -10.0], "longitude": np.arange(5) * 10.0})  # fmt: skip
    ds.t2m.encoding.update(dtype="int16", scale_factor=0.1, add_offset=280.0, _FillValue=-32767)
    ds.to_zarr(tmp_path / "packed.zarr", zarr_format=2)
    with pytest.raises(ConfigError, match="t2m.*packed.*scale_factor"):
        compute_stats(str(tmp_path / "packed.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    assert sorted(os.listdir(tmp_path)) == ["packed.zarr"]


def test_cli(tmp_path, capsys):
    data, time = write_per_variable(tmp_path / "d.zarr")
    assert main(["--help"]) == 0
    assert "--transform" in capsys.readouterr().out
    out = tmp_path / "n.zarr"
    rc = main([str(tmp_path / "d.zarr"), "--out", str(out), "--fields", "precip,temperature", "--levels", "105",
               "--transform", "precip=log1p", "--time-range", "..", "2000-02-01", "--quiet"])  # fmt: skip
    assert rc == 0 and "wrote" in capsys.readouterr().out
    keep = time < np.datetime64("2000-02-02")  # the END date includes its whole day
    assert_stats(out, "precip", data["precip"][keep][:, None], months_of(time[keep]), transform="log1p")
    assert_stats(out, "temperature", data["temperature"][keep][:, [1]], months_of(time[keep]))
    ds = xr.open_zarr(out, group="temperature", consolidated=False)  # the coefficient store opens in xarray
    assert ds["local_mean"].dims == ("month", "level", "latitude", "longitude")
    if importlib.util.find_spec("obstore") is not None:  # the same coefficients read through obstore
        out2 = tmp_path / "n2.zarr"
        assert main([str(tmp_path / "d.zarr"), "--out", str(out2), "--fields", "temperature", "--levels", "105",
                     "--time-range", "..", "2000-02-01", "--quiet", "--backend", "obstore"]) == 0
        capsys.readouterr()
        assert_stats(out2, "temperature", data["temperature"][keep][:, [1]], months_of(time[keep]))
    # errors: message on stderr, non-zero status, no traceback
    assert main([str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "x.zarr")]) != 0
    assert "missing.zarr" in capsys.readouterr().err
    assert main([str(tmp_path / "d.zarr"), "--out", str(tmp_path / "x.zarr"), "--transform", "precip"]) != 0
    assert "FIELD=VALUE" in capsys.readouterr().err
    assert main([str(tmp_path / "d.zarr"), "--out", str(out)]) != 0  # exists
    assert "overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "d.zarr")]) != 0  # --out missing: argparse usage error
    with pytest.raises(StoreNotFoundError):
        compute_stats(str(tmp_path / "missing.zarr"), tmp_path / "y.zarr")


def test_cli_quiet_and_memory(tmp_path, capsys):
    """-q is --quiet, as for synth/convert/rechunk; a --memory that is not a positive number of GiB is refused
    naming the flag (0 and negatives were clamped to a 1-byte budget)."""
    write_per_variable(tmp_path / "d.zarr", nt=8)
    src = str(tmp_path / "d.zarr")
    assert main([src, "--out", str(tmp_path / "q.zarr"), "-q", "--fields", "precip"]) == 0
    assert (tmp_path / "q.zarr").is_dir()
    for bad in ("0", "-1", "nan"):
        capsys.readouterr()
        assert main([src, "--out", str(tmp_path / f"m{bad}.zarr"), "--memory", bad]) == 2
        err = capsys.readouterr().err
        assert "--memory: expected a positive number of GiB" in err, err
        assert not (tmp_path / f"m{bad}.zarr").exists()


def test_a_store_without_a_time_axis_is_refused_up_front(tmp_path):
    """Coefficients are monthly and the loader normalises only stores with a time axis (it refuses normalisation
    of a timeless store), so stats refuses one before any work instead of writing 12 identical monthly sets."""
    xr.Dataset({"tas": (("latitude", "longitude"), np.ones((4, 6), "f4"))},
               coords={"latitude": np.linspace(60, -60, 4), "longitude": np.arange(6) * 60.0}
               ).to_zarr(tmp_path / "s.zarr", zarr_format=2, consolidated=False)
    with pytest.raises(ConfigError, match=r"stats: .*s\.zarr' has no time axis.*normalization = 'none'"):
        compute_stats(str(tmp_path / "s.zarr"), tmp_path / "n.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # nothing written


def test_sharded_store_with_a_missing_chunk(tmp_path):
    from .stores import make_per_variable

    truth = make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, codec="zstd", nt=6)
    out = compute_stats(str(tmp_path / "s.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    months = months_of(truth["time"])
    for name in ("t", "q"):  # q's first time chunk is missing (fill value NaN)
        assert_stats(out, name, truth[name], months, rtol=2e-5)
    assert_stats(out, "sp", truth["sp"][:, None], months, rtol=2e-5)


def test_curvilinear_grid_with_land(tmp_path):
    from .stores import make_curvilinear

    truth = make_curvilinear(tmp_path / "o.zarr")
    out = compute_stats(str(tmp_path / "o.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    attrs = assert_stats(out, "thetao", truth["thetao"], months_of(truth["time"]))
    assert attrs["grid_kind"] == "curvilinear" and attrs["levels"] == [5.0, 50.0]
    _, _, lm, _, _ = read_group(out, "thetao")
    assert np.isnan(lm[0, :, 2:4, 3:6]).all() and np.isfinite(lm[0, :, :2]).all()  # land stays NaN
    ds = xr.open_zarr(out, group="thetao", consolidated=False)
    assert ds["local_std"].dims == ("month", "level", "y", "x")


@pytest.mark.parametrize("fmt,memory", [(3, 2**30), (2, 1)])
def test_mesh_store_equals_numpy(tmp_path, fmt, memory):
    """A mesh is a grid of one row: local coefficients (12, L, 1, N) per node, global ones over the nodes; edge
    chunks of the node and time axes cropped; the Normalizer accepts them for the mesh store."""
    from fastload.config import FieldConfig, SamplingConfig
    from fastload.norm import Normalizer

    from .stores_multi import make_mesh

    truth = make_mesh(tmp_path / "m.zarr", nt=130, node_chunk=100, time_chunk=7)  # 6-hourly: Jan 1 .. Feb 2
    temp = truth["temp"].copy()
    store = open_store(tmp_path / "m.zarr")
    n = store.grid.nx
    assert store.grid.kind == "mesh" and n % 100 and 130 % 7  # edge chunks on both axes
    out = compute_stats(store, tmp_path / "n.zarr",
                        StatsConfig(memory_bytes=memory, zarr_format=fmt, progress=False))  # fmt: skip
    months = months_of(truth["time"])
    assert set(np.unique(months)) == {0, 1}
    attrs = assert_stats(out, "temp", temp[:, :, None, :], months)  # (T, L, 1, N)
    assert attrs["grid_kind"] == "mesh" and attrs["grid_shape"] == [1, n] and attrs["levels"] == [5.0, 100.0]
    assert attrs["counts"][:2] == [int((months == m).sum()) * 2 * n for m in (0, 1)]
    assert_stats(out, "ssh", truth["ssh"][:, None, None, :], months)
    _, _, lm, _, _ = read_group(out, "temp")
    assert lm.shape == (12, 2, 1, n)
    ds = xr.open_zarr(out, group="temp", consolidated=False)
    assert ds["local_mean"].dims == ("month", "level", "y", "node")
    cfg = SamplingConfig(fields=(FieldConfig(name="temp", levels=(100.0,), num_tokens=(1, 1, 1), token_size=(1, 2, 2),
                                             normalization="local"),
                                 FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(1, 2, 2),
                                             normalization="global")))
    norm = Normalizer(out)
    norm.check(store, cfg)  # grid shape [1, N], node coordinates, levels, months
    mean, std = norm.coefficients("temp", "local", [100.0], [1])
    assert mean.shape == (1, 1, 1, n) and np.allclose(mean[0, 0, 0], temp[months == 1, 1].mean(0), rtol=1e-5)
