"""Which codec makes a store fastest to sample on this machine: ``fastload inspect STORE --codecs``.

Why this module exists: past the chunking, a sample's cost is reading its chunks' stored bytes plus decoding them,
and which codec wins depends on the machine and on the data's size, not only on the data. From the page cache or a
local NVMe disk, reads run at GB/s and a codec that compresses little but decodes at memory speed (or none) is
fastest; from a slow disk or object storage, the better ratio of zstd pays for its slower decode. Measured on the
1-degree benchmark store (``benches/RESULTS.md``), writing the recommended rechunk uncompressed instead of
blosc-lz4 roughly doubled fastload's samples/s on a 2-core machine, because decoding was most of its CPU.

:func:`measure_codecs` measures both sides with fastload's own reader:

- the store's **read rates**, on a few of its stored chunks fetched one by one through :meth:`Store.chunk_bytes`:
  *cold* (the first fetch; for a local store, right after asking the kernel to drop those files from the page
  cache with ``posix_fadvise(DONTNEED)``) and *warm* (best of ``repeats`` fetches: the page cache);
- per candidate codec, the **compression ratio** and the one-thread **decode rate** of the same data, encoded as
  :func:`fastload.write.compressors` writes it and decoded by :func:`fastload.store._codecs.build_decoder`, the
  decoder the Loader uses (into a reused buffer, as the cache does). The data are the store's chunks, or, for
  ``fastload rechunk --codec auto``, blocks of the new chunk shape cut from the fields being copied.

The model is one line per codec: seconds per decoded byte = 1 / decode rate + 1 / (ratio x read rate), where the
read rate is the warm one if the whole dataset written with that codec fits in ``memory_bytes`` (default: the
memory available now), else the cold one. The codec with the least wins; among codecs within ``tie`` of the
best, the one that stores least. For a store that will be read from elsewhere (a bucket, another disk), pass that
place's throughput as ``read_bps``: it is then charged for every codec.

Run::

    fastload inspect era5.zarr --codecs                    # table and recommendation
    fastload inspect era5.zarr --codecs --read-gbps 0.3    # for reads at 300 MB/s (object storage)
    fastload rechunk era5.zarr fast.zarr --config sampling.toml --codec auto
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, SchemaError
from .write import CODECS, compressors

__all__ = ["CodecCost", "CodecChoice", "measure_codecs", "format_codecs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecCost:
    """One candidate codec measured on the store's data."""

    codec: str
    """Writer name (:data:`fastload.write.CODECS`)."""
    ratio: float
    """Decoded bytes / stored bytes."""
    decode_bps: float
    """Decoded bytes per second, one thread (best of the repeats)."""
    fits_in_memory: bool
    """Whether the whole dataset written with this codec fits in the memory budget (then reads are charged warm)."""
    read_bps: float
    """Stored bytes per second charged for this codec."""
    seconds_per_gb: float
    """Modelled seconds to read and decode 1 GB of decoded data: ``1e9 / decode_bps + 1e9 / (ratio * read_bps)``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecChoice:
    """The measurement of :func:`measure_codecs` and the codec it recommends."""

    codec: str
    """The recommended codec."""
    measured_on: str
    """What data the codecs were measured on (array and chunks, or field and block shape)."""
    sample_bytes: int
    """Decoded bytes measured."""
    dataset_bytes: int
    """Decoded bytes of the whole dataset the choice is for (what must fit in memory to be read warm)."""
    memory_bytes: int
    """Memory budget for the page cache the model assumed."""
    read_cold_bps: float | None
    """First-fetch read rate of the store's stored chunks (None when ``read_bps`` was given)."""
    read_warm_bps: float | None
    """Best-of-repeats read rate (None when ``read_bps`` was given)."""
    read_given_bps: float | None
    """The rate the caller gave, charged for every codec (None: measured rates)."""
    cold_dropped: bool
    """Whether the cold reads followed a successful page-cache drop (local stores on Linux)."""
    current: str
    """The store's codec chain as it is, for the report."""
    costs: tuple[CodecCost, ...]
    """Every candidate, fastest first."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def codecs_for(zarr_format: int) -> tuple[str, ...]:
    """The writer's codecs usable in ``zarr_format`` (v3: not plain ``lz4``, which has no codec in the v3
    specification and reads with a warning)."""
    return tuple(c for c in CODECS if not (zarr_format == 3 and c == "lz4"))


def _pick_array(store: Any, array: str | None) -> str:
    if array is not None:
        if array not in store.arrays:
            raise ConfigError(f"array: {array!r} not in {store.path}; arrays: {list(store.arrays)}")
        return array
    numeric = [n for n, a in store.arrays.items() if a.dtype.kind in "fiu"]
    if not numeric:
        raise SchemaError(f"{store.path}: no numeric data array to measure codecs on")
    return max(numeric, key=lambda n: store.arrays[n].chunk_nbytes * int(np.prod(store.arrays[n].grid_shape)))


def _spread(grid: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """``n`` indices spread evenly over a grid of blocks (deterministic)."""
    total = int(np.prod(grid))
    flat = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))
    return [tuple(int(i) for i in np.unravel_index(f, tuple(grid))) for f in flat]


def _best(fns: Sequence[Any], repeats: int) -> float:
    """Sum over ``fns`` of each one's best time of ``repeats`` calls (best per item: a preempted call on a
    shared machine spoils one item's repeat, not the whole measurement)."""
    total = 0.0
    for fn in fns:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        total += best
    return max(total, 1e-9)


def _drop_pages(store: Any, array: str, idx: Sequence[tuple[int, ...]]) -> bool:
    """Ask the kernel to drop the local files holding these chunks from the page cache; whether it could."""
    import os

    root = getattr(store.source, "root", None)
    if root is None or not hasattr(os, "posix_fadvise"):
        return False
    info = store.arrays[array]
    done = False
    for path in {os.path.join(root, *info.key(c).split("/")) for c in idx}:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # a missing chunk: nothing cached
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done = True
        finally:
            os.close(fd)
    return done


def _blocks(store: Any, field: str, block: Sequence[int], n: int) -> tuple[list[np.ndarray], str]:
    """``n`` blocks of shape ``(t, l, y, x)`` cut from ``field`` at spread positions (edge blocks padded with 0,
    as a writer pads its edge chunks)."""
    f = store.fields[field]
    shape = (len(store.time) if f.has_time else 1, 1 if f.levels is None else len(f.levels), store.grid.ny,
             store.grid.nx)  # fmt: skip
    block = tuple(min(int(b), s) for b, s in zip(block, shape))
    grid = [-(-s // b) for s, b in zip(shape, block)]
    out = []
    for i in _spread(grid, n):
        sel = [slice(k * b, min((k + 1) * b, s)) for k, b, s in zip(i, block, shape)]
        part = store.read(field, *sel)
        full = np.zeros(block, part.dtype)
        full[tuple(slice(0, e) for e in part.shape)] = part
        out.append(full)
    return out, f"{len(out)} blocks of {'x'.join(map(str, block))} of field {field!r}"


def measure_codecs(
    store: Any,
    *,
    array: str | None = None,
    field: str | None = None,
    block: Sequence[int] | None = None,
    dataset_bytes: int | None = None,
    n_chunks: int = 8,
    codecs: Sequence[str] | None = None,
    zarr_format: int | None = None,
    read_bps: float | None = None,
    memory_bytes: int | None = None,
    repeats: int = 3,
    tie: float = 0.05,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CodecChoice:
    """Measure the store's read rates and each codec's ratio and decode rate on its data; recommend the fastest.

    Parameters
    ----------
    store : Store
        An open store (:func:`fastload.store.open_store`).
    array : str, optional
        Array whose stored chunks are read (default: the largest numeric one); the codecs are measured on these
        chunks unless ``field`` and ``block`` are given.
    field, block : str and (t, l, y, x), optional
        Measure the codecs on blocks of this shape cut from this field instead (the chunking a copy will have).
    dataset_bytes : int, optional
        Decoded bytes of the whole dataset the choice is for (default: every data array of the store).
    n_chunks : int
        Chunks (blocks) measured, spread evenly over the chunk grid.
    codecs : sequence of str, optional
        Candidates (default: :func:`codecs_for` the target format).
    zarr_format : {2, 3}, optional
        Format the data will be written in (default: the store's).
    read_bps : float, optional
        Read rate (stored bytes/s) to charge every codec instead of the measured ones: where the data will be
        read from.
    memory_bytes : int, optional
        Page-cache budget: a dataset that fits is charged the warm read rate (default: memory available now).
    repeats : int
        Timed repeats; the best is kept.
    tie : float
        Codecs within this fraction of the fastest count as tied; the smallest on disk of them is recommended.
    transform : callable, optional
        With ``field`` and ``block``: turns each block into what the copy stores (``fastload rechunk``'s
        ``--unpack``/``--dtype``), so the codecs are measured on the copy's values and dtype, not the source's.

    Raises
    ------
    ConfigError
        A bad argument (unknown array, field or codec; a codec the target format cannot hold; non-positive rate).
    SchemaError
        No stored chunk to measure, or a codec that does not round-trip the data.
    """
    fmt = zarr_format or store.zarr_format
    codecs = codecs_for(fmt) if codecs is None else tuple(codecs)
    if n_chunks < 1 or repeats < 1 or not 0 <= tie < 1:
        raise ConfigError(f"n_chunks and repeats must be >= 1 and 0 <= tie < 1; got {n_chunks}, {repeats}, {tie}")
    bad = [c for c in codecs if c not in codecs_for(fmt)]
    if bad or not codecs:
        raise ConfigError(f"codecs: expected a non-empty list from {list(codecs_for(fmt))} (zarr v{fmt}), got "
                          f"{list(codecs)}")  # fmt: skip
    if read_bps is not None and not read_bps > 0:
        raise ConfigError(f"read_bps must be > 0, got {read_bps}")
    if transform is not None and field is None:
        raise ConfigError("transform goes with field and block (it turns the blocks into what a copy stores)")
    if (field is None) != (block is None):
        raise ConfigError("field and block go together (the blocks to measure the codecs on)")
    if field is not None and field not in store.fields:
        from .store._check import unknown_field

        raise ConfigError(f"field: {field!r}: {unknown_field(store, field)}")
    name = _pick_array(store, array if field is None else (array or store.fields[field].array))
    info = store.arrays[name]
    idx = _spread(info.grid_shape, n_chunks)
    cold = warm = None
    dropped = False
    if read_bps is None or field is None:
        dropped = read_bps is None and _drop_pages(store, name, idx)
        t0 = time.perf_counter()
        raws = [store.chunk_bytes(name, c) for c in idx]
        t_cold = time.perf_counter() - t0
        kept = [(c, r) for c, r in zip(idx, raws) if r is not None]  # missing chunks hold no stored bytes
        if not kept:
            raise SchemaError(f"{store.path}: array {name!r} has no stored chunk among {idx} to measure on")
        if read_bps is None:
            stored = sum(len(r) for _, r in kept)
            cold = stored / max(t_cold, 1e-9)
            warm = stored / _best([lambda c=c: store.chunk_bytes(name, c) for c, _ in kept], repeats)
    if field is None:
        data = [store.decode(name, r, c) for c, r in kept]
        what = f"{len(data)} stored chunks of array {name!r} ({'x'.join(map(str, info.chunks))})"
    else:
        data, what = _blocks(store, field, block, n_chunks)
        if transform is not None:
            data = [np.ascontiguousarray(transform(d)) for d in data]
            what += f" as the copy stores them ({data[0].dtype})"
    nbytes = sum(d.nbytes for d in data)
    if dataset_bytes is None:
        dataset_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in store.arrays.values())
    if memory_bytes is None:
        import psutil

        memory_bytes = int(psutil.virtual_memory().available)
    out = np.empty(max(d.nbytes for d in data), np.uint8)
    costs = []
    for codec in codecs:
        comp = compressors(codec, 2)
        comp = None if comp is None else comp[0]
        encoded = [d.tobytes() if comp is None else bytes(comp.encode(d)) for d in data]
        decs = [_candidate_decoder(info, d, comp, f"{store.path}/{name}") for d in data]
        for dec, e, d in zip(decs, encoded, data):  # the measurement is only worth anything if it round-trips
            if not np.array_equal(dec.decode(e, out[: d.nbytes]), d, equal_nan=d.dtype.kind == "f"):
                raise SchemaError(f"{store.path}/{name}: codec {codec!r} does not round-trip this data")
        secs = _best([lambda e=e, dec=dec, n=d.nbytes: dec.decode(e, out[:n]) for dec, e, d in zip(decs, encoded, data)],
                     repeats)  # fmt: skip
        ratio = nbytes / max(1, sum(len(e) for e in encoded))
        fits = dataset_bytes / ratio <= memory_bytes
        rate = read_bps if read_bps is not None else (warm if fits else cold)
        dbps = nbytes / secs
        costs.append(CodecCost(codec=codec, ratio=ratio, decode_bps=dbps, fits_in_memory=fits, read_bps=float(rate),
                               seconds_per_gb=1e9 / dbps + 1e9 / (ratio * rate)))  # fmt: skip
    costs.sort(key=lambda c: c.seconds_per_gb)
    fastest = costs[0].seconds_per_gb
    tied = [c for c in costs if c.seconds_per_gb <= fastest * (1 + tie)]
    pick = max(tied, key=lambda c: c.ratio).codec
    current = " ".join(c.get("id") or c.get("name", "?") for c in info.codecs) or "raw"
    return CodecChoice(codec=pick, measured_on=what, sample_bytes=nbytes, dataset_bytes=int(dataset_bytes),
                       memory_bytes=int(memory_bytes), read_cold_bps=cold, read_warm_bps=warm, read_given_bps=read_bps,
                       cold_dropped=dropped, current=current, costs=tuple(costs))  # fmt: skip


def _candidate_decoder(info: Any, data: np.ndarray, comp: Any, where: str) -> Any:
    """The Loader's decoder for chunks shaped like ``data`` written with ``comp`` (a v2 chunk, C order)."""
    from .store._codecs import build_decoder

    cfg = () if comp is None else (comp.get_config(),)
    cand = dataclasses.replace(info, zarr_format=2, shard=None, codecs=cfg, order="C", endian="little",
                               shape=data.shape, chunks=data.shape, dtype=data.dtype)  # fmt: skip
    return build_decoder(cand, where)


def format_codecs(choice: CodecChoice) -> str:
    """The report ``fastload inspect --codecs`` prints."""
    if choice.read_given_bps is not None:
        reads = f"reads charged at {choice.read_given_bps / 1e9:.2f} GB/s (given)"
    else:
        how = "after dropping them from the page cache" if choice.cold_dropped else "first fetch"
        reads = (f"reads {choice.read_cold_bps / 1e9:.2f} GB/s cold ({how}), {choice.read_warm_bps / 1e9:.2f} GB/s "
                 f"warm; warm is charged where the dataset ({choice.dataset_bytes / 1e9:.2f} GB decoded) fits in "
                 f"{choice.memory_bytes / 1e9:.1f} GB of memory")  # fmt: skip
    lines = [
        f"codecs  measured on {choice.measured_on} "
        f"({choice.sample_bytes / 1e6:.1f} MB decoded; stored now as {choice.current})",
        f"        {reads}",
        "  codec        ratio   decode GB/s (1 thread)   read GB/s charged   read+decode s per GB",
    ]
    for c in choice.costs:
        mark = "  <- recommended" if c.codec == choice.codec else ""
        lines.append(f"  {c.codec:<11} {c.ratio:5.2f}x   {c.decode_bps / 1e9:22.2f}   {c.read_bps / 1e9:17.2f}   "
                     f"{c.seconds_per_gb:20.3f}{mark}")  # fmt: skip
    lines.append(f"  recommended codec: {choice.codec} (fastload rechunk STORE OUT --codec {choice.codec}; "
                 "or --codec auto)")  # fmt: skip
    return "\n".join(lines)
