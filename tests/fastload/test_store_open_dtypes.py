"""Arrays on the grid that cannot be fields are reported alike in both layouts (review s12 item 3): a complex or
bool array beside an AtmoRep store's ``data`` was left out without a word (not in ``Store.not_fields``, no warning,
asking for it said only "not in store"), while an xarray-layout store lists a complex one with why (and reads a
bool one as a field) and warns at open, as it does for every array over the grid that is not a field.

Stores are built as the other store tests build them (:mod:`tests.fastload.stores`); the expected reasons are
written out here."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import zarr

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.store import open_store
from tests.fastload.stores import _array, make_atmorep, make_per_variable

NT, NY, NX = 4, 9, 16
COMPLEX_WHY = "dtype complex64; a field must be numeric"


def _add(path, zarr_format, grid):
    """``mask`` (lat, lon) bool, ``wave`` (time, lat, lon) complex64, and off the grid ``phase`` (time) complex128
    and ``flag`` (time) bool."""
    lat, lon = grid
    root = zarr.open_group(str(path), mode="r+")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _array(root, "mask", np.arange(NY * NX).reshape(NY, NX) % 3 == 0, (lat, lon), zarr_format=zarr_format,
               chunks=(NY, NX), fill_value=False)
        _array(root, "wave", np.ones((NT, NY, NX), np.complex64), ("time", lat, lon), zarr_format=zarr_format,
               chunks=(2, NY, NX), fill_value=0)
        _array(root, "phase", np.ones(NT, np.complex128), ("time",), zarr_format=zarr_format, chunks=(NT,),
               fill_value=0)
        _array(root, "flag", np.ones(NT, bool), ("time",), zarr_format=zarr_format, chunks=(NT,), fill_value=False)


def _open(path, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastload"):
        s = open_store(path)
    return s, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastload"]


def _refusal(store, name):
    f = FieldConfig(name=name, num_tokens=(1, 1, 1), token_size=(1, 1, 1), normalization="none")
    with pytest.raises(ConfigError) as e:
        store.check(SamplingConfig(fields=[f]))
    return str(e.value)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_complex_and_bool_arrays_on_the_grid_are_reported_alike_in_both_layouts(tmp_path, caplog, zarr_format):
    pv_path, ar_path = tmp_path / "pv.zarr", tmp_path / "ar.zarr"
    make_per_variable(pv_path, zarr_format=zarr_format)
    _add(pv_path, zarr_format, ("latitude", "longitude"))
    make_atmorep(ar_path, zarr_format=zarr_format)
    _add(ar_path, zarr_format, ("lat", "lon"))
    pv, pv_warn = _open(pv_path, caplog)
    ar, ar_warn = _open(ar_path, caplog)

    # the xarray layout: complex listed with why, bool a field, arrays off the grid neither
    assert pv.not_fields == {"wave": COMPLEX_WHY} and "mask" in pv.fields
    # the AtmoRep layout: complex listed with the same why; bool cannot be a field there (its fields are the
    # entries of data / data_sfc): listed, saying so; arrays off the grid neither, as in the xarray layout
    assert set(ar.not_fields) == {"wave", "mask"}
    assert ar.not_fields["wave"] == COMPLEX_WHY
    assert ar.not_fields["mask"].startswith("an AtmoRep store's fields are the entries of 'data'")
    assert "'fields' attribute" in ar.not_fields["mask"]
    for s in (pv, ar):
        assert not {"phase", "flag"} & (set(s.not_fields) | set(s.fields))

    # both warn at open, in the same words, of an array over the grid that is not a field
    for path, warns, grid in ((pv_path, pv_warn, "('latitude', 'longitude')"), (ar_path, ar_warn, "('lat', 'lon')")):
        assert (f"{path}: array 'wave' spans the grid {grid} but is not a field, so fastload leaves it out: "
                f"{COMPLEX_WHY}") in warns, warns
    assert any("array 'mask' spans the grid" in w for w in ar_warn) and len(ar_warn) == 2

    # and asking for one as a field says why, in both
    for s in (pv, ar):
        msg = _refusal(s, "wave")
        assert msg.startswith("fields.wave: array 'wave' in store") and f"is not a field: {COMPLEX_WHY}" in msg
    assert "fields.mask: array 'mask' in store" in _refusal(ar, "mask")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_atmorep_store_without_extra_arrays_lists_nothing(tmp_path, caplog, zarr_format):
    path = tmp_path / "ar.zarr"
    make_atmorep(path, zarr_format=zarr_format, level_coord=True)
    s, warns = _open(path, caplog)
    assert s.not_fields == {} and warns == []
    assert list(s.fields) == ["temperature", "velocity_u", "t2m", "msl"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_array_of_dates_coded_as_numbers_gets_the_same_reason_in_both_layouts(tmp_path, caplog, zarr_format):
    """Review s12 r2 item 5: an AtmoRep store's (time, lat, lon) array of dates coded as numbers (CF units
    ``... since ...``, as xarray writes a datetime variable) was said to be an array of its own, not what it holds."""
    units = "hours since 2000-01-01 00:00:00"
    why = f"it holds dates coded as numbers (units {units!r}); a field must hold values, not dates"
    stores = {}
    for layout, make, grid in (("pv", make_per_variable, ("latitude", "longitude")),
                               ("ar", make_atmorep, ("lat", "lon"))):
        path = tmp_path / f"{layout}.zarr"
        make(path, zarr_format=zarr_format)
        root = zarr.open_group(str(path), mode="r+")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _array(root, "valid_time", np.arange(NT * NY * NX, dtype=np.int64).reshape(NT, NY, NX),
                   ("time", *grid), zarr_format=zarr_format, chunks=(2, NY, NX), attrs={"units": units})
        stores[layout], warns = _open(path, caplog)
        assert stores[layout].not_fields == {"valid_time": why}, layout
        assert any(w.endswith(f"array 'valid_time' spans the grid {grid} but is not a field, so fastload leaves it "
                              f"out: {why}") for w in warns), warns
        assert f"is not a field: {why}" in _refusal(stores[layout], "valid_time")
