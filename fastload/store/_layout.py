"""Layout detection and field discovery: which arrays hold which fields, on which axes, over which grid and times.

Why this exists: fastload reads two layouts (see :mod:`fastload.store`) and everything above the store wants one
description of them: :class:`FieldInfo` per field. All schema checks happen here, once, at open: dimension names
and order, coordinate lengths against array shapes, monotonic coordinates, an increasing time axis, numeric
dtypes. Each failure is a :class:`~fastload.errors.SchemaError` naming the store, array and what was expected;
but an array over the grid that merely cannot be a field (other dims or their order, a level dimension without a
coordinate, strings or dates) is left out and listed in :attr:`Layout.not_fields` with why
(:class:`FieldSorter`, shared by the per-variable layout and meshes).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import SchemaError
from ._cf import LEVEL_TYPES, decode_time, is_date_units, level_type_of
from ._meta import ArrayInfo, StoreMetadata
from .grid import Grid, curvilinear_grid, latlon_grid

__all__ = ["ARRAY_WIDE_ATTRS", "FieldInfo", "FieldSorter", "Layout", "detect_layout", "LAT_NAMES", "LON_NAMES", "TIME_NAMES"]

LAT_NAMES = ("latitude", "lat", "lats")
LON_NAMES = ("longitude", "lon", "lons")
TIME_NAMES = ("time", "valid_time")
ReadFull = Callable[[str], np.ndarray]
StoredChunks = Callable[[str, list[tuple[int, ...]]], list[bool]]
"""``stored(name, chunks)``: whether each of these chunks of coordinate ``name`` is stored (:func:`detect_layout`)."""

log = logging.getLogger("fastload")
_warned: set[tuple[str, str, str]] = set()  # (store, array, why) already logged in this process
_quiet = False  # a loader's worker process: the loader warned when it opened the store (quiet_not_fields)


def quiet_not_fields() -> None:
    """Log no open-time warning about arrays left out of the fields in this process (a loader's worker, whose
    loader opened the same store and warned already; its logging is unconfigured, so it would print again)."""
    global _quiet
    _quiet = True


ARRAY_WIDE_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value")
"""Attributes of an AtmoRep array that hold for every field along its field axis (CF packing, missing values)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class FieldInfo:
    """One field: where it lives and what its axes are."""

    name: str
    """Field name (the array name in the per-variable layout; an entry of ``fields`` in the AtmoRep layout)."""
    array: str
    """Key into ``store.arrays`` of the array holding the field."""
    field_index: int | None
    """Index along the field axis of an AtmoRep ``data``/``data_sfc`` array, else None."""
    levels: np.ndarray | None
    """Level values (float64) in store order, or None for a field without a level axis."""
    level_type: str | None
    """"model", "pressure", "surface", "depth", "height", or None when the store does not say."""
    has_time: bool
    """Whether the field has a time axis (static fields such as orography do not)."""
    units: str | None
    """Units from the store's attributes, if any."""
    dtype: np.dtype
    """Element type as stored."""
    axes: tuple[int | None, int | None, int | None, int | None, int]
    """Positions of (time, field, level, y, x) in the array; None where absent. y, x are the last two axes; on a
    mesh y is None and x is the node axis (the last)."""
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The array's attributes (per-variable layout); in AtmoRep, those of its array that hold for each of its
    fields (:data:`ARRAY_WIDE_ATTRS`: CF packing and missing values), so a packed AtmoRep array is refused as a
    packed per-variable one is (:func:`~._check.refuse_packed`) and ``fastload rechunk --unpack`` unpacks it."""

    @property
    def num_levels(self) -> int:
        """Extent along levels (1 for a field without a level axis)."""
        return 1 if self.levels is None else int(self.levels.size)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Layout:
    kind: str
    grid: Grid
    time: np.ndarray | None
    fields: dict[str, FieldInfo]
    data_arrays: tuple[str, ...]
    coord_arrays: tuple[str, ...]
    not_fields: dict[str, str] = dataclasses.field(default_factory=dict)
    """Arrays on the grid left out of the fields, each with why it cannot be one (per-variable layout and mesh)."""


def _first(names: tuple[str, ...], arrays: Mapping[str, ArrayInfo]) -> str | None:
    return next((n for n in names if n in arrays), None)


def _numeric(info: ArrayInfo, where: str) -> None:
    if info.dtype.kind not in "biuf":
        raise SchemaError(f"{where}: array {info.name!r} has dtype {info.dtype}; a field must be numeric")


def _time_axis(meta: StoreMetadata, read: ReadFull, where: str) -> tuple[str | None, np.ndarray | None]:
    """The time coordinate (the first of :data:`TIME_NAMES` that is 1-D; a forecast written by cfgrib has a scalar
    ``time``, the initial time, and ``valid_time(step)``: its time axis is ``step``) and its values."""
    names = [n for n in TIME_NAMES if n in meta.arrays]
    if not names:
        return None, None
    name = next((n for n in names if meta.arrays[n].ndim == 1), names[0])
    info = meta.arrays[name]
    if info.ndim != 1:
        raise SchemaError(f"{where}: coordinate {name!r} has shape {info.shape}; expected 1-D (time,)")
    t = decode_time(read(name), info.attrs, f"{where}/{name}")
    later = t[1:] > t[:-1]  # neighbours compared, not np.diff: a step over 292 years overflows timedelta64[ns]
    if t.size > 1 and not later.all():
        bad = int(np.argmax(~later))
        raise SchemaError(
            f"{where}: time coordinate {name!r} is not strictly increasing: {t[bad]} at index {bad} is followed "
            f"by {t[bad + 1]}"
        )
    return name, t


def _grid(meta: StoreMetadata, read: ReadFull, where: str) -> tuple[Grid, str, str]:
    lat_name, lon_name = _first(LAT_NAMES, meta.arrays), _first(LON_NAMES, meta.arrays)
    if lat_name is None or lon_name is None:
        raise SchemaError(
            f"{where}: no latitude/longitude coordinate arrays (looked for {list(LAT_NAMES)} and {list(LON_NAMES)}); "
            f"arrays present: {sorted(meta.arrays)}"
        )
    la, lo = meta.arrays[lat_name], meta.arrays[lon_name]
    if la.ndim == 1 and lo.ndim == 1:
        ydim = la.dims[0] if la.dims else lat_name
        xdim = lo.dims[0] if lo.dims else lon_name
        g = latlon_grid(
            read(lat_name), read(lon_name), lat_name=lat_name, lon_name=lon_name, lon_attrs=lo.attrs, where=where,
            dims=(ydim, xdim),
        )  # fmt: skip
    elif la.ndim == 2 and lo.ndim == 2:
        if la.dims is None or la.dims != lo.dims:
            raise SchemaError(
                f"{where}: 2-D coordinates {lat_name!r} (dims {la.dims}) and {lon_name!r} (dims {lo.dims}) must "
                "share named dims (y, x)"
            )
        g = curvilinear_grid(
            read(lat_name), read(lon_name), lat_name=lat_name, lon_name=lon_name,
            attrs=[lo.attrs, la.attrs, meta.attrs], where=where, dims=(la.dims[0], la.dims[1]),
        )  # fmt: skip
    else:
        raise SchemaError(
            f"{where}: coordinates {lat_name!r} {la.shape} and {lon_name!r} {lo.shape} must both be 1-D or both 2-D"
        )
    return g, lat_name, lon_name


def _distinct_levels(levels: np.ndarray, what: str, where: str) -> np.ndarray:
    """``levels`` (1-D float64), or a :class:`SchemaError` naming the first value that appears more than once and
    its indices: a level value must pick one level (:meth:`Store.level_indices` took the first silently)."""
    order = np.argsort(levels, kind="stable")
    same = levels[order][1:] == levels[order][:-1]
    if same.any():
        v = levels[order][int(np.argmax(same))]
        at = np.flatnonzero(levels == v).tolist()
        raise SchemaError(
            f"{where}: {what} has the value {v:g} {len(at)} times (at indices {at}) in "
            f"{levels.tolist()}; expected distinct level values"
        )
    return levels


def _check_level_type(lt: Any, where: str) -> str | None:
    if lt is not None and lt not in LEVEL_TYPES:
        raise SchemaError(f"{where}: level_type {lt!r}; expected one of {list(LEVEL_TYPES)}")
    return lt


def detect_layout(meta: StoreMetadata, read: ReadFull, where: str, stored: StoredChunks) -> Layout:
    """Decide the layout (AtmoRep when a 5-D ``data`` array exists, else per-variable; per-variable on a mesh
    when latitude and longitude share one node dimension, see :mod:`._mesh`) and describe its fields.

    ``read(name)`` gives a coordinate's values; ``stored(name, chunks)`` says which of those chunks of it are stored
    (:func:`_whole`: a coordinate with a missing chunk is refused)."""
    from ._mesh import is_mesh, mesh_layout

    read = _whole(read, stored, meta, where)
    if is_mesh(meta):
        return mesh_layout(meta, read, where)
    data = meta.arrays.get("data")
    if data is not None and data.ndim == 5:
        return _atmorep(meta, read, where)
    return _per_variable(meta, read, where)


def _whole(read: ReadFull, stored: StoredChunks, meta: StoreMetadata, where: str) -> ReadFull:
    """``read`` that refuses a coordinate with a missing chunk: it would read as the fill value (levels
    ``[0, 0, 0]``, a time or latitude axis that is then "not strictly increasing" or "non-finite"), so the store's
    axes would be wrong or the error would name the wrong cause. A missing chunk of one element is let through:
    zarr does not write a chunk equal to the fill value (``write_empty_chunks=False``), and one value may be.

    Which chunks are stored is asked of ``stored``, once per coordinate with all its chunks (the store asks its
    source, concurrently where a request is a round trip, or a sharded coordinate's shard index)."""

    def checked(name: str) -> np.ndarray:
        values = read(name)  # first: prepares the array's decoder / shard reader
        info = meta.arrays[name]
        chunks = list(itertools.product(*[range(-(-n // c)) for n, c in zip(info.shape, info.chunks)]))
        present = list(stored(name, chunks))
        if len(present) != len(chunks):
            raise ValueError(f"{where}: stored({name!r}, ...) answered {len(present)} flags for {len(chunks)} chunks")
        for chunk, is_stored in zip(chunks, present):
            size = math.prod(min(c, n - i * c) for i, c, n in zip(chunk, info.chunks, info.shape))
            if not is_stored and size > 1:
                fill = info.fill_value.item() if isinstance(info.fill_value, np.generic) else info.fill_value
                raise SchemaError(
                    f"{where}: coordinate {name!r} has no chunk {list(chunk)} (key {info.key(chunk)!r}, "
                    f"{size} of its {math.prod(info.shape)} values): a missing chunk reads as the fill value "
                    f"{fill!r}; write the coordinate whole"
                )
        return values

    return checked


# -- AtmoRep ----------------------------------------------------------------------------------------------------
def _names_attr(info: ArrayInfo, meta: StoreMetadata, group_key: str, n: int, where: str) -> list[str]:
    """Field names of an AtmoRep array: its ``fields`` attribute, else the group attribute ``group_key``."""
    for src, key in ((info.attrs, "fields"), (meta.attrs, group_key)):
        v = src.get(key)
        if v is not None:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or len(v) != n:
                raise SchemaError(
                    f"{where}: attribute {key!r} for {info.name!r} must list {n} field names (its field axis has "
                    f"{n} entries), got {v!r}"
                )
            return v
    raise SchemaError(
        f"{where}: array {info.name!r} (AtmoRep layout) needs an attribute 'fields' naming its {n} fields"
    )


def _units(info: ArrayInfo, names: list[str]) -> list[str | None]:
    u = info.attrs.get("units")
    if isinstance(u, dict):
        return [u.get(n) for n in names]
    if isinstance(u, list) and len(u) == len(names):
        return [None if x is None else str(x) for x in u]
    return [None] * len(names)


def _atmorep(meta: StoreMetadata, read: ReadFull, where: str) -> Layout:
    data = meta.arrays["data"]
    grid, lat_name, lon_name = _grid(meta, read, where)
    tname, time = _time_axis(meta, read, where)
    if time is None:
        raise SchemaError(f"{where}: AtmoRep layout needs a 'time' coordinate array for the time axis of 'data'")
    coords = [tname, lat_name, lon_name]
    nlev = data.shape[2]
    levels_attr = data.attrs.get("levels", meta.attrs.get("levels"))
    levels = None
    if levels_attr is not None:
        try:
            levels = np.asarray(levels_attr, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise SchemaError(f"{where}: attribute 'levels' of 'data' must be numbers, got {levels_attr!r}") from None
    lt = data.attrs.get("level_type", meta.attrs.get("level_type"))
    if "level" in meta.arrays:
        coords.append("level")
        lev_coord = np.asarray(read("level"), dtype=np.float64).reshape(-1)
        if levels is not None and (levels.shape != lev_coord.shape or not np.allclose(levels, lev_coord)):
            raise SchemaError(f"{where}: attribute levels {levels.tolist()} disagrees with 'level' {lev_coord.tolist()}")
        levels = lev_coord
        lt = lt if lt is not None else level_type_of("level", meta.arrays["level"].attrs)
    if levels is None:
        raise SchemaError(f"{where}: AtmoRep 'data' needs level values: an attribute 'levels' or a 'level' array")
    if levels.size != nlev:
        raise SchemaError(f"{where}: {levels.size} level values but 'data' has {nlev} levels (axis 2 of {data.shape})")
    _distinct_levels(levels, "level coordinate 'level'" if "level" in meta.arrays else "attribute 'levels' of 'data'",
                     where)
    lt = _check_level_type(lt if lt is not None else "model", where)
    arrays = [data]
    sfc = meta.arrays.get("data_sfc")
    if sfc is not None:
        if sfc.ndim != 4:
            raise SchemaError(f"{where}: 'data_sfc' has shape {sfc.shape}; expected 4-D (time, field, lat, lon)")
        arrays.append(sfc)
    fields: dict[str, FieldInfo] = {}
    for arr in arrays:
        _numeric(arr, where)
        nt, (ny, nx) = arr.shape[0], arr.shape[-2:]
        if nt != time.size or (ny, nx) != grid.shape:
            raise SchemaError(
                f"{where}: array {arr.name!r} has shape {arr.shape}; expected time {time.size} and grid "
                f"{grid.shape} from the coordinates"
            )
        is_sfc = arr.ndim == 4
        fnames = _names_attr(arr, meta, "sfc_fields" if is_sfc else "fields", arr.shape[1], where)
        for i, (name, unit) in enumerate(zip(fnames, _units(arr, fnames))):
            if name in fields:
                raise SchemaError(f"{where}: field {name!r} appears twice (in {fields[name].array!r} and {arr.name!r})")
            fields[name] = FieldInfo(
                name=name, array=arr.name, field_index=i, levels=None if is_sfc else levels.copy(),
                level_type="surface" if is_sfc else lt, has_time=True, units=unit, dtype=arr.dtype,
                axes=(0, 1, None, 2, 3) if is_sfc else (0, 1, 2, 3, 4),
                attrs={k: arr.attrs[k] for k in ARRAY_WIDE_ATTRS if k in arr.attrs},
            )  # fmt: skip
    return Layout("atmorep", grid, time, fields, tuple(a.name for a in arrays), tuple(coords))


def _warn_grid_not_fields(meta: StoreMetadata, not_fields: Mapping[str, str], grid_dims: tuple[str, str],
                          where: str) -> None:
    """Log a WARNING for each array left out of the fields that spans both grid dimensions: most likely a real field
    written wrong (dims out of order, a level dimension whose coordinate was dropped), not a coordinate such as
    CESM's ``gw(lat)``. Once per store, array and reason in a process (the loader, its extract and
    a Normalizer check each open the same store)."""
    for name, why in not_fields.items():
        if _quiet:
            return
        if set(grid_dims) <= set(meta.arrays[name].dims or ()) and (where, name, why) not in _warned:
            _warned.add((where, name, why))
            log.warning("%s: array %r spans the grid %s but is not a field, so fastload leaves it out: %s",
                        where, name, grid_dims, why)


# -- per-variable (and mesh) fields -------------------------------------------------------------------------------
def values_why_not(info: ArrayInfo) -> str | None:
    """Why an array's values cannot be a field's, whatever the layout: a dtype no field has (not bool, integer or
    float: complex, datetime) or dates coded as numbers (CF units ``... since ...``); None when they can."""
    if info.dtype.kind not in "biuf":
        return f"dtype {info.dtype}; a field must be numeric"
    units = _time_coded(info)
    if units is not None:
        return f"it holds dates coded as numbers (units {units!r}); a field must hold values, not dates"
    return None


def _time_coded(info: ArrayInfo) -> str | None:
    """The CF ``units`` of an array of numbers that codes dates (``"hours since 1979-01-01"``, as xarray writes any
    datetime variable), else None."""
    units = info.attrs.get("units")
    return units if is_date_units(units) else None


@dataclasses.dataclass(slots=True, eq=False)
class FieldSorter:
    """Sorts the arrays over a grid into fields and arrays that cannot be fields, with why; one for the per-variable
    layout (``grid_dims`` ``(y, x)``) and for a mesh (``grid_dims`` ``(node,)``, :mod:`._mesh`).

    An array whose dims are not ``(time, [level], *grid_dims)``, whose level dimension has no coordinate array
    (``level_coords``), or whose values are not numbers (strings, datetimes, CF-coded dates) is no field: it lands
    in :attr:`not_fields` with why. What would make sampling wrong still raises :class:`SchemaError`: a shape that
    disagrees with the coordinates, a time axis without a time coordinate, a level coordinate that is not numbers
    or names an unknown level type."""

    meta: StoreMetadata
    read: ReadFull
    where: str
    tdim: str
    time: np.ndarray | None
    grid_dims: tuple[str, ...]
    grid_shape: tuple[int, ...]
    """Extent of the grid dims, as a field's trailing shape: ``(ny, nx)``, or ``(n_nodes,)`` on a mesh."""
    level_coords: set[str]
    """1-D arrays that may give a level dimension its values (named after it)."""
    used: set[str]
    """Coordinate arrays in use; level coordinates that fields use are added."""
    fields: dict[str, FieldInfo] = dataclasses.field(default_factory=dict)
    not_fields: dict[str, str] = dataclasses.field(default_factory=dict)
    _levels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def expected(self) -> str:
        return f"({self.tdim}, [level], {', '.join(self.grid_dims)})"

    def add(self, info: ArrayInfo) -> None:
        """Sort one array with dimension names into :attr:`fields` or :attr:`not_fields`."""
        why = self._why_not(info)
        if why is None:
            self.fields[info.name] = self._field(info)
        else:
            self.not_fields[info.name] = why

    def _split(self, dims: tuple[str, ...]) -> tuple[bool, str | None, bool]:
        """(has a time axis, the level dim or None, whether the dims are a field's)."""
        n = len(self.grid_dims)
        lead = list(dims[:-n])
        has_time = bool(lead) and lead[0] == self.tdim
        if has_time:
            lead.pop(0)
        level_dim = lead.pop(0) if lead else None
        ok = tuple(dims[-n:]) == self.grid_dims and len(dims) <= n + 2 and not lead and level_dim != self.tdim
        return has_time, level_dim, ok

    def _why_not(self, info: ArrayInfo) -> str | None:
        dims = info.dims
        assert dims is not None
        _, level_dim, ok = self._split(dims)
        if not ok:
            return f"dims {dims}; a field has dims {self.expected}"
        if level_dim is not None and level_dim not in self.level_coords:
            return f"dimension {level_dim!r} has no 1-D coordinate array {level_dim!r} giving level values"
        return values_why_not(info)

    def _level_values(self, level_dim: str) -> np.ndarray:
        if level_dim not in self._levels:
            vals = np.asarray(self.read(level_dim))
            if vals.dtype.kind not in "iuf":
                raise SchemaError(
                    f"{self.where}: level coordinate {level_dim!r} has dtype {vals.dtype}; expected numbers"
                )
            self._levels[level_dim] = _distinct_levels(vals.astype(np.float64).reshape(-1),
                                                             f"level coordinate {level_dim!r}", self.where)
        self.used.add(level_dim)
        return self._levels[level_dim].copy()

    def _field(self, info: ArrayInfo) -> FieldInfo:
        name, dims = info.name, info.dims
        assert dims is not None
        has_time, level_dim, _ = self._split(dims)
        if has_time and self.time is None:
            raise SchemaError(
                f"{self.where}: array {name!r} has a {self.tdim!r} axis but the store has no time coordinate"
            )
        levels = lt = None
        if level_dim is not None:
            levels = self._level_values(level_dim)
            lt = _check_level_type(
                level_type_of(level_dim, self.meta.arrays[level_dim].attrs), f"{self.where}/{level_dim}"
            )
        want = (
            ((self.time.size,) if has_time and self.time is not None else ())
            + ((levels.size,) if levels is not None else ())
            + tuple(self.grid_shape)
        )
        if info.shape != want:
            raise SchemaError(
                f"{self.where}: array {name!r} has shape {info.shape} over dims {dims}, but the coordinates give "
                f"{want}"
            )
        t_ax = 0 if has_time else None
        l_ax = int(has_time) if levels is not None else None
        y_ax = info.ndim - 2 if len(self.grid_dims) == 2 else None  # a mesh has no y axis
        units = info.attrs.get("units")
        return FieldInfo(
            name=name, array=name, field_index=None, levels=levels, level_type=lt, has_time=has_time,
            units=None if units is None else str(units), dtype=info.dtype,
            axes=(t_ax, None, l_ax, y_ax, info.ndim - 1), attrs=dict(info.attrs),
        )  # fmt: skip

    def finish(self, none_found: str) -> dict[str, FieldInfo]:
        """Warn of the arrays left out that span the grid (:func:`_warn_grid_not_fields`); raise
        :class:`SchemaError` (``none_found``, then each left-out array's reason) when no field was found."""
        _warn_grid_not_fields(self.meta, self.not_fields, self.grid_dims, self.where)
        if not self.fields:
            why = "".join(f"; {n!r} is not a field: {r}" for n, r in self.not_fields.items())
            raise SchemaError(f"{self.where}: {none_found}; arrays present: {sorted(self.meta.arrays)}{why}")
        return self.fields


def _per_variable(meta: StoreMetadata, read: ReadFull, where: str) -> Layout:
    grid, lat_name, lon_name = _grid(meta, read, where)
    tname, time = _time_axis(meta, read, where)
    tdim = (meta.arrays[tname].dims or (tname,))[0] if tname else "time"
    ydim, xdim = grid.dims
    coord_names = {lat_name, lon_name} | ({tname} if tname else set())
    # 1-D arrays named after their own dimension are coordinates (possible vertical axes)
    dim_coords = {n for n, a in meta.arrays.items() if a.ndim == 1 and (a.dims or (None,))[0] == n}
    bounds = {a.attrs.get("bounds") for a in meta.arrays.values()} - {None}
    # arrays on the grid that cannot be fields (CESM's gw(lat), lat_edges(lat, nv)) go to sorter.not_fields
    sorter = FieldSorter(meta, read, where, tdim, time, (ydim, xdim), grid.shape, dim_coords, set(coord_names))
    for name, info in meta.arrays.items():
        if name in coord_names or name in dim_coords or info.ndim == 0:
            continue
        if info.dims is None:
            raise SchemaError(
                f"{where}: array {name!r} has no dimension names (_ARRAY_DIMENSIONS in v2, dimension_names in v3); "
                f"expected e.g. ('{tdim}', 'level', '{ydim}', '{xdim}')"
            )
        if ydim not in info.dims and xdim not in info.dims:
            continue  # not a field on this grid (e.g. time bounds): ignored
        if name in bounds or name.endswith(("_bnds", "_bounds")):
            continue
        sorter.add(info)
    fields = sorter.finish(
        "no data arrays found: expected a 5-D 'data' array (AtmoRep layout) or arrays with dims "
        f"{sorter.expected} (per-variable layout)"
    )
    return Layout("per_variable", grid, time, fields, tuple(fields), tuple(sorted(sorter.used)), sorter.not_fields)
