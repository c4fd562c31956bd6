"""``rechunk --dtype float32`` of float64 values beyond float32's range: converted as xarray's astype converts
(they become +-inf), and said with a count (review s11 r5 L6: they became inf silently)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from fastload.rechunk import rechunk


def test_values_beyond_float32_become_inf_as_astype_makes_them_and_are_counted(tmp_path, caplog):
    rng = np.random.default_rng(2)
    v = rng.normal(280, 5, (6, 5, 8))
    v[0, 0, :4] = [1e39, -2e40, np.inf, np.nan]  # two finite values overflow; inf and NaN stay what they are
    v[3, 2, 1] = 3.4028235e38  # float32's largest: rounds to it, no overflow
    ds = xr.Dataset({"t": (("time", "latitude", "longitude"), v), "q": (("time", "latitude", "longitude"), np.zeros_like(v))},
                    coords={"time": pd.date_range("2020-01-01", periods=6, freq="h"),
                            "latitude": np.linspace(10, -10, 5), "longitude": np.arange(8) * 45.0})  # fmt: skip
    src = tmp_path / "s.zarr"
    ds.to_zarr(src, zarr_format=2, consolidated=True)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        out = rechunk(src, tmp_path / "o.zarr", chunks=(2, 1, 5, 8), dtype="float32", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning in the reference cast
        want = ds.t.astype("float32").values
    got = xr.open_zarr(out).t.values
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    expected = int(np.count_nonzero(np.isinf(want) & np.isfinite(v)))
    assert expected == 2
    said = [r.getMessage() for r in caplog.records if "beyond the range" in r.getMessage()]
    assert len(said) == 1 and "'t'" in said[0] and f": {expected} finite values" in said[0], said
