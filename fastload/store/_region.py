"""Assemble boxes from chunks: the simple, obviously-correct read path used for coordinates, tools and tests.

Why this exists: the fast path (reader + gather kernel) is checked against something plainly right. This module
reads every chunk a selection touches, one at a time, and copies the wanted elements with fancy indexing. It is
not meant to be fast.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._open import Store

__all__ = ["read_region", "read_box", "as_indices"]


def read_region(store: Store, array: str, index: list[np.ndarray]) -> np.ndarray:
    """Elements ``array[np.ix_(*index)]`` (one 1-D int array of indices per axis), read chunk by chunk."""
    info = store._all[array]
    out = np.empty(tuple(len(i) for i in index), info.dtype)
    if out.size == 0:
        return out
    per_axis = []
    for ax, ix in enumerate(index):
        ix = np.asarray(ix, dtype=np.int64)
        cid = ix // info.chunks[ax]
        groups = []
        for c in np.unique(cid):
            sel = np.nonzero(cid == c)[0]
            groups.append((int(c), sel, ix[sel] - int(c) * info.chunks[ax]))
        per_axis.append(groups)
    for combo in itertools.product(*per_axis):
        chunk = tuple(g[0] for g in combo)
        data = store.read_chunk(array, chunk)
        out[np.ix_(*[g[1] for g in combo])] = data[np.ix_(*[g[2] for g in combo])]
    return out


def as_indices(sel: Any, n: int, what: str, *, wrap: bool = False) -> np.ndarray:
    """A selection (None, int, slice, or sequence) over an axis of length ``n`` as a 1-D int64 index array.

    ``wrap``: integer indices are taken modulo ``n`` (periodic x). Otherwise out-of-range indices raise
    ``IndexError`` naming ``what``.
    """
    if sel is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(sel, slice):
        return np.arange(n, dtype=np.int64)[sel]
    idx = np.atleast_1d(np.asarray(sel))
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise IndexError(f"{what}: expected a slice, an integer or a 1-D sequence of integers, got {sel!r}")
    idx = idx.astype(np.int64)
    if wrap:
        return idx % n
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"{what}: index out of range for length {n}: {idx.min()}..{idx.max()}")
    return np.where(idx < 0, idx + n, idx)


def read_box(store: Store, field: str, t: Any, level_idx: Any, y: Any, x: Any) -> np.ndarray:
    """``(t, l, y, x)`` box of ``field``; see :meth:`Store.read` (a mesh field: ``(t, l, 1, nodes)``)."""
    if field not in store.fields:
        from ._check import unknown_field

        raise KeyError(f"{store.path}: no field {field!r}: {unknown_field(store, field)}")
    f = store.fields[field]
    info = store.arrays[f.array]
    t_ax, f_ax, l_ax, y_ax, x_ax = f.axes
    nt = info.shape[t_ax] if t_ax is not None else 1
    nl = info.shape[l_ax] if l_ax is not None else 1
    ti = as_indices(t, nt, f"{field} time") if t_ax is not None else np.zeros(1, np.int64)
    li = as_indices(level_idx, nl, f"{field} level") if l_ax is not None else np.zeros(1, np.int64)
    if l_ax is None and level_idx is not None:
        as_indices(level_idx, 1, f"{field} level (field has no level axis)")
    yi = as_indices(y, store.grid.ny, f"{field} y")  # a mesh (no y axis) has one row: y may only be 0
    mesh = y_ax is None
    xi = as_indices(x, store.grid.nx, f"{field} x", wrap=store.grid.periodic_x and not mesh and not isinstance(x, slice))
    index: list[np.ndarray] = [np.zeros(0, np.int64)] * info.ndim
    if t_ax is not None:
        index[t_ax] = ti
    if f_ax is not None:
        index[f_ax] = np.array([f.field_index], np.int64)
    if l_ax is not None:
        index[l_ax] = li
    if not mesh:
        index[y_ax] = yi
    index[x_ax] = xi
    data = read_region(store, f.array, index)
    if f_ax is not None:
        data = np.squeeze(data, axis=f_ax)
    if t_ax is None:
        data = data[np.newaxis]
    if l_ax is None:
        data = data[:, np.newaxis]
    if mesh:
        data = data[:, :, np.newaxis]
    return np.ascontiguousarray(data)  # (t, l, y, x)
