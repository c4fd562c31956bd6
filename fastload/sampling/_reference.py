"""Plain NumPy twins of :mod:`._kernels`: the same names, arguments and bits, written to be read.

These are the specification of the kernels. ``FASTLOAD_NO_JIT=1`` (or ``jit=False``) makes the package use them
instead of Numba, e.g. to step through in a debugger; ``tests/fastload/test_sampling_parity.py`` checks that the
kernels agree with them exactly. They build the whole ``(S, L, T, H, W)`` index grid at once, so they are meant
for small batches.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gather", "to_bfloat16_bits", "to_float16_bits"]


def _bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def _f16(x: np.ndarray) -> np.ndarray:
    # NumPy's own float32 -> float16 cast rounds to nearest even, overflows to inf and keeps NaN; use its bits
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def _masked(stored: np.ndarray, missing) -> np.ndarray:
    """``stored`` as float32, NaN where it (as float64) equals one of the ``missing`` markers (None: none)."""
    v = stored.astype(np.float32)
    if missing is not None and len(missing):
        v[np.isin(stored.astype(np.float64), np.asarray(missing, np.float64))] = np.nan
    return v


def to_bfloat16_bits(x: np.ndarray, out: np.ndarray) -> None:
    """Write the bfloat16 bit patterns of float32 ``x`` (1-D) into uint16 ``out`` (1-D)."""
    out[: x.shape[0]] = _bf16(x)


def to_float16_bits(x: np.ndarray, out: np.ndarray) -> None:
    """Write the IEEE half bit patterns of float32 ``x`` (1-D) into uint16 ``out`` (1-D)."""
    out[: x.shape[0]] = _f16(x)


def gather(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out, missing=None) -> None:
    """Same contract as :func:`fastload.sampling._kernels.gather`."""
    ct, cl, cy, cx, st, sl, sy, sx, base, has_t = (int(v) for v in view)
    nt, nlat, nlon, tt, tlat, tlon, dt, nx, periodic, log1p, norm, kind = (int(v) for v in geometry)
    n_samples, n_lev = boxes.shape[0], lev_idx.shape[0]
    n_t, n_y, n_x = nt * tt, nlat * tlat, nlon * tlon
    ncx = -(-nx // cx)

    # store indices of every point of every box
    t = boxes[:, 0:1] + np.arange(n_t) * dt  # (S, T)
    y = boxes[:, 1:2] + np.arange(n_y)  # (S, H)
    x = boxes[:, 2:3] + np.arange(n_x)  # (S, W)
    if periodic:
        x = x % nx
    # which chunk (counted from the sample's first) and where inside it
    if has_t:
        it, toff = t // ct - t[:, :1] // ct, (t % ct) * st
    else:
        it, toff = np.zeros_like(t), np.zeros_like(t)
    iy, yoff = y // cy - y[:, :1] // cy, (y % cy) * sy
    ix, xoff = (x // cx - x[:, :1] // cx) % ncx, (x % cx) * sx
    loff = base + (lev_idx % cl) * sl  # (L,)

    s5 = np.arange(n_samples)[:, None, None, None, None]
    l5 = np.arange(n_lev)[None, :, None, None, None]
    t5, y5, x5 = (slice(None), None, slice(None), None, None), (slice(None), None, None, slice(None), None), \
        (slice(None), None, None, None, slice(None))
    slot = table[s5, l5, it[t5], iy[y5], ix[x5]]  # (S, L, T, H, W)
    if slot.size and (slot.min() < 0 or slot.max() >= slots.shape[0]):
        raise IndexError("gather: slot table has no valid slot for a chunk a box needs")
    offset = loff[None, :, None, None, None] + toff[t5] + yoff[y5] + xoff[x5]
    v = _masked(slots[slot, offset], missing)

    if log1p:
        with np.errstate(invalid="ignore", divide="ignore"):  # log1p(-1) = -inf, log1p(< -1) = NaN, as in Numba
            v = np.log1p(v.astype(np.float64)).astype(np.float32)
    if norm:
        m5 = month_of[:, :n_t][t5]  # (S, 1, T, 1, 1)
        if norm == 1:
            mu, sd = mean[m5, l5, 0, 0], std[m5, l5, 0, 0]
        else:
            mu, sd = mean[m5, l5, y[y5], x[x5]], std[m5, l5, y[y5], x[x5]]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            v = (v - mu) / sd

    # (S, L, nt*tt, nlat*tlat, nlon*tlon) -> (S, L, nt, nlat, nlon, tt, tlat, tlon)
    v = v.reshape(n_samples, n_lev, nt, tt, nlat, tlat, nlon, tlon).transpose(0, 1, 2, 4, 6, 3, 5, 7)
    if kind == 0:
        out[...] = v
    elif kind == 1:
        out[...] = _bf16(v)
    else:
        out[...] = _f16(v)
