"""Numba kernels of the gather path: arrays in, results written into preallocated outputs, nothing else.

Only ``@njit(nogil=True, cache=True)`` functions live here: no I/O, no Python objects, explicit index arrays.
Every public function has a NumPy twin of the same name and meaning in :mod:`._reference`; the single switch
between them is :func:`fastload.sampling.neighborhood.kernels` (``FASTLOAD_NO_JIT=1`` picks the reference), and
``tests/fastload/test_sampling_parity.py`` checks that both give identical bits. The kernels release the GIL,
so the reader runs one call per thread on disjoint sample ranges of a batch.

Arithmetic, shared with the reference so results agree exactly: read the source element and convert it to
float32; optional transform ``float32(log1p(float64(v)))``; optional normalisation ``(v - mean) / std`` in
float32; then float32 out, or bfloat16 / float16 bit patterns (round to nearest even, NaN stays NaN) in uint16.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["gather", "to_bfloat16_bits", "to_float16_bits"]


@njit(nogil=True, cache=True, inline="always")
def _bf16(u):
    """float32 bit pattern (int64) -> bfloat16 bit pattern: round to nearest even, NaN kept (made quiet)."""
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x40
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


@njit(nogil=True, cache=True, inline="always")
def _f16(u):
    """float32 bit pattern (int64) -> IEEE half bit pattern: round to nearest even, overflow to inf, NaN kept."""
    sign = (u >> 16) & 0x8000
    e = u & 0x7F800000
    m = u & 0x007FFFFF
    if e >= 0x47800000:  # |x| >= 65536, inf or nan
        if e == 0x7F800000 and m != 0:
            return sign + (0x7E00 | (m >> 13))  # quiet NaN, top payload bits kept (as F16C does)
        return sign + 0x7C00
    if e <= 0x38000000:  # half subnormal or zero
        if e < 0x33000000:
            return sign
        ex = e >> 23
        sig = (0x00800000 + m) >> (113 - ex)
        if (sig & 0x3FFF) != 0x1000 or (u & 0x7FF) != 0:
            sig += 0x1000
        return sign + (sig >> 13)
    h_exp = (e - 0x38000000) >> 13
    if (m & 0x3FFF) != 0x1000:
        m += 0x1000
    return sign + (m >> 13) + h_exp


@njit(nogil=True, cache=True)
def to_bfloat16_bits(x, out):
    """Write the bfloat16 bit patterns of float32 ``x`` (1-D) into uint16 ``out`` (1-D)."""
    bits = x.view(np.uint32)
    for i in range(x.shape[0]):
        out[i] = _bf16(np.int64(bits[i]))


@njit(nogil=True, cache=True)
def to_float16_bits(x, out):
    """Write the IEEE half bit patterns of float32 ``x`` (1-D) into uint16 ``out`` (1-D)."""
    bits = x.view(np.uint32)
    for i in range(x.shape[0]):
        out[i] = _f16(np.int64(bits[i]))


@njit(nogil=True, cache=True)
def gather(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out):
    """Crop, transform, normalise, cast and tokenise every sample of ``boxes`` into ``out``, in one pass.

    Parameters
    ----------
    slots : (n_slots, chunk_elems) array
        Decoded chunks of the field's array, one per row.
    table : (S, L, nct, ncy, ncx) int32
        Slot of the ``(it, iy, ix)``-th chunk (counted from the sample's first chunk) per sample and level.
    view : (10,) int64
        ``[ct, cl, cy, cx, st, sl, sy, sx, base, has_t]``: chunk extents and element strides of the (t, l, y, x)
        view, the field's offset inside a chunk, whether it has a time axis.
    boxes : (S, 3) int64
        ``(t0, y0, x0)`` per sample.
    lev_idx : (L,) int64
        Store level index per output level.
    geometry : (12,) int64
        ``[nt, nlat, nlon, tt, tlat, tlon, time_step, NX, periodic_x, log1p, norm, out_kind]``; norm 0 none,
        1 global, 2 local; out_kind 0 float32, 1 bfloat16 bits, 2 float16 bits.
    mean, std : (M, L, NYm, NXm) float32
        Normalisation coefficients (``NYm = NXm = 1`` for global).
    month_of : (S, nt * tt) int32
        Coefficient month (index into ``M``) of each time step of each sample.
    out : (S, L, nt, nlat, nlon, tt, tlat, tlon) float32 or uint16, C-contiguous
        Written in place.
    """
    ct, cl, cy, cx = view[0], view[1], view[2], view[3]
    st, sl, sy, sx = view[4], view[5], view[6], view[7]
    base, has_t = view[8], view[9]
    nt, nlat, nlon = geometry[0], geometry[1], geometry[2]
    tt, tlat, tlon = geometry[3], geometry[4], geometry[5]
    dt, nx, periodic = geometry[6], geometry[7], geometry[8]
    log1p, norm, kind = geometry[9], geometry[10], geometry[11]
    ncx = (nx + cx - 1) // cx
    n_slots = slots.shape[0]
    n_samples = boxes.shape[0]
    n_lev = lev_idx.shape[0]
    outf = out.reshape(out.size)
    buf = np.empty(tlon, np.float32)
    bits = buf.view(np.uint32)
    o = 0
    for s in range(n_samples):
        t0, y0, x0 = boxes[s, 0], boxes[s, 1], boxes[s, 2]
        ft = t0 // ct if has_t else 0
        fy = y0 // cy
        fx = x0 // cx
        for lv in range(n_lev):
            li = lev_idx[lv]
            loff = base + (li % cl) * sl
            for a in range(nt):
                for b in range(nlat):
                    for c in range(nlon):
                        xs = x0 + c * tlon
                        if periodic and xs >= nx:  # regional boxes never reach nx (validated by the caller)
                            xs -= nx
                        for i in range(tt):
                            tk = a * tt + i
                            it = 0
                            toff = 0
                            if has_t:
                                t = t0 + tk * dt
                                it = t // ct - ft
                                toff = (t % ct) * st
                            m = month_of[s, tk] if norm != 0 else 0
                            for j in range(tlat):
                                y = y0 + b * tlat + j
                                iy = y // cy - fy
                                yoff = loff + toff + (y % cy) * sy
                                gm = np.float32(0.0)
                                gs = np.float32(1.0)
                                if norm == 1:
                                    gm = mean[m, lv, 0, 0]
                                    gs = std[m, lv, 0, 0]
                                k = 0
                                x = xs
                                while k < tlon:
                                    if periodic and x >= nx:
                                        x -= nx
                                    cxi = x // cx
                                    ix = cxi - fx
                                    if ix < 0:
                                        ix += ncx
                                    slot = table[s, lv, it, iy, ix]
                                    if slot < 0 or slot >= n_slots:
                                        raise IndexError("gather: slot table has no valid slot for a chunk a box needs")
                                    xl = x - cxi * cx
                                    n = min(tlon - k, cx - xl, nx - x)
                                    src = yoff + xl * sx
                                    row = slots[slot]
                                    for q in range(n):
                                        v = np.float32(row[src + q * sx])
                                        if log1p:
                                            v = np.float32(np.log1p(np.float64(v)))
                                        if norm == 1:
                                            v = (v - gm) / gs
                                        elif norm == 2:
                                            v = (v - mean[m, lv, y, x + q]) / std[m, lv, y, x + q]
                                        if kind == 0:
                                            outf[o + k + q] = v
                                        else:
                                            buf[k + q] = v
                                    k += n
                                    x += n
                                if kind == 1:
                                    for q in range(tlon):
                                        outf[o + q] = _bf16(np.int64(bits[q]))
                                elif kind == 2:
                                    for q in range(tlon):
                                        outf[o + q] = _f16(np.int64(bits[q]))
                                o += tlon
