"""Normalizer.check_field refuses coefficients of another field than the data store's (review s11 r1): levels on one
side only, another level type, other units; stores written with xarray."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fastload import extract
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.norm import Normalizer
from fastload.stats import StatsConfig, compute_stats
from fastload.store import open_store

xr = pytest.importorskip("xarray")

TIME = pd.date_range("2000-01-01", periods=4, freq="6h").values
COORDS = {"time": TIME, "latitude": np.linspace(10, 0, 4), "longitude": np.arange(8) * 1.0}


def _write(path, levels=None, attrs=None, level_attrs=None, seed=0):
    """A per-variable store with one field ``t``, on ``levels`` (None: a surface field), written by xarray."""
    rng = np.random.default_rng(seed)
    coords = dict(COORDS)
    if levels is None:
        t = (("time", "latitude", "longitude"), rng.normal(size=(4, 4, 8)).astype("f4") + 300, attrs or {})
    else:
        base = np.asarray(levels, "f4")[None, :, None, None] * 10
        t = (("time", "level", "latitude", "longitude"),
             rng.normal(size=(4, len(levels), 4, 8)).astype("f4") + base, attrs or {})  # fmt: skip
        coords["level"] = ("level", np.asarray(levels, "f8"), level_attrs or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr.Dataset({"t": t}, coords=coords).to_zarr(path, zarr_format=3, consolidated=False)
    return str(path)


def _cfg(norm, levels=None):
    f = FieldConfig(name="t", levels=levels, num_tokens=(1, 1, 1), token_size=(2, 2, 4), normalization="global")
    return SamplingConfig(fields=(f,), norm_path=str(norm))


def test_coefficients_on_levels_for_a_surface_field_are_refused(tmp_path):
    """Review rep12: stats with --levels 10 on a store where t has levels, extract on a store where t is a surface
    field: was accepted and normalised with level 10's coefficients (a mean ~100 for data ~300)."""
    a = _write(tmp_path / "a.zarr", levels=[10.0, 2.0])
    b = _write(tmp_path / "b.zarr", seed=1)
    norm = compute_stats(a, tmp_path / "n.zarr", StatsConfig(progress=False, levels=[10.0]))
    assert Normalizer(norm).levels("t").tolist() == [10.0]
    with pytest.raises(ConfigError, match=r"field 't': .*n\.zarr' holds coefficients for levels \[10\.0\] but in "
                                          r"the data store .*b\.zarr' the field has no level axis"):  # fmt: skip
        extract(open_store(b), _cfg(norm), [[0, 0, 0]], jit=False)
    # the store the coefficients came from still passes, and its level 10 normalises as NumPy does
    got = extract(open_store(a), _cfg(norm, levels=(10.0,)), [[0, 0, 0]], jit=False)["t"].data
    raw = xr.open_zarr(a, consolidated=False)["t"].sel(level=10.0).values.astype(np.float64)
    want = (raw[:2, :2, :4] - raw.mean()) / raw.std()
    np.testing.assert_allclose(got.reshape(-1), want.reshape(-1), rtol=1e-5, atol=1e-5)


def test_coefficients_without_levels_for_a_field_on_levels_are_refused(tmp_path):
    a = _write(tmp_path / "a.zarr")
    b = _write(tmp_path / "b.zarr", levels=[10.0, 2.0], seed=1)
    n = Normalizer(compute_stats(a, tmp_path / "n.zarr", StatsConfig(progress=False)))
    assert n.levels("t") is None
    with pytest.raises(ConfigError, match=r"holds coefficients without levels but in the data store .*b\.zarr' "
                                          r"the field has levels \[10\.0, 2\.0\]"):  # fmt: skip
        n.check_field(open_store(b), "t", None, None)
    n.check_field(open_store(a), "t", None, None)
