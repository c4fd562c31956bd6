"""Grid indices that hold the same place: the copies a NEMO/ORCA grid writes, kept out of samples.

Why this exists: a curvilinear ocean grid may store one place at several ``(y, x)`` indices. NEMO's ORCA grids
(tripolar, T-point output) repeat two east-west halo columns (``x = 0`` is ``NX - 2``, ``x = NX - 1`` is ``1``) and
fold their north edge: the last row is row ``NY - 3`` mirrored and the pivot row ``NY - 2`` repeats its west half
in its east half. A sample box is cut in index space, so a box at the fold or across the halo seam holds some places
twice (counted twice by the loss, two tokens over one place). The tokenizers keep each place once per sample, in
its first slot in slot order, and make the other slots padding (``valid`` False in the token metadata, value 0):
nothing is lost, nothing counted twice, and boxes still reach the Arctic. :func:`same_points` finds the copies
from the coordinates (None for a grid without any, the common case: then nothing changes); :func:`grid_copies`
remembers its answer per grid (it costs 0.15-0.3 s on a 1021 x 1442 ORCA grid, paid once per opened store and
process, not per batch or per ``extract`` call); :func:`first_occurrences` and :func:`kept_slots` mark, per
sample, the slots to keep. Masking is the caller's choice: the forecaster's global tiles
(:mod:`fastload.rollout_data`) keep the store's values at the copies (``extract(..., mask_copies=False)``).
Points written with placeholder coordinates (NEMO gives eliminated land-only tiles 0, 0) count as one place too;
their values are fill or NaN anyway.

    python -m pytest tests/fastload/test_stream_fold.py -q
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

__all__ = ["same_points", "grid_copies", "first_occurrences", "kept_slots"]

_LOCK = threading.Lock()
_MEMO: dict[tuple[int, int, int], tuple[Any, Any, np.ndarray | None]] = {}
"""``(id(lat), id(lon), decimals) -> (weakref(lat), weakref(lon), same_points)``: a grid's answer while its
coordinate arrays live (a :class:`~fastload.store.Grid` takes no weak references; its arrays do)."""


def same_points(lat: np.ndarray, lon: np.ndarray, decimals: int = 6) -> np.ndarray | None:
    """Flat index of the first point (store order) at each grid point's coordinates; None when all differ.

    Coordinates count as the same when latitude and longitude (modulo 360) agree to ``decimals`` decimal degrees,
    as the copies a NEMO/ORCA grid writes do (its east-west halo columns and the rows of its north fold repeat
    points bit for bit).

    Parameters
    ----------
    lat, lon : array_like, shape (NY, NX) or (N,)
        Degrees, in store order.

    Returns
    -------
    ndarray of int64, shape (N,), or None
        ``out[p]`` is the smallest flat index with the coordinates of point ``p`` (``out[p] == p`` for a point seen
        first); None when no two points share coordinates.
    """
    la = np.round(np.asarray(lat, np.float64).ravel(), decimals)
    lo = np.round(np.asarray(lon, np.float64).ravel() % 360.0, decimals) % 360.0
    if la.size < 2:
        return None
    order = np.lexsort((np.arange(la.size), lo, la))  # by coordinates, then store order
    new = np.ones(la.size, bool)
    new[1:] = (la[order][1:] != la[order][:-1]) | (lo[order][1:] != lo[order][:-1])
    if new.all():
        return None
    first = order[new][np.cumsum(new) - 1]  # the group's first in store order, for every sorted position
    out = np.empty(la.size, np.int64)
    out[order] = first
    return out


def grid_copies(grid: Any, decimals: int = 6) -> np.ndarray | None:
    """:func:`same_points` of a curvilinear grid, computed once per grid and remembered (None for other kinds).

    The answer is kept while the grid's coordinate arrays live (keyed by those array objects; coordinates are
    never changed in place), so every tokenizer or sampler built on one opened store, in any thread, shares it.

    Parameters
    ----------
    grid : Grid-like
        ``kind``, ``lat`` and ``lon`` (a :class:`fastload.store.Grid`).
    decimals : int
        As :func:`same_points`.

    Returns
    -------
    ndarray of int64, shape (NY * NX,), or None
        :func:`same_points` of ``grid.lat``, ``grid.lon``; None for a grid without copies or not curvilinear.
    """
    if grid.kind != "curvilinear":
        return None
    lat, lon = grid.lat, grid.lon
    key = (id(lat), id(lon), int(decimals))
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is lat and hit[1]() is lon:
        return hit[2]
    with _LOCK:  # one thread computes, the others wait for its answer
        hit = _MEMO.get(key)
        if hit is not None and hit[0]() is lat and hit[1]() is lon:
            return hit[2]
        same = same_points(lat, lon, decimals)
        if same is not None:
            same.setflags(write=False)  # shared by every caller
        try:
            refs = (weakref.ref(lat), weakref.ref(lon))
        except TypeError:  # coordinates that take no weak reference (not ndarrays): not remembered
            return same
        _MEMO[key] = (*refs, same)
        weakref.finalize(lat, _MEMO.pop, key, None)  # forget the grid with its coordinates
        return same


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Which entries of each row are the first of their value in that row.

    Parameters
    ----------
    ids : array_like of int, shape (S, P)
        One row of ids per sample, in slot order.

    Returns
    -------
    ndarray of bool, shape (S, P)
        True where ``ids[s, p]`` does not occur in ``ids[s, :p]`` (later repeats are False).
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.ones(ids.shape, bool)
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids keep their slot order
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    first = np.ones(ids.shape, bool)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    out = np.empty(ids.shape, bool)
    np.put_along_axis(out, order, first, axis=1)
    return out


def kept_slots(same: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """The slots of each sample whose place is not in an earlier slot of the sample.

    Parameters
    ----------
    same : ndarray of int64, shape (N,)
        :func:`same_points` of the grid (each flat index -> the first index at its place).
    flat : array_like of int, shape (S, ...)
        Flat grid index of every slot of ``S`` samples, in slot order (C order over the trailing axes).

    Returns
    -------
    ndarray of bool, shaped like ``flat``
        True for a slot to keep (the first of its place in its sample), False for a copy; ``S = 0`` gives an empty
        array.
    """
    flat = np.asarray(flat, np.int64)
    per_sample = int(np.prod(flat.shape[1:], dtype=np.int64))
    return first_occurrences(same[flat.reshape(flat.shape[0], per_sample)]).reshape(flat.shape)
