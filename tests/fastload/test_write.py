"""StoreWriter: the per-variable layout xarray opens as it is, atomic commit, aligned block writes, codecs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from fastload.errors import ConfigError, SchemaError, StoreError
from fastload.write import CODECS, StoreWriter, chunks_for, encode_time, parse_ints, sigint_deferred

NT, NL, NY, NX = 10, 3, 7, 12


def _coords():
    times = np.datetime64("2020-02-28T00", "ns") + np.arange(NT) * np.timedelta64(6, "h")
    lat = np.linspace(60.0, 30.0, NY)  # regional, descending
    lon = np.linspace(-20.0, 35.0, NX)
    return times, lat, lon


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "temperature": rng.normal(280, 10, (NT, NL, NY, NX)).astype(np.float32),
        "t2m": rng.normal(285, 5, (NT, NY, NX)).astype(np.float32),
        "orography": rng.uniform(0, 3000, (NY, NX)).astype(np.float32),
    }


def _write(out, zarr_format=2, chunks=(4, 1, 4, 5), shards=None, codec="blosc-lz4", **kw):
    times, lat, lon = _coords()
    data = _data()
    with StoreWriter(out, zarr_format=zarr_format, **kw) as w:
        w.set_time(times)
        w.set_grid(lat, lon)
        w.set_levels([850, 700, 500], level_type="pressure")
        w.add_variable("temperature", ("time", "level", "latitude", "longitude"), chunks=chunks, shards=shards,
                       codec=codec, units="K", long_name="air temperature")  # fmt: skip
        w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=chunks, shards=shards, codec=codec, units="K")
        w.add_variable("orography", ("latitude", "longitude"), chunks=chunks, codec=codec, units="m")
        for name in ("temperature", "t2m"):
            for sl in w.time_blocks(name):
                w.write(name, data[name][sl], sl.start)
        w.write("orography", data["orography"], (0, 0))
    return data


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_opens_what_the_writer_wrote(tmp_path, zarr_format):
    out = tmp_path / "s.zarr"
    data = _write(out, zarr_format)
    times, lat, lon = _coords()
    ds = xr.open_zarr(out)  # consolidated metadata: no warning (pytest turns warnings into errors)
    assert dict(ds.sizes) == {"time": NT, "level": NL, "latitude": NY, "longitude": NX}
    np.testing.assert_array_equal(ds.time.values, times)
    np.testing.assert_array_equal(ds.latitude.values, lat)
    np.testing.assert_array_equal(ds.longitude.values, lon)
    np.testing.assert_array_equal(ds.level.values, [850, 700, 500])
    assert ds.level.attrs["level_type"] == "pressure" and ds.level.attrs["units"] == "hPa"
    assert ds.latitude.attrs["units"] == "degrees_north" and ds.longitude.attrs["units"] == "degrees_east"
    assert ds.temperature.dims == ("time", "level", "latitude", "longitude")
    assert ds.t2m.dims == ("time", "latitude", "longitude") and ds.orography.dims == ("latitude", "longitude")
    assert ds.temperature.attrs == {"units": "K", "long_name": "air temperature"}
    for name, ref in data.items():
        np.testing.assert_array_equal(ds[name].values, ref)
    assert ds.attrs["latitude_order"] == "descending" and ds.attrs["fastload_layout"] == "per_variable"
    # raw metadata: int64 CF time, dimension names in the place each format keeps them
    g = zarr.open_group(out, mode="r")
    assert g["time"].dtype == np.int64
    assert g["time"].attrs["units"] == "hours since 1979-01-01"
    assert g["time"].attrs["calendar"] == "proleptic_gregorian"
    assert g["temperature"].chunks == (4, 1, 4, 5)
    if zarr_format == 2:
        assert g["temperature"].attrs["_ARRAY_DIMENSIONS"] == ["time", "level", "latitude", "longitude"]
        assert (out / ".zmetadata").is_file()
    else:
        assert g["temperature"].metadata.dimension_names == ("time", "level", "latitude", "longitude")
        assert "consolidated_metadata" in json.loads((out / "zarr.json").read_text())
    assert not list(tmp_path.glob("*.tmp-*"))


def test_sharded_v3_round_trips(tmp_path):
    out = tmp_path / "sh.zarr"
    data = _write(out, 3, chunks=(2, 1, 4, 4), shards=(4, 1, 8, 8))
    g = zarr.open_group(out, mode="r")
    assert g["temperature"].shards == (4, 1, 8, 8) and g["temperature"].chunks == (2, 1, 4, 4)
    np.testing.assert_array_equal(xr.open_zarr(out).temperature.values, data["temperature"])


def test_shards_need_v3_and_a_multiple_of_the_chunk(tmp_path):
    with pytest.raises(ConfigError, match="zarr_format=3"):
        _write(tmp_path / "a.zarr", 2, shards=(4, 1, 8, 10))
    with pytest.raises(ConfigError, match="not a multiple"):
        _write(tmp_path / "b.zarr", 3, chunks=(2, 1, 4, 4), shards=(3, 1, 8, 8))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("spec", [(64, 8, 64, 128), (4, 8, 64, 5)])
def test_chunks_and_shards_are_clamped_to_the_array_however_they_are_given(tmp_path, zarr_format, spec):
    """A (time, level, latitude, longitude) chunk larger than an array is clamped to the array's shape for every
    variable: the 4-D level field takes it per dimension (as many entries as its dims), the 3-D and 2-D fields in
    (time, level, lat, lon) terms. Before, only the latter were clamped (64 x 128 chunks on a 61 x 120 grid padded
    every chunk of the level fields). Expected chunks: min(spec, shape) per dimension, from the arrays' shapes."""
    out = tmp_path / "s.zarr"
    shards = None if zarr_format == 2 else tuple(2 * c for c in spec)
    data = _write(out, zarr_format, chunks=spec, shards=shards)
    g = zarr.open_group(out, mode="r")
    picks = {"temperature": (0, 1, 2, 3), "t2m": (0, 2, 3), "orography": (2, 3)}  # spec entries of each dims
    for name, ref in data.items():
        want = tuple(min(spec[i], n) for i, n in zip(picks[name], ref.shape))
        assert g[name].shape == ref.shape and g[name].chunks == want, name
        if shards is not None and name != "orography":  # shards: clamped too, then whole chunks
            want_shard = tuple(-(-min(2 * spec[i], n) // c) * c for i, n, c in zip(picks[name], ref.shape, want))
            assert g[name].shards == want_shard, name
        np.testing.assert_array_equal(g[name][...], ref)


def test_a_chunk_spec_of_the_wrong_length_or_below_one_is_refused(tmp_path):
    times, lat, lon = _coords()
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.set_time(times)
        w.set_grid(lat, lon)
        w.set_levels([850, 700, 500], level_type="pressure")
        dims = ("time", "level", "latitude", "longitude")
        with pytest.raises(ConfigError, match=r"variable 'x': chunks \[4, 1, 7\]: expected 4 integers >= 1"):
            w.add_variable("x", dims, chunks=(4, 1, 7))
        with pytest.raises(ConfigError, match=r"variable 'x': chunks \[0, 1, 7, 12\]"):
            w.add_variable("x", dims, chunks=(0, 1, 7, 12))
        with pytest.raises(ConfigError, match=r"variable 'y': chunks \[4, 7, 12.5\]: expected 3 integers >= 1 .* or 4"):
            w.add_variable("y", ("time", "latitude", "longitude"), chunks=(4, 7, 12.5))
        w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 7, 12))  # per dimension: fine
        w.write("t2m", np.ones((NT, NY, NX)), 0)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_round_trips(tmp_path, codec, zarr_format):
    out = tmp_path / "c.zarr"
    data = _write(out, zarr_format, codec=codec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.lz4 in v3 reads with a ZarrUserWarning, as documented
        g = zarr.open_group(out, mode="r")
        got = g["temperature"][...]
        codecs = [type(c).__name__.lower() for c in g["temperature"].compressors]
    np.testing.assert_array_equal(got, data["temperature"])
    assert (codecs == []) == (codec == "none")
    if codec != "none":
        assert codec.split("-")[0] in codecs[0] or "blosc" in codecs[0]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_mid_write_leaves_no_store(tmp_path, exc):
    out = tmp_path / "s.zarr"
    times, lat, lon = _coords()
    with pytest.raises(type(exc)):
        with StoreWriter(out) as w:
            w.set_time(times)
            w.set_grid(lat, lon)
            w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(2, 1, 7, 12))
            w.write("t2m", np.zeros((2, NY, NX), np.float32), 0)
            assert w.tmp.is_dir()
            raise exc
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_sigint_waits_for_the_zarr_write_then_interrupts(tmp_path, monkeypatch):
    """Ctrl-C during a block write: zarr's chunk writes (on its own thread) finish, then KeyboardInterrupt."""
    out = tmp_path / "s.zarr"
    times, lat, lon = _coords()
    real = zarr.Array.__setitem__
    log = []

    def interrupted_write(self, key, value):
        if self.ndim == 3:  # a data block, not a coordinate
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the write is pending
            log.append("signal sent")
        real(self, key, value)
        log.append("write finished")

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out) as w:
            w.set_time(times)
            w.set_grid(lat, lon)
            w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(2, 1, 7, 12))
            monkeypatch.setattr(zarr.Array, "__setitem__", interrupted_write)
            w.write("t2m", np.zeros((2, NY, NX), np.float32), 0)
            log.append("went on after the interrupt")
    assert log == ["signal sent", "write finished"]
    assert signal.getsignal(signal.SIGINT) is before
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_creating_the_store_leaves_nothing(tmp_path, monkeypatch):
    real = zarr.open_group

    def interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt  # as Ctrl-C held back until the group's metadata was written

    monkeypatch.setattr(zarr, "open_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        StoreWriter(tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


def test_a_second_sigint_stops_at_once(capsys):
    """The first Ctrl-C waits for the block (and says so); a second one interrupts it at once, and only once."""
    before = signal.getsignal(signal.SIGINT)
    log = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here: held back
            log.append("after the first")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(200):  # a long block: the second interrupt arrives here
                time.sleep(0.01)
            log.append("block finished")
    assert log == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is before
    assert "Ctrl-C again" in capsys.readouterr().err


def test_an_ignored_sigint_stays_ignored_and_silent(capsys):
    """A writer started with SIGINT ignored (nohup, a script's background job): no handler is installed, nothing is
    printed, the block runs on (it printed "finishing ... Ctrl-C again to stop at once" and then dropped the signal)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        log = []
        with sigint_deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            log.append("block finished")
        assert log == ["block finished"] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert capsys.readouterr().err == ""
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigint_deferred_outside_the_main_thread_does_nothing():
    done = []

    def work():
        with sigint_deferred():  # signal.signal would raise ValueError here
            done.append(True)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert done == [True]
    with sigint_deferred():  # no signal: nothing raised
        done.append(True)
    assert done == [True, True]


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="already exists") as e:
        StoreWriter(out)
    assert str(out) in str(e.value)
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()  # an empty directory may be replaced
    _write(out, overwrite=True)
    data = _write(out, overwrite=True, codec="zstd")  # and so may a store
    np.testing.assert_array_equal(xr.open_zarr(out).t2m.values, data["t2m"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_overwrite_replaces_only_a_zarr_store(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    for out in (folder, afile):
        with pytest.raises(ConfigError, match="not a zarr store") as e:
            StoreWriter(out, overwrite=True)
        assert str(out) in str(e.value)
    assert (folder / "precious.txt").read_text() == "keep me" and afile.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes"]  # no temporary store left


def test_an_output_holding_or_inside_a_source_is_refused(tmp_path):
    src = tmp_path / "victim" / "data.zarr"
    _write(src)
    (tmp_path / "victim" / "notes.txt").write_text("keep me")
    for out in (tmp_path / "victim", src, src / "sub"):
        with pytest.raises(ConfigError, match="source"):
            StoreWriter(out, overwrite=True, sources=[src])
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == ["data.zarr", "notes.txt"]
    xr.open_zarr(src)  # intact


def test_unaligned_and_incomplete_writes_are_refused(tmp_path):
    out = tmp_path / "s.zarr"
    times, lat, lon = _coords()
    w = StoreWriter(out)
    w.set_time(times)
    w.set_grid(lat, lon)
    w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 1, 7, 12))
    with pytest.raises(ConfigError, match="not aligned"):
        w.write("t2m", np.zeros((4, NY, NX), np.float32), 2)
    with pytest.raises(SchemaError, match="outside"):
        w.write("t2m", np.zeros((4, NY, NX), np.float32), 8)
    w.write("t2m", np.zeros((4, NY, NX), np.float32), 0)
    w.write("t2m", np.zeros((2, NY, NX), np.float32), 8)  # the last, partial chunk may be short
    with pytest.raises(StoreError, match="1 of 3 write units never written"):
        w.commit()
    assert not out.exists() and not w.tmp.exists()


def test_bad_dimensions_and_coordinates(tmp_path):
    times, lat, lon = _coords()
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.set_time(times)
        w.set_grid(lat, lon)
        with pytest.raises(SchemaError, match="ordered subset"):
            w.add_variable("x", ("latitude", "time", "longitude"))
        with pytest.raises(SchemaError, match="ordered subset"):
            w.add_variable("x", ("time", "depth", "latitude", "longitude"))
        with pytest.raises(StoreError, match="set the 'level' coordinate"):
            w.add_variable("x", ("time", "level", "latitude", "longitude"))
        with pytest.raises(ConfigError, match="level_type"):
            w.set_levels([1, 2], level_type="sigma")
        with pytest.raises(SchemaError, match="duplicate"):
            w.set_levels([1, 1], level_type="model")
        w.add_variable("t2m", ("time", "latitude", "longitude"))
        w.write("t2m", np.ones((NT, NY, NX)), 0)
    with pytest.raises(SchemaError, match="monotonic"):
        StoreWriter(tmp_path / "t.zarr").set_grid([0.0, 10.0, 5.0], [0.0, 1.0])
    with pytest.raises(SchemaError, match="outside"):
        StoreWriter(tmp_path / "u.zarr").set_grid([0.0, 100.0], [0.0, 1.0])


def test_time_encoding():
    t = np.datetime64("1979-01-01T00", "ns") + np.arange(3) * np.timedelta64(6, "h")
    v, units = encode_time(t)
    assert units == "hours since 1979-01-01" and v.dtype == np.int64 and v.tolist() == [0, 6, 12]
    v, units = encode_time(np.array(["2000-01-01T00:30", "2000-01-01T01:00"], dtype="datetime64[ns]"))
    assert units == "minutes since 1979-01-01" and v[1] - v[0] == 30
    v, units = encode_time(np.array(["1970-01-01T00:00"], dtype="datetime64[ns]"))
    assert units == "hours since 1979-01-01" and v[0] < 0
    with pytest.raises(SchemaError, match="strictly increasing"):
        encode_time(t[::-1])
    with pytest.raises(SchemaError, match="datetime64"):
        encode_time(np.arange(3))
    off = t.copy()
    off[2] += np.timedelta64(26, "ns")  # a float time encoding's rounding
    with pytest.raises(SchemaError, match=r"whole seconds; time\[2\] = 1979-01-01T12:00:00.000000026 is not"):
        encode_time(off)


def test_parse_ints_and_chunks_for():
    assert parse_ints("6,1,64,128", 4, "--chunks") == (6, 1, 64, 128)
    for bad in ("6,1,64", "a,b,c,d", "6,0,64,128"):
        with pytest.raises(ConfigError, match="--chunks"):
            parse_ints(bad, 4, "--chunks")
    assert chunks_for(("time", "level", "latitude", "longitude"), (100, 5, 721, 1440)) == (6, 1, 64, 128)
    assert chunks_for(("latitude", "longitude"), (61, 120), (6, 1, 64, 128)) == (61, 120)
    assert chunks_for(("time", "field", "level", "latitude", "longitude"), (9, 7, 5, 10, 20), (8, 2, 4, 4)) == (
        8, 7, 2, 4, 4)  # fmt: skip


def test_progress_bar_draws_only_when_asked():
    import io

    from fastload._progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()  # not a terminal: nothing drawn
    with Progress(100, "copy", "B", stream=quiet) as bar:
        bar.update(50)
    assert quiet.getvalue() == "" and bar.done == 50
    tty = Tty()
    with Progress(2000, "copy", "B", stream=tty) as bar:
        bar.update(2000)
    text = tty.getvalue()
    assert text.startswith("\rcopy |") and "100%" in text and "2 kB/2 kB" in text and text.endswith("\n")
    silenced = Tty()
    with Progress(10, "x", enabled=False, stream=silenced) as bar:
        bar.update(10)
    assert silenced.getvalue() == ""


@pytest.mark.parametrize("way", ["exchange", "two renames"])
def test_a_failed_rename_puts_the_old_store_back(tmp_path, monkeypatch, way):
    """The move of the finished store fails (disk full): the old store stays at OUT, whole, and nothing is left
    beside it; both where the stores are exchanged in one step (renameat2) and where they are renamed in turn."""
    import ctypes
    import errno

    from fastload import _write_atomic

    out = tmp_path / "s.zarr"
    data = _write(out)
    real = os.rename
    if way == "exchange":
        if _write_atomic._renameat2() is None:
            pytest.skip("no renameat2 here")

        def exchange(old, new, flags):
            ctypes.set_errno(errno.ENOSPC)
            return -1

        monkeypatch.setattr(_write_atomic, "_renameat2", lambda: (exchange, "a failing renameat2"))
    else:
        monkeypatch.setattr(_write_atomic, "_renameat2", lambda: None)

    def rename(src, dst):
        if ".tmp-" in str(src) and os.fspath(dst) == str(out):  # the finished store's move to OUT, not the others
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(StoreError, match="cannot (move|exchange)"):
        _write(out, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(xr.open_zarr(out).t2m.values, data["t2m"])  # the old store, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_level_units_are_the_types_by_default_none_writes_none_and_a_copy_invents_nothing(tmp_path):
    """Review r3 W4: ``units or default_units`` labelled levels of unknown units (85000 Pa) 'hPa'. The level type's
    units are written only when units are not passed (synth); ``units=None`` writes none. ``default_attrs=False``
    (rechunk's copy) writes only the attributes given, and level_type only where the name does not say it."""
    times, lat, lon = _coords()

    def levels(name, default_attrs=True, **kw):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.zarr"
        dim_names = {"level": name} if name != "level" else None
        with StoreWriter(out, default_attrs=default_attrs, dim_names=dim_names) as w:
            w.set_time(times)
            w.set_grid(lat, lon, lat_attrs={"units": "degrees_north"})
            w.set_levels([85000, 50000], level_type="pressure", **kw)
        ds = xr.open_zarr(out)
        return ds[name].attrs, ds.latitude.attrs, ds.time.attrs, ds.attrs

    lev, la, t, root = levels("level")
    assert lev == {"level_type": "pressure", "units": "hPa", "long_name": "pressure level", "positive": "down"}
    assert la["long_name"] == "latitude" and t["standard_name"] == "time" and root["Conventions"] == "CF-1.8"
    assert levels("level", units=None)[0] == {"level_type": "pressure", "long_name": "pressure level",
                                              "positive": "down"}  # fmt: skip
    assert levels("level", units="Pa")[0]["units"] == "Pa"
    lev, la, t, root = levels("level", default_attrs=False, units=None)
    assert lev == {"level_type": "pressure"}  # a level named 'level' says nothing: fastload would read model levels
    assert la == {"units": "degrees_north"} and t == {} and "Conventions" not in root
    assert root["fastload_layout"] == "per_variable" and root["latitude_order"] == "descending"
    assert levels("pressure_level", default_attrs=False, units=None)[0] == {}  # the name says pressure
    assert levels("plev", default_attrs=False, units="Pa")[0] == {"units": "Pa"}  # so do its units
