"""``--fields`` of ``fastload rechunk`` and ``fastload stats`` (review s15 G1, finding 5): a value that names no field
(``,`` or ``""``) is a usage error (exit 2) naming ``--fields``. ``--fields ,`` wrote a store (or a coefficient
store) with no field, exit 0; ``--fields ""`` copied every field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload import ConfigError
from fastload.cli import main as cli
from fastload.rechunk import rechunk
from fastload.stats import StatsConfig


def _store(tmp_path):
    rng = np.random.default_rng(3)
    ds = xr.Dataset({"t": (("time", "latitude", "longitude"), rng.normal(size=(6, 5, 8)).astype("f4")),
                     "q": (("time", "latitude", "longitude"), rng.normal(size=(6, 5, 8)).astype("f4"))},
                    coords={"time": pd.date_range("2020-01-01", periods=6, freq="h"),
                            "latitude": np.linspace(10, -10, 5), "longitude": np.arange(8) * 45.0})  # fmt: skip
    src = tmp_path / "s.zarr"
    ds.to_zarr(src, zarr_format=2)
    return src, ds


def _status(argv: list[str]) -> int:
    """The exit status of ``fastload ARGV``: what main returns, or argparse's usage error (SystemExit)."""
    try:
        return cli(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize("command", ["rechunk", "stats"])
@pytest.mark.parametrize("value", [",", "", " , ,"])
def test_fields_that_name_no_field_are_a_usage_error(tmp_path, capsys, command, value):
    src, _ = _store(tmp_path)
    out = tmp_path / "o.zarr"
    args = [command, str(src), str(out)] if command == "rechunk" else [command, str(src), "--out", str(out)]
    assert _status([*args, "--fields", value, "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--fields: expected comma-separated field names, got {value!r}" in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_rechunk_fields_still_copies_the_fields_named(tmp_path, capsys):
    src, ds = _store(tmp_path)
    out = tmp_path / "o.zarr"
    assert cli(["rechunk", str(src), str(out), "--fields", " q, ", "--chunks", "2,1,5,8", "-q"]) == 0
    got = xr.open_zarr(out)
    assert "q" in got and "t" not in got
    np.testing.assert_array_equal(got.q.values, ds.q.values)


def test_stats_fields_still_computes_the_fields_named(tmp_path, capsys):
    src, ds = _store(tmp_path)
    out = tmp_path / "n.zarr"
    assert cli(["stats", str(src), "--out", str(out), "--fields", "q,", "-q"]) == 0
    g = xr.open_zarr(out, group="q", consolidated=False)
    january = g["global_mean"].values.reshape(-1)[0]  # (the store's six hours are all in January)
    np.testing.assert_allclose(january, ds.q.values.astype(np.float64).mean(), rtol=1e-6)
    assert not (out / "t").exists()


def test_an_empty_field_list_is_refused_by_the_python_api(tmp_path):
    src, _ = _store(tmp_path)
    for empty in ([], ()):
        with pytest.raises(ConfigError, match=r"^fields: expected a non-empty list of field names \(None: all"):
            rechunk(str(src), tmp_path / "o.zarr", fields=empty, progress=False)
        with pytest.raises(ConfigError, match=r"^stats.fields: expected a non-empty list of field names"):
            StatsConfig(fields=empty)
    assert not (tmp_path / "o.zarr").exists()
