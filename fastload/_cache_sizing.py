"""Cache sizing: how many decoded chunks each array's arena holds, and how many one reader step may pin.

Why this exists: the loader turns its byte budget (``cache_bytes``) into slot arenas for the decoded-chunk cache
(:mod:`fastload.cache`) and a per-step chunk capacity for the epoch plan (:mod:`fastload.plan`), which splits
batches whose chunks exceed it. Both follow from the sample box and the chunk shapes alone: the most chunks one
sample can touch (:func:`sample_chunk_bound`, worst alignment) and the budget (:func:`plan_cache`). Public as
``fastload.reader.plan_cache`` etc.; the multi-stream twin is :func:`fastload._stream_chunks.cache_layout`.

    python -m pytest tests/fastload/test_reader.py -q -k sample_chunk_bound
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .cache import size_arenas

__all__ = ["CacheLayout", "chunks_along", "plan_cache", "sample_chunk_bound", "sample_need", "warn_process_share"]

log = logging.getLogger("fastload")


def chunks_along(n_chunks: int, chunk: int, span: int, n_points: int, rest: int = 0) -> int:
    """Most chunks ``n_points`` points spread over ``span`` consecutive indices touch on an axis of ``n_chunks``
    chunks of ``chunk``. ``rest``: the size of a partial last chunk the indices wrap across (periodic x whose period
    is not a multiple of the chunk), which a box across the seam touches besides the full chunks on both sides of
    it: ``3 + (span - 2 - rest) // chunk`` chunks. (The streams' chunk bounds use it too.)"""
    most = (span - 1) // chunk + 2
    if 0 < rest <= span - 2:
        most = max(most, 3 + (span - 2 - rest) // chunk)
    return int(min(n_chunks, n_points, most))


def _along(lay: Any, ax: int | None, span: int, n_points: int, rest: int = 0) -> int:
    """:func:`chunks_along` on array axis ``ax`` of ``lay`` (1 where the array has no such axis)."""
    if ax is None:
        return 1
    return chunks_along(lay.grid_shape[ax], lay.chunks[ax], span, n_points, rest)


def _wrap_rest(lay: Any, ax: int | None) -> int:
    """The size of the partial last chunk along ``ax`` when the columns of ``lay`` wrap (``periodic_x``, modulo the
    array's size along ``ax``, as the gather wraps them), else 0: ERA5 0.25 deg, 1440 columns in chunks of 128,
    has a last chunk of 32, and a box of 108 columns across the seam touches 3 column chunks, not 2."""
    if ax is None or not getattr(lay, "periodic_x", False):
        return 0
    return int(lay.shape[ax] % lay.chunks[ax])


def sample_chunk_bound(layouts: Mapping[str, Any], box: Sequence[int], time_step: int) -> dict[str, int]:
    """Per array, the most unique chunks one sample can touch (worst alignment), from the field layouts."""
    T, H, W = (int(v) for v in box)
    out: dict[str, int] = {}
    pairs: dict[str, set] = {}
    spans: dict[str, int] = {}
    for lay in layouts.values():
        ta, fa, la, ya, xa = lay.axes
        n = (_along(lay, ta, (T - 1) * time_step + 1, T) * _along(lay, ya, H, H)
             * _along(lay, xa, W, W, _wrap_rest(lay, xa)))
        fchunk = 0 if fa is None else lay.field_index // lay.chunks[fa]
        lchunks = {0} if la is None else set((lay.lev_idx // lay.chunks[la]).tolist())
        pairs.setdefault(lay.array, set()).update((fchunk, lc) for lc in lchunks)
        spans[lay.array] = max(spans.get(lay.array, 0), n)
    for a in pairs:
        out[a] = len(pairs[a]) * spans[a]
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class CacheLayout:
    """Slots per array arena and per-step chunk capacity, chosen from the byte budget."""

    slots: dict[str, int]
    capacity: dict[str, int]
    nbytes: int


def sample_need(store: Any, layouts: Mapping[str, Any], box: Sequence[int], time_step: int,
                bound: Mapping[str, int] | None = None) -> int:
    """Decoded bytes of the chunks one sample can touch (worst alignment): the least a cache is given."""
    bound = dict(bound) if bound is not None else sample_chunk_bound(layouts, box, time_step)
    return sum(bound[a] * int(store.arrays[a].chunk_nbytes) for a in bound)


def warn_process_share(setting: int, workers: int, need: int) -> bool:
    """Process mode: each of ``workers`` processes gets ``setting // workers`` bytes of cache; warn once (the loader,
    not each worker) when that share is below one sample's ``need``, naming the setting, the share and the need.
    Returns whether it warned."""
    share = setting // max(1, workers)  # as said: 0 with cache_bytes = 0 (it read "1 bytes each")
    if share >= need:
        return False
    log.warning("fastload: loader.cache_bytes=%d is shared by %d worker processes, %d bytes each, below the %d bytes "
                "of decoded chunks one sample needs: each worker's cache holds %d bytes (%d in all); give "
                "cache_bytes >= %d", setting, workers, share, need, need, need * workers, need * workers)
    return True


def plan_cache(store: Any, layouts: Mapping[str, Any], box: Sequence[int], time_step: int, budget: int,
               workers: int, bound: Mapping[str, int] | None = None, warn: bool = True) -> CacheLayout:
    """Size the cache arenas from ``budget`` bytes so that ``workers`` steps can run at once.

    Each array gets at least the chunks of one sample, at most all its chunks; the rest of the budget is shared in
    proportion to a sample's decoded bytes per array. A step may use ``1 / workers`` of an arena (batches larger
    than that are split into several steps by the plan), or all of it when the arena holds the whole array. A
    budget below one sample's chunks is raised to it (logged, unless ``warn`` is False: a process worker, whose
    budget is its share of the setting; the loader warns once, :func:`warn_process_share`). ``bound`` (array ->
    most chunks one sample touches) replaces :func:`sample_chunk_bound` for tokenizers that know better (a mesh:
    ``MeshTokenizer.sample_chunk_bound``).
    """
    bound = dict(bound) if bound is not None else sample_chunk_bound(layouts, box, time_step)
    nbytes = {a: int(store.arrays[a].chunk_nbytes) for a in bound}
    minimum = {a: bound[a] for a in bound}
    need = sum(minimum[a] * nbytes[a] for a in bound)
    if budget < need and warn:
        log.warning("fastload: cache_bytes=%d is below the %d bytes of decoded chunks one sample needs; using %d",
                    budget, need, need)
    slots = size_arenas(budget, nbytes, minimum)
    capacity = {}
    for a in slots:
        total = int(np.prod(store.arrays[a].grid_shape))
        slots[a] = max(minimum[a], min(slots[a], total))  # never more slots than the array has chunks
        # an arena that holds every chunk of its array never blocks a step: no need to split batches for it
        capacity[a] = slots[a] if slots[a] >= total else max(bound[a], slots[a] // max(1, workers))
    return CacheLayout(slots=slots, capacity=capacity, nbytes=sum(slots[a] * nbytes[a] for a in slots))
