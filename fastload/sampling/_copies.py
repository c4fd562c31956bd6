"""Grid indices that hold the same place: the copies a NEMO/ORCA grid writes, kept out of samples.

Why this exists: a curvilinear ocean grid may store one place at several ``(y, x)`` indices. NEMO's ORCA grids
(tripolar, T-point output) repeat two east-west halo columns (``x = 0`` is ``NX - 2``, ``x = NX - 1`` is ``1``) and
fold their north edge: the last row is row ``NY - 3`` mirrored and the pivot row ``NY - 2`` repeats its west half
in its east half. A sample box is cut in index space, so a box at the fold or across the halo seam holds some places
twice (counted twice by the loss, two tokens over one place). The tokenizers keep each place once per sample, in
its first slot in slot order, and make the other slots padding (``valid`` False in the token metadata, value 0):
nothing is lost, nothing counted twice, and boxes still reach the Arctic. :func:`same_points` finds the copies
from the coordinates once per grid (None for a grid without any, the common case: then nothing changes);
:func:`first_occurrences` marks, per sample, the slots to keep. Points written with placeholder coordinates (NEMO
gives eliminated land-only tiles 0, 0) count as one place too; their values are fill or NaN anyway.

    python -m pytest tests/fastload/test_stream_fold.py -q
"""

from __future__ import annotations

import numpy as np

__all__ = ["same_points", "first_occurrences", "kept_slots"]


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


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """``(S, P)`` bool: whether ``ids[s, p]`` is the first entry of its value in row ``s`` (later repeats False)."""
    ids = np.asarray(ids)
    if ids.shape[-1] == 0:
        return np.ones(ids.shape, bool)
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids keep their slot order
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    first = np.ones(ids.shape, bool)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    out = np.empty(ids.shape, bool)
    np.put_along_axis(out, order, first, axis=1)
    return out


def kept_slots(same: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Bool, shaped like ``flat`` ``(S, ...)``: the slots of each sample to keep (their point's place is not in an
    earlier slot of the sample), for flat point indices ``flat`` (slot order) and :func:`same_points`' ``same``."""
    flat = np.asarray(flat, np.int64)
    return first_occurrences(same[flat.reshape(flat.shape[0], -1)]).reshape(flat.shape)
