"""GRIB input of ``fastload convert`` (:mod:`fastload.convert`): a GRIB file as one lazily read dataset per GRIB
parameter, each on one time axis of valid times, its message index in a private temporary folder.

Why this exists apart: cfgrib opens a file as one dataset only when all its messages form one hypercube, so each
parameter is opened on its own, and cfgrib's forecast reference time and step become one ``time`` of valid times.
:func:`fastload.convert._open` calls :func:`_grib_datasets` for a file whose suffix (``GRIB_SUFFIXES``) or first
bytes (:func:`_starts_with_grib`) say GRIB; cfgrib and ecCodes (the ``convert`` extra) are imported only then.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, SchemaError, StoreError


def _starts_with_grib(path: Path) -> bool:
    """A GRIB file by its first bytes (MARS and CDS downloads often end in .data, .bin or nothing)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GRIB"
    except OSError:
        return False  # the NetCDF open then names the file and the cause


GRIB_GRIDS = ("regular_ll", "regular_gg")
"""GRIB grid types convert reads: 1-D latitudes and longitudes (a reduced Gaussian grid is one list of points)."""


def _grib_datasets(path: Path, stack: contextlib.ExitStack) -> list[Any]:
    """One lazily read dataset per GRIB parameter of ``path``, each on one time axis of valid times.

    cfgrib opens a file as one dataset only when all its messages form one hypercube; otherwise it drops the
    variables that do not fit with a log message (2t at 2 m beside 10u at 10 m, or beside a field with other times)
    or raises. So the file is indexed once and opened once per ``paramId`` (and split further by cfgrib's
    ``filter_by_keys`` hints: one parameter on two level types). The index lives in a private temporary folder for
    this conversion: nothing is written beside the input (read-only folders work, no stale ``.idx`` is reused), and
    ``errors="raise"`` makes a truncated or corrupt message an error, not a silently skipped field.
    """
    if importlib.util.find_spec("cfgrib") is None:
        raise ConfigError(f"{path}: reading GRIB needs cfgrib, which is not installed (pip install cfgrib eccodes)")
    import xarray as xr

    try:
        from cfgrib import dataset as cfds
        from cfgrib import messages
    except Exception as e:  # eccodes without its library raises RuntimeError on import
        raise ConfigError(f"{path}: reading GRIB needs cfgrib and the ecCodes library: {e}") from e
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastload-grib-index-"))
    kw = {"indexpath": os.path.join(folder.replace("{", "{{").replace("}", "}}"), "{short_hash}.idx"),
          "errors": "raise"}  # fmt: skip

    def fail(e: BaseException, what: str) -> StoreError:
        hint = " (truncated file?)" if type(e).__name__ == "PrematureEndOfFileError" else ""
        return StoreError(f"{path}: cannot read as GRIB ({what}): {type(e).__name__}: {e}{hint}")

    log = logging.getLogger("cfgrib.messages")
    level, log.level = log.level, logging.CRITICAL  # a bad message would be logged twice before it is raised
    try:
        index = cfds.open_fileindex(messages.FileStream(str(path), errors="raise"), kw["indexpath"],
                                    cfds.compute_index_keys())  # fmt: skip
        params = sorted(index["paramId"])
    except Exception as e:
        raise fail(e, "indexing its messages") from e
    finally:
        log.setLevel(level)
    if not params:
        raise StoreError(f"{path}: no GRIB messages found")

    def opened(fbk: dict[str, Any]) -> list[Any]:
        try:
            ds = xr.open_dataset(path, engine="cfgrib", cache=False, chunks=None,
                                 backend_kwargs={**kw, "filter_by_keys": fbk})  # fmt: skip
        except cfds.DatasetBuildError as e:
            hints = [h for h in (e.args[2] if len(e.args) > 2 else []) if {**fbk, **h} != fbk]
            if not hints:
                raise SchemaError(f"{path}: GRIB messages of {fbk} do not form one hypercube: {e}") from e
            return [d for h in hints for d in opened({**fbk, **h})]
        except Exception as e:
            raise fail(e, f"messages {fbk}") from e
        stack.enter_context(ds)
        if len(ds.data_vars) != 1:  # cfgrib skipped it (logged only): never drop a field silently
            raise SchemaError(f"{path}: cfgrib made {len(ds.data_vars)} variables of the messages {fbk}; expected 1")
        return [_grib_time(path, ds)]

    out: list[Any] = []
    seen: dict[str, Any] = {}
    for p in params:
        for ds in opened({"paramId": p}):
            name = str(next(iter(ds.data_vars)))
            da = ds[name]
            grid = da.attrs.get("GRIB_gridType")
            if grid not in GRIB_GRIDS:
                raise SchemaError(f"{path}: {name!r} is on a GRIB grid of type {grid!r}; convert reads {GRIB_GRIDS} "
                                  "(regrid first, e.g. ask the CDS for grid=0.25/0.25)")  # fmt: skip
            if name in seen:
                raise SchemaError(f"{path}: variable {name!r} comes on two level types "
                                  f"({seen[name].attrs.get('GRIB_typeOfLevel')!r} and "
                                  f"{da.attrs.get('GRIB_typeOfLevel')!r}); split the file by level type "
                                  "(grib_copy -w typeOfLevel=...) and convert each")  # fmt: skip
            seen[name] = da
            out.append(ds)
    return out


def _grib_time(path: Path, ds: Any) -> Any:
    """Give a cfgrib dataset one ``time`` dimension of valid times (forecast reference time + step).

    cfgrib's ``time`` is the forecast reference time, a scalar when the file has one; ``step`` is a dimension when
    the file has several lead times; ``valid_time`` is their sum (what a loader means by time).
    """
    name = str(next(iter(ds.data_vars)))
    if "step" in ds.dims:
        if "time" in ds.dims and ds.sizes["time"] > 1:
            raise SchemaError(f"{path}: {name!r} has {ds.sizes['time']} forecast reference times ('time') times "
                              f"{ds.sizes['step']} lead times ('step'); convert needs one time axis: give files "
                              "of one forecast run each, or of one lead time each")  # fmt: skip
        if "time" in ds.dims:
            ds = ds.isel(time=0)
        ds = ds.swap_dims(step="valid_time").drop_vars(["time", "step"]).rename(valid_time="time")
        return ds
    if "valid_time" not in ds.coords:
        return ds
    if "time" not in ds.dims:  # one time in the file: cfgrib made it a scalar coordinate
        ds = ds.expand_dims("time")
    vt = ds["valid_time"]
    return ds.drop_vars(["valid_time", "step"], errors="ignore").assign_coords(
        time=("time", np.atleast_1d(vt.values).astype("datetime64[ns]"), dict(vt.attrs))
    )
