"""Writer safety found by review s11 r5: a source named by a local fsspec URL is protected like a path; each
writer has a temporary of its own, and a writer whose temporary was removed or replaced refuses to commit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload.errors import ConfigError
from fastload.rechunk import rechunk
from fastload.write import check_output


def _source(path):
    rng = np.random.default_rng(0)
    t = pd.date_range("2020-01-01", periods=8, freq="h")
    ds = xr.Dataset(
        {v: (("time", "latitude", "longitude"), rng.normal(size=(8, 6, 8)).astype("f4")) for v in ("t", "q")},
        coords={"time": t, "latitude": np.linspace(10, -10, 6), "longitude": np.arange(8) * 45.0},
    )
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return ds


def test_a_source_given_as_a_file_url_is_not_overwritten_nor_written_into(tmp_path):
    src = tmp_path / "s.zarr"
    ds = _source(src)
    names = sorted(p.name for p in src.iterdir())
    with pytest.raises(ConfigError, match="source"):  # rechunked over itself: its other arrays were deleted
        rechunk(f"file://{src}", src, fields=["t"], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="source"):
        rechunk(f"file://{src}", src / "inner", progress=False)
    assert sorted(p.name for p in src.iterdir()) == names
    xr.testing.assert_identical(xr.open_zarr(src).load(), ds)  # intact, as xarray reads it


@pytest.mark.parametrize("url", ["file://{}", "local://{}", "simplecache::file://{}", "file:{}"])
def test_every_local_fsspec_url_of_a_source_is_checked_as_its_path(tmp_path, url):
    src = tmp_path / "s.zarr"
    src.mkdir()
    for out in (src, src / "sub", tmp_path):
        with pytest.raises(ConfigError, match="source"):
            check_output(out, overwrite=True, sources=[url.format(src)])
    assert check_output(tmp_path / "o.zarr", overwrite=False, sources=[url.format(src)]) == tmp_path / "o.zarr"


def test_a_remote_source_does_not_block_a_local_output(tmp_path):
    pytest.importorskip("fsspec")
    out = tmp_path / "o.zarr"
    assert check_output(out, overwrite=False, sources=["memory://bucket/o.zarr", "s3://bucket/x.zarr"]) == out
