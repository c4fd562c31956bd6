"""fastload.norm.normalize is bit for bit what the gather kernels compute (review s11 r1 finding 7: it took log1p
in float32 while the kernels take it in float64 and round, 1 ulp apart on about 12 % of values)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fastload import extract
from fastload.config import FieldConfig, SamplingConfig
from fastload.norm import Normalizer, normalize
from fastload.stats import StatsConfig, compute_stats
from fastload.store import open_store

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def precip(tmp_path_factory):
    """A store of a skewed positive field (precipitation-like, over 7 decades) written by xarray, and its
    coefficients after log1p."""
    d = tmp_path_factory.mktemp("normk")
    rng = np.random.default_rng(7)
    v = (rng.gamma(0.4, 3.0, size=(6, 8, 32)) * 10.0 ** rng.uniform(-4, 3, size=(6, 8, 32))).astype("f4")
    v[0, 0, :3] = [0.0, -0.5, np.nan]
    ds = xr.Dataset({"tp": (("time", "latitude", "longitude"), v)},
                    coords={"time": pd.date_range("2000-01-01", periods=6, freq="6h").values,
                            "latitude": np.linspace(35, 0, 8), "longitude": np.arange(32) * 1.0})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(d / "d.zarr", zarr_format=3, consolidated=False)
    norm = compute_stats(str(d / "d.zarr"), d / "n.zarr", StatsConfig(transforms={"tp": "log1p"}, progress=False))
    return str(d / "d.zarr"), str(norm), v


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("jit", [True, False])
def test_normalize_is_bit_equal_to_the_gather_kernels(precip, mode, jit):
    path, norm, v = precip
    cfg = SamplingConfig(fields=(FieldConfig(name="tp", num_tokens=(1, 1, 1), token_size=(6, 8, 32),
                                             normalization=mode, transform="log1p"),), norm_path=norm)  # fmt: skip
    got = extract(open_store(path), cfg, [[0, 0, 0]], jit=jit)["tp"].data.reshape(6, 8, 32)
    mean, std = Normalizer(norm).coefficients("tp", mode, months=[0])
    want = normalize(v, mean[0, 0], std[0, 0], "log1p")
    assert want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(got)], want.view(np.uint32)[~np.isnan(want)])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # the kernels' arithmetic, spelled out: float32 value, log1p in float64 rounded to float32, float32 (x - m) / s
    x = np.log1p(v.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(want, (x - mean[0, 0]) / std[0, 0])
