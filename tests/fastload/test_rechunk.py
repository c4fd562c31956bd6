"""fastload rechunk: either layout in, per-variable layout out, same values, chunking as asked or recommended."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import fastload.rechunk as rechunk_mod
from fastload.cli import main as cli
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError, StoreError
from fastload.inspect import recommend_chunks
from fastload.rechunk import chunks_from_config, rechunk
from fastload.store import open_store
from fastload.synth import synthesize
from fastload.write import DEFAULT_CHUNKS

HOURS = 16


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("rechunk")
    return {
        "atmorep": synthesize(d / "a.zarr", "tiny", hours=HOURS, layout="atmorep", progress=False),
        "per_variable": synthesize(d / "p.zarr", "tiny", hours=HOURS, zarr_format=3, progress=False),
    }


def _reference(path):
    """Every field of a store as numpy, read with zarr-python (independent of fastload's reader)."""
    g = zarr.open_group(path, mode="r")
    if "data" in g:
        out = {}
        for arr in ("data", "data_sfc"):
            for i, name in enumerate(g[arr].attrs["fields"]):
                out[name] = g[arr][:, i]
        return out
    return {n: g[n][...] for n in g.array_keys() if n not in ("time", "level", "latitude", "longitude")}


CONFIG = SamplingConfig(fields=(
    FieldConfig(name="temperature", levels=(96, 137), num_tokens=(2, 2, 4), token_size=(3, 9, 9)),
    FieldConfig(name="t2m", num_tokens=(2, 2, 4), token_size=(3, 9, 9)),
))  # fmt: skip


@pytest.mark.parametrize("layout", ["atmorep", "per_variable"])
def test_values_round_trip_with_the_given_chunking(tmp_path, stores, layout):
    src = stores[layout]
    out = rechunk(src, tmp_path / "r.zarr", chunks=(4, 2, 16, 32), progress=False)
    ds = xr.open_zarr(out)
    ref = _reference(src)
    assert set(ds.data_vars) == set(ref)
    for name, values in ref.items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
    np.testing.assert_allclose(ds.latitude.values, np.linspace(90, -90, 61))
    np.testing.assert_array_equal(ds.level.values, [96, 105, 114, 123, 137])
    assert ds.level.attrs["level_type"] == "model"
    assert ds.temperature.attrs["units"] == "K" and ds.temperature.attrs["long_name"] == "air temperature"
    assert ds.time.size == HOURS and ds.attrs["rechunked_from"] == str(src)
    g = zarr.open_group(out, mode="r")
    assert g["temperature"].chunks == (4, 2, 16, 32) and g["t2m"].chunks == (4, 16, 32)
    assert g.metadata.zarr_format == open_store(str(src)).zarr_format  # default: the source's format


def test_sharded_v3_output(tmp_path, stores):
    out = rechunk(stores["atmorep"], tmp_path / "s.zarr", chunks=(2, 1, 32, 64), shards=(4, 1, 64, 128),
                  zarr_format=3, fields=["velocity_u", "t2m"], progress=False)  # fmt: skip
    g = zarr.open_group(out, mode="r")
    assert g["velocity_u"].shards == (4, 1, 64, 128) and g["velocity_u"].chunks == (2, 1, 32, 64)
    assert set(xr.open_zarr(out).data_vars) == {"velocity_u", "t2m"}
    ref = _reference(stores["atmorep"])
    np.testing.assert_array_equal(g["velocity_u"][...], ref["velocity_u"])


def test_config_picks_the_recommended_chunking(tmp_path, stores):
    src = open_store(str(stores["atmorep"]))
    recs = recommend_chunks(src, CONFIG)
    per_field = chunks_from_config(src, CONFIG, default=(4, 1, 32, 32))
    t, _, l_, y, x = recs["data"].chunks
    assert per_field["temperature"] == (t, l_, y, x)
    ts, _, ys, xs = recs["data_sfc"].chunks
    assert per_field["t2m"][0] == ts and per_field["t2m"][2:] == (ys, xs)
    assert per_field["velocity_u"] == (4, 1, 32, 32)  # not sampled by the config: the default
    out = rechunk(stores["atmorep"], tmp_path / "c.zarr", config=CONFIG, chunks=(4, 1, 32, 32), progress=False)
    g = zarr.open_group(out, mode="r")
    assert g["temperature"].chunks == tuple(min(c, n) for c, n in zip(per_field["temperature"], (HOURS, 5, 61, 120)))
    assert g["velocity_u"].chunks == (4, 1, 32, 32)


def test_each_source_chunk_is_decoded_once(tmp_path, stores, monkeypatch):
    src = open_store(str(stores["atmorep"]))
    reads = []
    real = type(src).read_chunk
    monkeypatch.setattr(type(src), "read_chunk", lambda self, a, c, out=None: reads.append((a, tuple(c))) or real(self, a, c, out))
    rechunk(src, tmp_path / "r.zarr", chunks=(6, 1, 32, 64), progress=False)  # source time chunks of 8
    assert reads.count(("level", (0,))) == 1  # the level coordinate, read once as stored (its dtype kept)
    reads = [r for r in reads if r[0] in src.arrays]  # the fields' arrays
    assert len(reads) == len(set(reads))
    expected = sum(int(np.prod(src.arrays[a].grid_shape)) for a in src.arrays)
    assert len(reads) == expected


def test_memory_is_bounded_by_one_block(tmp_path, stores, monkeypatch):
    spans = []
    real = rechunk_mod._read_block
    monkeypatch.setattr(rechunk_mod, "_read_block", lambda s, a, t0, t1, p: spans.append(t1 - t0) or real(s, a, t0, t1, p))
    out = rechunk(stores["per_variable"], tmp_path / "r.zarr", chunks=(2, 1, 61, 120), max_block_bytes=1, progress=False)
    assert max(spans) == 2  # a tight budget: one output time chunk at a time
    np.testing.assert_array_equal(xr.open_zarr(out).t2m.values, _reference(stores["per_variable"])["t2m"])


def test_interrupted_rechunk_leaves_nothing(tmp_path, stores, monkeypatch):
    calls = {"n": 0}
    real = rechunk_mod._read_block

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(rechunk_mod, "_read_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        rechunk(stores["atmorep"], tmp_path / "r.zarr", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_input(tmp_path, stores):
    with pytest.raises(ConfigError, match="ozone"):
        rechunk(stores["atmorep"], tmp_path / "r.zarr", fields=["ozone"])
    bad = SamplingConfig(fields=(FieldConfig(name="ozone", num_tokens=(2, 2, 4), token_size=(3, 9, 9)),))
    with pytest.raises(ConfigError, match="ozone"):
        rechunk(stores["atmorep"], tmp_path / "r.zarr", config=bad)
    with pytest.raises(ConfigError, match="samples_per_window=4 .* config"):
        rechunk(stores["atmorep"], tmp_path / "r.zarr", samples_per_window=4)
    (tmp_path / "taken").mkdir()
    with pytest.raises(StoreError, match="already exists"):
        rechunk(stores["atmorep"], tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _filled_store(path, fmt, dtype, fill, attrs=None):
    """A (time, latitude, longitude) store written with zarr-python; the second time chunk is never written."""
    g = zarr.open_group(path, mode="w", zarr_format=fmt)

    def arr(name, dims, values=None, attributes=None, **kw):
        a_attrs = dict(attributes or {})
        if fmt == 2:
            a_attrs["_ARRAY_DIMENSIONS"] = list(dims)
        a = g.create_array(name, attributes=a_attrs, **({"dimension_names": dims} if fmt == 3 else {}), **kw)
        if values is not None:
            a[...] = values
        return a

    arr("time", ("time",), np.arange(4) * 6, shape=(4,), dtype="i8", attributes={"units": "hours since 2000-01-01"})
    arr("latitude", ("latitude",), np.linspace(-10, 10, 8), shape=(8,), dtype="f8")
    arr("longitude", ("longitude",), np.linspace(100, 120, 8), shape=(8,), dtype="f8")
    v = arr("v", ("time", "latitude", "longitude"), shape=(4, 8, 8), chunks=(2, 4, 4), dtype=dtype, fill_value=fill,
            attributes=attrs)  # fmt: skip
    v[:2] = (np.arange(2 * 64).reshape(2, 8, 8) % 50).astype(dtype)  # zeros and other values
    if fmt == 2:
        zarr.consolidate_metadata(path)


@pytest.mark.parametrize("out_fmt", [2, 3])
@pytest.mark.parametrize(
    "fmt, dtype, fill, attrs",
    [(2, "i2", -999, None), (2, "f8", 0.0, None), (2, "i2", None, None), (3, "i2", -999, {"_FillValue": -999}),
     (3, "i2", -999, None)],
)  # fmt: skip
def test_xarray_reads_the_copy_as_the_source(tmp_path, fmt, dtype, fill, attrs, out_fmt):
    _filled_store(tmp_path / "s.zarr", fmt, dtype, fill, attrs)
    rechunk(str(tmp_path / "s.zarr"), tmp_path / "r.zarr", chunks=(4, 1, 8, 8), zarr_format=out_fmt, progress=False)
    src = xr.open_zarr(tmp_path / "s.zarr", consolidated=fmt == 2).v
    out = xr.open_zarr(tmp_path / "r.zarr").v
    assert out.dtype == src.dtype
    np.testing.assert_array_equal(out.values, src.values)  # NaN where the source reads NaN
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "r.zarr" / "v")[...],
                                  zarr.open_array(tmp_path / "s.zarr" / "v")[...])  # fmt: skip


def test_overwrite_never_deletes_the_source(tmp_path, stores):
    victim = tmp_path / "victim"
    shutil.copytree(stores["per_variable"], victim / "data.zarr")
    (victim / "notes.txt").write_text("keep me")
    for out in (victim, victim / "data.zarr"):
        with pytest.raises(ConfigError, match="source"):
            rechunk(str(victim / "data.zarr"), out, overwrite=True, progress=False)
    assert sorted(p.name for p in victim.iterdir()) == ["data.zarr", "notes.txt"]
    assert _reference(victim / "data.zarr").keys() == _reference(stores["per_variable"]).keys()


def test_cli(tmp_path, stores, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["rechunk", "--help"])
    assert e.value.code == 0 and "--config" in capsys.readouterr().out
    cfg = tmp_path / "sampling.toml"
    cfg.write_text(CONFIG.to_toml())
    out = tmp_path / "r.zarr"
    assert cli(["rechunk", str(stores["atmorep"]), str(out), "--config", str(cfg), "-q"]) == 0
    assert "temperature" in capsys.readouterr().out
    assert set(xr.open_zarr(out).data_vars) == {"temperature", "velocity_u", "t2m", "total_precip"}
    assert cli(["rechunk", str(tmp_path / "missing.zarr"), str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert "missing.zarr" in err and "Traceback" not in err
    assert cli(["rechunk", str(stores["atmorep"]), str(tmp_path / "y.zarr"), "--chunks", "1,2"]) == 2
    assert "--chunks" in capsys.readouterr().err
    # several samples per time window: the chunking recommended for that plan
    out_w = tmp_path / "w.zarr"
    assert cli(["rechunk", str(stores["atmorep"]), str(out_w), "--config", str(cfg), "--samples-per-window", "8",
                "--fields", "temperature", "-q"]) == 0
    want = chunks_from_config(open_store(str(stores["atmorep"])), CONFIG, samples_per_window=8)["temperature"]
    assert zarr.open_group(out_w, mode="r")["temperature"].chunks == tuple(
        min(c, n) for c, n in zip(want, (HOURS, 5, 61, 120)))
    with pytest.raises(SystemExit):  # a window size needs a config to recommend for
        cli(["rechunk", str(stores["atmorep"]), str(tmp_path / "z.zarr"), "--samples-per-window", "4"])
    assert "--samples-per-window" in capsys.readouterr().err


@pytest.mark.parametrize("with_config", [False, True])
def test_chunks_are_clamped_to_every_array(tmp_path, stores, with_config):
    """The default (6, 1, 64, 128) on the tiny 61 x 120 grid: every array's chunks are min(default, its shape), the
    level fields' too (they got 64 x 128, padding every chunk, while the surface fields were clamped), and with a
    config for the fields it does not sample (the audit's velocity_u)."""
    out = rechunk(stores["atmorep"], tmp_path / "r.zarr", config=CONFIG if with_config else None, progress=False)
    g = zarr.open_group(out, mode="r")
    names = ("velocity_u", "total_precip") if with_config else ("temperature", "velocity_u", "t2m", "total_precip")
    for name in names:
        a = g[name]
        spec = DEFAULT_CHUNKS if a.ndim == 4 else (DEFAULT_CHUNKS[0], *DEFAULT_CHUNKS[2:])
        assert a.chunks == tuple(min(c, n) for c, n in zip(spec, a.shape)), name
        assert a.chunks[-2:] == (61, 120), name


def _packed(path, fmt):
    """q packed by xarray as int16 (scale_factor 0.001, add_offset 2.5, _FillValue -32768 where q is NaN), then a
    ``missing_value`` of -1 added (xarray masks both); t a plain float32 field with NaN. Returns the store's path."""
    rng = np.random.default_rng(1)
    q = rng.normal(2.0, 0.5, (8, 12, 16))
    q[:, 3:5, 4:9] = np.nan  # -> the packed _FillValue
    q[0, 0, :3] = 2.499  # -> packed -1, the missing_value
    t = (rng.normal(280.0, 5.0, q.shape)).astype(np.float32)
    t[1, 6:8, 10:12] = np.nan
    ds = xr.Dataset({"q": (("time", "latitude", "longitude"), q, {"units": "kg kg-1", "long_name": "humidity"}),
                     "t": (("time", "latitude", "longitude"), t, {"units": "K"})},
                    coords={"time": pd.date_range("2000-01-01", periods=8, freq="6h"),
                            "latitude": np.linspace(82.5, -82.5, 12), "longitude": np.arange(16) * 22.5})  # fmt: skip
    enc = {"q": {"dtype": "int16", "scale_factor": 0.001, "add_offset": 2.5, "_FillValue": -32768}}
    ds.to_zarr(path, zarr_format=fmt, consolidated=fmt == 2, encoding=enc)
    a = zarr.open_array(path / "q", mode="r+")
    assert (a[0, 0, :3] == -1).all() and a.dtype == np.int16
    a.attrs["missing_value"] = -1
    if fmt == 2:
        zarr.consolidate_metadata(path)
    return path


def _xr_decoded(path, fmt):
    with warnings.catch_warnings():  # "multiple fill values ... decoding all values to NaN": what we compare with
        warnings.simplefilter("ignore", xr.SerializationWarning)
        return xr.open_zarr(path, consolidated=fmt == 2).load()


@pytest.mark.parametrize("out_fmt", [2, 3])
@pytest.mark.parametrize("fmt", [2, 3])
def test_unpack_decodes_packed_fields_as_xarray_does(tmp_path, fmt, out_fmt):
    """``rechunk(unpack=True)``: the copy of a packed field is float32 and equals xarray's decoding of the source
    exactly (cast to float32), NaN wherever xarray masks (the _FillValue and the missing_value), without the packing
    attributes; a plain field is copied as it is; fastload samples the copy (the source is refused as packed), and
    what it extracts equals xarray's values."""
    from fastload import extract

    src = _packed(tmp_path / "p.zarr", fmt)
    ref = _xr_decoded(src, fmt)
    assert ref.q.dtype == np.float64 and np.isnan(ref.q.values).sum() == 8 * 2 * 5 + 3
    out = rechunk(str(src), tmp_path / "u.zarr", unpack=True, chunks=(4, 1, 8, 8), zarr_format=out_fmt,
                  progress=False)  # fmt: skip
    got = xr.open_zarr(out)
    assert got.q.dtype == np.float32 and got.t.dtype == np.float32
    np.testing.assert_array_equal(got.q.values, ref.q.values.astype(np.float32))  # NaN at the same places
    np.testing.assert_array_equal(got.t.values, ref.t.values)
    assert got.q.attrs == {"units": "kg kg-1", "long_name": "humidity"}
    raw = zarr.open_array(out / "q", mode="r")
    assert raw.dtype == np.float32 and not {"scale_factor", "add_offset", "missing_value", "_FillValue"} & set(raw.attrs)

    cfg = SamplingConfig(fields=(FieldConfig(name="q", num_tokens=(2, 2, 2), token_size=(2, 3, 4),
                                             normalization="none"),))  # fmt: skip
    with pytest.raises(ConfigError, match=r"fields\.q: stored packed .* fastload rechunk STORE OUT --unpack"):
        open_store(str(src)).check(cfg)
    t0, y0, x0 = 0, 2, 3
    data = extract(open_store(str(out)), cfg, np.array([[t0, y0, x0]]))["q"].data  # (B, 1, nt, ny, nx, tt, ty, tx)
    box = ref.q.values[t0:t0 + 4, y0:y0 + 6, x0:x0 + 8].astype(np.float32)
    want = box.reshape(2, 2, 2, 3, 2, 4).transpose(0, 2, 4, 1, 3, 5)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(data[0, 0], want)


def test_unpack_on_the_cli_and_without_it(tmp_path, capsys):
    """``fastload rechunk --unpack`` writes the decoded copy; without it the packing is copied unchanged."""
    src = _packed(tmp_path / "p.zarr", 2)
    ref = _xr_decoded(src, 2)
    assert cli(["rechunk", str(src), str(tmp_path / "u.zarr"), "--unpack", "-q"]) == 0
    assert "q                    float32" in capsys.readouterr().out
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "u.zarr").q.values, ref.q.values.astype(np.float32))
    assert cli(["rechunk", str(src), str(tmp_path / "k.zarr"), "-q"]) == 0
    kept = zarr.open_array(tmp_path / "k.zarr" / "q", mode="r")
    assert kept.dtype == np.int16 and kept.attrs["scale_factor"] == 0.001
    with pytest.raises(SystemExit):
        cli(["rechunk", "--help"])
    assert "--unpack" in capsys.readouterr().out


def test_unpack_values_follows_cf_order():
    """Masked first (in stored values), then multiplied, then added, in float64."""
    from fastload.rechunk import unpack_values

    v = np.array([-1, 0, 7, -32768], dtype=np.int16)
    got = unpack_values(v, scale_factor=0.1, add_offset=3.0, missing=(np.int16(-32768), -1))
    want = np.array([np.nan, 3.0, 7 * 0.1 + 3.0, np.nan])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(unpack_values(v, scale_factor=2.0), [-2.0, 0.0, 14.0, -65536.0])


def test_an_atmorep_arrays_missing_value_reaches_each_field_of_the_copy(tmp_path, stores):
    """An AtmoRep array's ``missing_value`` holds for every field along its field axis: the per-variable copy
    carries it on each field, so xarray masks the same values in the copy as in the source (the copy lost it
    before e103051 and xarray masked nothing there)."""
    src = tmp_path / "a.zarr"
    shutil.copytree(stores["atmorep"], src)
    g = zarr.open_group(str(src), mode="r+")
    marker = -999.0
    sfc = g["data_sfc"]
    block = sfc[0, 0]
    block[0, :3] = marker
    sfc[0, 0] = block
    sfc.attrs["missing_value"] = marker
    zarr.consolidate_metadata(str(src))
    out = rechunk(src, tmp_path / "r.zarr", progress=False)
    name = g["data_sfc"].attrs["fields"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's notes on the AtmoRep source's layout
        masked_src = int(np.isnan(xr.open_zarr(src)["data_sfc"].values[:, 0]).sum())
    copy = xr.open_zarr(out)[name]
    assert copy.attrs.get("missing_value", copy.encoding.get("missing_value")) == marker
    assert int(np.isnan(copy.values).sum()) == masked_src == 3
