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


def test_coefficients_on_another_level_type_are_refused(tmp_path):
    """Review rep7: coefficients of t on model levels 100, 125 passed against a store of t on pressure levels
    100, 125 hPa (same numbers, another field); a store that does not say its level type still passes."""
    model = {"long_name": "model level number"}
    a = _write(tmp_path / "a.zarr", levels=[100.0, 125.0], level_attrs=model)
    b = _write(tmp_path / "b.zarr", levels=[100.0, 125.0], level_attrs={"units": "hPa"}, seed=1)
    c = _write(tmp_path / "c.zarr", levels=[100.0, 125.0], seed=2)
    n = Normalizer(compute_stats(a, tmp_path / "n.zarr", StatsConfig(progress=False)))
    sa, sb, sc = open_store(a), open_store(b), open_store(c)
    assert (sa.fields["t"].level_type, sb.fields["t"].level_type, sc.fields["t"].level_type) == ("model", "pressure",
                                                                                                 None)  # fmt: skip
    assert n.attrs("t")["level_type"] == "model"
    with pytest.raises(ConfigError, match=r"field 't': .* holds coefficients on model levels but in the data store "
                                          r".*b\.zarr' the field is on pressure levels"):  # fmt: skip
        n.check_field(sb, "t", [100.0, 125.0], None)
    n.check_field(sa, "t", [100.0, 125.0], None)
    n.check_field(sc, "t", [100.0, 125.0], None)


def test_coefficients_in_other_units_are_refused(tmp_path):
    """Review rep7: coefficients of t in K passed against t in degC. Another spelling of the same unit, or units
    missing on either side, still pass."""
    a = _write(tmp_path / "a.zarr", attrs={"units": "K"})
    n = Normalizer(compute_stats(a, tmp_path / "n.zarr", StatsConfig(progress=False)))
    assert n.attrs("t")["units"] == "K"
    b = _write(tmp_path / "b.zarr", attrs={"units": "degC"}, seed=1)
    with pytest.raises(ConfigError, match=r"field 't': the coefficients in .*n\.zarr' were computed on data in units "
                                          r"'K' but the data store .*b\.zarr' has the field in 'degC'"):  # fmt: skip
        n.check_field(open_store(b), "t", None, None)
    for i, attrs in enumerate(({"units": "kelvin"}, {"units": "degrees_K"}, {})):
        n.check_field(open_store(_write(tmp_path / f"ok{i}.zarr", attrs=attrs, seed=i)), "t", None, None)
    bare = Normalizer(compute_stats(_write(tmp_path / "bare.zarr"), tmp_path / "nb.zarr", StatsConfig(progress=False)))
    assert bare.attrs("t")["units"] is None
    bare.check_field(open_store(b), "t", None, None)


SAME_UNITS = [("K", "kelvin"), ("K", "degK"), ("degC", "degrees_Celsius"), ("degC", "°C"), ("m s**-1", "m/s"),
              ("m s-1", "m.s-1"), ("m s^-1", "m s**-1"), ("kg m**-2 s**-1", "kg/m2/s"), ("hPa", "mbar"),
              ("1", "(0 - 1)"), ("1", "dimensionless"), ("m**2 s**-2", "m2 s-2"), ("%", "percent"), ("s-1", "1/s"),
              ("m of water equivalent", "m of water equivalent"), ("J m**-2", "J m-2"), ("Pa", "pascal")]  # fmt: skip
OTHER_UNITS = [("K", "degC"), ("Pa", "hPa"), ("m s-1", "km h-1"), ("m", "mm"), ("kg m-2", "kg m-2 s-1"),
               ("1", "%"), ("m**2 s**-2", "m"), ("J m**-2", "W m**-2")]  # fmt: skip


@pytest.mark.parametrize("u,v", SAME_UNITS)
def test_canonical_units_equal_for_spellings_of_one_unit(u, v):
    from fastload.norm import canonical_units

    assert canonical_units(u) == canonical_units(v)


@pytest.mark.parametrize("u,v", OTHER_UNITS)
def test_canonical_units_differ_for_different_units(u, v):
    from fastload.norm import canonical_units

    assert canonical_units(u) != canonical_units(v)
