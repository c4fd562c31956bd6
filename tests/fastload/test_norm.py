"""fastload.norm: the Normalizer hands out the right slices for chosen months and levels, reads only those chunks
(counted through a zarr store wrapper), guards zero std, and rejects coefficient stores that do not fit the data."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.storage

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError, SchemaError, StoreError, StoreNotFoundError
from fastload.norm import Normalizer, months_of, normalize
from fastload.stats import StatsConfig, compute_stats
from fastload.store import open_store

from .test_stats import write_per_variable


class CountingStore(zarr.storage.WrapperStore):
    """A zarr store that records every key read."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []
        self._lock = threading.Lock()

    async def get(self, key, prototype, byte_range=None):
        with self._lock:
            self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("norm")
    data, time = write_per_variable(d / "d.zarr", nt=40, start="2000-03-20", freq="12h")  # March and April
    norm = compute_stats(str(d / "d.zarr"), d / "n.zarr", StatsConfig(transforms={"precip": "log1p"}, progress=False))
    return d, data, time, norm


def test_months_of():
    t = pd.date_range("1999-11-30T18:00", periods=50, freq="7D").values
    np.testing.assert_array_equal(months_of(t), pd.DatetimeIndex(t).month.values - 1)
    assert months_of(t.astype("datetime64[h]")).dtype == np.int32
    with pytest.raises(SchemaError, match="NaT"):
        months_of(np.array(["2000-01-01", "NaT"], dtype="datetime64[ns]"))
    with pytest.raises(SchemaError, match="datetime64"):
        months_of(np.arange(3))


def test_coefficients_are_the_stored_slices(stores):
    d, _, _, norm = stores
    n = Normalizer(norm)
    g = zarr.open_group(norm, mode="r")["temperature"]
    # months and levels in the order asked (the gather's month_of indexes into this order)
    mean, std = n.coefficients("temperature", "local", levels=[114, 96], months=[3, 2])
    assert mean.shape == std.shape == (2, 2, 9, 12) and mean.dtype == np.float32 and mean.flags.c_contiguous
    ref = g["local_mean"][...]
    np.testing.assert_array_equal(mean[0, 0], ref[3, 2])
    np.testing.assert_array_equal(mean[1, 1], ref[2, 0])
    np.testing.assert_array_equal(std[0, 1], g["local_std"][3, 0])
    gm, gs = n.coefficients("temperature", "global", levels=[105], months=[2])
    assert gm.shape == (1, 1, 1, 1)
    np.testing.assert_allclose(gm[0, 0, 0, 0], g["global_mean"][2, 1], rtol=1e-7)
    np.testing.assert_allclose(gs[0, 0, 0, 0], g["global_std"][2, 1], rtol=1e-7)
    # all levels when none are given; "none" gives M = 0
    assert n.coefficients("temperature", "global", months=[2, 3])[0].shape == (2, 3, 1, 1)
    m0, s0 = n.coefficients("temperature", "none", levels=[96, 105])
    assert m0.shape == s0.shape == (0, 2, 1, 1)
    # a field without levels
    pm, _ = n.coefficients("precip", "local", months=[2])
    assert pm.shape == (1, 1, 9, 12)
    assert n.transform("precip") == "log1p" and n.transform("temperature") is None
    assert n.months_present("temperature") == (2, 3)
    assert n.levels("precip") is None and n.levels("temperature").tolist() == [96.0, 105.0, 114.0]


def test_reads_only_the_requested_months_and_levels(stores):
    _, _, _, norm = stores
    counting = CountingStore(zarr.storage.LocalStore(norm, read_only=True))
    n = Normalizer(counting)
    n.coefficients("temperature", "local", levels=[105], months=[3])
    data_keys = {k for k in counting.keys if "/local_" in k and not k.endswith("zarr.json")}
    assert data_keys == {"temperature/local_mean/c/3/1/0/0", "temperature/local_std/c/3/1/0/0"}
    assert not any("precip" in k for k in counting.keys)
    before = len(counting.keys)
    n.coefficients("temperature", "local", levels=[105], months=[3])  # cached: nothing read again
    n.coefficients("temperature", "global", levels=[96], months=[2])
    assert len(counting.keys) == before
    n.clear_cache()
    n.coefficients("temperature", "local", levels=[105], months=[3])
    assert len(counting.keys) > before


def test_thread_safe_and_read_once(stores):
    _, _, _, norm = stores
    counting = CountingStore(zarr.storage.LocalStore(norm, read_only=True))
    n = Normalizer(counting)
    results, errors = [], []

    def work():
        try:
            results.append(n.coefficients("temperature", "local", levels=[96, 114], months=[2, 3]))
        except Exception as e:  # re-raised below on the test thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for m, s in results[1:]:
        np.testing.assert_array_equal(m, results[0][0])
        np.testing.assert_array_equal(s, results[0][1])
    chunk_reads = [k for k in counting.keys if "/local_" in k and "/c/" in k]
    assert len(chunk_reads) == len(set(chunk_reads)) == 8  # 2 stats x 2 months x 2 levels, each once


def test_std_guard(tmp_path):
    # a constant field: std 0 everywhere; and a cell without data
    time = pd.date_range("2000-01-01", periods=8, freq="1D").values
    x = np.full((8, 4, 6), 5.0, np.float32)
    x[:, 1, 1] = np.nan
    x[:, 2, 2] = np.linspace(4.0, 6.0, 8)  # one varying cell
    import xarray as xr

    xr.Dataset(
        {"c": (("time", "latitude", "longitude"), x)},
        coords={"time": time, "latitude": [30.0, 10.0, -10.0, -30.0], "longitude": np.arange(6) * 60.0},
    ).to_zarr(tmp_path / "d.zarr", zarr_format=3, consolidated=False)
    norm = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    n = Normalizer(norm, rel_floor=1e-3, abs_floor=1e-9)
    gm, gs = n.coefficients("c", "global", months=[0])
    mean, std = n.coefficients("c", "local", months=[0])
    assert np.isnan(mean[0, 0, 1, 1]) and np.isnan(std[0, 0, 1, 1])  # no data: stays NaN
    ok = np.isfinite(mean)
    assert (std[ok] > 0).all()
    np.testing.assert_allclose(std[0, 0, 0, 0], 1e-3 * gs[0, 0, 0, 0], rtol=1e-6)  # floored relative to global
    np.testing.assert_allclose(std[0, 0, 2, 2], np.std(np.linspace(4.0, 6.0, 8)), rtol=1e-6)  # untouched
    out = normalize(x[:1], mean[0, 0], std[0, 0])
    assert np.isfinite(out[0, 0, 0]) and out[0, 0, 0] == 0.0
    # a fully constant field: global std floored at abs_floor
    x2 = np.full((8, 4, 6), 3.0, np.float32)
    xr.Dataset({"k": (("time", "latitude", "longitude"), x2)},
               coords={"time": time, "latitude": [30.0, 10.0, -10.0, -30.0], "longitude": np.arange(6) * 60.0}
               ).to_zarr(tmp_path / "k.zarr", zarr_format=2, consolidated=False)  # fmt: skip
    norm2 = compute_stats(str(tmp_path / "k.zarr"), tmp_path / "nk.zarr", StatsConfig(progress=False, zarr_format=2))
    gm2, gs2 = Normalizer(norm2, abs_floor=1e-9).coefficients("k", "global", months=[0])
    assert gm2.ravel()[0] == 3.0 and gs2.ravel()[0] == np.float32(1e-9)


def test_normalize_reference():
    v = np.array([[0.0, 1.0, 3.0]], np.float32)
    np.testing.assert_allclose(normalize(v, 1.0, 2.0), [[-0.5, 0.0, 1.0]])
    np.testing.assert_allclose(normalize(v, 0.5, 0.25, "log1p"), (np.log1p(v) - 0.5) / 0.25, rtol=1e-6)
    assert normalize(v, 0, 1).dtype == np.float32
    with pytest.raises(ConfigError, match="transform"):
        normalize(v, 0, 1, "sqrt")


def _config(**field):
    f = {"name": "temperature", "levels": (96, 105), "num_tokens": (2, 2, 2), "token_size": (1, 2, 3), **field}
    return SamplingConfig(fields=(FieldConfig(**f),), batch_size=2)


def test_check_against_the_data_store(stores, tmp_path):
    d, _, _, norm = stores
    n = Normalizer(norm)
    store = open_store(str(d / "d.zarr"))
    n.check(store, _config())
    n.check(store, _config(name="precip", levels=None, transform="log1p"))
    with pytest.raises(ConfigError, match=r"precip.*transform 'log1p'"):
        n.check(store, _config(name="precip", levels=None))
    with pytest.raises(ConfigError, match=r"temperature.*\[500\]"):
        n.coefficients("temperature", "local", levels=[500])
    with pytest.raises(ConfigError, match="nope"):
        n.coefficients("nope", "global")
    with pytest.raises(ConfigError, match=r"temperature.*Jan"):
        n.coefficients("temperature", "global", months=[0])
    with pytest.raises(ConfigError, match="mode"):
        n.coefficients("temperature", "mean")
    # another grid shape
    write_per_variable(tmp_path / "other.zarr", nt=4, start="2000-03-20", ny=7)
    with pytest.raises(SchemaError, match=r"temperature.*9x12.*7x12"):
        n.check(open_store(str(tmp_path / "other.zarr")), _config())
    # the data store has months the coefficients lack
    write_per_variable(tmp_path / "july.zarr", nt=4, start="2000-07-01")
    with pytest.raises(ConfigError, match="Jul"):
        n.check(open_store(str(tmp_path / "july.zarr")), _config())


def test_local_normalisation_of_a_static_field_is_refused(stores):
    """Orography has one value per point: its local std is 0, and the floored std would give (x - x) / floor = 0
    everywhere. Normalizer.check (which multi-stream fields go through too) refuses it naming the field."""
    d, _, _, norm = stores
    store = open_store(str(d / "d.zarr"))
    msg = (r"fields\.orography: the field is static .*local normalisation makes it constant.*'global'.*'none'")
    with pytest.raises(ConfigError, match=msg):
        Normalizer(norm).check(store, _config(name="orography", levels=None, normalization="local"))
    Normalizer(norm).check(store, _config(name="orography", levels=None, normalization="global"))


def test_global_normalisation_of_a_static_field_equals_numpy(stores):
    from fastload import extract

    d, data, _, norm = stores
    cfg = SamplingConfig(fields=(FieldConfig(name="orography", num_tokens=(1, 2, 3), token_size=(1, 2, 2),
                                             normalization="global"),), norm_path=str(norm))
    got = extract(open_store(str(d / "d.zarr")), cfg, [[0, 1, 2]])["orography"].data
    got = got[0, 0, 0, :, :, 0].transpose(0, 2, 1, 3).reshape(4, 6)  # (nlat, nlon, tlat, tlon) -> (H, W)
    o = data["orography"].astype(np.float64)
    want = (data["orography"][1:5, 2:8] - o.mean()) / o.std()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(got).max() > 0.1  # not the all-zero output of local normalisation


def test_flipped_latitude_is_a_mismatch(stores, tmp_path):
    _, _, _, norm = stores
    import xarray as xr

    ds = xr.open_zarr(stores[0] / "d.zarr", consolidated=False).isel(latitude=slice(None, None, -1)).load()
    for v in ds.variables.values():
        v.encoding.clear()
    ds.to_zarr(tmp_path / "flip.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(SchemaError, match="latitude"):
        Normalizer(norm).check(open_store(str(tmp_path / "flip.zarr")), _config())


def test_bad_paths(tmp_path, stores):
    with pytest.raises(StoreNotFoundError, match="missing"):
        Normalizer(tmp_path / "missing.zarr")
    with pytest.raises(SchemaError, match="not a fastload normalisation store"):
        Normalizer(stores[0] / "d.zarr")  # the data store is not a coefficient store


def test_a_url_of_an_unknown_protocol_with_options_is_a_store_error_naming_it(tmp_path):
    """Opening a URL with storage_options moved into zarr_location, outside the try that turned zarr's errors into
    fastload's: an unknown protocol raised fsspec's bare ValueError. It goes through the stores' one URL check
    (fastload.store._source.fsspec_filesystem, tests/fastload/test_store_url_errors.py). Options with a local
    path stay a ConfigError."""
    with pytest.raises(StoreError, match=r"normalisation store nosuchproto://b/n\.zarr: fsspec knows no protocol"):
        Normalizer("nosuchproto://b/n.zarr", storage_options={"anon": True})
    (tmp_path / "n.zarr").mkdir()
    with pytest.raises(ConfigError, match=r"storage_options \{'anon': True\} given for the local path .*n\.zarr"):
        Normalizer(tmp_path / "n.zarr", storage_options={"anon": True})


def test_check_with_time_steps_needs_only_the_months_the_boxes_read(stores, tmp_path):
    """Coefficients for March only, a store of March and April: the whole-record check (the Loader's: random
    placement reaches any month) refuses it; with the time steps of given boxes only their months count, and the
    first box reading April is named with its steps and times."""
    d, _, time, _ = stores
    march = compute_stats(str(d / "d.zarr"), tmp_path / "march.zarr",
                          StatsConfig(time_range=(None, "2000-03"), progress=False))
    n = Normalizer(march)
    assert n.months_present("temperature") == (2,)
    store = open_store(str(d / "d.zarr"))
    last_march = int(np.flatnonzero(months_of(time) == 2)[-1])  # 23: 2000-03-31T12:00
    cfg = _config()
    with pytest.raises(ConfigError, match=r"temperature.*times in \['Apr'\]"):
        n.check(store, cfg)
    inside = np.array([[0, 1], [last_march - 1, last_march]])  # (boxes, steps), all in March
    n.check(store, cfg, time_steps=inside)
    n.check(store, cfg, time_steps=np.zeros((0, 2), np.int64))  # no boxes: no months needed
    across = np.array([[0, 1], [3, 4], [last_march, last_march + 1], [last_march + 1, last_march + 2]])
    with pytest.raises(ConfigError, match=rf"field 'temperature': box 2 \(store time steps {last_march}\.\."
                                          rf"{last_march + 1}, 2000-03-31T12:00 \.\. 2000-04-01T00:00\) reads times in "
                                          rf"\['Apr'\], but .*march.zarr' has coefficients only for \['Mar'\]"):
        n.check(store, cfg, time_steps=across)
    with pytest.raises(ConfigError, match=r"time_steps: expected \(boxes, steps\)"):
        n.check(store, cfg, time_steps=np.arange(3))
    n.check(store, _config(name="orography", levels=None, normalization="global"), time_steps=across)  # static
