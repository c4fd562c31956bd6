"""``fastload rechunk`` takes a source's fsspec options and read backend as inspect and stats do (review s11 r5
L5: its help promised an fsspec URL but it had no --storage-option/--backend)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload.cli import main as cli


@pytest.mark.parametrize("backend", ["fsspec", "auto"])
def test_rechunk_reads_an_fsspec_url_with_storage_options_and_a_backend(tmp_path, capsys, backend):
    rng = np.random.default_rng(1)
    ds = xr.Dataset({"t": (("time", "latitude", "longitude"), rng.normal(size=(6, 5, 8)).astype("f4"))},
                    coords={"time": pd.date_range("2020-01-01", periods=6, freq="h"),
                            "latitude": np.linspace(10, -10, 5), "longitude": np.arange(8) * 45.0})  # fmt: skip
    src = tmp_path / "s.zarr"
    ds.to_zarr(src, zarr_format=2, consolidated=True)
    out = tmp_path / "o.zarr"
    assert cli(["rechunk", f"file://{src}", str(out), "--chunks", "2,1,5,8", "--storage-option", "auto_mkdir=false",
                "--backend", backend, "-q"]) == 0  # fmt: skip
    got = xr.open_zarr(out)
    np.testing.assert_array_equal(got.t.values, ds.t.values)
    assert got.t.encoding["chunks"] == (2, 5, 8)
    assert cli(["rechunk", f"file://{src}", str(tmp_path / "p.zarr"), "--storage-option", "no-equals"]) == 2
    assert "--storage-option" in capsys.readouterr().err
