"""The roof of a one-thread gather: the same box rows copied without token layout or normalisation, beside memcpy.

Why this exists: issue 3 asks the one-thread gather for half a memcpy of the same bytes, and six sessions of kernel
changes left local normalisation short of it. This tells apart what the memory system costs from what the kernel's
own work costs. It reads exactly the source rows the gather reads (the box rows of ``ab_gather.py``'s calls, each
432 bytes of a 5.76 kB grid row on the 0.25-degree grid), in the gather's order, and writes exactly its output
bytes, timed interleaved in one process with:

- ``memcpy``: ``np.copyto`` of one call's output bytes, once per call (the issue's yardstick);
- ``rows``: each box row copied whole to the next place of the output (ordinary stores), prefetched ``--ahead``
  rows ahead as the gather prefetches; no token layout, no normalisation;
- ``rows+stream``: the same rows gathered into a band buffer of one band's rows and streamed out with the gather's
  own non-temporal stream (``_kernels._stream``): the gather's structure without token layout or normalisation;
- ``tokens+stream``: and with the token layout, in the gather's 8-wide moves (raw values; boxes that cross the
  seam moved west of it, as this reduced kernel does not wrap): what the gather's own generality (chunk edges,
  the seam, slot tables, normalisation modes) costs on top;
- ``gather none / global / local``: the kernel itself (``_kernels.gather``) on the same calls.

Run::

    python benches/roof_gather.py                         # 9x9 and 27x27 on the 0.25-degree grid
    python benches/roof_gather.py --geoms 9x9 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_gather  # noqa: E402  (its data and calls, so the roof reads what the A/B gathers)

from fastload.sampling import _kernels  # noqa: E402
from fastload.sampling._intrinsics import move8n, prefetch2  # noqa: E402
from fastload.sampling.geometry import box_to_tokens  # noqa: E402


@njit(nogil=True, cache=True, inline="always")
def _row(dst, d0, src, r, e0, x0, nx, n):
    """``dst[d0:d0 + n]`` = row ``r`` of ``src`` from ``e0`` on, ``n`` values, wrapping at ``nx`` (``e0 - x0``
    is the row's start): two vectorised runs at most."""
    n1 = min(n, nx - x0)
    for k in range(n1):
        ku = np.uint64(k)
        dst[d0 + ku] = src[r, e0 + ku]
    w0 = e0 - np.uint64(x0)
    for k in range(n - n1):
        ku = np.uint64(k)
        dst[d0 + np.uint64(n1) + ku] = src[r, w0 + ku]


@njit(nogil=True, cache=True, inline="always")
def _prefetch_row(src, r, e0, n, last):
    for e in range(e0, e0 + n + 15, 16):
        prefetch2(src, r, min(e, last))


@njit(nogil=True, cache=True)
def rows(src, boxes, n_lev, n_t, n_y, n_x, nx, band, out, ahead):
    """Box rows ``(t, y)`` of every sample and level, in the gather's (time, y) order, to consecutive places of
    ``out``: with ``band`` 0 straight there (ordinary stores), else through a band buffer of ``band`` rows,
    streamed out with the gather's non-temporal stream after each band. ``src`` is ``(t * n_lev + l, y * nx + x)``.
    """
    last = src.shape[1] - 1
    n_band = max(band, 1) * n_x
    outf = out.reshape(out.size)
    tb = np.empty(n_band if band else 0, out.dtype)
    dst = tb if band else outf
    o = np.uint64(0)  # values of `out` written
    d = np.uint64(0)  # of `dst`
    n_rows = n_t * n_y
    for s in range(boxes.shape[0]):
        t0, y0, x0 = boxes[s, 0], boxes[s, 1], boxes[s, 2]
        for lv in range(n_lev):
            for q in range(min(ahead, n_rows)):
                _prefetch_row(src, (t0 + q // n_y) * n_lev + lv, (y0 + q % n_y) * nx + x0, n_x, last)
            for q in range(n_rows):
                p = q + ahead
                if p < n_rows:
                    _prefetch_row(src, (t0 + p // n_y) * n_lev + lv, (y0 + p % n_y) * nx + x0, n_x, last)
                r = np.uint64((t0 + q // n_y) * n_lev + lv)
                _row(dst, d, src, r, np.uint64((y0 + q % n_y) * nx + x0), x0, nx, n_x)
                d += np.uint64(n_x)
                if not band:
                    o = d
                elif d == np.uint64(n_band) or q == n_rows - 1:
                    _kernels._stream(outf, o, tb, d)
                    o += d
                    d = np.uint64(0)
    _kernels.store_fence()


@njit(nogil=True, cache=True)
def tokens_stream(src, boxes, n_lev, geometry, nx, out, ahead):
    """:func:`rows` through a band buffer with the token layout: each box row's token rows moved into their tokens in the band
    buffer in 8-wide moves (the last overlapping), as the gather moves raw float32 values; no seam, no chunk edges,
    no normalisation."""
    nt, nlat, nlon, tt, tlat, tlon = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    last = src.shape[1] - 1
    band = tt * tlat
    n_x = nlon * tlon
    n_band = n_x * band
    tb = np.empty(n_band, out.dtype)
    none = np.empty((1, 1), np.float32)
    zero = np.float32(0.0)
    u0 = np.uint64(0)
    tok = np.uint64(band * tlon)
    t8 = np.uint64(tlon - 8)
    u8 = np.uint64(8)
    tlu = np.uint64(tlon)
    outf = out.reshape(out.size)
    o = np.uint64(0)
    n_rows = nt * nlat * band
    for s in range(boxes.shape[0]):
        t0, y0, x0 = boxes[s, 0], boxes[s, 1], boxes[s, 2]
        for lv in range(n_lev):
            q = 0  # row counter in (a, b, i, j) order
            for a in range(nt):
                for b in range(nlat):
                    for i in range(tt):
                        for j in range(tlat):
                            p = q + ahead
                            if p < n_rows:
                                pt = (p // (band * nlat)) * tt + (p // tlat) % tt
                                py = ((p // band) % nlat) * tlat + p % tlat
                                _prefetch_row(src, (t0 + pt) * n_lev + lv, (y0 + py) * nx + x0, n_x, last)
                            q += 1
                            r = np.uint64((t0 + a * tt + i) * n_lev + lv)
                            e0 = np.uint64((y0 + b * tlat + j) * nx + x0)
                            d = np.uint64((i * tlat + j) * tlon)
                            for _ in range(nlon):
                                k = u0
                                while k < t8:
                                    move8n(tb, d + k, src, r, e0 + k, 0, zero, zero, none, none, u0, u0, ())
                                    k += u8
                                move8n(tb, d + t8, src, r, e0 + t8, 0, zero, zero, none, none, u0, u0, ())
                                d += tok
                                e0 += tlu
                    _kernels._stream(outf, o, tb, np.uint64(n_band))
                    o += np.uint64(n_band)
    _kernels.store_fence()


def case(world, geom: str, ahead: int, reps: int) -> dict[str, float]:
    """Output GB/s of every way of one geometry on ``world`` (``ab_gather.make_world``), timed interleaved; the
    roof's outputs checked against NumPy indexing of the field first."""
    nt, n_lev, ny, nx = world.data.shape
    # the gather's arena: whole-globe chunks of all levels, so its rows are the field's (t, level) slices in order
    assert world.chunks[1:] == (n_lev, ny, nx) and nt % world.chunks[0] == 0
    src = world.slots.reshape(nt * n_lev, ny * nx)
    runs = {}
    for norm in ("none", "global", "local"):
        f, calls = ab_gather.make_calls(world, geom, norm, ["k"])
        runs[f"gather {norm}"] = lambda calls=calls: [_kernels.gather(*a, o["k"]) for a, o in calls]
    (n_t, n_y, n_x), band = f.box, f.token_size[0] * f.token_size[1]
    boxes = [a[3] for a, _ in calls]
    outs = [o["k"] for _, o in calls]
    runs["rows"] = lambda: [rows(src, bx, n_lev, n_t, n_y, n_x, nx, 0, o, ahead) for bx, o in zip(boxes, outs)]
    runs["rows+stream"] = lambda: [rows(src, bx, n_lev, n_t, n_y, n_x, nx, band, o, ahead)
                                   for bx, o in zip(boxes, outs)]
    geo = np.array([*f.num_tokens, *f.token_size], np.int64)
    # the token kernel does not wrap at the seam: its boxes are the gather's moved west of it where they cross it
    tboxes = [np.column_stack([bx[:, :2], np.minimum(bx[:, 2], nx - n_x)]) for bx in boxes]
    runs["tokens+stream"] = lambda: [tokens_stream(src, bx, n_lev, geo, nx, o, ahead) for bx, o in zip(tboxes, outs)]
    for name in ("rows", "rows+stream"):
        runs[name]()
        for bx, o in zip(boxes, outs):
            ref = np.stack([world.data[t0:t0 + n_t, :, y0:y0 + n_y][..., (x0 + np.arange(n_x)) % nx]
                            .transpose(1, 0, 2, 3) for t0, y0, x0 in bx])
            if not np.array_equal(o.reshape(-1), ref.ravel()):
                raise AssertionError(f"{geom} {name}: output differs from NumPy indexing")
    runs["tokens+stream"]()
    for bx, o in zip(tboxes, outs):
        ref = np.stack([box_to_tokens(world.data[t0:t0 + n_t, :, y0:y0 + n_y, x0:x0 + n_x].transpose(1, 0, 2, 3),
                                      f.token_size) for t0, y0, x0 in bx])
        if not np.array_equal(o, ref):
            raise AssertionError(f"{geom} tokens+stream: output differs from NumPy indexing")
    for run in runs.values():
        run()  # compile (or load from the cache)
    cs, cd = np.ones_like(outs[0]), np.empty_like(outs[0])  # one call's bytes, copied once per call
    runs = {"memcpy": lambda: [np.copyto(cd, cs) for _ in outs], **runs}
    best = dict.fromkeys(runs, float("inf"))
    for rep in range(reps):
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            t = time.perf_counter()
            runs[name]()
            best[name] = min(best[name], time.perf_counter() - t)
    nbytes = sum(o.nbytes for o in outs)
    return {name: nbytes / b / 1e9 for name, b in best.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", choices=sorted(ab_gather.GRIDS), default="0.25", help="as ab_gather.py")
    p.add_argument("--geoms", default="9x9,27x27", help=f"of {', '.join(ab_gather.GEOMETRIES)}")
    p.add_argument("--ahead", type=int, default=_kernels.PREFETCH_ROWS, help="rows prefetched ahead (the gather's)")
    p.add_argument("--reps", type=int, default=7, help="timed rounds per case (best is kept)")
    opts = p.parse_args(argv)
    world = ab_gather.make_world(opts.grid)
    print(f"grid {opts.grid} {world.data.shape}, {ab_gather.CALLS} calls of {ab_gather.SAMPLES} samples, "
          f"{opts.ahead} rows ahead, best of {opts.reps}; GB/s of output (ratio to memcpy); "
          f"load {os.getloadavg()[0]:.2f}")
    for geom in opts.geoms.split(","):
        r = case(world, geom, opts.ahead, opts.reps)
        print(f"{geom}: " + "  ".join(f"{name} {v:.2f} ({v / r['memcpy']:.2f})" for name, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
