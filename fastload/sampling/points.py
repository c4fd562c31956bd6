"""Point sampling: token tensors from listed points (mesh nodes, or a box on a stream's own time axis).

Why this exists: the structured gather (:mod:`.neighborhood`) walks an index box ``(t0 + k*dt, y0.., x0..)``. Two
cases do not fit it: an unstructured mesh, whose tokens hold a variable set of nodes, and a stream of a
multi-stream config, whose time points are wherever the stream's time rule puts them on its own axis (nearest,
previous: repeated or irregular indices). Both are "gather these points at these time indices": every sample
lists, per spatial token, ``K = tlat * tlon`` flat point indices (``y * NX + x`` on a structured grid, the node on
a mesh; -1 pads), and per time point one store time index. This module turns those lists into

- a :class:`~.chunks.BatchPlan` (unique chunks per array, per-field tables ``(S, L, nct, 1, ncp)``) that the
  reader fills exactly as for structured fields (:func:`plan_points`);
- one kernel call per field (:func:`gather_field_points`; Numba :mod:`._mesh_kernels`, NumPy twin
  :mod:`._mesh_reference`);
- per-token metadata (:class:`PointTokenMeta`): token centres, and per slot the point, its coordinates and a
  validity mask, plus the stream's time index of every time point and the time rule that chose it.

A field's output keeps the structured shape ``(L, nt, nlat, nlon, tt, tlat, tlon)``: the last two axes are the
token's ``K`` point slots (row-major over ``tlat x tlon`` for a box; nearest first for a mesh).
:class:`PointSampler` is the shared driver; :class:`BoxPointSampler` lists the points of index boxes, and
:class:`fastload.sampling.mesh.MeshTokenizer` bins mesh nodes.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._copies import grid_copies, kept_slots
from .chunks import NO_MISSING, BatchPlan, check_field_name, missing_of
from .neighborhood import OUT_KINDS, as_out_array, use_jit
from .tokenizer import TokenMeta

__all__ = ["point_kernels", "PointLayout", "FieldPoints", "field_points", "plan_points", "gather_field_points",
           "PointTokenMeta", "PointSampler", "BoxPointSampler", "circular_mean", "time_meta"]

_NORMS = {"none": 0, "global": 1, "local": 2}
_MEMO_BYTES = 64 * 2**20  # point lists and index tables a sampler remembers (recent placements)


class _Memo:
    """A thread-safe LRU of arrays (or tuples of arrays, or FieldPoints) under a byte budget."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.nbytes = 0
        self._d: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(v: Any) -> int:
        if isinstance(v, np.ndarray):
            return int(v.nbytes)
        if dataclasses.is_dataclass(v):
            return sum(getattr(v, f.name).nbytes for f in dataclasses.fields(v))
        return sum(_Memo._size(x) for x in v)

    def get(self, key: tuple) -> Any:
        with self._lock:
            got = self._d.get(key)
            if got is None:
                return None
            self._d.move_to_end(key)
            return got[0]

    def put(self, key: tuple, value: Any) -> Any:
        n = self._size(value)
        with self._lock:
            if key not in self._d and n <= self.budget:
                self._d[key] = (value, n)
                self.nbytes += n
                while self.nbytes > self.budget:
                    _, (_, m) = self._d.popitem(last=False)
                    self.nbytes -= m
        return value


def point_kernels(jit: bool | None = None, config: Any = None) -> ModuleType:
    """:mod:`._mesh_kernels` (Numba) or :mod:`._mesh_reference` (NumPy), by the same switch as the gather."""
    if use_jit(jit, config):
        from . import _mesh_kernels

        return _mesh_kernels
    from . import _mesh_reference

    return _mesh_reference


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class PointLayout:
    """How one field sits in its array's chunks, for point sampling (structured arrays and meshes alike)."""

    name: str
    array: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    axes: tuple[int | None, int | None, int | None, int | None, int]
    """Positions of (time, field, level, y, x) in the array; y is None on a mesh (x is the node axis)."""
    field_index: int | None = None
    lev_idx: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))
    levels: np.ndarray | None = None
    missing: np.ndarray = dataclasses.field(default_factory=lambda: NO_MISSING)
    """Stored values the gather writes as NaN, ``(K,)`` float64 (:func:`~.chunks.missing_of`; empty: none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", np.ascontiguousarray(self.missing, np.float64).reshape(-1))
        nd = len(self.shape)
        if len(self.chunks) != nd or len(self.axes) != 5 or self.axes[4] != nd - 1:
            raise ConfigError(f"field {self.name!r}: axes {self.axes} / chunks {self.chunks} do not fit shape "
                              f"{self.shape} (the last axis must be x or the mesh node)")
        lev = np.ascontiguousarray(np.asarray(self.lev_idx, np.int64).reshape(-1))
        object.__setattr__(self, "lev_idx", lev)
        la = self.axes[2]
        nl = 1 if la is None else self.shape[la]
        if lev.size == 0 or lev.min() < 0 or lev.max() >= nl:
            raise ConfigError(f"field {self.name!r}: level indices {lev.tolist()} outside [0, {nl - 1}]")

    @classmethod
    def from_store(cls, store: Any, name: str, levels: Sequence[float] | None = None) -> PointLayout:
        """Layout of field ``name`` with output ``levels`` (values) from a store's ``fields``/``arrays``."""
        check_field_name(store, name)
        f = store.fields[name]
        a = store.arrays[f.array]
        if levels is None and f.levels is not None and len(f.levels) > 1:
            raise ConfigError(f"fields.{name}.levels: the field has levels {list(f.levels)}; choose some")
        lev_idx = np.zeros(1, np.int64) if levels is None else store.level_indices(name, list(levels))
        values = (None if f.levels is None else np.asarray(f.levels, np.float64)) if levels is None else \
            np.asarray(levels, np.float64)
        return cls(name=name, array=f.array, shape=tuple(int(v) for v in a.shape),
                   chunks=tuple(int(v) for v in a.chunks), axes=tuple(f.axes),  # type: ignore[arg-type]
                   field_index=f.field_index, lev_idx=lev_idx, levels=values, missing=missing_of(store, name))

    @property
    def has_time(self) -> bool:
        return self.axes[0] is not None

    @property
    def nx(self) -> int:
        """Points per row: the flat point index is ``y * nx + x`` (a mesh: the node)."""
        return self.shape[-1]

    @property
    def n_points(self) -> int:
        """Points of the spatial grid (``NY * NX``, or the nodes of a mesh)."""
        ya = self.axes[3]
        return self.shape[-1] * (1 if ya is None else self.shape[ya])

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    @property
    def chunk_elems(self) -> int:
        return int(np.prod(self.chunks))

    @property
    def strides(self) -> tuple[int, ...]:
        """Element strides of a C-order chunk."""
        return tuple(int(v) for v in np.cumprod((self.chunks[1:] + (1,))[::-1])[::-1])

    def level_offsets(self) -> np.ndarray:
        """``(L,)`` element offset of each output level (and of the field in an AtmoRep chunk)."""
        st = self.strides
        ta, fa, la, ya, xa = self.axes
        base = 0 if fa is None else (int(self.field_index) % self.chunks[fa]) * st[fa]  # type: ignore[arg-type]
        if la is None:
            return np.full(self.lev_idx.shape, base, np.int64)
        return (base + (self.lev_idx % self.chunks[la]) * st[la]).astype(np.int64)


def _row_ranks(ids: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sorted distinct valid ids ``(S, n)`` (-1 padded) and each entry's rank among them (-1 invalid)."""
    S = ids.shape[0]
    if ids.size == 0 or not valid.any():
        return np.full((S, 1), -1, np.int64), np.full(ids.shape, -1, np.int64)
    big = int(ids[valid].max()) + 1
    key = np.where(valid, ids, big) + np.arange(S, dtype=np.int64)[:, None] * (big + 1)
    uniq = np.unique(key[valid])
    row = uniq // (big + 1)
    first = np.searchsorted(uniq, np.arange(S, dtype=np.int64) * (big + 1))
    pos = np.where(valid, np.searchsorted(uniq, key) - first[:, None], -1)
    n = int(np.bincount(row, minlength=S).max())
    table = np.full((S, max(n, 1)), -1, np.int64)
    table[row, np.arange(uniq.size) - first[row]] = uniq % (big + 1)
    return table, pos.astype(np.int64)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class FieldPoints:
    """Where one field's points and time steps of a batch live in its chunks (the kernel's index tables)."""

    t_chunks: np.ndarray
    """``(S, nct)`` absolute time-chunk index of each of the sample's time chunks (-1 padded)."""
    t_pos: np.ndarray
    """``(S, T)`` which of the sample's time chunks each time step is in."""
    t_off: np.ndarray
    """``(S, T)`` element offset of each time step in its chunk."""
    p_chunks: np.ndarray
    """``(S, ncp)`` linear spatial-chunk index (``cy * ncx + cx``; mesh: node chunk) of the sample's chunks."""
    p_pos: np.ndarray
    """``(S, P)`` which of the sample's spatial chunks each point is in; -1 for padding."""
    p_off: np.ndarray
    """``(S, P)`` element offset of each point in its chunk."""
    p_norm: np.ndarray
    """``(S, P)`` flat point index (local coefficients are indexed by it)."""


def field_points(layout: PointLayout, t_steps: np.ndarray, points: np.ndarray) -> FieldPoints:
    """Index tables of one field for a batch: ``t_steps (S, T)`` store time indices, ``points (S, P)`` flat point
    indices (-1 for padding)."""
    points = np.asarray(points, np.int64)
    t_steps = np.asarray(t_steps, np.int64)
    S = points.shape[0]
    st = layout.strides
    ta, _, _, ya, xa = layout.axes
    if ta is not None:
        if t_steps.shape[0] != S or (t_steps.size and (t_steps.min() < 0 or t_steps.max() >= layout.shape[ta])):
            raise ConfigError(f"field {layout.name!r}: time indices outside [0, {layout.shape[ta]}) or not one row "
                              f"per sample")
        ct = layout.chunks[ta]
        t_chunks, t_pos = _row_ranks(t_steps // ct, np.ones(t_steps.shape, bool))
        t_off = (t_steps % ct) * st[ta]
    else:
        t_chunks = np.zeros((S, 1), np.int64)
        t_pos = np.zeros(t_steps.shape, np.int64)
        t_off = np.zeros(t_steps.shape, np.int64)
    valid = points >= 0
    if valid.any() and points.max() >= layout.n_points:
        raise ConfigError(f"field {layout.name!r}: point index {int(points.max())} outside [0, {layout.n_points})")
    p = np.where(valid, points, 0)
    cx = layout.chunks[xa]
    if ya is None:
        sid = p // cx
        off = (p % cx) * st[xa]
    else:
        y, x = p // layout.nx, p % layout.nx
        cy = layout.chunks[ya]
        ncx = layout.grid_shape[xa]
        sid = (y // cy) * ncx + x // cx
        off = (y % cy) * st[ya] + (x % cx) * st[xa]
    p_chunks, p_pos = _row_ranks(sid, valid)
    return FieldPoints(np.ascontiguousarray(t_chunks), np.ascontiguousarray(t_pos), np.ascontiguousarray(t_off),
                       np.ascontiguousarray(p_chunks), np.ascontiguousarray(p_pos),
                       np.ascontiguousarray(np.where(valid, off, 0)), np.ascontiguousarray(p))


def plan_points(parts: Sequence[tuple[PointLayout, FieldPoints]], boxes: np.ndarray) -> BatchPlan:
    """Unique chunks per array and per-field tables ``(S, L, nct, 1, ncp)`` (positions into the unique chunks)."""
    ids: dict[str, list[np.ndarray]] = {}
    grids: dict[str, tuple[int, ...]] = {}
    keep = []
    for lay, fp in parts:
        S, L = fp.p_pos.shape[0], lay.lev_idx.size
        nct, ncp = fp.t_chunks.shape[1], fp.p_chunks.shape[1]
        shp = (S, L, nct, 1, ncp)
        mask = np.broadcast_to((fp.t_chunks >= 0)[:, None, :, None, None] & (fp.p_chunks >= 0)[:, None, None, None, :],
                               shp)
        ta, fa, la, ya, xa = lay.axes
        ncx = lay.grid_shape[xa]
        coords = []
        for ax in range(len(lay.shape)):
            if ax == ta:
                c: Any = fp.t_chunks[:, None, :, None, None]
            elif ax == fa:
                c = np.int64(int(lay.field_index) // lay.chunks[fa])  # type: ignore[arg-type]
            elif ax == la:
                c = (lay.lev_idx // lay.chunks[la])[None, :, None, None, None]
            elif ax == ya:
                c = (fp.p_chunks // ncx)[:, None, None, None, :]
            elif ax == xa:
                c = (fp.p_chunks if ya is None else fp.p_chunks % ncx)[:, None, None, None, :]
            else:
                c = np.int64(0)
            coords.append(np.broadcast_to(c, shp)[mask])
        ids.setdefault(lay.array, []).append(np.ravel_multi_index(tuple(coords), lay.grid_shape))
        grids[lay.array] = lay.grid_shape
        keep.append((lay, mask, shp))
    chunks: dict[str, np.ndarray] = {}
    inverse: dict[str, list[np.ndarray]] = {}
    for array, got in ids.items():
        uniq, inv = np.unique(np.concatenate(got), return_inverse=True)
        chunks[array] = np.ascontiguousarray(np.stack(np.unravel_index(uniq, grids[array]), axis=1).astype(np.int64))
        inverse[array] = np.split(inv.astype(np.int32), np.cumsum([g.size for g in got])[:-1])
    tables: dict[str, np.ndarray] = {}
    pos = {a: 0 for a in ids}
    for lay, mask, shp in keep:
        t = np.full(shp, -1, np.int32)
        t[mask] = inverse[lay.array][pos[lay.array]]
        pos[lay.array] += 1
        tables[lay.name] = t
    return BatchPlan(boxes=np.ascontiguousarray(boxes, np.int64), chunks=chunks, tables=tables,
                     arrays={lay.name: lay.array for lay, _, _ in keep})


def gather_field_points(slots: np.ndarray, table: np.ndarray, layout: PointLayout, field: Any, fp: FieldPoints,
                        out: Any, *, out_dtype: str = "float32", mean: np.ndarray | None = None,
                        std: np.ndarray | None = None, month_of: np.ndarray | None = None,
                        jit: bool | None = None) -> None:
    """Gather one field's listed points into ``out (S, L, nt, nlat, nlon, tt, tlat, tlon)`` (validated first).

    ``table`` is the field's slot table ``(S, L, nct, 1, ncp)`` (:meth:`BatchPlan.slot_tables`); ``mean``/``std``
    ``(M, L, 1, 1)`` (global) or ``(M, L, NY, NX)`` / ``(M, L, 1, N)`` (local) float32 and ``month_of (S, T)``
    int32 when the field normalises.
    """
    name = field.name
    nt, nlat, nlon = field.num_tokens
    tt, tlat, tlon = field.token_size
    K = tlat * tlon
    S, T, P, L = fp.p_pos.shape[0], nt * tt, nlat * nlon * K, layout.lev_idx.size
    if fp.p_pos.shape != (S, P) or fp.t_pos.shape != (S, T):
        raise ConfigError(f"field {name!r}: expected {P} points and {T} time steps per sample, got points "
                          f"{fp.p_pos.shape} and times {fp.t_pos.shape}")
    if slots.ndim != 2 or slots.shape[1] != layout.chunk_elems or not slots.flags.c_contiguous:
        raise ConfigError(f"field {name!r}: slots must be a C-contiguous (n_slots, {layout.chunk_elems}) array, "
                          f"got shape {slots.shape}")
    need = (S, L, fp.t_chunks.shape[1], 1, fp.p_chunks.shape[1])
    if table.dtype != np.int32 or table.ndim != 5 or table.shape[:2] != need[:2] or table.shape[3] != 1 \
            or table.shape[2] < need[2] or table.shape[4] < need[4]:
        raise ConfigError(f"field {name!r}: slot table must be int32 of shape {need} (or larger chunk axes), got "
                          f"{table.dtype} {table.shape}")
    out = as_out_array(out, out_dtype)
    if out.shape != (S, *field.sample_shape):
        raise ConfigError(f"field {name!r}: output buffer has shape {out.shape}, expected {(S, *field.sample_shape)}")
    norm = _NORMS[field.normalization]
    if norm:
        if mean is None or std is None or month_of is None:
            raise ConfigError(f"fields.{name}.normalization = {field.normalization!r} needs mean, std and month_of")
        ns = 1 if norm == 1 else layout.n_points
        for key, a in (("mean", mean), ("std", std)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 4 or a.shape[1] != L \
                    or a.shape[2] * a.shape[3] != ns or a.shape[0] < 1:
                raise ConfigError(f"field {name!r}: {field.normalization} {key} must be float32 (M, {L}, ...) with "
                                  f"{ns} values per level, got {getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}")
        m3 = np.ascontiguousarray(mean.reshape(mean.shape[0], L, ns))
        s3 = np.ascontiguousarray(std.reshape(std.shape[0], L, ns))
        month_of = np.ascontiguousarray(month_of, np.int32)
        if month_of.shape != (S, T) or (S and (month_of.min() < 0 or month_of.max() >= m3.shape[0])):
            raise ConfigError(f"field {name!r}: month_of must be ({S}, {T}) with values in [0, {m3.shape[0]})")
    else:
        m3 = s3 = np.zeros((0, L, 1), np.float32)
        month_of = np.zeros((S, T), np.int32)
    geo = np.array([nt, nlat, nlon, tt, K, int(field.transform == "log1p"), norm, OUT_KINDS[out_dtype]], np.int64)
    tab4 = np.ascontiguousarray(table[:, :, :, 0, :])
    point_kernels(jit).gather_points(slots, tab4, fp.t_pos, fp.t_off, fp.p_pos, fp.p_off, fp.p_norm,
                                     layout.level_offsets(), geo, m3, s3, month_of, out, layout.missing)


# -- metadata -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class PointTokenMeta(TokenMeta):
    """:class:`~.tokenizer.TokenMeta` plus what point sampling adds (shapes for a batch of ``B``)."""

    points: np.ndarray
    """``(B, nlat, nlon, K)`` int64: flat point index (``y * NX + x``, or the mesh node) per slot; -1 = padding."""
    valid: np.ndarray
    """``(B, nlat, nlon, K)`` bool: slot holds a point (padding is False; its values are 0)."""
    point_lat: np.ndarray
    """``(B, nlat, nlon, K)`` float64 latitude of each slot's point (NaN for padding)."""
    point_lon: np.ndarray
    """``(B, nlat, nlon, K)`` float64 longitude of each slot's point in [0, 360) (NaN for padding)."""
    count: np.ndarray
    """``(B, nlat, nlon)`` int64: points in the token's cell before keeping ``K`` (mesh); for boxes ``K`` less the
    slots that repeat a place already in the sample (a curvilinear grid's halo or north-fold copies)."""
    t_steps: np.ndarray
    """``(B, nt * tt)`` int64: the stream's time index of every time point of the sample."""
    time_rule: str = "inside"
    """How the sample's time points were mapped onto this stream's axis (``inside``, ``nearest``, ``previous``)."""

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """As :meth:`TokenMeta.to_torch`, plus ``valid`` (bool), ``points``, ``count``, ``t_steps`` (int64),
        ``point_lat``/``point_lon`` (float32)."""
        import torch

        out = TokenMeta.to_torch(self, device)
        out["valid"] = torch.as_tensor(self.valid, device=device)
        for k in ("points", "count", "t_steps"):
            out[k] = torch.as_tensor(np.asarray(getattr(self, k), np.int64), device=device)
        for k in ("point_lat", "point_lon"):
            out[k] = torch.as_tensor(np.asarray(getattr(self, k), np.float32), device=device)
        return out


def time_meta(time: np.ndarray | None, t_index: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(time, hour, day_of_year)`` of store time indices, as :class:`TokenMeta` holds them."""
    if time is None:
        nan = np.full(t_index.shape, np.nan, np.float32)
        return None, nan, nan.copy()
    t = np.asarray(time).astype("datetime64[ns]")[t_index]
    hour = ((t - t.astype("datetime64[D]")) / np.timedelta64(1, "h")).astype(np.float32)
    doy = ((t - t.astype("datetime64[Y]")) / np.timedelta64(1, "D")).astype(np.float32)
    return t, hour, doy


def circular_mean(lon: np.ndarray, axis: int) -> np.ndarray:
    """Mean longitude along ``axis`` (NaN ignored), unwrapped around the first finite value, in [0, 360)."""
    first = np.take(lon, [0], axis=axis)
    d = (lon - first + 180.0) % 360.0 - 180.0
    with np.errstate(invalid="ignore"):
        return (np.squeeze(first, axis=axis) + np.nanmean(d, axis=axis)) % 360.0


class PointSampler(abc.ABC):
    """Plan, gather and describe point-sampled fields of one store, given where each sample is.

    Subclasses say which points each token holds (:meth:`points`) for a placement ``where`` (their own kind of
    array: index-box starts, or lat-lon regions); time indices come from the caller, per sample and time point.
    """

    def __init__(self, config: Any, layouts: Mapping[str, PointLayout], time: np.ndarray | None, point_lat: np.ndarray,
                 point_lon: np.ndarray):
        self.config = config
        self.layouts = {f.name: layouts[f.name] for f in config.fields}
        self.time = None if time is None else np.asarray(time).astype("datetime64[ns]")
        self.point_lat = np.asarray(point_lat, np.float64).reshape(-1)
        self.point_lon = np.asarray(point_lon, np.float64).reshape(-1) % 360.0
        self._memo = _Memo(_MEMO_BYTES)

    def _points(self, where: np.ndarray, field: Any, jit: bool | None) -> tuple:
        """:meth:`points`, remembered for recent placements (plan, gather and meta of a batch share them).

        0 placements give empty lists of the field's shapes here, whatever the subclass (a reshape with -1 cannot
        infer a length from 0 elements, so not every :meth:`points` could take them)."""
        w = np.ascontiguousarray(where)
        if w.size == 0:
            _, nlat, nlon = field.num_tokens
            _, tlat, tlon = field.token_size
            cell = np.zeros((0, nlat, nlon), np.float64)
            return np.zeros((0, nlat * nlon * tlat * tlon), np.int64), np.zeros((0, nlat, nlon), np.int64), cell, cell
        key = ("p", field.name, w.shape, w.dtype.str, w.tobytes())
        got = self._memo.get(key)
        if got is None:
            got = self._memo.put(key, self.points(w, field, jit=jit))
        return got

    @abc.abstractmethod
    def points(self, where: np.ndarray, field: Any, *, jit: bool | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(points (S, P), count (S, nlat, nlon), lat (S, nlat, nlon), lon (S, nlat, nlon))`` for ``field``:
        flat point index per slot (-1 padding), points per cell, and token centre coordinates."""

    def _field_points(self, where: np.ndarray, t_steps: np.ndarray, jit: bool | None) -> dict[str, tuple]:
        out = {}
        t = np.ascontiguousarray(t_steps, np.int64)
        w = np.ascontiguousarray(where)
        for f in self.config.fields:
            pts = self._points(w, f, jit)
            key = ("f", f.name, w.shape, w.dtype.str, w.tobytes(), t.shape, t.tobytes())
            fp = self._memo.get(key)
            if fp is None:
                fp = self._memo.put(key, field_points(self.layouts[f.name], t, pts[0]))
            out[f.name] = (pts, fp)
        return out

    def plan(self, where: np.ndarray, t_steps: np.ndarray, boxes: np.ndarray, *, jit: bool | None = None) -> BatchPlan:
        """Unique chunks and per-field tables of a batch (``boxes`` is recorded in the plan as its placements)."""
        fps = self._field_points(where, t_steps, jit)
        return plan_points([(self.layouts[n], fp) for n, (_, fp) in fps.items()], boxes)

    def gather(self, where: np.ndarray, t_steps: np.ndarray, slots: Mapping[str, np.ndarray],
               tables: Mapping[str, np.ndarray], outs: Mapping[str, Any], *,
               coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               month_of: np.ndarray | None = None, jit: bool | None = None) -> None:
        """Gather every field into ``outs`` (``month_of (S, T)`` indexes the months of ``coefficients``)."""
        jit = use_jit(jit, self.config)
        for name, (_, fp) in self._field_points(where, t_steps, jit).items():
            f = self.config.field(name)
            lay = self.layouts[name]
            mean = std = None
            if f.normalization != "none":
                if coefficients is None or name not in coefficients:
                    raise ConfigError(f"fields.{name}.normalization = {f.normalization!r} but no coefficients given")
                mean, std = coefficients[name]
            gather_field_points(slots[lay.array], tables[name], lay, f, fp, outs[name], out_dtype=self.config.out_dtype,
                                mean=mean, std=std, month_of=month_of, jit=jit)

    def meta(self, where: np.ndarray, t_steps: np.ndarray, *, time_rule: str = "inside",
             jit: bool | None = None) -> dict[str, PointTokenMeta]:
        """Per-field token metadata of a batch (0 samples: every array with a sample axis has a leading 0)."""
        out = {}
        t_steps = np.asarray(t_steps, np.int64)
        for f in self.config.fields:
            pts, count, lat, lon = (a.copy() for a in self._points(where, f, jit))  # the memo keeps its own
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            S = pts.shape[0]
            p4 = pts.reshape(S, nlat, nlon, tlat * tlon)
            valid = p4 >= 0
            safe = np.where(valid, p4, 0)
            lay = self.layouts[f.name]
            t_index = t_steps[:, ::tt] if lay.has_time else np.zeros((S, nt), np.int64)
            time, hour, doy = time_meta(self.time if lay.has_time else None, t_index)
            level = np.full(1, np.nan) if lay.levels is None else np.asarray(lay.levels, np.float64)
            out[f.name] = PointTokenMeta(
                t_index=t_index, time=time, hour=hour, day_of_year=doy, lat=lat, lon=lon, level=level, points=p4,
                valid=valid, point_lat=np.where(valid, self.point_lat[safe], np.nan),
                point_lon=np.where(valid, self.point_lon[safe], np.nan), count=count,
                t_steps=t_steps if lay.has_time else np.zeros_like(t_steps), time_rule=time_rule)
        return out


class BoxPointSampler(PointSampler):
    """Index boxes of a structured grid (lat-lon or curvilinear) read as point lists: ``where`` is ``(S, 2)``
    ``(y0, x0)`` starts; token ``(b, c)`` slot ``j * tlon + k`` is the point ``(y0 + b*tlat + j, x0 + c*tlon + k)``
    (x modulo NX on periodic grids, modulo NX - 1 on a lat-lon grid repeating its seam column: ``grid.x_period``).
    Used for the streams of a multi-stream config whose time points are not a
    regular stride of their own axis.

    A curvilinear grid may hold one place at several indices: NEMO/ORCA's east-west halo columns and the rows of its
    tripolar north fold repeat points (:func:`~._copies.same_points`, found once per grid:
    :func:`~._copies.grid_copies`). A box there keeps each place once, in its first slot (slot order); the slots
    holding its copies are padding (point -1, value 0, ``valid`` False), so a sample never counts one place twice
    and loses none. Token centres stay the mean over all the token's slots' coordinates.
    """

    def __init__(self, config: Any, layouts: Mapping[str, PointLayout], time: np.ndarray | None, grid: Any):
        lat, lon = np.asarray(grid.lat, np.float64), np.asarray(grid.lon, np.float64)
        if lat.ndim == 1:
            lat, lon = np.meshgrid(lat, lon, indexing="ij")
        super().__init__(config, layouts, time, lat, lon)
        self.ny, self.nx, self.periodic_x = int(grid.ny), int(grid.nx), bool(grid.periodic_x)
        self.x_period = int(grid.x_period)
        """x wraps modulo this many columns (0: never): :attr:`fastload.store.grid.Grid.x_period`."""
        self.same = grid_copies(grid)
        """Curvilinear grids that repeat points: :func:`~._copies.same_points` (None: every index is its own
        place)."""

    def points(self, where, field, *, jit=None):
        w = np.asarray(where, np.int64).reshape(-1, 2)
        S = w.shape[0]
        _, nlat, nlon = field.num_tokens
        _, tlat, tlon = field.token_size
        H, W = nlat * tlat, nlon * tlon
        y = w[:, 0:1] + np.arange(H)  # (S, H)
        x = w[:, 1:2] + np.arange(W)  # (S, W)
        if self.x_period:
            x %= self.x_period
        if S and (y.min() < 0 or y.max() >= self.ny or x.min() < 0 or x.max() >= self.nx):
            raise ConfigError(f"field {field.name!r}: a box of {H} x {W} points starting at "
                              f"{w[np.argmax((y.max(1) >= self.ny) | (x.max(1) >= self.nx))].tolist()} leaves the "
                              f"{self.ny} x {self.nx} grid")
        flat = y[:, :, None] * self.nx + x[:, None, :]  # (S, H, W)
        tok = flat.reshape(S, nlat, tlat, nlon, tlon).transpose(0, 1, 3, 2, 4)  # (S, nlat, nlon, tlat, tlon)
        la = self.point_lat[tok].reshape(S, nlat, nlon, tlat * tlon)  # (K spelt out: -1 cannot be inferred at S = 0)
        lo = self.point_lon[tok].reshape(S, nlat, nlon, tlat * tlon)
        pts = tok.reshape(S, H * W)
        count = np.full((S, nlat, nlon), tlat * tlon, np.int64)
        if self.same is not None:  # copies of a place already in the sample (fold rows, halo columns): padding
            keep = kept_slots(self.same, pts)
            pts = np.where(keep, pts, -1)
            count = keep.reshape(S, nlat, nlon, tlat * tlon).sum(axis=3)
        return np.ascontiguousarray(pts), count, la.mean(axis=3), circular_mean(lo, 3)
