"""Write zarr stores in the per-variable layout that xarray reads as it is, atomically and block by block.

Every tool that writes a store (``fastload synth``, ``convert``, ``rechunk``) goes through :class:`StoreWriter`,
so they share one layout, one chunking policy, and one guarantee: the store is built under a temporary sibling
path ``<out>.tmp-<host>-<pid>-<start>-w<n>`` and renamed to ``<out>`` only by :meth:`StoreWriter.commit`. An exception or
Ctrl-C removes the temporary directory, so nothing that opens as a store ever appears at ``<out>`` half written. A
writer killed outright (SIGKILL: the OOM killer, a preempted job) cannot clean up: its temporary carries the root
attribute ``fastload_unfinished`` (deleted just before the rename; :func:`fastload._write_temps.unfinished_message`)
and the next writer of the same ``<out>`` on that host removes it once that process is provably gone
(:func:`fastload._write_temps.remove_stale_temporaries`). Ctrl-C
is held back while a zarr call runs (:func:`sigint_deferred`): zarr-python writes chunks on its own event-loop
thread, and an interrupt that stopped only the main thread's wait let those writes recreate files in the
temporary directory after it was removed.
``overwrite`` replaces only a zarr store (or an empty directory) and never one that holds the source being
copied (:func:`check_output`): a mistyped OUT such as ``.`` or the data folder must not delete data.

Layout (WeatherBench2 / ARCO-ERA5 style): one array per variable with dimensions ``(time, level, latitude,
longitude)``, ``(time, latitude, longitude)`` for surface fields or ``(latitude, longitude)`` for static ones,
named in ``_ARRAY_DIMENSIONS`` (zarr v2) or ``dimension_names`` (v3); coordinate arrays ``time`` (int64, CF units
``hours since 1979-01-01``), ``latitude``, ``longitude`` and ``level`` (attribute ``level_type``); attributes
``units`` and ``long_name`` on each variable; consolidated metadata. ``dim_names`` stores these four dimensions
and their coordinates under other names (``fastload rechunk`` keeps a source's ``valid_time``, ``pressure_level``),
and :meth:`StoreWriter.add_coordinate` adds other small arrays along them (CDS's ``expver(valid_time)``). Floating-point variables have fill value NaN,
so a missing value (land in ocean data) and a missing chunk both read as NaN.

Default chunking, :data:`DEFAULT_CHUNKS` = (time 6, level 1, latitude 64, longitude 128). An AtmoRep sample is a
box of 36 h x 54 x 108 points; a box of extent ``B`` placed at random over chunks of extent ``C`` touches on
average ``1 + (B - 1) / C`` chunks per axis and decodes ``C * (1 + (B - 1) / C) / B`` times the bytes it uses.
For (6, 64, 128) that is about 23 chunks of 192 KiB per field and level, 5.4x the useful bytes, with equal
amplification in latitude and longitude (2.17 and 2.18: the tile has the box's 1:2 aspect). Smaller tiles
(4, 32, 64) decode 2.7x but need 69 chunks, and at about 0.04 ms per direct chunk read plus 3.3 GB/s decode
(fastload/DESIGN facts) cost more time (3.5 ms vs 2.3 ms per field-level); larger ones (12, 64, 128) save a little
time but double the memory per time block and hurt short time windows. AtmoRep's own chunking (8 h x all fields x
all levels x the globe) decodes about 245x the useful bytes per field and level. One level per chunk lets a config
that samples a subset of levels read only those.

Use::

    with StoreWriter("out.zarr", zarr_format=2) as w:
        w.set_time(times)                                  # datetime64 array
        w.set_grid(lat, lon)
        w.set_levels([96, 105, 114, 123, 137], level_type="model")
        w.add_variable("temperature", ("time", "level", "latitude", "longitude"), units="K")
        for sl in w.time_blocks("temperature"):
            w.write("temperature", block_for(sl), start=sl.start)
    # leaving the block commits; an exception aborts and removes the temporary directory
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import UnstableSpecificationWarning

from ._write_atomic import check_output, move_into_place, sigint_deferred
from ._write_encoding import (
    CALENDAR,
    CODECS,
    DEFAULT_CHUNKS,
    DEFAULT_CODEC,
    TIME_UNITS,
    _clamped,
    _jsonable,
    attr_fill_value,  # noqa: F401 - imported from here by fastload.stats and fastload.rechunk
    chunks_for,
    compressors,
    declared_fill_value,
    encode_time,
    parse_ints,
)
from ._write_temps import (
    UNFINISHED_ATTR,
    _inode,
    check_temporary,
    drop_temporary,
    live_writer_of,
    make_temporary,
    release_temporary,
    remove_marker,
    remove_stale_temporaries,
    root_attrs,
    unfinished_attr,
    write_marker,
    writing,
)
from .errors import ConfigError, SchemaError, StoreError
from .store._cf import level_type_of

log = logging.getLogger("fastload")

__all__ = [
    "StoreWriter",
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_CHUNKS",
    "LEVEL_TYPES",
    "TIME_UNITS",
    "CALENDAR",
    "compressors",
    "chunks_for",
    "parse_ints",
    "encode_time",
    "check_output",
    "move_into_place",
    "sigint_deferred",
    "declared_fill_value",
]

LEVEL_TYPES = ("model", "pressure", "depth", "height")
_LEVEL_DEFAULTS = {  # level_type -> (units, positive, long_name)
    "model": ("1", None, "model level number"),
    "pressure": ("hPa", "down", "pressure level"),
    "depth": ("m", "down", "depth"),
    "height": ("m", "up", "height above ground"),
}
# Dimensions a variable may have, in this order; the last two are always latitude, longitude.
# "field"/"sfc_field" are the field axes of the AtmoRep layout (no coordinate array: names are in attributes).
DIMS = ("time", "field", "sfc_field", "level", "latitude", "longitude")
_COORDS = ("time", "level", "latitude", "longitude")
_TYPE_UNITS: Any = type("_TypeUnits", (), {"__repr__": lambda self: "<the level type's units>"})()
"""``set_levels``'s default units: those of the level type (``hPa`` for pressure); ``None`` writes none."""


class StoreWriter:
    """Build a store under ``<out>.tmp-<host>-<pid>-<start>-w<n>`` (a temporary of its own) and rename it to ``out``
    on :meth:`commit`, once it has checked that the temporary is still the one it created.

    Parameters
    ----------
    out : str or PathLike
        Where the finished store will be (a local directory).
    zarr_format : {2, 3}
        Zarr format of the store.
    overwrite : bool
        Replace an existing ``out`` at commit; otherwise an existing ``out`` raises :class:`StoreError`. Only a
        zarr store or an empty directory is replaced (:func:`check_output`).
    attrs : mapping, optional
        Attributes of the root group (``fastload_layout`` defaults to ``"per_variable"``).
    sources : sequence of path, optional
        Stores or files the new store is made from; an ``out`` at, inside or around one of them is refused.
    dim_names : mapping, optional
        Stored names of the dimensions ``time``, ``level``, ``latitude``, ``longitude`` and of their coordinate
        arrays, e.g. ``{"time": "valid_time", "level": "pressure_level"}``; the methods still take the usual names.
    default_attrs : bool
        Add the CF attributes a new store should have where they are not given: the root's ``Conventions``, the
        coordinates' ``standard_name``, ``long_name``, ``units`` (degrees, the level type's) and ``positive``, and
        the level coordinate's ``level_type``. ``False`` (a copy: ``fastload rechunk``) writes only the attributes
        given, plus what fastload needs to read the store as it read the source: the layout's root attributes,
        the time's CF ``units``/``calendar`` (an encoding) and ``level_type`` where the level coordinate's name
        and attributes do not already say it (:func:`fastload.store._cf.level_type_of`).

    Notes
    -----
    Used as a context manager it commits on a clean exit and aborts (removes the temporary directory) on any
    exception, ``KeyboardInterrupt`` included. Creating a writer first removes the temporaries of ``out`` left by
    writers on this host that were killed (:func:`fastload._write_temps.remove_stale_temporaries`) and, without
    ``overwrite``, refuses (:class:`StoreError`) while a live writer on this host, this process included, is
    writing ``out`` (:func:`fastload._write_temps.live_writer_of`). Writes must be aligned to the write unit of the array (its shard
    when sharded, else its chunk), so no chunk is read back and rewritten; :meth:`commit` checks that every
    write unit of every variable was written.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        zarr_format: int = 2,
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
        sources: Sequence[str | os.PathLike[str]] = (),
        dim_names: Mapping[str, str] | None = None,
        default_attrs: bool = True,
    ):
        if zarr_format not in (2, 3):
            raise ConfigError(f"zarr_format: expected 2 or 3, got {zarr_format!r}")
        self.names = {d: d for d in _COORDS}  # usual name -> stored name
        for d, n in (dim_names or {}).items():
            if d not in _COORDS or not isinstance(n, str) or not n or "/" in n:
                raise ConfigError(f"dim_names: expected {{one of {list(_COORDS)}: a name without '/'}}, got {d!r}: {n!r}")
            self.names[d] = n
        if len(set(self.names.values())) != len(self.names) or set(self.names.values()) & set(DIMS[1:3]):
            raise ConfigError(f"dim_names: stored dimension names {self.names} must be distinct and not field axes")
        self.out = check_output(out, overwrite=overwrite, sources=sources)
        self.zarr_format = zarr_format
        self.overwrite = overwrite
        self.default_attrs = default_attrs
        remove_stale_temporaries(self.out)  # what killed writers of out on this host left (SIGKILL runs no cleanup)
        other = None if overwrite else live_writer_of(self.out)
        if other is not None:  # both would write to the end, and the later one fail only at commit
            raise StoreError(f"{self.out}: another writer is writing it (its unfinished store is {other}); without "
                             "overwrite only one can put its store there: wait for it, or stop it, or pass "
                             "overwrite=True (--overwrite) to replace its store when this one is done")  # fmt: skip
        # names this process, its start time and this writer: created here, so no other writer's (nor one of ours)
        self.tmp = make_temporary(self.out)
        # a writer dropped unfinished (never committed nor aborted) leaves neither its temporary nor a claim on out
        self._finalizer = weakref.finalize(self, drop_temporary, self.tmp)
        self._inode = _inode(self.tmp)  # commit publishes only this directory (check_temporary)
        self._token = f"{unfinished_attr(self.out)} (writer {uuid.uuid4().hex})"
        root = {"fastload_layout": "per_variable", **({"Conventions": "CF-1.8"} if default_attrs else {}),
                **(attrs or {}), UNFINISHED_ATTR: self._token}  # fmt: skip
        try:
            with self._writing("the root group"):
                self.group = zarr.open_group(
                    zarr.storage.LocalStore(self.tmp), mode="w-", zarr_format=zarr_format,
                    attributes=_jsonable(root),
                )  # fmt: skip
                write_marker(self.tmp, self._token)  # zarr never remakes it: a remade temporary has none (commit)
        except BaseException:  # Ctrl-C included: there is no writer to abort yet
            self._finalizer()
            raise
        self.sizes: dict[str, int] = {}
        self.arrays: dict[str, zarr.Array] = {}
        self.dims: dict[str, tuple[str, ...]] = {}
        self._units: dict[str, tuple[int, ...]] = {}
        self._written: dict[str, np.ndarray] = {}
        self._extra: set[str] = set()  # add_coordinate's arrays
        self._done = False

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A zarr call writing ``what`` into the temporary: Ctrl-C held back until it is done
        (:func:`sigint_deferred`), an OSError (a full disk) raised as a :class:`StoreError` naming the temporary,
        ``what`` and the error (:func:`fastload._write_temps.writing`)."""
        with writing(self.tmp, self.out, what), sigint_deferred():
            yield

    # -- coordinates ------------------------------------------------------------------------------------------
    def _coord(self, name: str, values: np.ndarray, attrs: Mapping[str, Any], fill_value: Any = None) -> None:
        if name in self.sizes:
            raise StoreError(f"{self.out}: coordinate {name!r} was already set")
        values = np.asarray(values)
        if values.ndim != 1 or values.size == 0:
            raise SchemaError(f"{name}: expected a non-empty 1-D coordinate, got shape {values.shape}")
        kw = self._dim_kwargs((name,), attrs)
        with self._writing(f"coordinate {self.names[name]!r}"):
            arr = self.group.create_array(
                self.names[name], shape=values.shape, chunks=values.shape, dtype=values.dtype, fill_value=fill_value, **kw
            )
            arr[...] = values
        self.sizes[name] = values.size

    def set_time(self, times: np.ndarray, *, attrs: Mapping[str, Any] | None = None) -> None:
        """Write the ``time`` coordinate from datetime64 values (int64, CF units, proleptic Gregorian) with
        ``attrs`` (their ``units`` and ``calendar`` are the encoding's, not taken)."""
        try:
            values, units = encode_time(times)
        except SchemaError as e:
            raise SchemaError(f"{self.out}: {e}") from None
        given = {k: v for k, v in (attrs or {}).items() if k not in ("units", "calendar")}
        attrs = {"standard_name": "time", "long_name": "time"} if self.default_attrs else {}
        attrs = {"units": units, "calendar": CALENDAR, **attrs, **given}
        self._coord("time", values, attrs, fill_value=None if self.zarr_format == 2 else 0)

    def set_grid(
        self,
        latitude: np.ndarray,
        longitude: np.ndarray,
        *,
        lat_attrs: Mapping[str, Any] | None = None,
        lon_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the ``latitude`` and ``longitude`` coordinates (degrees, in the order given: never flipped), in
        their dtype when it is float32 or float64 (as xarray writes them); other values (integers, float16, which
        pandas indexes as float64) as float64."""
        lat, lon = (np.asarray(v) for v in (latitude, longitude))
        lat, lon = (v if v.dtype in (np.float32, np.float64) else v.astype(np.float64) for v in (lat, lon))
        for name, v, lo, hi in (("latitude", lat, -90.0, 90.0), ("longitude", lon, -360.0, 360.0)):
            if v.ndim != 1 or not np.isfinite(v).all():
                raise SchemaError(f"{name}: expected finite 1-D values in degrees, got shape {v.shape}")
            if v.size and (v.min() < lo or v.max() > hi):
                raise SchemaError(f"{name}: values outside [{lo}, {hi}] degrees: {v.min()} .. {v.max()}")
            d = np.diff(np.unwrap(v, period=360.0) if name == "longitude" else v)  # 350, 355, 0, 5 is fine
            if v.size > 1 and not ((d > 0).all() or (d < 0).all()):
                raise SchemaError(f"{name}: expected strictly monotonic values")
        la, lo_ = dict(lat_attrs or {}), dict(lon_attrs or {})
        if self.default_attrs:
            la = {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude", **la}
            lo_ = {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude", **lo_}
        nofill = None if self.zarr_format == 2 else 0.0
        self._coord("latitude", lat, la, nofill)
        self._coord("longitude", lon, lo_, nofill)
        with self._writing("the root attributes"):
            self.group.attrs.update(
                {"latitude_order": "descending" if lat.size > 1 and lat[0] > lat[-1] else "ascending"}
            )

    def set_levels(
        self,
        values: Sequence[float],
        *,
        level_type: str,
        units: str | None = _TYPE_UNITS,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the ``level`` coordinate with its ``level_type`` (model, pressure, depth, height) and ``units``:
        by default the level type's (``hPa``, ``m``, ``1``), ``None`` for none (levels whose units are not known
        must not be labelled: 85000 Pa is not 85000 hPa). See ``default_attrs`` for the other attributes."""
        if level_type not in LEVEL_TYPES:
            raise ConfigError(f"level_type: expected one of {list(LEVEL_TYPES)}, got {level_type!r}")
        v = np.asarray(values)
        if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
            raise SchemaError(f"level: expected numeric level values, got dtype {v.dtype}")
        if v.ndim == 1 and len(np.unique(v)) != v.size:
            raise SchemaError(f"level: duplicate level values in {v.tolist()}")
        default_units, positive, long_name = _LEVEL_DEFAULTS[level_type]
        units = default_units if units is _TYPE_UNITS else units
        a: dict[str, Any] = {"level_type": level_type}
        if self.default_attrs:
            a["long_name"] = long_name
            if positive:
                a["positive"] = positive
        if units is not None:
            a["units"] = units
        a.update(attrs or {})
        a["level_type"] = level_type
        if not self.default_attrs and "level_type" not in (attrs or {}):  # only where fastload needs it
            rest = {k: v for k, v in a.items() if k != "level_type"}
            if (level_type_of(self.names["level"], rest) or "model") == level_type:
                del a["level_type"]
        self._coord("level", v, a, fill_value=None if self.zarr_format == 2 else 0)

    # -- variables --------------------------------------------------------------------------------------------
    def _dim_kwargs(self, dims: Sequence[str], attrs: Mapping[str, Any]) -> dict[str, Any]:
        attrs = _jsonable(dict(attrs))
        dims = [self.names.get(d, d) for d in dims]
        if self.zarr_format == 2:
            return {"attributes": {**attrs, "_ARRAY_DIMENSIONS": dims}}
        return {"attributes": attrs, "dimension_names": tuple(dims)}

    def add_variable(
        self,
        name: str,
        dims: Sequence[str],
        *,
        shape: Sequence[int] | None = None,
        dtype: Any = "float32",
        chunks: Sequence[int] | None = None,
        codec: str = DEFAULT_CODEC,
        level: int | None = None,
        shards: Sequence[int] | None = None,
        units: str | None = None,
        long_name: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        fill_value: Any = None,
    ) -> zarr.Array:
        """Create an empty data array.

        Parameters
        ----------
        name : str
            Array name (the variable).
        dims : sequence of str
            An ordered subset of (time, field, sfc_field, level, latitude, longitude) ending with latitude,
            longitude.
        shape : sequence of int, optional
            Needed only for field axes; other extents come from the coordinates (and are checked against it).
        dtype : dtype
            Stored dtype (float32 by default).
        chunks : sequence of int, optional
            Chunk shape in (time, level, latitude, longitude) terms (:func:`chunks_for`) or, with as many entries
            as ``dims``, per dimension; clamped to the array's shape either way. Default :data:`DEFAULT_CHUNKS`.
            With ``shards`` these are the inner chunks.
        codec, level : str, int
            One of :data:`CODECS` and its level (:func:`compressors`).
        shards : sequence of int, optional
            Zarr v3 shard shape (per dimension, or in (time, level, latitude, longitude) terms, clamped to the
            array's shape); each entry a multiple of the chunk. Only for ``zarr_format=3``.
        units, long_name, attrs :
            Variable attributes.
        fill_value : optional
            Default NaN for floating-point dtypes; none for other dtypes in v2 (xarray would mask a 0 fill value),
            0 in v3 (which requires one).
        """
        dims = tuple(dims)
        self._check_new(name)
        pos = [DIMS.index(d) if d in DIMS else -1 for d in dims]
        if -1 in pos or pos != sorted(pos) or len(set(dims)) != len(dims) or dims[-2:] != ("latitude", "longitude"):
            raise SchemaError(
                f"variable {name!r}: dimensions {dims} are not an ordered subset of {DIMS} ending with "
                "('latitude', 'longitude')"
            )
        full_shape = []
        for i, d in enumerate(dims):
            given = None if shape is None else int(shape[i])
            if d in _COORDS:
                if d not in self.sizes:
                    raise StoreError(f"variable {name!r}: set the {d!r} coordinate before adding variables on it")
                if given is not None and given != self.sizes[d]:
                    raise SchemaError(f"variable {name!r}: {d} has {given} entries but the coordinate has {self.sizes[d]}")
                full_shape.append(self.sizes[d])
            else:
                if given is None:
                    raise ConfigError(f"variable {name!r}: pass shape= for the {d!r} axis")
                full_shape.append(given)
        shp = tuple(full_shape)
        chunk_shape = _clamped(name, dims, shp, chunks, "chunks")
        if shards is not None and self.zarr_format != 3:
            raise ConfigError("shards: sharding needs zarr_format=3")
        shard_shape = None
        if shards is not None:
            shard_shape = _clamped(name, dims, shp, shards, "shards")
            for d, c, s, n in zip(dims, chunk_shape, shard_shape, shp):
                if s % c and s != n:  # a shard may be clamped to the array extent
                    raise ConfigError(f"shards: {d} shard {s} is not a multiple of the chunk {c} (variable {name!r})")
            shard_shape = tuple(-(-s // c) * c for s, c in zip(shard_shape, chunk_shape))
        dt = np.dtype(dtype)
        if fill_value is None and dt.kind == "f":
            fill_value = np.nan
        elif fill_value is None and self.zarr_format == 3:
            fill_value = 0  # v3 needs one; xarray masks only with a _FillValue attribute there
        a = {k: v for k, v in (("units", units), ("long_name", long_name)) if v is not None}
        a.update(attrs or {})
        with warnings.catch_warnings(), self._writing(f"variable {name!r}"):
            # numcodecs.lz4 in v3 is not in the spec; we document it instead of warning at every write
            warnings.simplefilter("ignore", category=UserWarning)
            arr = self.group.create_array(
                name,
                shape=shp,
                chunks=chunk_shape,
                shards=shard_shape,
                dtype=dt,
                fill_value=fill_value,
                compressors=compressors(codec, self.zarr_format, level),
                **self._dim_kwargs(dims, a),
            )
        self.arrays[name] = arr
        self.dims[name] = dims
        self._units[name] = shard_shape or chunk_shape
        self._written[name] = np.zeros([-(-n // u) for n, u in zip(shp, self._units[name])], dtype=bool)
        return arr

    def _check_new(self, name: str) -> None:
        if name in self.arrays or name in self._extra or name in _COORDS or name in self.names.values():
            raise ConfigError(f"variable {name!r}: already defined or a coordinate name")

    def add_coordinate(
        self, name: str, dims: Sequence[str], values: Any, *, attrs: Mapping[str, Any] | None = None,
        fill_value: Any = None,
    ) -> None:  # fmt: skip
        """Write a small array along some of the dimensions (or none: a scalar) at once, e.g. CDS's
        ``expver(valid_time)`` or ``number``; any dtype zarr stores (strings as fixed-length unicode).

        ``dims`` are usual names (time, level, latitude, longitude, in any order); the shape must match their
        coordinates. xarray reads it as a coordinate when a variable's ``coordinates`` attribute names it.
        """
        self._check_new(name)
        dims = tuple(dims)
        values = np.asarray(values)
        if values.dtype.kind in "OT":  # variable-length strings or bytes: stored fixed-length, read back the same
            obj = values.astype(object)  # (NumPy's StringDType, kind T, as zarr-python 3.1 reads vlen-utf8, casts only so)
            values = obj.astype(bytes) if obj.size and all(isinstance(v, bytes) for v in obj.flat) else obj.astype(str)
        bad = [d for d in dims if d not in _COORDS or d not in self.sizes]
        if bad or len(set(dims)) != len(dims):
            raise SchemaError(f"coordinate {name!r}: dimensions {dims}; expected distinct ones of those set "
                              f"({[d for d in _COORDS if d in self.sizes]})")  # fmt: skip
        want = tuple(self.sizes[d] for d in dims)
        if values.shape != want:
            raise SchemaError(f"coordinate {name!r}: shape {values.shape} but its dimensions {dims} give {want}")
        with warnings.catch_warnings(), self._writing(f"coordinate {name!r}"):
            warnings.simplefilter("ignore", category=UnstableSpecificationWarning)  # fixed-length strings in v3
            arr = self.group.create_array(
                name, shape=values.shape, chunks=values.shape if values.ndim else "auto", dtype=values.dtype,
                fill_value=fill_value, **self._dim_kwargs(dims, attrs or {}),
            )  # fmt: skip
            arr[...] = values
        self._extra.add(name)

    def write_unit(self, name: str) -> tuple[int, ...]:
        """Shape of the aligned unit of writes of a variable: its shard when sharded, else its chunk."""
        return self._units[self._known(name)]

    def time_blocks(self, name: str, steps: int | None = None) -> Iterator[slice]:
        """Aligned slices along the first axis of ``name`` (time for most variables).

        ``steps`` (rounded up to a multiple of the write unit) sets the block length; by default one write unit.
        """
        n = self.arrays[self._known(name)].shape[0]
        u = self._units[name][0]
        step = u if steps is None else max(u, -(-steps // u) * u)
        for t0 in range(0, n, step):
            yield slice(t0, min(t0 + step, n))

    def _known(self, name: str) -> str:
        if name not in self.arrays:
            raise StoreError(f"{self.out}: no variable {name!r}; defined: {sorted(self.arrays)}")
        return name

    def write(self, name: str, block: np.ndarray, start: int | Sequence[int] = 0) -> None:
        """Write ``block`` at ``start`` (an int for the first axis, or one offset per axis), aligned to the unit."""
        arr = self.arrays[self._known(name)]
        block = np.asarray(block)
        if block.ndim != arr.ndim:
            raise SchemaError(f"variable {name!r}: block has {block.ndim} dimensions, the array {arr.ndim}")
        starts = (int(start),) + (0,) * (arr.ndim - 1) if np.ndim(start) == 0 else tuple(int(s) for s in start)
        unit = self._units[name]
        region = []
        for d, s, b, n, u in zip(self.dims[name], starts, block.shape, arr.shape, unit):
            if s < 0 or s + b > n:
                raise SchemaError(f"variable {name!r}: {d} block {s}:{s + b} outside 0:{n}")
            if s % u or ((s + b) % u and s + b != n):
                raise ConfigError(
                    f"variable {name!r}: {d} block {s}:{s + b} is not aligned to the write unit {u} "
                    "(write whole chunks, or whole shards when sharded)"
                )
            region.append(slice(s, s + b))
        at = ", ".join(f"{d} {r.start}:{r.stop}" for d, r in zip(self.dims[name], region))
        with self._writing(f"variable {name!r} ({at})"):
            arr[tuple(region)] = block.astype(arr.dtype, copy=False)  # on zarr's thread: done before Ctrl-C acts
        self._written[name][tuple(slice(r.start // u, -(-r.stop // u)) for r, u in zip(region, unit))] = True

    def update_attrs(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Add attributes to a variable (e.g. a count of missing values known only after streaming)."""
        with self._writing(f"the attributes of variable {name!r}"):
            self.arrays[self._known(name)].attrs.update(_jsonable(dict(attrs)))

    # -- finishing --------------------------------------------------------------------------------------------
    def commit(self, *, require_complete: bool = True) -> Path:
        """Consolidate metadata and rename the temporary store to ``out``; returns ``out``.

        Raises :class:`StoreError` when a variable has unwritten blocks (``require_complete``), when ``out``
        appeared in the meantime and ``overwrite`` is false (the temporary store is removed in these cases), and when
        the temporary is no longer the one this writer created (removed or replaced while it was written:
        :func:`fastload._write_temps.check_temporary`).
        """
        if self._done:
            raise StoreError(f"{self.out}: this writer was already committed or aborted")
        try:
            if require_complete:
                for name, w in self._written.items():
                    if not w.all():
                        raise StoreError(
                            f"{self.out}: variable {name!r} has {int((~w).sum())} of {w.size} write units "
                            "never written; refusing to commit an incomplete store"
                        )
            check_temporary(self.tmp, self._inode, self._token, self.out)  # before its metadata is rewritten
            # v3 consolidated metadata: a zarr-python extension
            with warnings.catch_warnings(), self._writing("the consolidated metadata"):
                remove_marker(self.tmp)  # not zarr's: the published store holds no such file
                warnings.simplefilter("ignore", category=UserWarning)
                warnings.simplefilter("ignore", category=UnstableSpecificationWarning)  # add_coordinate's strings
                del self.group.attrs[UNFINISHED_ATTR]  # complete: what is renamed into place is a finished store
                zarr.consolidate_metadata(self.group.store)
            move_into_place(self.tmp, self.out, overwrite=self.overwrite, inode=self._inode)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._finalizer.detach()
        release_temporary(self.tmp)
        return self.out

    def abort(self) -> None:
        """Remove the temporary store; nothing is left at ``out``. Safe to call twice. A directory at the
        temporary's name that is not the one this writer created and holds another store's metadata is kept."""
        self._done = True
        if _inode(self.tmp) not in (None, self._inode):
            attrs = root_attrs(self.tmp)
            if attrs is not None and attrs.get(UNFINISHED_ATTR) != self._token:
                log.warning("%s: not the temporary this writer of %s created (replaced while it wrote); kept",
                            self.tmp, self.out)  # fmt: skip
                self._finalizer.detach()
                release_temporary(self.tmp)
                return
        self._finalizer()  # removes it and releases it

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()
