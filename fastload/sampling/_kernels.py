"""Numba kernels of the gather path: arrays in, results written into preallocated outputs, nothing else.

Only ``@njit(nogil=True, cache=True)`` functions live here (and :func:`gather`, a plain function that picks one
of two kernels per call): no I/O, no Python objects, explicit index arrays. Every public function has a NumPy twin of the same name and meaning in :mod:`._reference`; the single switch
between them is :func:`fastload.sampling.neighborhood.kernels` (``FASTLOAD_NO_JIT=1`` picks the reference), and
``tests/fastload/test_sampling_parity.py`` checks that both give identical bits. The kernels release the GIL,
so the reader runs one call per thread on disjoint sample ranges of a batch.

Arithmetic, shared with the reference so results agree exactly: read the source element and convert it to
float32 (NaN where the element, as float64, equals one of the field's missing markers: tested in the 8-wide
moves where the float32 compare is the same, see :func:`_move_marks`, else in :func:`_gather_rows`);
optional transform ``float32(log1p(float64(v)))``; optional normalisation
``(v - mean) / std`` in float32; then float32 out, or bfloat16 / float16 bit patterns (round to nearest even,
NaN stays NaN) in uint16.

Speed notes (measured, see ``benches/bench_sampling.py``): indices in the hot loops are uint64 (Numba then emits
no negative-index wraparound and LLVM vectorises), the loops create no array views (each view's refcount is an
atomic operation), the source is read row by row in its own order with software prefetch a few rows ahead. Two
separately compiled kernels, picked per call by :func:`gather` (each path ran slower with the other's code in the
same function): :func:`_gather_moves` (float32 output, no transform, contiguous x, tokens 8 to 32 wide) moves
every token row straight from its chunk into its token in a band buffer, cast and normalised in 8-wide vector
moves (:func:`._intrinsics.move8n`), the last overlapping the one before, unrolled per width class; token rows are
grouped per sample into runs that lie in one chunk, and a token row that straddles an x-chunk edge or the seam
takes one move across the edge from both chunks (:func:`._intrinsics.move8s`), so x-chunked stores (every box row
crossing chunk edges) need no row buffer; it is compiled once per normalisation mode (a constant, no per-move
branches: 1.15-1.2x). :func:`_gather_rows` (transforms, strided x, 16-bit outputs, other token widths) gathers
each box row into a row buffer first (one vectorised loop per row segment), then copies to the band buffer. Each
band of tokens is one contiguous run of the output, streamed there with non-temporal stores (no read for
ownership of the output; the output is written once and read later by another thread). Local coefficients are
copied once per sample and level into a compact box-sized buffer and read from there by the other time steps
(strided reads of the (M, L, NY, NX) arrays with their prefetches cost about a fifth of the normalised gather).
``error_model="numpy"``: a zero std gives inf/NaN as in NumPy, not an exception.

Why one file of 800-odd lines: Numba's on-disk cache checks only the source file of the function it compiled,
not the files of the functions it inlined. Both kernels and every helper they inline live here, so any edit to
them recompiles both; split across files, an edit to a helper's file would leave a kernel's stale machine code in
the cache (as an edit to ``_intrinsics.py`` already does: its docstring says to clear the cache).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._intrinsics import marked, move8n, move8s, prefetch2, prefetch4, store_fence, stream32

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


@njit(nogil=True, cache=True, inline="always")
def _copy8(dst, d0, src, s0):
    """``dst[d0:d0 + 8] = src[s0:s0 + 8]``: eight loads, then eight stores, so LLVM emits one vector move.

    Token rows are short (``tlon``, often 9): a plain loop of that length runs scalar (the vectoriser's loop wants
    32 and more), so the token writes copy in 8-wide moves, the last one overlapping the one before.
    """
    v0 = src[s0]
    v1 = src[s0 + np.uint64(1)]
    v2 = src[s0 + np.uint64(2)]
    v3 = src[s0 + np.uint64(3)]
    v4 = src[s0 + np.uint64(4)]
    v5 = src[s0 + np.uint64(5)]
    v6 = src[s0 + np.uint64(6)]
    v7 = src[s0 + np.uint64(7)]
    dst[d0] = v0
    dst[d0 + np.uint64(1)] = v1
    dst[d0 + np.uint64(2)] = v2
    dst[d0 + np.uint64(3)] = v3
    dst[d0 + np.uint64(4)] = v4
    dst[d0 + np.uint64(5)] = v5
    dst[d0 + np.uint64(6)] = v6
    dst[d0 + np.uint64(7)] = v7


@njit(nogil=True, cache=True, inline="always")
def _stream(dst, d0, src, n):
    """``dst[d0:d0 + n] = src[:n]`` (1-D, same dtype): whole 64-byte lines of ``dst`` with non-temporal stores.

    The part before the first 64-byte boundary and after the last one is stored normally (it shares a cache line
    with the next or previous call's run); so is everything when ``dst`` is not even element-aligned.
    """
    size = np.uint64(dst.itemsize)
    w = np.uint64(32) // size  # elements per 32-byte store
    addr = np.uint64(dst.ctypes.data) + d0 * size
    head = n
    if addr % size == 0:
        head = min(n, ((np.uint64(64) - addr % np.uint64(64)) % np.uint64(64)) // size)
    for q in range(head):
        qu = np.uint64(q)
        dst[d0 + qu] = src[qu]
    q = np.uint64(head)
    while q + w + w <= n:
        stream32(dst, d0 + q, src, q)
        stream32(dst, d0 + q + w, src, q + w)
        q += w + w
    while q < n:
        dst[d0 + q] = src[q]
        q += np.uint64(1)


@njit(nogil=True, cache=True, inline="always")
def _stored(sv, mask_mark, m0, m1):
    """``float32(sv)``, or NaN where ``sv`` (as float64) is ``m0`` or ``m1``; the test only when ``mask_mark`` has
    length 1 (its type is a compile-time constant, so a field without markers runs the plain cast). A select,
    which LLVM vectorises (a loop over any number of markers it does not)."""
    v = np.float32(sv)
    if len(mask_mark) == 1:
        d = np.float64(sv)
        if d == m0 or d == m1:
            v = np.float32(np.nan)
    return v


@njit(nogil=True, cache=True, inline="always")
def _next_row(pa, pb, pi, pj, tt, tlat, nlat):
    """The box row after ``(a, b, i, j)`` in the kernels' ``(a, b, i, j)`` row order (their prefetch cursor)."""
    pj += 1
    if pj == tlat:
        pj = 0
        pi += 1
        if pi == tt:
            pi = 0
            pb += 1
            if pb == nlat:
                pb = 0
                pa += 1
    return pa, pb, pi, pj


PREFETCH_ROWS = 8
"""How many box rows ahead the gather prefetches (source rows, and local coefficients). A box row is 108 values in
AtmoRep's geometries, so 8 rows keep about 3.5 kB in flight: on a Zen 5 core (about 20 GB/s of one-thread memcpy)
8 rows ran 1.10-1.26x faster than 4, on Zen 3 (7-14 GB/s) 0.95-1.00x (``benches/RESULTS.md`` sections 13.4, 22)."""
_NO_MISSING = np.zeros(0, np.float64)
"""No missing markers (``chunks.NO_MISSING``; not imported: this file and ``_intrinsics.py`` import nothing else of
the package, so ``benches/ab_gather.py`` can load another revision's pair on its own)."""
_NORM_MARKS = ((), (0,), (0, 0))
"""Per normalisation mode a tuple whose length is the mode: its type makes Numba compile one :func:`_gather_moves`
per mode, with the mode a constant (the per-move branches on it cost registers and time)."""


def gather(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out, missing=None):
    """Crop, transform, normalise, cast and tokenise every sample of ``boxes`` into ``out``, in one pass.

    Picks one of two separately compiled kernels per call: :func:`_gather_moves` for float32 output without
    transform, contiguous x, token widths 8 to 32, numeric (not bool) chunks, and missing markers only on chunks
    whose every value converts to float32 exactly (:func:`_move_marks`; the common case: every token row moved
    straight from its chunk in 8-wide moves, also on x-chunked stores), else :func:`_gather_rows` (each box row
    through a row buffer). Separate kernels because each path runs faster without the other's code in the same
    function (register pressure, layout).

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
    missing : (K,) float64, optional
        The field's missing markers: an output value whose stored value (as float64) equals one is NaN (before
        transform and normalisation). None or empty: none.
    """
    marks = _move_marks(slots.dtype, missing)
    if (marks is not None and geometry[11] == 0 and geometry[9] == 0 and view[7] == 1 and 8 <= geometry[5] <= 32
            and slots.dtype.kind in "fiu"):
        _gather_moves(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out,
                      _NORM_MARKS[geometry[10]], marks)
    elif missing is None or len(missing) == 0:
        _gather_rows(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out, _NO_MISSING, ())
    else:
        _gather_rows(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out,
                     np.ascontiguousarray(missing, np.float64), (0,))


def _move_marks(dtype: np.dtype, missing) -> tuple | None:
    """The missing markers as :func:`_gather_moves` tests them, a tuple of float32 (``()``: none), or None when it
    cannot (then :func:`_gather_rows` compares as float64).

    The moves compare each value after its conversion to float32. That is the float64 compare of the contract
    only for chunks whose every value a float32 holds exactly (float16/32, 8- and 16-bit integers), and only for
    markers a float32 holds exactly; a marker it does not hold (a float64 fill value that no float32 equals) can
    equal no such value, so it is left out.
    """
    if missing is None or len(missing) == 0:
        return ()
    if not ((dtype.kind == "f" and dtype.itemsize <= 4) or (dtype.kind in "iu" and dtype.itemsize <= 2)):
        return None
    m = np.asarray(missing, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        m = np.unique(m[m.astype(np.float32).astype(np.float64) == m])  # NaN and float32-inexact markers drop out
    return tuple(np.float32(v) for v in m)


@njit(nogil=True, cache=True, inline="always")
def _first_prefetch_row(n_rows, tt, tlat, nlat):
    """The prefetch cursor at the start of a (sample, level): ``PREFETCH_ROWS`` rows ahead, and the rows left."""
    pa = pb = pi = pj = 0
    p_left = n_rows
    for _ in range(min(PREFETCH_ROWS, n_rows)):
        pa, pb, pi, pj = _next_row(pa, pb, pi, pj, tt, tlat, nlat)
        p_left -= 1
    return pa, pb, pi, pj, p_left


@njit(nogil=True, cache=True, inline="always")
def _step_coefficients(norm, month_of, s, tk, mean, std, lv):
    """Coefficient month of time step ``tk`` of sample ``s``, and the global ``(mean, std)`` (0 and 1 unless
    ``norm`` is 1)."""
    m = month_of[s, tk] if norm != 0 else 0
    if norm == 1:
        return m, mean[m, lv, 0, 0], std[m, lv, 0, 0]
    return m, np.float32(0.0), np.float32(1.0)


@njit(nogil=True, cache=True, inline="always")
def _row_to_tokens(tb, d, rowb, r, nlon, tlon, tok, cm, cs):
    """Copy the normalised box row ``rowb[r]`` to its ``nlon`` token rows in the band buffer, the first at ``d``,
    in 8-wide moves (the last of a token row overlapping the one before; ``cm``/``cs`` only fill the intrinsic's
    unused coefficient arguments). Unrolled per width class (8-16, 17-24, 25-32: :func:`_gather_moves`'s widths),
    as the token moves there are: a loop over the moves of each token row cost 1.2-1.4 instructions per value and
    local normalisation 1.05-1.12x (``benches/RESULTS.md`` section 23)."""
    t8 = np.uint64(tlon - 8)
    tlu = np.uint64(tlon)
    u8 = np.uint64(8)
    u16 = np.uint64(16)
    zero = np.float32(0.0)
    r0 = np.uint64(0)
    y0 = np.uint64(0)
    if tlon <= 16:
        for _ in range(nlon):
            move8n(tb, d, rowb, r, r0, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + t8, rowb, r, r0 + t8, 0, zero, zero, cm, cs, y0, r0, ())
            d += tok
            r0 += tlu
    elif tlon <= 24:
        for _ in range(nlon):
            move8n(tb, d, rowb, r, r0, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + u8, rowb, r, r0 + u8, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + t8, rowb, r, r0 + t8, 0, zero, zero, cm, cs, y0, r0, ())
            d += tok
            r0 += tlu
    else:
        for _ in range(nlon):
            move8n(tb, d, rowb, r, r0, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + u8, rowb, r, r0 + u8, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + u16, rowb, r, r0 + u16, 0, zero, zero, cm, cs, y0, r0, ())
            move8n(tb, d + t8, rowb, r, r0 + t8, 0, zero, zero, cm, cs, y0, r0, ())
            d += tok
            r0 += tlu


@njit(nogil=True, cache=True)
def _index_sample(box, view, geometry, t_it, t_off, y_iy, y_off, seg_ix, seg_src, seg_len, seg_k, seg_x):
    """Per sample: chunk (counted from the sample's first) and element offset of every time step and box row, and
    the box row's x segments (split where it crosses a chunk edge or the seam), so the inner loops divide nothing.

    A segment is ``seg_len`` values from store column ``seg_x``, box column ``seg_k``, x chunk ``seg_ix``, element
    ``seg_src`` of its chunk row. Returns the number of segments.
    """
    ct, cy, cx = view[0], view[2], view[3]
    st, sy, sx, has_t = view[4], view[6], view[7], view[9]
    n_t, n_y, n_x = geometry[0] * geometry[3], geometry[1] * geometry[4], geometry[2] * geometry[5]
    dt, nx, periodic = geometry[6], geometry[7], geometry[8]
    ncx = (nx + cx - 1) // cx
    t0, y0, x0 = box[0], box[1], box[2]
    ft = t0 // ct if has_t else 0
    for tk in range(n_t):
        if has_t:
            t = t0 + tk * dt
            t_it[tk] = t // ct - ft
            t_off[tk] = (t % ct) * st
        else:
            t_it[tk] = 0
            t_off[tk] = 0
    fy = y0 // cy
    for yk in range(n_y):
        y = y0 + yk
        y_iy[yk] = y // cy - fy
        y_off[yk] = (y % cy) * sy
    fx = x0 // cx
    x = x0
    k = 0
    n_seg = 0
    while k < n_x:
        if periodic and x >= nx:  # regional boxes never reach nx (validated by the caller)
            x -= nx
        cxi = x // cx
        ix = cxi - fx
        if ix < 0:
            ix += ncx
        xl = x - cxi * cx
        n = min(n_x - k, cx - xl, nx - x)
        seg_ix[n_seg] = ix
        seg_src[n_seg] = xl * sx
        seg_len[n_seg] = n
        seg_k[n_seg] = k
        seg_x[n_seg] = x
        n_seg += 1
        k += n
        x += n
    return n_seg


@njit(nogil=True, cache=True, error_model="numpy")
def _gather_rows(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out, missing, mask_mark):
    """:func:`gather` through a row buffer: any dtype, transform, x stride, token width, output kind and missing
    markers (``missing``, float64, possibly empty: stored values written as NaN). ``mask_mark``: ``(0,)`` with
    markers, else ``()``, so each compiles separately and fields without markers run no test. Up to two markers
    are tested by a select in the vectorised loops (0.6-0.7 of the unmasked rate; in the per-value loop, where
    more go, 0.15-0.2: ``benches/missing_gather.py``, RESULTS 13.5)."""
    cl = view[1]
    sl, sx = view[5], view[7]
    base = view[8]
    nt, nlat, nlon = geometry[0], geometry[1], geometry[2]
    tt, tlat, tlon = geometry[3], geometry[4], geometry[5]
    log1p, norm, kind = geometry[9], geometry[10], geometry[11]
    n_slots = slots.shape[0]
    last_elem = slots.shape[1] - 1
    n_samples = boxes.shape[0]
    n_lev = lev_idx.shape[0]
    n_miss = missing.shape[0]
    m0 = missing[0] if n_miss > 0 else np.nan  # NaN equals nothing: an unused marker
    m1 = missing[1] if n_miss > 1 else np.nan
    n_t = nt * tt
    n_y = nlat * tlat
    n_x = nlon * tlon
    band = tt * tlat  # box rows of one band of tokens (a, b): all their (i, j) rows
    n_rows = nt * nlat * band
    outf = out.reshape(out.size)
    # One band of tokens (a, b) at a time: each of its tt * tlat box rows is gathered into `row`, transformed and
    # normalised, then copied (cast) to its nlon token rows in `tb`, the band's nlon tokens in output order (each
    # one contiguous (tt, tlat, tlon) block). Then `tb` is streamed to `out`, where the band's tokens are one
    # contiguous run, in whole cache lines with non-temporal stores.
    row = np.empty(n_x, np.float32)
    row_bits = row.view(np.uint32)
    n_band = n_x * band  # output elements of one band
    tb = np.empty(n_band, outf.dtype)
    # local coefficients of the box's rows for the sample's first month, copied on first use (a = 0, i = 0) and
    # then read contiguously, without prefetch, by the nt * tt - 1 other time steps of that month
    cm = np.empty((n_y if norm == 2 else 0, n_x), np.float32)
    cs = np.empty_like(cm)
    tok = np.uint64(band * tlon)  # output elements of one token
    o_lev = nt * nlat * n_band
    t_it = np.empty(n_t, np.int64)
    t_off = np.empty(n_t, np.int64)
    y_iy = np.empty(n_y, np.int64)
    y_off = np.empty(n_y, np.int64)
    max_seg = n_x // view[3] + 3
    seg_ix = np.empty(max_seg, np.int64)
    seg_src = np.empty(max_seg, np.int64)
    seg_len = np.empty(max_seg, np.int64)
    seg_k = np.empty(max_seg, np.int64)
    seg_x = np.empty(max_seg, np.int64)
    sxu = np.uint64(sx)
    t8 = np.uint64(max(tlon - 8, 0))  # start of the last 8-wide move of a token row
    for s in range(n_samples):
        y0 = boxes[s, 1]
        n_seg = _index_sample(boxes[s], view, geometry, t_it, t_off, y_iy, y_off, seg_ix, seg_src, seg_len, seg_k,
                              seg_x)
        for lv in range(n_lev):
            loff = base + (lev_idx[lv] % cl) * sl
            o = np.uint64((s * n_lev + lv) * o_lev)
            mc = month_of[s, 0] if norm == 2 and n_t > 0 else -1  # the month of the compact coefficients
            # the row PREFETCH_ROWS ahead, in (a, b, i, j) order
            pa, pb, pi, pj, p_left = _first_prefetch_row(n_rows, tt, tlat, nlat)
            for a in range(nt):
                for b in range(nlat):
                    for i in range(tt):
                        tk = a * tt + i
                        it = t_it[tk]
                        m, gm, gs = _step_coefficients(norm, month_of, s, tk, mean, std, lv)
                        for j in range(tlat):
                            yk = b * tlat + j
                            y = y0 + yk
                            iy = y_iy[yk]
                            yoff = loff + t_off[tk] + y_off[yk]
                            if p_left > 0:  # prefetch a row ahead (a hint; never faults, never changes results)
                                ptk = pa * tt + pi
                                pyk = pb * tlat + pj
                                poff = loff + t_off[ptk] + y_off[pyk]
                                for p in range(n_seg):
                                    pslot = table[s, lv, t_it[ptk], y_iy[pyk], seg_ix[p]]
                                    if pslot >= 0 and pslot < n_slots:
                                        e0 = poff + seg_src[p]
                                        for e in range(e0, e0 + seg_len[p] * sx + 15, 16):
                                            prefetch2(slots, pslot, min(e, last_elem))
                                    pm = month_of[s, ptk] if norm == 2 else 0
                                    if norm == 2 and ((pa == 0 and pi == 0) or pm != mc):
                                        xe = seg_x[p] + seg_len[p] - 1
                                        for e in range(seg_x[p], xe + 16, 16):
                                            prefetch4(mean, pm, lv, y0 + pyk, min(e, xe))
                                            prefetch4(std, pm, lv, y0 + pyk, min(e, xe))
                                pa, pb, pi, pj = _next_row(pa, pb, pi, pj, tt, tlat, nlat)
                                p_left -= 1
                            # gather box row (i, j) of the band into `row` (uint64 indices: no wraparound code,
                            # vectorised loops)
                            for p in range(n_seg):
                                slot = table[s, lv, it, iy, seg_ix[p]]
                                if slot < 0 or slot >= n_slots:
                                    raise IndexError("gather: slot table has no valid slot for a chunk a box needs")
                                su = np.uint64(slot)
                                n = seg_len[p]
                                rk = np.uint64(seg_k[p])
                                src0 = np.uint64(yoff + seg_src[p])
                                mu = np.uint64(m)
                                lu = np.uint64(lv)
                                yu = np.uint64(y)
                                yku = np.uint64(yk)
                                xg = np.uint64(seg_x[p])
                                if not log1p and sx == 1 and n_miss <= 2:  # common: one fused, vectorised loop
                                    if norm == 0:
                                        for q in range(n):
                                            qu = np.uint64(q)
                                            row[rk + qu] = _stored(slots[su, src0 + qu], mask_mark, m0, m1)
                                    elif norm == 1:
                                        for q in range(n):
                                            qu = np.uint64(q)
                                            row[rk + qu] = (_stored(slots[su, src0 + qu], mask_mark, m0, m1) - gm) / gs
                                    elif m == mc:  # coefficients from the compact copy of the box's rows
                                        if a == 0 and i == 0:  # first use of box row yk: copy its coefficients
                                            for q in range(n):
                                                qu = np.uint64(q)
                                                cm[yku, rk + qu] = mean[mu, lu, yu, xg + qu]
                                                cs[yku, rk + qu] = std[mu, lu, yu, xg + qu]
                                        for q in range(n):
                                            qu = np.uint64(q)
                                            row[rk + qu] = ((_stored(slots[su, src0 + qu], mask_mark, m0, m1)
                                                             - cm[yku, rk + qu]) / cs[yku, rk + qu])
                                    else:
                                        for q in range(n):
                                            qu = np.uint64(q)
                                            row[rk + qu] = ((_stored(slots[su, src0 + qu], mask_mark, m0, m1)
                                                                - mean[mu, lu, yu, xg + qu]) / std[mu, lu, yu, xg + qu])
                                    continue
                                for q in range(n):
                                    qu = np.uint64(q)
                                    sv = slots[su, src0 + qu * sxu]
                                    v = np.float32(sv)
                                    if len(mask_mark) == 1:  # a declared missing value: NaN
                                        for k in range(n_miss):
                                            if np.float64(sv) == missing[k]:
                                                v = np.float32(np.nan)
                                    if log1p:
                                        v = np.float32(np.log1p(np.float64(v)))
                                    if norm == 1:
                                        v = (v - gm) / gs
                                    elif norm == 2:
                                        v = (v - mean[mu, lu, yu, xg + qu]) / std[mu, lu, yu, xg + qu]
                                    row[rk + qu] = v
                            # its nlon token rows into their tokens in `tb`
                            d = np.uint64((i * tlat + j) * tlon)
                            for c in range(nlon):
                                r0 = np.uint64(c * tlon)
                                if kind == 0 and tlon >= 8:  # 8-wide moves, the last overlapping the one before
                                    q8 = np.uint64(0)
                                    while q8 < t8:
                                        _copy8(tb, d + q8, row, r0 + q8)
                                        q8 += np.uint64(8)
                                    _copy8(tb, d + t8, row, r0 + t8)
                                elif kind == 0:
                                    for q in range(tlon):
                                        qu = np.uint64(q)
                                        tb[d + qu] = row[r0 + qu]
                                elif kind == 1:
                                    for q in range(tlon):
                                        qu = np.uint64(q)
                                        tb[d + qu] = _bf16(np.int64(row_bits[r0 + qu]))
                                else:
                                    for q in range(tlon):
                                        qu = np.uint64(q)
                                        tb[d + qu] = _f16(np.int64(row_bits[r0 + qu]))
                                d += tok
                    _stream(outf, o, tb, np.uint64(n_band))
                    o += np.uint64(n_band)
    store_fence()


@njit(nogil=True, cache=True, error_model="numpy")
def _gather_moves(slots, table, view, boxes, lev_idx, geometry, mean, std, month_of, out, norm_mark, marks):
    """:func:`gather` for float32 output, no transform, contiguous x and token widths 8 to 32: every token row in
    8-wide normalising moves (:func:`._intrinsics.move8n`) straight from its chunk into the band buffer, unrolled
    per width class, the last move overlapping the one before, in runs of token rows that lie in one chunk. A token
    row that straddles a chunk edge or the seam (at most one per edge) takes one move across the edge from both
    chunks (:func:`._intrinsics.move8s`); where it has more than two pieces (chunks narrower than a token) or the
    move would read outside the arena, it is assembled value by value in a small buffer first. With local
    coefficients (``norm_mark`` of length 2) each box row is instead normalised once into a row buffer (in
    8-wide moves per segment, the last overlapping: fewer divisions than moving each token row normalised), then
    copied to its tokens.
    ``norm_mark``: ``_NORM_MARKS[norm]``, so each mode compiles separately with ``norm`` a constant; ``marks``:
    :func:`_move_marks`, the float32 missing markers (maybe none), tested in every move before normalisation.
    """
    cl = view[1]
    sl = view[5]
    base = view[8]
    nt, nlat, nlon = geometry[0], geometry[1], geometry[2]
    tt, tlat, tlon = geometry[3], geometry[4], geometry[5]
    norm = len(norm_mark)  # a compile-time constant: one specialisation per normalisation, no branches on it
    n_slots = slots.shape[0]
    last_elem = slots.shape[1] - 1
    n_elem = np.int64(slots.shape[1])
    n_all = n_slots * n_elem
    n_samples = boxes.shape[0]
    n_lev = lev_idx.shape[0]
    n_t = nt * tt
    n_y = nlat * tlat
    n_x = nlon * tlon
    band = tt * tlat
    n_rows = nt * nlat * band
    outf = out.reshape(out.size)
    n_band = n_x * band
    # local: two normalised box rows, the current one and the one before, which is copied to its tokens only after
    # the current one is normalised (its stores are then in L1: the copies' loads straddle two stores each, which
    # cannot be forwarded from stores still in flight)
    rowb = np.empty((2, n_x if norm == 2 else 0), np.float32)
    rowf = rowb.reshape(rowb.size)
    nxu = np.uint64(rowb.shape[1])
    zero = np.float32(0.0)
    tb = np.empty(n_band, np.float32)
    # local coefficients of the box's rows for the sample's first month (rows 0 .. n_y - 1, copied on first use),
    # and row n_y: those of the current row when its time step is in another month
    cm = np.empty((n_y + 1 if norm == 2 else 1, n_x), np.float32)
    cs = np.empty_like(cm)
    tok = np.uint64(band * tlon)
    o_lev = nt * nlat * n_band
    t_it = np.empty(n_t, np.int64)
    t_off = np.empty(n_t, np.int64)
    y_iy = np.empty(n_y, np.int64)
    y_off = np.empty(n_y, np.int64)
    max_seg = n_x // view[3] + 3
    seg_ix = np.empty(max_seg, np.int64)
    seg_src = np.empty(max_seg, np.int64)
    seg_len = np.empty(max_seg, np.int64)
    seg_k = np.empty(max_seg, np.int64)
    seg_x = np.empty(max_seg, np.int64)
    seg_slot = np.empty(max_seg, np.uint64)  # slot of each segment's chunk for the current box row
    pf_slot = np.empty(max_seg, np.int64)  # and for the row being prefetched (-1: none)
    # per sample, the token columns in runs whose token rows all lie in one segment (one chunk, one side of the
    # seam): first column, count, segment, element offset of the first token row in that segment's chunk row;
    # and the columns whose token row straddles a segment edge (at most one per edge), assembled in `sb` first
    run_c = np.empty(nlon, np.int64)
    run_n = np.empty(nlon, np.int64)
    run_p = np.empty(nlon, np.int64)
    run_src = np.empty(nlon, np.int64)
    # straddling token rows: column, first piece (segment, element offset in its chunk row, length) and the
    # segment of the second piece (-1 when there are more than two: through `sb`, value by value)
    str_c = np.empty(nlon, np.int64)
    str_pa = np.empty(nlon, np.int64)
    str_ea = np.empty(nlon, np.int64)
    str_n1 = np.empty(nlon, np.int64)
    str_pb = np.empty(nlon, np.int64)
    sb = np.empty((nlon, 32), np.float32)
    t8 = np.uint64(tlon - 8)
    u8 = np.uint64(8)
    u16 = np.uint64(16)
    tlu = np.uint64(tlon)
    one = np.uint64(1)
    par = np.uint64(0)  # the row of `rowb` being normalised
    pend = False  # whether the other row of `rowb` waits to be copied, to the tokens from band position pend_d
    pend_d = np.uint64(0)
    for s in range(n_samples):
        y0 = boxes[s, 1]
        n_seg = _index_sample(boxes[s], view, geometry, t_it, t_off, y_iy, y_off, seg_ix, seg_src, seg_len, seg_k,
                              seg_x)
        p = 0
        n_run = 0
        n_str = 0
        for c in range(nlon):
            k0 = c * tlon
            while seg_k[p] + seg_len[p] <= k0:
                p += 1
            if k0 + tlon > seg_k[p] + seg_len[p]:
                str_c[n_str] = c
                str_pa[n_str] = p
                str_ea[n_str] = seg_src[p] + k0 - seg_k[p]
                str_n1[n_str] = seg_k[p] + seg_len[p] - k0
                str_pb[n_str] = p + 1 if k0 + tlon <= seg_k[p + 1] + seg_len[p + 1] else -1
                n_str += 1
            elif n_run > 0 and run_p[n_run - 1] == p and run_c[n_run - 1] + run_n[n_run - 1] == c:
                run_n[n_run - 1] += 1
            else:
                run_c[n_run] = c
                run_n[n_run] = 1
                run_p[n_run] = p
                run_src[n_run] = seg_src[p] + k0 - seg_k[p]
                n_run += 1
        for lv in range(n_lev):
            loff = base + (lev_idx[lv] % cl) * sl
            o = np.uint64((s * n_lev + lv) * o_lev)
            mc = month_of[s, 0] if norm == 2 and n_t > 0 else -1
            # the slot lookups change only when a row is in another (time, y) chunk than the row before
            cur_it = cur_iy = pf_it = pf_iy = -1
            pa, pb, pi, pj, p_left = _first_prefetch_row(n_rows, tt, tlat, nlat)
            for a in range(nt):
                for b in range(nlat):
                    for i in range(tt):
                        tk = a * tt + i
                        it = t_it[tk]
                        m, gm, gs = _step_coefficients(norm, month_of, s, tk, mean, std, lv)
                        for j in range(tlat):
                            yk = b * tlat + j
                            y = y0 + yk
                            iy = y_iy[yk]
                            yoff = loff + t_off[tk] + y_off[yk]
                            if p_left > 0:  # prefetch a row ahead (a hint; never faults, never changes results)
                                ptk = pa * tt + pi
                                pyk = pb * tlat + pj
                                poff = loff + t_off[ptk] + y_off[pyk]
                                if t_it[ptk] != pf_it or y_iy[pyk] != pf_iy:
                                    pf_it = t_it[ptk]
                                    pf_iy = y_iy[pyk]
                                    for p in range(n_seg):
                                        pslot = table[s, lv, pf_it, pf_iy, seg_ix[p]]
                                        pf_slot[p] = pslot if pslot >= 0 and pslot < n_slots else -1
                                for p in range(n_seg):
                                    pslot = pf_slot[p]
                                    if pslot >= 0:
                                        e0 = poff + seg_src[p]
                                        for e in range(e0, e0 + seg_len[p] + 15, 16):
                                            prefetch2(slots, pslot, min(e, last_elem))
                                    pm = month_of[s, ptk] if norm == 2 else 0
                                    if norm == 2 and ((pa == 0 and pi == 0) or pm != mc):
                                        xe = seg_x[p] + seg_len[p] - 1
                                        for e in range(seg_x[p], xe + 16, 16):
                                            prefetch4(mean, pm, lv, y0 + pyk, min(e, xe))
                                            prefetch4(std, pm, lv, y0 + pyk, min(e, xe))
                                pa, pb, pi, pj = _next_row(pa, pb, pi, pj, tt, tlat, nlat)
                                p_left -= 1
                            if it != cur_it or iy != cur_iy:
                                cur_it = it
                                cur_iy = iy
                                for p in range(n_seg):
                                    slot = table[s, lv, it, iy, seg_ix[p]]
                                    if slot < 0 or slot >= n_slots:
                                        raise IndexError("gather: slot table has no valid slot for a chunk a box needs")
                                    seg_slot[p] = np.uint64(slot)
                            ry = np.uint64(yk)  # row of `cm`/`cs` with this row's local coefficients
                            if norm == 2 and (m != mc or (a == 0 and i == 0)):
                                if m != mc:
                                    ry = np.uint64(n_y)
                                for p in range(n_seg):
                                    rk = np.uint64(seg_k[p])
                                    xg = np.uint64(seg_x[p])
                                    mu = np.uint64(m)
                                    lu = np.uint64(lv)
                                    yu = np.uint64(y)
                                    for q in range(seg_len[p]):
                                        qu = np.uint64(q)
                                        cm[ry, rk + qu] = mean[mu, lu, yu, xg + qu]
                                        cs[ry, rk + qu] = std[mu, lu, yu, xg + qu]
                            if norm == 2:  # local: normalise the box row once, then plain 8-wide copies (x-chunked
                                # 9x9 1.13x, 27x27 1.10x; whole globe even; global 0.9-1.0x). The row in 8-wide moves,
                                # the last overlapping (LLVM's loop left up to 15 values to a scalar tail, each with a
                                # scalar division: 11 % of the instructions, 1.01-1.05x)
                                for p in range(n_seg):
                                    su = seg_slot[p]
                                    rk = np.uint64(seg_k[p])
                                    src0 = np.uint64(yoff + seg_src[p])
                                    n = np.uint64(seg_len[p])
                                    if n >= u8:  # 8-wide moves, the last overlapping the one before (no scalar tail)
                                        d = par * nxu + rk
                                        q8 = np.uint64(0)
                                        while q8 + u8 < n:
                                            move8n(rowf, d + q8, slots, su, src0 + q8, 2, zero, zero, cm, cs, ry, rk + q8, marks)
                                            q8 += u8
                                        q8 = n - u8
                                        move8n(rowf, d + q8, slots, su, src0 + q8, 2, zero, zero, cm, cs, ry, rk + q8, marks)
                                    else:
                                        for q in range(seg_len[p]):
                                            qu = np.uint64(q)
                                            rowb[par, rk + qu] = ((marked(np.float32(slots[su, src0 + qu]), marks)
                                                                   - cm[ry, rk + qu]) / cs[ry, rk + qu])
                                if pend:  # the row before, to its tokens
                                    _row_to_tokens(tb, pend_d, rowb, par ^ one, nlon, tlon, tok, cm, cs)
                                pend = True
                                pend_d = np.uint64((i * tlat + j) * tlon)
                                par ^= one
                                continue
                            dr = np.uint64((i * tlat + j) * tlon)  # the row's place in the first token
                            for rr in range(n_run):  # runs of token rows, 8-wide moves straight from the chunk
                                su = seg_slot[run_p[rr]]
                                e0 = np.uint64(yoff + run_src[rr])
                                c0 = np.uint64(run_c[rr])
                                d = dr + c0 * tok
                                r0 = c0 * tlu
                                if tlon <= 16:
                                    for _ in range(run_n[rr]):
                                        move8n(tb, d, slots, su, e0, norm, gm, gs, cm, cs, ry, r0, marks)
                                        move8n(tb, d + t8, slots, su, e0 + t8, norm, gm, gs, cm, cs, ry, r0 + t8, marks)
                                        d += tok
                                        r0 += tlu
                                        e0 += tlu
                                elif tlon <= 24:
                                    for _ in range(run_n[rr]):
                                        move8n(tb, d, slots, su, e0, norm, gm, gs, cm, cs, ry, r0, marks)
                                        move8n(tb, d + u8, slots, su, e0 + u8, norm, gm, gs, cm, cs, ry, r0 + u8, marks)
                                        move8n(tb, d + t8, slots, su, e0 + t8, norm, gm, gs, cm, cs, ry, r0 + t8, marks)
                                        d += tok
                                        r0 += tlu
                                        e0 += tlu
                                else:
                                    for _ in range(run_n[rr]):
                                        move8n(tb, d, slots, su, e0, norm, gm, gs, cm, cs, ry, r0, marks)
                                        move8n(tb, d + u8, slots, su, e0 + u8, norm, gm, gs, cm, cs, ry, r0 + u8, marks)
                                        move8n(tb, d + u16, slots, su, e0 + u16, norm, gm, gs, cm, cs, ry, r0 + u16, marks)
                                        move8n(tb, d + t8, slots, su, e0 + t8, norm, gm, gs, cm, cs, ry, r0 + t8, marks)
                                        d += tok
                                        r0 += tlu
                                        e0 += tlu
                            for w in range(n_str):  # straddling token rows: 8-wide moves from both pieces
                                c0 = np.uint64(str_c[w])
                                d = dr + c0 * tok
                                r0 = c0 * tlu
                                p2 = str_pb[w]
                                sa = seg_slot[str_pa[w]]
                                ea = yoff + str_ea[w]  # the first piece, n1 values
                                n1 = str_n1[w]
                                sbu = seg_slot[p2] if p2 >= 0 else sa
                                eb = yoff + seg_src[p2] if p2 >= 0 else 0  # the second piece
                                # the move across the edge reads the 8 values that end the first piece and the 8
                                # that start the second: only where both stay inside `slots`
                                if (p2 >= 0 and np.int64(sa) * n_elem + ea + n1 >= 8
                                        and np.int64(sbu) * n_elem + eb + 8 <= n_all):
                                    q8 = 0
                                    while True:
                                        q = min(q8, tlon - 8)
                                        qu = np.uint64(q)
                                        if q + 8 <= n1:
                                            move8n(tb, d + qu, slots, sa, np.uint64(ea + q), norm, gm, gs, cm, cs, ry,
                                                   r0 + qu, marks)
                                        elif q >= n1:
                                            move8n(tb, d + qu, slots, sbu, np.uint64(eb + q - n1), norm, gm, gs, cm, cs,
                                                   ry, r0 + qu, marks)
                                        else:
                                            move8s(tb, d + qu, slots, sa, ea + n1 - 8, sbu, eb, n1 - q, norm, gm, gs,
                                                   cm, cs, ry, r0 + qu, marks)
                                        if q8 >= tlon - 8:
                                            break
                                        q8 += 8
                                    continue
                                # more than two pieces (chunks narrower than a token), or at the arena's ends: value
                                # by value through `sb`
                                k = str_c[w] * tlon
                                p = str_pa[w]
                                q = 0
                                while q < tlon:
                                    n = min(tlon - q, seg_k[p] + seg_len[p] - k)
                                    su = seg_slot[p]
                                    e0 = np.uint64(yoff + seg_src[p] + k - seg_k[p])
                                    for r in range(n):
                                        sb[w, q + r] = np.float32(slots[su, e0 + np.uint64(r)])
                                    q += n
                                    k += n
                                    p += 1
                                wu = np.uint64(w)
                                q8u = np.uint64(0)
                                while q8u < t8:
                                    move8n(tb, d + q8u, sb, wu, q8u, norm, gm, gs, cm, cs, ry, r0 + q8u, marks)
                                    q8u += u8
                                move8n(tb, d + t8, sb, wu, t8, norm, gm, gs, cm, cs, ry, r0 + t8, marks)
                    if norm == 2 and pend:  # the band's last row
                        _row_to_tokens(tb, pend_d, rowb, par ^ one, nlon, tlon, tok, cm, cs)
                        pend = False
                    _stream(outf, o, tb, np.uint64(n_band))
                    o += np.uint64(n_band)
    store_fence()
