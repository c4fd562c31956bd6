"""From a batch of boxes to the chunks it needs and the per-sample slot tables the gather kernel reads.

This is the bridge between placement (``geometry``) and the reader: for every array it lists the sorted,
de-duplicated chunk indices a batch touches (so each chunk is read and decoded once per batch), and for every
field a table ``table[s, l, it, iy, ix]`` that says, for sample ``s``, output level ``l`` and the ``it``-th,
``iy``-th and ``ix``-th chunk counted from the sample's first chunk (``ix`` modulo the number of x chunks on
periodic grids), where that chunk is. :func:`plan_batch` fills the tables with positions in the unique-chunk
list (-1 where the box skips a chunk, e.g. with ``time_step`` > chunk length); once the reader has put chunk
``u`` of an array in slot ``slot_of[u]`` of its arena ``slots[n_slots, chunk_elems]``,
:meth:`BatchPlan.slot_tables` turns them into the slot tables of the gather contract (``fastload/DESIGN.md``).

A :class:`FieldLayout` is everything about one field's array that the kernels need (shapes, chunking, axis
positions, level indices), taken once from the store; sampling never imports the store, it reads the store's
attributes by name. All work is vectorised NumPy over ``(samples, levels, chunks per axis)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, FastloadError
from .geometry import GridExtent, check_boxes

__all__ = ["FieldLayout", "BatchPlan", "plan_batch", "field_layouts", "missing_of", "NO_AXIS"]

NO_AXIS = 1 << 40
"""Chunk extent used for an axis a field does not have: every index maps to chunk 0 (the stride is 0)."""
NO_MISSING = np.zeros(0, np.float64)
"""The missing markers of a field that declares none (NaN is always missing, with or without markers)."""


def check_field_name(store: Any, name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one of the store's fields; an array the store left out as not a
    field (``store.not_fields``) is named with the reason."""
    if name in store.fields:
        return
    why = (getattr(store, "not_fields", None) or {}).get(name)
    what = f"array {name!r} of the store {store.path!r} is not a field: {why}" if why else \
        f"field {name!r} is not in the store {store.path!r}"
    raise ConfigError(f"{what}; fields: {list(store.fields)}")


def missing_of(store: Any, name: str) -> np.ndarray:
    """The stored values of field ``name`` that the gather writes as NaN, as float64 (the kernels compare each
    stored value converted to float64: exact for floats and for integers up to 2**53):
    :func:`fastload.stats.missing_markers` (``_FillValue``, ``missing_value``, a non-zero zarr v2 ``fill_value``;
    not zarr's default 0; a declared value the dtype cannot hold marks nothing). One that is not a number is a
    ConfigError naming field and value."""
    from ..stats import missing_markers  # the one definition, shared with `fastload stats`

    try:
        marks = missing_markers(store, name)
    except FastloadError as e:
        raise ConfigError(f"field {name!r} of {getattr(store, 'path', '?')!r}: a declared missing value cannot be "
                          f"masked: {e}") from None
    return np.array([float(m) for m in marks], np.float64) if marks else NO_MISSING


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class FieldLayout:
    """How one field sits in its array's chunks (all the store knowledge the gather needs)."""

    name: str
    """Field name."""
    array: str
    """Name of the array holding the field (key of ``store.arrays``)."""
    shape: tuple[int, ...]
    """Array shape."""
    chunks: tuple[int, ...]
    """Decoded chunk shape (inner chunks for sharded arrays)."""
    axes: tuple[int | None, int | None, int | None, int, int]
    """Positions of (time, field, level, y, x) in the array; ``None`` where absent."""
    field_index: int | None = None
    """Index along the field axis (AtmoRep ``data`` arrays), else ``None``."""
    lev_idx: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))
    """Store level indices of the output levels, ``(L,)`` int64 (``[0]`` for a field without levels)."""
    levels: np.ndarray | None = None
    """Level values of the output levels (``None`` for a field without levels)."""
    periodic_x: bool = False
    """Columns wrap modulo ``nx``."""
    missing: np.ndarray = dataclasses.field(default_factory=lambda: NO_MISSING)
    """Stored values the gather writes as NaN, ``(K,)`` float64 (:func:`missing_of`; empty: none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", np.ascontiguousarray(self.missing, np.float64).reshape(-1))
        nd = len(self.shape)
        if len(self.chunks) != nd:
            raise ConfigError(f"field {self.name!r}: chunks {self.chunks} do not match shape {self.shape}")
        if len(self.axes) != 5 or self.axes[3] != nd - 2 or self.axes[4] != nd - 1:
            raise ConfigError(f"field {self.name!r}: axes {self.axes} must end with y, x as the last two axes")
        lev = np.ascontiguousarray(np.asarray(self.lev_idx, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "lev_idx", lev)
        la = self.axes[2]
        nl = 1 if la is None else self.shape[la]
        if lev.size == 0 or lev.min() < 0 or lev.max() >= nl:
            raise ConfigError(f"field {self.name!r}: level indices {lev.tolist()} outside [0, {nl - 1}]")
        named = {a for a in self.axes if a is not None}
        for ax, size in enumerate(self.shape):
            if ax not in named and size != 1:
                raise ConfigError(f"field {self.name!r}: array axis {ax} (size {size}) is none of time, field, "
                                  f"level, y, x; only singleton extra axes are supported")
        fa = self.axes[1]
        if fa is not None and not (self.field_index is not None and 0 <= self.field_index < self.shape[fa]):
            raise ConfigError(f"field {self.name!r}: field_index {self.field_index} outside [0, {self.shape[fa]})")

    # -- store-facing --------------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store: Any, name: str, levels: Sequence[float] | None = None) -> FieldLayout:
        """Layout of field ``name`` with output ``levels`` (values), read from a store's ``fields``/``arrays``."""
        check_field_name(store, name)
        f = store.fields[name]
        a = store.arrays[f.array]
        dt = np.dtype(a.dtype)
        if dt.kind not in "fiub" or dt.itemsize < 4 and dt.kind == "f":  # what the gather kernels read
            how = (f"make a float32 copy: fastload rechunk {store.path} OUT --dtype float32" if dt.kind == "f"
                   else "convert it, e.g. with xarray astype")
            raise ConfigError(f"field {name!r}: array {f.array!r} of {store.path!r} holds {dt}; the gather reads "
                              f"float32/float64, integer and bool arrays ({how})")
        if levels is None:
            if f.levels is not None and len(f.levels) > 1:
                raise ConfigError(f"fields.{name}.levels: the field has levels {list(f.levels)}; choose some")
            lev_idx = np.zeros(1, np.int64)
            values = None if f.levels is None else np.asarray(f.levels, np.float64)
        else:
            lev_idx = np.asarray(store.level_indices(name, list(levels)), dtype=np.int64)
            values = np.asarray(levels, dtype=np.float64)
        return cls(name=name, array=f.array, shape=tuple(int(v) for v in a.shape),
                   chunks=tuple(int(v) for v in a.chunks), axes=tuple(f.axes),  # type: ignore[arg-type]
                   field_index=f.field_index, lev_idx=lev_idx, levels=values,
                   periodic_x=bool(store.grid.periodic_x), missing=missing_of(store, name))

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def has_time(self) -> bool:
        return self.axes[0] is not None

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Chunks per array axis."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    @property
    def chunk_elems(self) -> int:
        return math.prod(self.chunks)

    @property
    def extent(self) -> GridExtent:
        ta = self.axes[0]
        return GridExtent(nt=None if ta is None else self.shape[ta], ny=self.shape[-2], nx=self.shape[-1],
                          periodic_x=self.periodic_x)

    def view(self) -> np.ndarray:
        """The kernel's 4-D logical chunk view, packed as int64 ``[ct, cl, cy, cx, st, sl, sy, sx, base, has_t]``.

        ``c*`` are the chunk extents along (t, l, y, x) (:data:`NO_AXIS` for an absent axis), ``s*`` the element
        strides inside a C-order chunk (0 for an absent axis), ``base`` the element offset of this field inside
        the chunk (AtmoRep chunks hold all fields), ``has_t`` 0 when the field has no time axis.
        """
        strides = np.cumprod((self.chunks[1:] + (1,))[::-1])[::-1]
        ext, st = [], []
        for ax in (self.axes[0], self.axes[2], self.axes[3], self.axes[4]):
            ext.append(NO_AXIS if ax is None else self.chunks[ax])
            st.append(0 if ax is None else int(strides[ax]))
        fa = self.axes[1]
        base = 0 if fa is None else (int(self.field_index) % self.chunks[fa]) * int(strides[fa])
        return np.array(ext + st + [base, int(self.has_time)], dtype=np.int64)


def field_layouts(store: Any, config: Any) -> dict[str, FieldLayout]:
    """:class:`FieldLayout` of every field of a :class:`~fastload.config.SamplingConfig`, by name."""
    return {f.name: FieldLayout.from_store(store, f.name, f.levels) for f in config.fields}


# ------------------------------------------------------------------------------------------------ planning
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class BatchPlan:
    """The chunks one batch needs and, per field, where each sample finds them."""

    boxes: np.ndarray
    """``(S, 3)`` int64 ``(t0, y0, x0)`` rows, validated."""
    chunks: dict[str, np.ndarray]
    """Per array: sorted unique chunk indices ``(U, ndim)`` int64 (grid coordinates, in array axis order)."""
    tables: dict[str, np.ndarray]
    """Per field: ``(S, L, nct, ncy, ncx)`` int32 positions into ``chunks[array]``; -1 where not needed."""
    arrays: dict[str, str]
    """Field name -> array name."""

    def slot_tables(self, slot_of: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per field slot table: ``slot_of[array][table]``, keeping -1 for chunks the box does not need.

        ``slot_of[array]`` is ``(U,)`` int: the slot of each unique chunk in the array's arena.
        """
        out = {}
        for field, table in self.tables.items():
            s = np.asarray(slot_of[self.arrays[field]], dtype=np.int32)
            if s.shape != (self.chunks[self.arrays[field]].shape[0],):
                raise ConfigError(f"slot_tables: array {self.arrays[field]!r} needs {self.chunks[self.arrays[field]].shape[0]} "
                                  f"slots, got slot_of of shape {s.shape}")
            out[field] = np.append(s, np.int32(-1))[table]  # -1 (no chunk) picks the appended -1
        return out


def _axis_chunks(starts: np.ndarray, length: int, step: int, chunk: int, size: int, periodic: bool):
    """Per sample: relative chunk positions touched ``mask (S, n)`` and their absolute chunk index ``(S, n)``."""
    idx = starts[:, None] + np.arange(length, dtype=np.int64)[None, :] * step
    if periodic:
        idx %= size
    c = idx // chunk
    first = c[:, :1]
    nchunks = -(-size // chunk)
    rel = (c - first) % nchunks if periodic else c - first
    n = int(rel.max()) + 1 if rel.size else 1
    mask = np.zeros((starts.shape[0], n), dtype=bool)
    np.put_along_axis(mask, rel, True, axis=1)
    absolute = first + np.arange(n, dtype=np.int64)[None, :]
    if periodic:
        absolute %= nchunks
    return mask, np.where(mask, absolute, 0)


def plan_batch(boxes: Any, layouts: Mapping[str, FieldLayout] | Sequence[FieldLayout], box: Sequence[int],
               time_step: int = 1, *, extent: GridExtent | None = None) -> BatchPlan:
    """Unique chunks per array and per-field index tables for a batch of boxes.

    Parameters
    ----------
    boxes : array_like, shape (S, 3)
        ``(t0, y0, x0)`` store indices; validated against ``extent``, or without it against the layouts' own
        extent (the time axis of the first field that has one; none when every field is static: then t0 must
        be 0).
    layouts : mapping or sequence of FieldLayout
        The fields of the batch (several may share an array, as in AtmoRep stores).
    box : (T, H, W)
        Grid points per sample.
    time_step : int
        Stride between time points.
    extent : GridExtent, optional
        The store's index space, the one placement uses (a tokenizer's ``extent``): its time axis bounds
        ``t0`` even when every field of the batch is static (a field without time reads the same values at
        every ``t0``). Every layout must match its rows and columns, and its number of time steps when it has
        a time axis.
    """
    lays = list(layouts.values()) if isinstance(layouts, Mapping) else list(layouts)
    if not lays:
        raise ConfigError("plan_batch: no fields given")
    T, H, W = (int(v) for v in box)
    ext = lays[0].extent if extent is None else extent
    first = repr(lays[0].name) if extent is None else "the store"
    for lay in lays if extent is not None else lays[1:]:
        e = lay.extent
        if (e.ny, e.nx) != (ext.ny, ext.nx) or (e.nt is not None and ext.nt is not None and e.nt != ext.nt) \
                or (extent is not None and e.nt is not None and ext.nt is None):
            raise ConfigError(f"plan_batch: field {lay.name!r} has grid {e} but {first} has {ext}")
        if extent is None and ext.nt is None and e.nt is not None:
            ext = e
    b = check_boxes(boxes, ext, (T, H, W), time_step)
    S = b.shape[0]
    ids: dict[str, list[np.ndarray]] = {}
    keep: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
    per_axis: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # fields chunked alike share their axis chunks

    def axis(col: int, length: int, step: int, chunk: int, size: int, periodic: bool):
        key = (col, chunk, size, periodic)
        if key not in per_axis:
            per_axis[key] = _axis_chunks(b[:, col], length, step, chunk, size, periodic)
        return per_axis[key]

    for lay in lays:
        ta, fa, la, ya, xa = lay.axes
        if ta is None:
            tmask, tabs = np.ones((S, 1), bool), np.zeros((S, 1), np.int64)
        else:
            tmask, tabs = axis(0, T, time_step, lay.chunks[ta], lay.shape[ta], False)
        ymask, yabs = axis(1, H, 1, lay.chunks[ya], lay.shape[ya], False)
        xmask, xabs = axis(2, W, 1, lay.chunks[xa], lay.shape[xa], lay.periodic_x)
        L = lay.lev_idx.shape[0]
        shp = (S, L, tmask.shape[1], ymask.shape[1], xmask.shape[1])
        mask = (tmask[:, None, :, None, None] & ymask[:, None, None, :, None] & xmask[:, None, None, None, :])
        mask = np.broadcast_to(mask, shp)
        coords = []
        for ax in range(len(lay.shape)):
            if ax == ta:
                c = tabs[:, None, :, None, None]
            elif ax == fa:
                c = np.int64(lay.field_index // lay.chunks[fa])
            elif ax == la:
                c = (lay.lev_idx // lay.chunks[la])[None, :, None, None, None]
            elif ax == ya:
                c = yabs[:, None, None, :, None]
            elif ax == xa:
                c = xabs[:, None, None, None, :]
            else:  # an axis of extent 1 the field does not name (e.g. a singleton member axis)
                c = np.int64(0)
            coords.append(np.broadcast_to(c, shp)[mask])
        lin = np.ravel_multi_index(tuple(coords), lay.grid_shape)
        ids.setdefault(lay.array, []).append(lin)
        keep[lay.name] = (mask, shp)
    chunks: dict[str, np.ndarray] = {}
    inverse: dict[str, list[np.ndarray]] = {}
    grid_of = {lay.array: lay.grid_shape for lay in lays}
    for array, parts in ids.items():
        uniq, inv = np.unique(np.concatenate(parts), return_inverse=True)
        chunks[array] = np.ascontiguousarray(np.stack(np.unravel_index(uniq, grid_of[array]), axis=1).astype(np.int64))
        inverse[array] = np.split(inv.astype(np.int32), np.cumsum([p.size for p in parts])[:-1])
    tables: dict[str, np.ndarray] = {}
    pos = {a: 0 for a in ids}
    for lay in lays:
        mask, shp = keep[lay.name]
        t = np.full(shp, -1, dtype=np.int32)
        t[mask] = inverse[lay.array][pos[lay.array]]
        pos[lay.array] += 1
        tables[lay.name] = t
    return BatchPlan(boxes=b, chunks=chunks, tables=tables, arrays={lay.name: lay.array for lay in lays})
