"""The test stores' time coordinate reads back whole in xarray and in fastload: the first time (hour 0 of the CF
encoding, ``T0``) is a time, not NaT. With a zarr v2 fill value of 0 xarray read it as NaT, so every test comparing
fastload's times with xarray's at t = 0 compared against a missing value. Reference: the datetimes written."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fastload.store import open_store

from .stores import T0, make_atmorep, make_curvilinear, make_per_variable

MAKERS = {"per_variable": make_per_variable, "atmorep": make_atmorep, "curvilinear": make_curvilinear}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_first_time_reads_back_as_written(tmp_path, kind, zarr_format):
    path = tmp_path / f"{kind}.zarr"
    truth = MAKERS[kind](path, zarr_format=zarr_format)
    assert truth["time"][0] == T0 and truth["time"].dtype == np.dtype("datetime64[ns]")
    ds = xr.open_zarr(path, consolidated=False)
    assert not np.isnat(ds.time.values).any()
    np.testing.assert_array_equal(ds.time.values, truth["time"])
    np.testing.assert_array_equal(open_store(str(path)).time, truth["time"])
