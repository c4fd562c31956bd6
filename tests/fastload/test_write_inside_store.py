"""An output inside another zarr store is refused before any work (review s15 R, finding 1): ``convert a.nc
era.zarr/t2m --overwrite`` replaced era.zarr's t2m array with a store of its own, which fastload and xarray then
read as all NaN; without ``--overwrite`` a new member appeared in that store."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from fastload.cli import main as cli
from fastload.errors import ConfigError
from fastload.rechunk import rechunk
from fastload.write import check_output


def _dataset(seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {v: (("time", "latitude", "longitude"), rng.normal(size=(8, 6, 8)).astype("f4")) for v in ("t", "q")},
        coords={"time": pd.date_range("2020-01-01", periods=8, freq="h"), "latitude": np.linspace(10, -10, 6),
                "longitude": np.arange(8) * 45.0},
    )


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_writer_never_writes_into_another_store(tmp_path, zarr_format):
    other = tmp_path / "era.zarr"  # the store at risk: not a source of the write
    ds = _dataset(0)
    ds.to_zarr(other, zarr_format=zarr_format, consolidated=zarr_format == 2)
    src = tmp_path / "src.zarr"
    _dataset(1).to_zarr(src, zarr_format=2, consolidated=True)
    before = _files(other)
    for out, overwrite in ((other / "t", True), (other / "t", False), (other / "new.zarr", False),
                           (other / "t" / "deeper", True)):
        with pytest.raises(ConfigError, match=f"inside the zarr store {other}"):
            rechunk(src, out, fields=["t"], overwrite=overwrite, progress=False)
    assert _files(other) == before
    xr.testing.assert_identical(xr.open_zarr(other, consolidated=zarr_format == 2).load(), ds)


def test_the_command_line_refuses_it_in_one_line_with_exit_2(tmp_path, capsys):
    other = tmp_path / "era.zarr"
    ds = _dataset(0)
    ds.to_zarr(other, zarr_format=2, consolidated=True)
    src = tmp_path / "src.zarr"
    _dataset(1).to_zarr(src, zarr_format=2, consolidated=True)
    assert cli(["rechunk", str(src), str(other / "t"), "--fields", "t", "--overwrite", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"inside the zarr store {other}" in err and "Traceback" not in err
    xr.testing.assert_identical(xr.open_zarr(other).load(), ds)


def test_a_store_reached_through_a_link_is_found_and_plain_folders_are_fine(tmp_path):
    other = tmp_path / "era.zarr"
    zarr.open_group(other, mode="w", zarr_format=3)
    (tmp_path / "link").symlink_to(other)
    with pytest.raises(ConfigError, match="inside the zarr store"):
        check_output(tmp_path / "link" / "x.zarr", overwrite=False)
    plain = tmp_path / "runs" / "a"  # folders without zarr metadata above the output: allowed
    plain.mkdir(parents=True)
    assert check_output(plain / "o.zarr", overwrite=False) == plain / "o.zarr"
    shutil.rmtree(other)  # once the store is gone, the same path is an ordinary folder's
    other.mkdir()
    assert check_output(other / "x.zarr", overwrite=False) == other / "x.zarr"
