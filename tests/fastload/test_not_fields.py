"""Arrays on the grid that cannot be fields (``Store.not_fields``) are never dropped without a word: opening a store
warns of an array that spans the grid but is not a field (a field written wrong)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload.store import open_store

NT, NY, NX = 8, 19, 36
U10_WHY = "dims ('time', 'longitude', 'latitude'); a field has dims (time, [level], latitude, longitude)"
Z_WHY = "dimension 'level' has no 1-D coordinate array 'level' giving level values"


def _write(path, *, typo=True):
    """t2m (a field), gw(latitude) (an auxiliary array), and with ``typo`` u10 written lon-first and z whose level
    coordinate was dropped (real fields written wrong); without it, u10 as a field (for its coefficients)."""
    rng = np.random.default_rng(0)
    t2m = rng.normal(280, 5, (NT, NY, NX)).astype("f4")
    u10 = rng.normal(0, 5, (NT, NY, NX)).astype("f4")
    data = {"t2m": (("time", "latitude", "longitude"), t2m), "gw": (("latitude",), np.cos(np.linspace(-1.5, 1.5, NY)))}
    if typo:
        data["u10"] = (("time", "longitude", "latitude"), u10.transpose(0, 2, 1))
        data["z"] = (("time", "level", "latitude", "longitude"), rng.normal(5e4, 1e3, (NT, 3, NY, NX)).astype("f4"))
    else:
        data["u10"] = (("time", "latitude", "longitude"), u10)
    ds = xr.Dataset(data, coords={"time": pd.date_range("2020-01-01", periods=NT, freq="6h"),
                                  "latitude": np.linspace(90, -90, NY), "longitude": np.arange(0, 360, 10.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray/zarr's own notes on v2 stores
        ds.to_zarr(path, zarr_format=2)
    return ds


@pytest.fixture
def typo(tmp_path):
    path = tmp_path / "typo.zarr"
    return path, _write(path)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastload"]


def test_opening_warns_of_an_array_that_spans_the_grid_but_is_not_a_field(typo, caplog):
    path, _ = typo
    with caplog.at_level(logging.WARNING, logger="fastload"):
        s = open_store(path)
    assert list(s.fields) == ["t2m"] and set(s.not_fields) == {"u10", "z", "gw"}
    got = _warnings(caplog)
    assert f"{path}: array 'u10' spans the grid ('latitude', 'longitude') but is not a field, so fastload leaves " \
           f"it out: {U10_WHY}" in got
    assert any("array 'z' spans the grid" in m and Z_WHY in m for m in got)
    assert not any("'gw'" in m for m in got)  # gw(latitude) is an auxiliary array, not a field gone wrong
    assert len(got) == 2

