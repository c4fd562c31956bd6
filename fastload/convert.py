"""Convert NetCDF (and GRIB, with cfgrib) files into the per-variable zarr layout: ``fastload convert IN... OUT``.

Why this exists: weather and ocean data mostly arrive as NetCDF or GRIB files (one per day, month or variable),
while fastload reads zarr chunks. This tool streams the files through xarray into :class:`fastload.write.StoreWriter`
one time block of one variable at a time (memory bounded by that block; nothing is loaded whole), with the
chunking fastload samples well, and keeps what a loader must know:

- coordinates and their attributes, found by CF metadata (``axis``, ``standard_name``, ``units``) or common names
  (lat/latitude, lon/longitude, level/plev/lev/isobaricInhPa/depth/height, time/valid_time), renamed to
  ``time``, ``level``, ``latitude``, ``longitude``; the level kind (``level_type`` model/pressure/depth/height)
  from its units and names;
- regional grids (no wrap is invented) and latitudes in stored order (north-to-south stays so, recorded in the
  group attribute ``latitude_order``);
- only latitude-longitude grids: a variable over a rotated-pole axis (``rlat``/``rlon``, standard_name
  ``grid_latitude``/``grid_longitude``: CORDEX) or with a ``grid_mapping`` other than ``latitude_longitude`` is an
  error naming it (its axes are not true degrees; ``ds.to_zarr`` keeps its 2-D lat/lon, a curvilinear store), as
  is one without ``grid_mapping_name`` whose ``crs_wkt``/``spatial_ref`` (GDAL) is a projected or rotated CRS; a
  scalar grid-mapping variable the fields name is copied;
- missing values (land in ocean data) as NaN, with fill value NaN, and their count in ``missing_count``;
- units, long names and other variable attributes, the global attributes and the list of source files.

Several files join along time (sorted by their first time stamp; overlaps are an error) and/or by variable (one
file per variable over the same times). A dimension that is none of the four is an error naming it, unless it has
length 1 (squeezed, e.g. an ensemble ``number``). An interrupted conversion leaves no store at OUT.

GRIB (``.grib``, ``.grb2``...; cfgrib + eccodes, the ``convert`` extra): each parameter is opened on its own (cfgrib
would drop fields that do not share one hypercube, such as 2t at 2 m beside 10u at 10 m), the time axis is the
valid time (reference time + step: one forecast run's lead times, or files of one time each, join along it), the
message index is kept in a temporary folder (nothing is written beside the inputs), and a truncated or corrupt
message is an error naming the file.

Run::

    fastload convert era5_2020_*.nc era5.zarr
    fastload convert sst.nc sst.zarr --chunks 4,1,128,128 --codec blosc-zstd --zarr-format 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._convert_grib import GRIB_GRIDS, _grib_datasets, _starts_with_grib  # noqa: F401 - GRIB_GRIDS re-exported: public
from ._progress import Progress
from ._zarr_location import zarr_location
from .errors import ConfigError, SchemaError, StoreError, StoreNotFoundError
from .rechunk import cast_counting_overflow, warn_overflow
from .store._cf import NS_RANGE, decode_time
from .write import CODECS, DEFAULT_CODEC, LEVEL_TYPES, StoreWriter, check_output, parse_ints

__all__ = ["convert", "main", "GRIB_SUFFIXES"]

GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grb1", ".grib2", ".grb2")
ROLES = ("time", "level", "latitude", "longitude")
_NAMES = {
    "time": ("time", "valid_time", "t", "date", "datetime"),
    "latitude": ("latitude", "lat", "lats", "nav_lat"),
    "longitude": ("longitude", "lon", "lons", "nav_lon"),
    "level": ("level", "levels", "lev", "plev", "pressure_level", "pressure", "isobaricinhpa", "isobaricinpa",
              "hybrid", "model_level", "model_level_number", "level_number", "depth", "deptht", "depthu", "depthv",
              "z", "height", "altitude", "heightaboveground", "sigma"),
}  # fmt: skip
_STD_LEVEL = {"air_pressure": "pressure", "depth": "depth", "height": "height", "altitude": "height",
              "model_level_number": "model", "atmosphere_hybrid_sigma_pressure_coordinate": "model",
              "atmosphere_hybrid_height_coordinate": "model", "atmosphere_sigma_coordinate": "model"}  # fmt: skip
_PRESSURE_UNITS = ("pa", "hpa", "mbar", "millibar", "millibars", "mb", "kpa", "bar")
_LENGTH_UNITS = ("m", "km", "meter", "meters", "metre", "metres", "cm")
DTYPES = ("float32", "float64", "keep")
_ROTATED_STD = ("grid_latitude", "grid_longitude")  # CF: a rotated-pole grid's axes, in rotated degrees
_ROTATED_NAMES = ("rlat", "rlon")  # CORDEX's names of those axes
_WKT_NODE = re.compile(r"([A-Za-z_]\w*)\s*[\[(]")  # a WKT node's keyword, before its bracket (WKT allows "(")
_WKT_DERIVED = ("DERIVINGCONVERSION", "BASEGEOGCRS", "BASEGEODCRS")  # WKT2: a derived CRS (rotated pole: PROJ)
_SUPPORTED_GRID = ("convert writes regular latitude-longitude grids: 1-D latitude and longitude coordinates in "
                   "true degrees, and no grid_mapping or one whose grid_mapping_name is 'latitude_longitude' "
                   "(without grid_mapping_name: whose crs_wkt/spatial_ref, if any, is a geographic CRS); "
                   "regrid the file to latitudes and longitudes first (e.g. cdo remapbil), or write it to zarr as "
                   "it is with xarray (ds.to_zarr), which fastload opens as a curvilinear grid from its 2-D "
                   "latitude and longitude")  # fmt: skip


def _rotated(name: str, coord: Any) -> str | None:
    """Why the dimension ``name`` is an axis of a rotated-pole grid (its values are not true latitudes or
    longitudes), or None when it is not one."""
    std = str(dict(getattr(coord, "attrs", {}) or {}).get("standard_name", "")).lower()
    if std in _ROTATED_STD:
        return f"its coordinate's standard_name is {std!r} (a rotated-pole axis, not true degrees)"
    if name.lower() in _ROTATED_NAMES:
        return f"{name!r} is the usual name of a rotated-pole axis (rotated, not true degrees)"
    return None


def _role(name: str, coord: Any) -> str | None:
    """Which of time/level/latitude/longitude a dimension is, from its coordinate's CF metadata or its name."""
    attrs = dict(getattr(coord, "attrs", {}) or {})
    axis = str(attrs.get("axis", "")).upper()
    std = str(attrs.get("standard_name", "")).lower()
    units = str(attrs.get("units", "")).lower()
    if axis == "T" or std == "time" or (coord is not None and np.issubdtype(coord.dtype, np.datetime64)):
        return "time"
    if std == "latitude" or units in ("degrees_north", "degree_north", "degrees_n") or (axis == "Y" and "lat" in name):
        return "latitude"
    if std == "longitude" or units in ("degrees_east", "degree_east", "degrees_e") or (axis == "X" and "lon" in name):
        return "longitude"
    if axis == "Z" or std in _STD_LEVEL:
        return "level"
    for role, names in _NAMES.items():
        if name.lower() in names:
            return role
    return None


def _level_type(name: str, attrs: dict[str, Any]) -> str:
    """model | pressure | depth | height of a vertical coordinate (model when nothing says otherwise)."""
    lt = attrs.get("level_type")
    if lt in LEVEL_TYPES:
        return str(lt)
    std = str(attrs.get("standard_name", "")).lower()
    units = str(attrs.get("units", "")).strip().lower()
    text = f"{name} {std} {attrs.get('long_name', '')}".lower()
    if std in _STD_LEVEL:
        return _STD_LEVEL[std]
    if units in _PRESSURE_UNITS or "pressure" in text or "isobaric" in text:
        return "pressure"
    if "depth" in text or (str(attrs.get("positive", "")).lower() == "down" and units in _LENGTH_UNITS):
        return "depth"
    if units in _LENGTH_UNITS or "height" in text or "altitude" in text:
        return "height"
    return "model"


@dataclasses.dataclass
class _Var:
    """One variable in one file: which file dims play which role, which length-1 dims to drop."""

    source: _Source
    dims: dict[str, str]  # role -> dim name in the file
    squeeze: tuple[str, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.dims)


@dataclasses.dataclass
class _Source:
    path: Path
    ds: Any  # xarray.Dataset, opened lazily
    roles: dict[str, str]  # dim name -> role
    time: np.ndarray | None  # datetime64[ns] or None
    rotated: dict[str, str] = dataclasses.field(default_factory=dict)  # dim name -> why it is a rotated-pole axis


def _open(path: Path, stack: contextlib.ExitStack) -> list[_Source]:
    """The file's datasets as sources: one for NetCDF, one per GRIB parameter (see :func:`_grib_datasets`)."""
    import xarray as xr

    if not path.exists():
        raise StoreNotFoundError(f"input file {str(path)!r} does not exist")
    if path.is_dir():
        raise StoreError(f"input {str(path)!r} is a directory; convert reads NetCDF/GRIB files "
                         "(to re-chunk a zarr store use 'fastload rechunk')")  # fmt: skip
    if path.suffix.lower() in GRIB_SUFFIXES or _starts_with_grib(path):
        return [_source(path, ds) for ds in _grib_datasets(path, stack)]
    try:
        ds = stack.enter_context(xr.open_dataset(path, cache=False, chunks=None))
    except Exception as e:  # every engine has its own error types: name the file and the cause
        raise StoreError(f"{path}: cannot open as NetCDF: {e}") from e
    return [_source(path, ds)]


def _source(path: Path, ds: Any) -> _Source:
    roles, rotated = {}, {}
    for d in ds.dims:
        why = _rotated(str(d), ds[d] if d in ds.coords else None)
        if why is not None:  # refused in _variables, for a variable over it (see _check_grid)
            rotated[str(d)] = why
            continue
        role = _role(str(d), ds[d] if d in ds.coords else None)
        if role is not None:
            if role in roles.values():
                other = next(k for k, v in roles.items() if v == role)
                raise SchemaError(f"{path}: dimensions {other!r} and {d!r} both look like {role}; rename one")
            roles[str(d)] = role
    time = None
    tdim = next((d for d, r in roles.items() if r == "time"), None)
    if tdim is not None:
        t = ds[tdim].values if tdim in ds.coords else None
        if t is None or not np.issubdtype(t.dtype, np.datetime64):
            _refuse_time(path, tdim, ds[tdim] if t is not None else None)
        time = decode_time(t, {}, f"{path}: time {tdim!r}")  # ns, range-checked (xarray may give M8[s])
        if time.size == 0:
            raise SchemaError(f"{path}: time dimension {tdim!r} is empty (0 time steps): nothing to convert; leave "
                              "the file out")  # fmt: skip
        if time.size > 1 and not (time[1:] > time[:-1]).all():  # np.diff overflows int64 ns over 292 years
            raise SchemaError(f"{path}: time {tdim!r} is not strictly increasing")
    return _Source(path, ds, roles, time, rotated)


def _refuse_time(path: Path, tdim: str, coord: Any) -> None:
    """Why xarray did not decode the time coordinate to datetime64: no values, a calendar NumPy cannot hold
    (360_day, noleap...), or dates of a NumPy calendar outside what datetime64[ns] holds (xarray hands out cftime
    objects then: a CMIP6 extension running to 2300, a paleo run)."""
    expect = "expected CF-decodable dates (standard/gregorian/proleptic_gregorian calendar)"
    if coord is None:
        raise SchemaError(f"{path}: time dimension {tdim!r} has no coordinate values; {expect}")
    t = coord.values
    calendar = coord.encoding.get("calendar") or getattr(t.flat[0] if t.size else None, "calendar", None)
    if t.dtype == object and str(calendar).lower() in ("standard", "gregorian", "proleptic_gregorian"):
        try:
            span = f"{min(t.flat)} .. {max(t.flat)}"
        except TypeError:
            span = f"{t.flat[0]} .. {t.flat[-1]}"
        raise SchemaError(f"{path}: time dimension {tdim!r} has dates {span} ({calendar} calendar), outside the "
                          f"range datetime64[ns] holds, {NS_RANGE}; fastload keeps times as datetime64[ns]: convert "
                          "only the times in that range (e.g. select them with xarray and write a new file)")  # fmt: skip
    cal = f"calendar {calendar!r}" if calendar else f"values of type {t.dtype}"
    raise SchemaError(f"{path}: time dimension {tdim!r} has {cal}, which numpy datetime64 cannot hold; {expect}")


def _variables(src: _Source, selected: Sequence[str] | None) -> dict[str, _Var]:
    ds = src.ds
    bounds = {str(ds[c].attrs.get("bounds")) for c in ds.variables if "bounds" in ds[c].attrs}
    out: dict[str, _Var] = {}
    names = [str(n) for n in ds.data_vars] if selected is None else [n for n in selected if n in ds.data_vars]
    for name in names:
        da = ds[name]
        if selected is None and (name in bounds or name.endswith(("_bnds", "_bounds")) or da.ndim == 0):
            continue
        _check_grid(src, name)
        dims: dict[str, str] = {}
        squeeze = []
        for d, n in zip(da.dims, da.shape):
            role = src.roles.get(str(d))
            if role is not None:
                dims[role] = str(d)
            elif n == 1:
                squeeze.append(str(d))
            else:
                raise SchemaError(
                    f"{src.path}: variable {name!r} has dimension {d!r} of length {n}, which is not time, level, "
                    f"latitude or longitude (known names: {sorted(set().union(*_NAMES.values()))}); give it CF "
                    "attributes (axis / standard_name) or pick other variables with --variables"
                )
        if "latitude" not in dims or "longitude" not in dims:
            if selected is not None:
                raise SchemaError(f"{src.path}: variable {name!r} (dims {da.dims}) is not on a latitude-longitude grid")
            continue  # not a field (e.g. a scalar or a time series): left out
        if da.dtype.kind not in "biuf":
            raise SchemaError(f"{src.path}: variable {name!r} has dtype {da.dtype}; expected numbers")
        out[name] = _Var(src, dims, tuple(squeeze))
    return out


def _grid_mappings(da: Any) -> list[str]:
    """The names of the grid-mapping variables a variable's CF ``grid_mapping`` attribute names: ``"crs"``, or the
    extended form ``"crs_a: x y crs_b: lat lon"`` (each name before a colon)."""
    gm = da.attrs.get("grid_mapping", da.encoding.get("grid_mapping"))
    if not isinstance(gm, str) or not gm.strip():
        return []
    words = gm.split()
    named = [w[:-1] for w in words if w.endswith(":")]
    return named if named else words


def _check_grid(src: _Source, name: str) -> None:
    """Refuse a variable on a grid that is not latitude-longitude: over a rotated-pole axis (``rlat``/``rlon``,
    standard_name ``grid_latitude``/``grid_longitude``: CORDEX), or with a ``grid_mapping`` whose
    ``grid_mapping_name`` is not ``latitude_longitude``, or without one whose WKT is projected or derived
    (:func:`_wkt_not_latlon`; a geographic WKT, or none, is latitude-longitude). Taking such axes as latitude and
    longitude would write rotated degrees as true ones (a grid 20..60 N becomes -20..20)."""
    da = src.ds[name]
    over = [d for d in da.dims if str(d) in src.rotated]
    if over:
        d = str(over[0])
        raise SchemaError(f"{src.path}: variable {name!r} is over dimension {d!r}, and {src.rotated[d]}; "
                          f"{_SUPPORTED_GRID}")  # fmt: skip
    for gm in _grid_mappings(da):
        if gm not in src.ds.variables:
            continue  # names nothing in the file: nothing says the grid is not latitude-longitude
        attrs = src.ds[gm].attrs
        kind = attrs.get("grid_mapping_name")
        if kind is None:  # GDAL/rioxarray: only a WKT, which says what the CRS is (or nothing: a 1-D lat/lon grid)
            for key in ("crs_wkt", "spatial_ref"):  # CF 1.7's WKT attribute; GDAL's and rioxarray's
                why = _wkt_not_latlon(attrs.get(key))
                if why is not None:
                    raise SchemaError(f"{src.path}: variable {name!r} has grid_mapping {gm!r} without "
                                      f"grid_mapping_name whose {key} is {why}, not latitude-longitude; "
                                      f"{_SUPPORTED_GRID}")  # fmt: skip
        elif kind != "latitude_longitude":
            raise SchemaError(f"{src.path}: variable {name!r} has grid_mapping {gm!r} whose grid_mapping_name is "
                              f"{kind!r}, not 'latitude_longitude'; {_SUPPORTED_GRID}")  # fmt: skip


def _wkt_not_latlon(wkt: Any) -> str | None:
    """Why a grid mapping's WKT is not a latitude-longitude CRS: a projected one (a ``PROJ*`` node: ``PROJCS``,
    ``PROJCRS``, WKT1's ``PROJECTION``: GDAL's rotated pole too) or a derived one (WKT2: PROJ's rotated pole); None
    for a geographic WKT (``GEOGCS``, ``GEOGCRS``, ``EPSG:4326``), another or none (the 1-D lat/lon axes decide)."""
    if not isinstance(wkt, str) or not wkt.strip():
        return None
    for k in _WKT_NODE.findall(re.sub(r'"[^"]*"', '""', wkt)):  # nodes in order; quoted names are not nodes
        if "PROJ" in k.upper() or k.upper() in _WKT_DERIVED:
            what = "a projected CRS" if "PROJ" in k.upper() else "a derived CRS such as a rotated pole"
            return f"{what} ({k.upper()} node: {wkt.strip()[:60]!r}{'...' if len(wkt.strip()) > 60 else ''})"
    return None


GRID_ATOL = 1e-4
"""Degrees two files' latitudes or longitudes may differ by and still be one grid (float32 rounding of 360 is
4e-5; ~11 m). Levels must agree to a relative 1e-6."""


def _same(a: np.ndarray, b: np.ndarray, role: str) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind not in "iuf" or b.dtype.kind not in "iuf":
        return bool((a == b).all())
    if role == "level":
        return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))
    return bool(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0) <= GRID_ATOL)


def _equal_values(a: Any, b: Any) -> bool:
    """Exact equality of two values (arrays or scalars, attributes included); NaN equals NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind and not {a.dtype.kind, b.dtype.kind} <= set("biuf"):
        return False
    nan = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    try:
        return bool(np.array_equal(a, b, equal_nan=nan))
    except TypeError:  # values numpy cannot compare elementwise
        return False


def _static_difference(name: str, a: _Var, b: _Var) -> str | None:
    """How ``b``'s copy of the static variable ``name`` differs from ``a``'s, in words; None when it does not."""
    da, db = a.source.ds[name], b.source.ds[name]
    if da.dtype != db.dtype:
        return f"dtype {da.dtype} vs {db.dtype}"
    if a.roles != b.roles:
        return f"dimensions {a.roles} vs {b.roles}"
    keys = sorted(set(da.attrs) ^ set(db.attrs)) + sorted(
        k for k in set(da.attrs) & set(db.attrs) if not _equal_values(da.attrs[k], db.attrs[k])
    )
    if keys:
        return f"attributes {keys}"
    va, vb = _read(a, name, None), _read(b, name, None)  # roles order, length-1 dims dropped
    if va.shape != vb.shape:
        return f"shape {va.shape} vs {vb.shape}"
    if not _equal_values(va, vb):
        same = (va == vb) | (np.isnan(va) & np.isnan(vb)) if va.dtype.kind in "fc" else va == vb
        return f"values ({int(same.size - same.sum())} of {same.size} differ)"
    return None


def _check_static_copies(name: str, vs: list[_Var], others: list[str]) -> None:
    """A variable without a time axis in several files is kept once when every copy equals the first exactly
    (values NaN-aware, dtype, attributes); else a SchemaError naming the variable and the files that differ."""
    for v in vs[1:]:
        why = _static_difference(name, vs[0], v)
        if why is not None:
            pick = f"--variables {','.join(others)}" if others else "--variables"
            raise SchemaError(
                f"variable {name!r} has no time dimension and is in several inputs, but its copy in {v.source.path} "
                f"differs from the one in {vs[0].source.path} ({why}); convert keeps one copy of a static variable "
                f"only when all are identical: leave it out ({pick}) and convert it from the one file you want"
            )


def _plan(sources: list[_Source], selected: Sequence[str] | None):
    """Per variable its pieces (one per file, in time order); the shared time, grid and level coordinates."""
    pieces: dict[str, list[_Var]] = {}
    for src in sources:
        for name, v in _variables(src, selected).items():
            pieces.setdefault(name, []).append(v)
    if selected is not None:
        missing = [n for n in selected if n not in pieces]
        if missing:
            raise SchemaError(f"variables {missing} are in none of the inputs {[str(s.path) for s in sources]}")
    if not pieces:
        raise SchemaError(f"no variable on a latitude-longitude grid in {[str(s.path) for s in sources]}")
    time = None
    for name, vs in pieces.items():
        if "time" not in vs[0].dims:  # a static field: its copies are compared once the grids are known to agree
            continue
        vs.sort(key=lambda v: v.source.time[0])
        t = np.concatenate([v.source.time for v in vs])
        if t.size > 1 and not (np.diff(t) > np.timedelta64(0, "ns")).all():
            raise SchemaError(f"variable {name!r}: the times of {[str(v.source.path) for v in vs]} overlap or repeat")
        if time is None:
            time, first = t, name
        elif not np.array_equal(t, time):
            raise SchemaError(f"variable {name!r} has {t.size} time steps ({t[0]} .. {t[-1]}) but {first!r} has "
                              f"{time.size} ({time[0]} .. {time[-1]}); all variables must share one time axis")  # fmt: skip
    ref = next(iter(pieces.values()))[0]
    coords: dict[str, Any] = {}
    for role in ("latitude", "longitude", "level"):
        for name, vs in pieces.items():
            for v in vs:
                if role not in v.dims:
                    continue
                if v.dims[role] not in v.source.ds.coords:  # xarray would hand out 0, 1, 2, ...: not a grid
                    raise SchemaError(f"{v.source.path}: dimension {v.dims[role]!r} ({role} of {name!r}) has no "
                                      f"coordinate variable; expected its {role} values in a variable of that "
                                      "name")  # fmt: skip
                da = v.source.ds[v.dims[role]]
                if role not in coords:
                    coords[role] = (da.values, dict(da.attrs), v.dims[role], name, v.source.path)
                elif not _same(da.values, coords[role][0], role):
                    tol = "a relative 1e-6" if role == "level" else f"{GRID_ATOL} degrees"
                    raise SchemaError(f"{v.source.path}: {role} of {name!r} ({v.dims[role]!r}, {da.size} values) "
                                      f"differs from that of {coords[role][3]!r} in {coords[role][4]} by more than "
                                      f"{tol}")  # fmt: skip
    for role in ("latitude", "longitude"):
        if coords[role][0].ndim != 1:
            raise SchemaError(f"{ref.source.path}: {role} is {coords[role][0].ndim}-D; convert handles 1-D "
                              "latitude-longitude grids (curvilinear grids are not supported yet)")  # fmt: skip
    # a static field (orography, land-sea mask) in every file: one copy, if all agree; after the grid check, so
    # that inputs on different grids are reported as such, not as the static variable's values differing
    for name, vs in pieces.items():
        if "time" not in vs[0].dims and len(vs) > 1:
            _check_static_copies(name, vs, [n for n in pieces if n != name])
            del vs[1:]
    return pieces, time, coords


def _read(v: _Var, name: str, t: slice | None) -> np.ndarray:
    """Variable ``name`` of ``v``'s file (times ``t``, all when None) as stored, in roles order, length-1 dims
    dropped."""
    da = v.source.ds[name]
    if v.squeeze:
        da = da.isel({d: 0 for d in v.squeeze})
    if t is not None:
        da = da.isel({v.dims["time"]: t})
    return np.asarray(da.transpose(*(v.dims[r] for r in v.roles)).values)


def convert(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    variables: Sequence[str] | None = None,
    chunks: Sequence[int] | None = None,
    codec: str = DEFAULT_CODEC,
    shards: Sequence[int] | None = None,
    zarr_format: int = 2,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Convert NetCDF/GRIB files into a per-variable zarr store; returns its path.

    Parameters
    ----------
    inputs : sequence of path
        NetCDF (``.nc``...) or GRIB (``.grib``, ``.grb2``...; needs cfgrib) files, joined along time and/or by
        variable.
    out : path
        The store to create (written under a temporary name, renamed when complete).
    variables : sequence of str, optional
        Variables to convert (default: every variable on the latitude-longitude grid).
    chunks, codec, shards, zarr_format :
        As for :class:`fastload.write.StoreWriter` (chunks and shards in (time, level, lat, lon) terms).
    dtype : {"float32", "float64", "keep"}
        Stored dtype; ``float32`` (default) keeps NaN for missing values and halves float64 inputs.
    overwrite : bool
        Replace an existing store.
    progress : bool, optional
        Progress bar (default: when stderr is a terminal).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if not inputs:
        raise ConfigError("convert: give at least one input file")
    check_output(out, overwrite=overwrite, sources=inputs)
    with contextlib.ExitStack() as stack:
        sources = [s for p in inputs for s in _open(Path(p), stack)]
        pieces, time, coords = _plan(sources, variables)
        for name, vs in pieces.items() if dtype == "keep" else ():  # no silent cast to the first file's dtype
            da = vs[0].source.ds[name]
            other = next((v for v in vs[1:] if v.source.ds[name].dtype != da.dtype), None)
            if other is not None:
                raise SchemaError(f"variable {name!r} is {da.dtype} in {vs[0].source.path} but "
                                  f"{other.source.ds[name].dtype} in {other.source.path}; with --dtype keep all "
                                  "files must agree (give --dtype float32 or float64)")  # fmt: skip
        first = sources[0]
        attrs = {str(k): v for k, v in first.ds.attrs.items()}
        names = list(dict.fromkeys(s.path.name for s in sources))  # a GRIB file gives one source per parameter
        attrs.update({"source_files": names, "history": "converted by fastload convert"})
        nbytes = sum(
            sum(int(np.prod(v.source.ds[n].shape)) for v in vs) * (4 if dtype == "float32" else 8)
            for n, vs in pieces.items()
        )
        with StoreWriter(out, zarr_format=zarr_format, overwrite=overwrite, attrs=attrs, sources=inputs) as w:
            if time is not None:
                w.set_time(time)
            lat, lon = coords["latitude"], coords["longitude"]
            w.set_grid(lat[0], lon[0], lat_attrs=lat[1], lon_attrs=lon[1])
            if "level" in coords:
                values, lattrs, lname = coords["level"][:3]
                lt = _level_type(lname, lattrs)
                w.set_levels(values, level_type=lt, units=lattrs.get("units"),
                             attrs={**lattrs, "source_name": lname})  # fmt: skip
            for gm, mapping in _mapping_variables(pieces).items():  # what the fields' grid_mapping names
                w.add_coordinate(gm, (), mapping.values, attrs=dict(mapping.attrs))
            with Progress(nbytes, "convert", "B", enabled=progress) as bar:
                for name, vs in pieces.items():
                    bar.set_description(f"convert {name}")
                    _convert_variable(w, name, vs, chunks, codec, shards, dtype, bar)
    return Path(out).absolute()


def _mapping_variables(pieces: dict[str, list[_Var]]) -> dict[str, Any]:
    """The scalar grid-mapping variables (``latitude_longitude``, :func:`_check_grid`) the converted variables'
    ``grid_mapping`` attributes name, each from the first file that has it: copied, so that the attribute names a
    variable of the store (the datum, earth radius...)."""
    out: dict[str, Any] = {}
    for name, vs in pieces.items():
        ds = vs[0].source.ds
        for gm in _grid_mappings(ds[name]):
            if gm not in out and gm not in pieces and gm in ds.variables and ds[gm].ndim == 0:
                out[gm] = ds[gm]
    return out


def _convert_variable(w: StoreWriter, name: str, vs: list[_Var], chunks: Sequence[int] | None, codec: str,
                      shards: Sequence[int] | None, dtype: str, bar: Progress) -> None:  # fmt: skip
    da = vs[0].source.ds[name]
    dt = np.dtype(da.dtype if dtype == "keep" else dtype)
    attrs = {k: v for k, v in da.attrs.items() if not str(k).startswith("_") and k not in ("coordinates",)}
    w.add_variable(name, vs[0].roles, dtype=dt, chunks=chunks, codec=codec, shards=shards, attrs=attrs)
    missing = overflow = 0  # overflow: finite values the cast to dt made +-inf (float64 beyond float32's range)
    if "time" not in vs[0].dims:
        block, overflow = cast_counting_overflow(_read(vs[0], name, None), dt)
        w.write(name, block, (0,) * block.ndim)
        missing = int(np.isnan(block).sum()) if dt.kind == "f" else 0
        bar.update(block.nbytes)
    else:
        offsets = np.cumsum([0] + [v.source.time.size for v in vs])  # global start of each file's times
        for sl in w.time_blocks(name):
            parts = []
            for v, a, b in zip(vs, offsets[:-1], offsets[1:]):
                lo, hi = max(sl.start, a), min(sl.stop, b)
                if lo < hi:
                    part, k = cast_counting_overflow(_read(v, name, slice(lo - a, hi - a)), dt)
                    parts.append(part)
                    overflow += k
            block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            if dt.kind == "f":
                missing += int(np.isnan(block).sum())
            w.write(name, block, sl.start)
            bar.update(block.nbytes)
    w.update_attrs(name, {"missing_count": missing})
    warn_overflow("convert", "variable", name, overflow, dt)


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload convert INPUT... OUT``: convert NetCDF/GRIB files to a zarr store and print a summary."""
    p = argparse.ArgumentParser(
        prog="fastload convert",
        description="Convert NetCDF (or GRIB, with cfgrib) files into a per-variable zarr store that xarray opens "
        "as it is and fastload samples fast. Files join along time and/or by variable; streaming, bounded memory.",
        epilog="example: fastload convert era5_2020_*.nc era5.zarr --chunks 6,1,64,128 --codec blosc-lz4",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NetCDF or GRIB files (joined along time/by variable)")
    p.add_argument("out", metavar="OUT", help="the zarr store to create (must not exist unless --overwrite)")
    p.add_argument("--variables", help="comma-separated variables to convert (default: all on the lat-lon grid)")
    p.add_argument("--chunks", metavar="T,L,Y,X", help="chunk shape (time, level, lat, lon); default 6,1,64,128")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=CODECS, help=f"compression (default {DEFAULT_CODEC})")
    p.add_argument("--shard", metavar="T,L,Y,X", help="zarr v3 shard shape, a multiple of the chunks")
    p.add_argument("--zarr-format", type=int, default=2, choices=(2, 3), help="zarr format (default 2)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="stored dtype (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    out = convert(
        a.inputs, a.out,
        variables=[v.strip() for v in a.variables.split(",") if v.strip()] if a.variables else None,
        chunks=parse_ints(a.chunks, 4, "--chunks") if a.chunks else None, codec=a.codec,
        shards=parse_ints(a.shard, 4, "--shard") if a.shard else None, zarr_format=a.zarr_format, dtype=a.dtype,
        overwrite=a.overwrite, progress=False if a.quiet else None,
    )  # fmt: skip
    import zarr

    g = zarr.open_group(zarr_location(out), mode="r")
    names = [n for n in g.array_keys() if n not in ("time", "level", "latitude", "longitude")]
    print(f"wrote {out}: variables {', '.join(sorted(names))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
