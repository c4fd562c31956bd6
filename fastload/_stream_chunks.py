"""Chunks per multi-stream sample: bounds for the cache, and the warning about chunkings that read everything.

Why this exists: the loader's cache gives every array enough slots for one sample's chunks and splits batches
whose chunks do not fit (:mod:`fastload.plan`), so it needs, per ``"stream/array"``, the most chunks one sample
can touch (:func:`chunk_bounds`). The same counting, as expectations instead of bounds, finds streams chunked so
that each sample decodes most of the record (e.g. an ocean store written as one chunk over all times), which
would make multi-stream loading as slow as AtmoRep's whole-globe reads; :func:`warn_chunking` says so with a
recommended chunking, in the terms of ``fastload inspect``.

Bounds per array (fields sharing an array count their distinct (field chunk, level chunk) pairs):

- time: ``min(chunks along t, T, (spread - 1) // ct + 2)``, ``spread`` the widest range of stream time indices one
  served window maps to (the reference: ``(T - 1) * time_step + 1``);
- a box: the same along y and x (:func:`fastload._cache_sizing.chunks_along`: along a periodic x whose period is
  not a multiple of the chunk, a box across the seam may also touch the partial last chunk);
- a mesh: ``min(node chunks, nlat * nlon * K)`` (every slot in a different chunk at worst).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._cache_sizing import chunks_along
from .cache import size_arenas
from .reader import CacheLayout, sample_chunk_bound

__all__ = ["chunk_bounds", "warn_chunking", "cache_layout"]


def _expect(n_chunks: int, chunk: int, span: int) -> float:
    return float(min(n_chunks, 1.0 + (span - 1) / chunk))


def _pairs(lay: Any) -> set[tuple[int, int]]:
    _, fa, la, _, _ = lay.axes
    fchunk = 0 if fa is None else int(lay.field_index) // lay.chunks[fa]
    lchunks = {0} if la is None else set((lay.lev_idx // lay.chunks[la]).tolist())
    return {(fchunk, lc) for lc in lchunks}


def _per_field(ms: Any, st: Any, f: Any, expected: bool, probe: dict[str, float]) -> tuple[float, float]:
    """(time, spatial) chunk counts of one field of a non-reference stream: bounds, or expectations."""
    T, H, W = ms.box
    lay = st.layouts[f.name]
    ta, _, _, ya, xa = lay.axes
    g = lay.grid_shape
    spread = ms.time_spread[st.name]
    if ta is None:
        nt_ = 1.0
    else:
        nt_ = _expect(g[ta], lay.chunks[ta], spread) if expected else chunks_along(g[ta], lay.chunks[ta], spread, T)
    if st.kind == "mesh":
        _, nlat, nlon = f.num_tokens
        _, tlat, tlon = f.token_size
        bound = min(g[xa], nlat * nlon * tlat * tlon)
        return nt_, (min(bound, probe.get(f.name, bound)) if expected else bound)
    if expected:
        return nt_, _expect(g[ya], lay.chunks[ya], H) * _expect(g[xa], lay.chunks[xa], W)
    period = st.store.grid.x_period  # nx, or nx - 1 for a lat-lon grid repeating its seam column; 0: no wrap
    rest = period % lay.chunks[xa] if period > 0 else 0  # the partial chunk a box across the seam may touch
    return nt_, chunks_along(g[ya], lay.chunks[ya], H, H) * chunks_along(g[xa], lay.chunks[xa], W, W, rest)


def _mesh_probe(ms: Any, st: Any, n: int = 16) -> dict[str, float]:
    """Mean node chunks a sample's binned nodes touch, per mesh field, over ``n`` spread-out placements."""
    ny, nx = ms.grid.ny, ms.grid.nx
    _, H, W = ms.box
    ys = np.linspace(0, ny - H, n).round().astype(np.int64)
    xs = (np.arange(n) * 7919 % max(1, nx - (0 if ms.grid.periodic_x else W - 1))).astype(np.int64)
    boxes = np.stack([np.full(n, ms.valid_t0[0]), ys, xs], axis=1)
    regions = ms.regions.regions(boxes)
    out = {}
    for f in st.config.fields:
        lay = st.layouts[f.name]
        pts = st.sampler.points(regions, f, jit=ms.jit)[0]
        ch = np.where(pts >= 0, pts // lay.chunks[-1], -1)
        out[f.name] = float(np.mean([max(1, np.unique(r[r >= 0]).size) for r in ch]))
    return out


def _count(ms: Any, st: Any, expected: bool) -> dict[str, float]:
    """Per array of a stream: chunks one sample touches (bound or expectation)."""
    if st.kind == "reference" and not expected:
        return {a: float(v) for a, v in sample_chunk_bound(st.tokenizer.layouts, ms.box,
                                                           ms.config.time_step).items()}
    probe = _mesh_probe(ms, st) if expected and st.kind == "mesh" else {}
    pairs: dict[str, set] = {}
    span: dict[str, float] = {}
    for f in st.config.fields:
        lay = st.layouts[f.name]
        if st.kind == "reference":
            T, H, W = ms.box
            ta, _, _, ya, xa = lay.axes
            g = lay.grid_shape
            n = (_expect(g[ta], lay.chunks[ta], ms.time_spread[st.name]) if ta is not None else 1.0) * \
                _expect(g[ya], lay.chunks[ya], H) * _expect(g[xa], lay.chunks[xa], W)
        else:
            a, b = _per_field(ms, st, f, expected, probe)
            n = a * b
        pairs.setdefault(lay.array, set()).update(_pairs(lay))
        span[lay.array] = max(span.get(lay.array, 0.0), n)
    return {a: len(pairs[a]) * span[a] for a in pairs}


def chunk_bounds(ms: Any) -> dict[str, int]:
    """``"stream/array"`` -> the most chunks one sample can touch."""
    out: dict[str, int] = {}
    for st in ms.streams:
        out.update({st.key(a): int(np.ceil(v)) for a, v in _count(ms, st, expected=False).items()})
    return out


def _recommend(ms: Any, st: Any, array: str) -> tuple[int, ...]:
    info = st.store.arrays[array]
    lays = [lay for lay in st.layouts.values() if lay.array == array]
    ta, fa, la, ya, xa = lays[0].axes
    rec = list(info.shape)
    T, H, W = ms.box
    if ta is not None:
        rec[ta] = max(1, min(info.shape[ta], ms.time_spread[st.name]))
    for ax in (fa, la):
        if ax is not None:
            rec[ax] = 1
    if st.kind == "mesh":
        slots = max(f.num_tokens[1] * f.num_tokens[2] * f.token_size[1] * f.token_size[2] for f in st.config.fields)
        rec[xa] = min(info.shape[xa], max(slots, 1024))
    else:
        rec[ya], rec[xa] = min(info.shape[ya], H), min(info.shape[xa], W)
    return tuple(int(v) for v in rec)


def warn_chunking(ms: Any, *, stacklevel: int = 2, fraction: float = 0.5) -> list[str]:
    """Warn (``ChunkingWarning``) about every array one sample decodes ``fraction`` or more of; return the messages.

    Only arrays whose record is at least four times what a sample uses are reported (reading a tiny array whole
    costs nothing).
    """
    from .streams import ChunkingWarning

    msgs = []
    for st in ms.streams:
        expected = _count(ms, st, expected=True)
        for array, n in expected.items():
            info = st.store.arrays[array]
            lays = [lay for lay in st.layouts.values() if lay.array == array]
            ta, _, _, ya, xa = lays[0].axes
            g = info.grid_shape
            per_pair = (g[ta] if ta is not None else 1) * (g[ya] if ya is not None else 1) * g[xa]
            n_pairs = len(set().union(*(_pairs(lay) for lay in lays)))
            total = per_pair * n_pairs
            record = total * info.chunk_nbytes
            useful = sum(f.num_levels * int(np.prod(f.box)) * info.dtype.itemsize
                         for f in st.config.fields if st.layouts[f.name].array == array)
            decoded = n * info.chunk_nbytes
            if decoded >= fraction * record and record >= 4 * useful:
                msg = (f"stream {st.name!r}: one sample decodes about {min(100.0, 100 * n / total):.0f}% of array "
                       f"{array!r} (chunks {tuple(info.chunks)}, {total} chunk(s) hold the fields and levels "
                       f"sampled; {decoded / 2**20:.2f} MiB decoded per sample for {useful / 2**20:.3f} MiB useful): "
                       f"most of the record is read for every sample. Recommended chunks {_recommend(ms, st, array)} "
                       f"(fastload rechunk; see fastload inspect {st.store.path})")
                msgs.append(msg)
                warnings.warn(msg, ChunkingWarning, stacklevel=stacklevel)
    return msgs


def cache_layout(ms: Any, budget: int, workers: int) -> CacheLayout:
    """Slots per ``"stream/array"`` arena and per-step capacity from a byte budget (as
    :func:`fastload.reader.plan_cache` does for one store)."""
    bound = dict(ms.bounds)
    nbytes = {a: int(ms.arrays[a].chunk_nbytes) for a in bound}
    slots = size_arenas(budget, nbytes, bound)
    for a in slots:
        total = int(np.prod(ms.arrays[a].grid_shape))
        slots[a] = max(bound[a], min(slots[a], total))
    # an arena that holds every chunk of its array never evicts, so one step may use all of it
    capacity = {a: slots[a] if slots[a] >= int(np.prod(ms.arrays[a].grid_shape)) else
                max(bound[a], slots[a] // max(1, workers)) for a in slots}
    return CacheLayout(slots=slots, capacity=capacity, nbytes=sum(slots[a] * nbytes[a] for a in slots))
