"""Read amplification of a sampling config on a chunking, and the chunking that minimises it.

Why this module exists: whether a store suits a sampling config is arithmetic on box and chunk shapes, and the
tools (``fastload inspect``, ``fastload rechunk``, the benchmarks) need the same numbers. Public through
:mod:`fastload.inspect` (:func:`read_amplification`, :func:`recommend_chunks`, :func:`expected_chunks`).

The model (exact, no sampling). A sample places one box of ``box = num_tokens * token_size`` grid points, with
time points ``t0 + i * time_step``, at a random offset: ``t0`` and ``y0`` uniform over the positions that keep the
box inside the record and the grid (``y0`` weighted by cos(latitude) of the box centre when ``centers =
"coslat"``), ``x0`` uniform over all ``NX`` positions on a periodic grid (the box wraps) and over the valid ones
otherwise. Along each axis the number of chunks touched depends on the offset only; its expectation is computed
by enumerating offsets (modulo the chunk size where that is exact). The offsets are independent, so the expected
number of chunks per sample is the product of the per-axis expectations times the distinct (field, level) chunk
pairs the config's fields need in that array. Every touched chunk is decoded whole (edge chunks too).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = [
    "Amplification",
    "ArrayAmplification",
    "ChunkRecommendation",
    "distinct_per_window",
    "expected_chunks",
    "read_amplification",
    "recommend_chunks",
    "OVERHEAD_S",
    "DECODE_BPS",
    "MIN_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "touch_probabilities",
]

OVERHEAD_S = 0.4e-3
"""Per-chunk overhead in seconds (zarr-python's measured cost per chunk) for the recommendation."""
DECODE_BPS = 3.3e9
"""Decode rate (bytes/s, blosc-lz4 on one core) that turns the overhead into equivalent bytes."""
MIN_CHUNK_BYTES = 256 * 2**10
"""Smallest chunk (decoded bytes) a recommendation may pick."""
MAX_CHUNK_BYTES = 64 * 2**20
"""Largest chunk (decoded bytes) a recommendation may pick."""
MOST_OF_RECORD = 0.5
"""Warn when a sample decodes more than this fraction of an array at the time steps it touches."""


# -- per-axis arithmetic -------------------------------------------------------------------------------------------
def _distinct_per_row(chunk_idx: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row of a 2-D int array."""
    s = np.sort(chunk_idx, axis=1)
    return 1 + (np.diff(s, axis=1) != 0).sum(axis=1)


def expected_chunks(
    n: int,
    rel: Sequence[int] | np.ndarray,
    chunk: int,
    *,
    periodic: bool = False,
    weights: np.ndarray | None = None,
) -> float:
    """Expected number of chunks touched along one axis by a box at a random offset.

    Parameters
    ----------
    n : int
        Axis length.
    rel : sequence of int
        Indices of the box relative to its offset (``arange(box)`` or ``arange(box) * time_step``).
    chunk : int
        Chunk length along the axis.
    periodic : bool
        Offsets ``0..n-1`` and indices wrap modulo ``n``; else offsets ``0..n-span`` with ``span = max(rel)+1``.
    weights : array, optional
        Probability weights of the offsets (length = number of offsets); None: uniform.
    """
    rel = np.asarray(rel, np.int64)
    span = int(rel.max()) + 1
    if span > n:
        raise ConfigError(f"a box spanning {span} points does not fit an axis of {n}")
    n_pos = n if periodic else n - span + 1
    if periodic or weights is not None:
        pos = np.arange(n_pos, dtype=np.int64)
        w = (
            np.full(n_pos, 1.0 / n_pos)
            if weights is None
            else np.asarray(weights, np.float64) / np.sum(weights)
        )
    else:  # uniform, not periodic: the count depends on the offset modulo the chunk only
        pos = np.arange(min(chunk, n_pos), dtype=np.int64)
        w = ((n_pos - 1 - pos) // chunk + 1) / n_pos  # share of offsets p < n_pos with p % chunk == r
    if rel.size == span and np.array_equal(rel, np.arange(span)):  # contiguous box: closed form per offset
        end = pos + span - 1
        counts = end // chunk - pos // chunk + 1
        if periodic:
            n_chunks = -(-n // chunk)
            wrapped = end >= n
            counts[wrapped] = np.minimum(
                n_chunks, n_chunks - pos[wrapped] // chunk + (end[wrapped] - n) // chunk + 1
            )
        return float(np.dot(counts, w))
    total = 0.0
    step = max(1, 2_000_000 // rel.size)
    for lo in range(0, pos.size, step):  # bounded memory: offsets in blocks
        idx = pos[lo : lo + step, None] + rel[None, :]
        if periodic:
            idx %= n
        total += float(np.dot(_distinct_per_row(idx // chunk), w[lo : lo + step]))
    return total


def touch_probabilities(
    n: int, box: int, chunk: int, *, periodic: bool = False, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per chunk along one axis, the probability that a contiguous box of ``box`` points at a random offset
    touches it (offsets and weights as in :func:`expected_chunks`; the probabilities sum to its expectation)."""
    if box > n:
        raise ConfigError(f"a box spanning {box} points does not fit an axis of {n}")
    n_pos = n if periodic else n - box + 1
    pos = np.arange(n_pos, dtype=np.int64)
    w = np.full(n_pos, 1.0 / n_pos) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    n_chunks = -(-n // chunk)
    end = pos + box - 1
    lo, hi = pos // chunk, np.minimum(end, n - 1) // chunk  # chunk range of each offset up to the axis' end
    diff = np.zeros(n_chunks + 1)
    np.add.at(diff, lo, w)
    np.add.at(diff, hi + 1, -w)
    if periodic:  # the part past the end wraps onto chunks 0.. (those not already in the first range)
        wr = end >= n
        hi2 = np.minimum((end[wr] - n) // chunk, lo[wr] - 1)
        some = hi2 >= 0
        np.add.at(diff, np.zeros(int(some.sum()), np.int64), w[wr][some])
        np.add.at(diff, hi2[some] + 1, -w[wr][some])
    return np.cumsum(diff)[:n_chunks]


def distinct_per_window(py: np.ndarray, px: np.ndarray, k: int) -> float:
    """Expected distinct (y, x) chunks that ``k`` boxes placed independently touch, from their per-chunk touch
    probabilities ``py``, ``px`` (k = 1: ``py.sum() * px.sum()``)."""
    if k <= 1:
        return float(py.sum() * px.sum())
    miss = 1.0 - np.clip(np.outer(py, px), 0.0, 1.0)
    return float((1.0 - miss**k).sum())


def _y_weights(store: Any, config: Any, by: int) -> np.ndarray | None:
    if config.centers != "coslat" or store.grid.kind != "latlon":
        return None
    lat = np.asarray(store.grid.lat, np.float64)
    centres = lat[np.arange(lat.size - by + 1) + by // 2]
    return np.clip(np.cos(np.deg2rad(centres)), 1e-12, None)


# -- read amplification --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ArrayAmplification:
    """What one sample costs in one array."""

    array: str
    fields: tuple[str, ...]
    chunks: tuple[int, ...]
    chunk_nbytes: int
    chunks_per_axis: tuple[float, ...]
    """Expected chunks touched along each array axis (field and level: the distinct chunks needed)."""
    chunks_per_sample: float
    decoded_bytes: float
    useful_bytes: int
    record_fraction: float
    """Decoded bytes / bytes of the whole array at the time steps the sample's chunks cover."""

    @property
    def amplification(self) -> float:
        return self.decoded_bytes / self.useful_bytes


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Amplification:
    """Expected cost of one random sample of a config on a chunking: decoded bytes per useful byte."""

    amplification: float
    decoded_bytes: float
    useful_bytes: int
    chunks_per_sample: float
    arrays: tuple[ArrayAmplification, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for a, src in zip(d["arrays"], self.arrays):
            a["amplification"] = src.amplification
        return d


def _array_geometry(store: Any, config: Any) -> dict[str, dict[str, Any]]:
    """Per array touched by the config: its axes, the fields' (field index, level indices) and useful bytes."""
    store.check(config)
    bt, by, bx = config.box
    out: dict[str, dict[str, Any]] = {}
    for f in config.fields:
        info = store.fields[f.name]
        arr = store.arrays[info.array]
        g = out.setdefault(
            info.array, {"axes": info.axes, "fields": [], "pairs": [], "useful": 0, "info": arr}
        )
        lev = None if f.levels is None else np.asarray(store.level_indices(f.name, f.levels), np.int64)
        g["fields"].append(f.name)
        g["pairs"].append((info.field_index, lev))
        n_t = bt if info.axes[0] is not None else 1
        g["useful"] += f.num_levels * n_t * by * bx * arr.dtype.itemsize
    return out


def _axis_expectations(store: Any, config: Any, geo: Mapping[str, Any], chunks: Sequence[int]) -> list[float]:
    """Expected chunks touched along each axis of one array for the given chunk shape."""
    bt, by, bx = config.box
    t_ax, f_ax, l_ax, y_ax, x_ax = geo["axes"]
    shape = geo["info"].shape
    per = [1.0] * len(shape)
    if t_ax is not None:
        per[t_ax] = expected_chunks(shape[t_ax], np.arange(bt) * config.time_step, chunks[t_ax])
    per[y_ax] = expected_chunks(
        shape[y_ax], np.arange(by), chunks[y_ax], weights=_y_weights(store, config, by)
    )
    per[x_ax] = expected_chunks(
        shape[x_ax], np.arange(bx), chunks[x_ax], periodic=bool(store.grid.periodic_x)
    )
    fl = _field_level_chunks(geo, chunks)
    if f_ax is not None:
        per[f_ax] = float(len({c[0] for c in fl}))
    if l_ax is not None:
        per[l_ax] = float(len({c[1] for c in fl}))
    return per


def _field_level_chunks(geo: Mapping[str, Any], chunks: Sequence[int]) -> set[tuple[int, int]]:
    """Distinct (field chunk, level chunk) pairs the config's fields need in this array."""
    _, f_ax, l_ax, _, _ = geo["axes"]
    out = set()
    for fi, lev in geo["pairs"]:
        fc = 0 if f_ax is None else fi // chunks[f_ax]
        for li in [0] if lev is None or l_ax is None else lev.tolist():
            out.add((fc, 0 if l_ax is None else li // chunks[l_ax]))
    return out


def read_amplification(
    store: Any, config: Any, *, chunks: Mapping[str, Sequence[int]] | None = None
) -> Amplification:
    """Expected bytes decoded per useful byte for one random sample of ``config`` on ``store``'s chunking.

    Parameters
    ----------
    store : Store
        An open store (:func:`fastload.open_store`).
    config : SamplingConfig
        The sampling config (checked against the store first).
    chunks : mapping array -> chunk shape, optional
        Evaluate these chunkings instead of the store's (e.g. a recommendation).

    Returns
    -------
    Amplification
        Totals and a per-array breakdown; ``warnings`` says when a sample decodes most of the record.
    """
    geos = _array_geometry(store, config)
    parts, warnings = [], []
    for name, geo in geos.items():
        arr = geo["info"]
        ch = tuple(int(c) for c in (chunks or {}).get(name, arr.chunks))
        if len(ch) != len(arr.shape) or min(ch) < 1:
            raise ConfigError(
                f"chunks for array {name!r}: expected {len(arr.shape)} positive integers, got {ch}"
            )
        per = _axis_expectations(store, config, geo, ch)
        n_fl = len(_field_level_chunks(geo, ch))
        t_ax, f_ax, l_ax, y_ax, x_ax = geo["axes"]
        n_chunks = n_fl * math.prod(per[a] for a in (t_ax, y_ax, x_ax) if a is not None)
        cbytes = math.prod(ch) * arr.dtype.itemsize
        decoded = n_chunks * cbytes
        t_cover = per[t_ax] * ch[t_ax] if t_ax is not None else 1.0
        record = t_cover * math.prod(s for i, s in enumerate(arr.shape) if i != t_ax) * arr.dtype.itemsize
        frac = min(1.0, decoded / record)
        part = ArrayAmplification(
            array=name, fields=tuple(geo["fields"]), chunks=ch, chunk_nbytes=cbytes, chunks_per_axis=tuple(per),
            chunks_per_sample=n_chunks, decoded_bytes=decoded, useful_bytes=int(geo["useful"]), record_fraction=frac,
        )  # fmt: skip
        parts.append(part)
        if frac > MOST_OF_RECORD:
            warnings.append(
                f"array {name!r}: each sample decodes {frac:.0%} of the array at the time steps it touches "
                f"(chunks {list(ch)} for a box of {list(config.box)}): read amplification {part.amplification:.0f}x"
            )
    decoded = sum(p.decoded_bytes for p in parts)
    useful = sum(p.useful_bytes for p in parts)
    return Amplification(
        amplification=decoded / useful, decoded_bytes=decoded, useful_bytes=useful,
        chunks_per_sample=sum(p.chunks_per_sample for p in parts), arrays=tuple(parts), warnings=tuple(warnings),
    )  # fmt: skip


# -- recommended chunking ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChunkRecommendation:
    """The chunking of one array that minimises expected decoded bytes plus per-chunk overhead per sample."""

    array: str
    chunks: tuple[int, ...]
    chunk_nbytes: int
    chunks_per_sample: float
    decoded_bytes: float
    amplification: float
    cost_bytes: float
    """Expected decoded bytes plus per-chunk overhead (as bytes) per sample: what the recommendation minimises."""
    current_amplification: float
    current_cost_bytes: float
    """The same cost for the store's current chunking."""


def _candidates(n: int, box: int) -> list[int]:
    """Chunk lengths worth trying along an axis of length ``n`` for boxes of ``box`` points."""
    c = {n, box}
    k = 1
    while k <= n:
        c.update((k, 3 * k))
        k *= 2
    c.update(box * m for m in (2, 3, 4))
    c.update(box // d for d in (2, 3, 4, 6) if box % d == 0)
    c.update(d for d in range(max(1, box // 4), n + 1) if n % d == 0 and n // d <= 64)
    return sorted(v for v in c if 1 <= v <= n)


def recommend_chunks(
    store: Any,
    config: Any,
    *,
    overhead_bytes: float = OVERHEAD_S * DECODE_BPS,
    min_chunk_bytes: int = MIN_CHUNK_BYTES,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    samples_per_window: int = 1,
    field_chunks: bool = False,
) -> dict[str, ChunkRecommendation]:
    """A chunking per array touched by ``config`` that minimises the expected cost of one sample.

    The field axis of an AtmoRep array gets chunk 1: the chunking is the one ``fastload rechunk --config`` writes,
    each field as its own array (no field axis), so the chunks and cost per sample reported are the copy's. With
    ``field_chunks`` the field axis's chunk is searched too (a chunking for the store's own layout, which no
    fastload tool writes).

    Cost per sample = expected chunks touched x (decoded chunk bytes + ``overhead_bytes``), over candidate chunk
    lengths per axis (powers of two and three times them, the box and its multiples/fractions, divisors of the
    axis), with ``min_chunk_bytes <= chunk bytes <= max_chunk_bytes`` (a chunk smaller than the minimum is allowed
    only when the whole array is).

    ``samples_per_window`` (the Loader's setting of that name, AtmoRep's several samples per time window): the
    samples of a window share its time steps and each chunk the window needs is read once for all of them, so the
    chunks per sample are the window's time chunks x the expected distinct (y, x) chunks its boxes touch
    (:func:`distinct_per_window`, exact for boxes placed independently) / ``samples_per_window``. 1 (default):
    independent samples, the product of the per-axis expectations.

    Returns
    -------
    dict
        Array name -> :class:`ChunkRecommendation` (chunk shape in the array's axis order).
    """
    geos = _array_geometry(store, config)
    bt, by, bx = config.box
    span_t = config.time_span
    current = {p.array: p for p in read_amplification(store, config).arrays}
    out = {}
    for name, geo in geos.items():
        arr = geo["info"]
        t_ax, f_ax, l_ax, y_ax, x_ax = geo["axes"]
        cands: list[list[int]] = [[1]] * len(arr.shape)
        if t_ax is not None:
            cands[t_ax] = _candidates(arr.shape[t_ax], span_t)
        cands[y_ax] = _candidates(arr.shape[y_ax], by)
        cands[x_ax] = _candidates(arr.shape[x_ax], bx)
        for ax in (f_ax, l_ax) if field_chunks else (l_ax,):
            if ax is not None:
                n = arr.shape[ax]
                cands[ax] = sorted({1, n, *(d for d in range(1, min(n, 8) + 1) if n % d == 0)})
        # per-axis expectations, computed once per candidate length
        exp_t = (
            {c: expected_chunks(arr.shape[t_ax], np.arange(bt) * config.time_step, c) for c in cands[t_ax]}
            if (t_ax is not None)
            else {}
        )
        w = _y_weights(store, config, by)
        periodic = bool(store.grid.periodic_x)
        k = int(samples_per_window)
        if k < 1:
            raise ConfigError(f"recommend_chunks: samples_per_window must be >= 1, got {samples_per_window}")
        p_y = {c: touch_probabilities(arr.shape[y_ax], by, c, weights=w) for c in {*cands[y_ax], arr.chunks[y_ax]}}
        p_x = {c: touch_probabilities(arr.shape[x_ax], bx, c, periodic=periodic)
               for c in {*cands[x_ax], arr.chunks[x_ax]}}  # fmt: skip
        yx: dict[tuple[int, int], float] = {}  # expected distinct (y, x) chunks per sample, per (cy, cx)
        for cy in p_y:
            for cx in p_x:
                yx[cy, cx] = distinct_per_window(p_y[cy], p_x[cx], k) / k
        total_bytes = math.prod(arr.shape) * arr.dtype.itemsize
        lo = min(min_chunk_bytes, total_bytes)
        n_fl = {}  # distinct (field, level) chunk pairs per (field chunk, level chunk) length
        for cf in cands[f_ax] if f_ax is not None else [1]:
            for cl in cands[l_ax] if l_ax is not None else [1]:
                probe = [1] * len(arr.shape)
                if f_ax is not None:
                    probe[f_ax] = cf
                if l_ax is not None:
                    probe[l_ax] = cl
                n_fl[cf, cl] = len(_field_level_chunks(geo, probe))
        best = None
        for ch in itertools.product(*cands):
            cbytes = math.prod(ch) * arr.dtype.itemsize
            if not lo <= cbytes <= max_chunk_bytes:
                continue
            fl = n_fl[ch[f_ax] if f_ax is not None else 1, ch[l_ax] if l_ax is not None else 1]
            n = fl * yx[ch[y_ax], ch[x_ax]]
            if t_ax is not None:
                n *= exp_t[ch[t_ax]]
            cost = n * (cbytes + overhead_bytes)
            key = (cost, -cbytes)  # ties: the larger chunk (fewer files)
            if best is None or key < best[0]:
                best = (key, ch, n, cbytes)
        if best is None:
            raise ConfigError(
                f"recommend_chunks: no chunking of array {name!r} lies between {min_chunk_bytes} and "
                f"{max_chunk_bytes} bytes; adjust min_chunk_bytes/max_chunk_bytes"
            )
        _, ch, n, cbytes = best
        cur = current[name]
        cur_n = cur.chunks_per_sample
        if k > 1:  # the store's own chunking under the same window model
            per = _axis_expectations(store, config, geo, arr.chunks)
            cur_n = (len(_field_level_chunks(geo, arr.chunks)) * (per[t_ax] if t_ax is not None else 1.0)
                     * yx[arr.chunks[y_ax], arr.chunks[x_ax]])  # distinct (field, level) chunk pairs, as for n
        out[name] = ChunkRecommendation(
            array=name, chunks=tuple(int(c) for c in ch), chunk_nbytes=int(cbytes), chunks_per_sample=float(n),
            decoded_bytes=float(n * cbytes), amplification=float(n * cbytes / geo["useful"]),
            cost_bytes=float(best[0][0]), current_amplification=float(cur_n * cur.chunk_nbytes / geo["useful"]),
            current_cost_bytes=cur_n * (cur.chunk_nbytes + overhead_bytes),
        )  # fmt: skip
    return out
