"""``fastload stats --transform FIELD=log1p`` says what the transform dropped (review s15 G1, finding 8): log1p of a
value <= -1 is not finite, so the coefficients leave it out; 42 % of a wind component went so, counted only in the
attribute ``excluded_nonfinite``. Now one WARNING line (``fastload`` logger) names the field, the transform and
the count and fraction dropped."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from fastload.stats import StatsConfig, compute_stats


def _store(tmp_path):
    rng = np.random.default_rng(5)
    u = rng.normal(0.0, 2.0, size=(8, 5, 8)).astype("f4")  # about 31 % of it <= -1
    u[0, 0, :4] = np.nan  # missing: not counted among the values
    u[1, 0, 0] = -1.0  # log1p(-1) = -inf: dropped too
    u[1, 0, 1] = np.inf  # not finite before the transform: excluded, but not the transform's doing
    v = rng.exponential(1.0, size=(8, 5, 8)).astype("f4")
    ds = xr.Dataset({"u": (("time", "latitude", "longitude"), u), "v": (("time", "latitude", "longitude"), v)},
                    coords={"time": pd.date_range("2020-01-01", periods=8, freq="6h"),
                            "latitude": np.linspace(10, -10, 5), "longitude": np.arange(8) * 45.0})  # fmt: skip
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=2)
    return tmp_path / "s.zarr", u


def test_values_a_transform_drops_are_warned_of_once_per_field(tmp_path, caplog):
    src, u = _store(tmp_path)
    finite = np.isfinite(u)
    dropped = int((finite & (u <= -1)).sum())
    values = int((~np.isnan(u)).sum())
    assert 0 < dropped < values
    with caplog.at_level(logging.WARNING, logger="fastload"):
        out = compute_stats(str(src), tmp_path / "n.zarr",
                            StatsConfig(transforms={"u": "log1p", "v": "log1p"}, progress=False))  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [f"stats: transform log1p of field 'u' dropped {dropped} of its {values} values "
                    f"({100 * dropped / values:.1f}%): log1p is not finite for values <= -1, so the coefficients "
                    f"leave them out"]  # fmt: skip
    attrs = zarr.open_group(out, mode="r")["u"].attrs
    assert attrs["excluded_nonfinite"] == dropped + 1  # the inf too
    assert attrs["missing_values"] == 4


def test_no_warning_without_a_transform_or_without_drops(tmp_path, caplog):
    src, _ = _store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        compute_stats(str(src), tmp_path / "n.zarr", StatsConfig(transforms={"v": "log1p"}, progress=False))
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


def test_the_cli_prints_it_as_one_line(tmp_path):
    src, u = _store(tmp_path)
    dropped = int((np.isfinite(u) & (u <= -1)).sum())
    r = subprocess.run([sys.executable, "-m", "fastload.cli", "stats", str(src), "--out", str(tmp_path / "n.zarr"),
                        "--transform", "u=log1p", "--fields", "u", "-q"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "dropped" in ln]
    assert len(lines) == 1 and f"transform log1p of field 'u' dropped {dropped} of its " in lines[0], r.stderr
