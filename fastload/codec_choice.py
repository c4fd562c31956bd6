"""Which codec makes a store fastest to sample on this machine: ``fastload inspect STORE --codecs``.

Why this module exists: past the chunking, a sample's cost is reading its chunks' stored bytes plus decoding them,
and which codec wins depends on the machine, not only on the data. From the page cache or a local NVMe disk, reads
run at several GB/s and a codec that compresses little but decodes at memory speed (or none) is fastest; from
object storage at a few hundred MB/s, the better ratio of zstd pays for its slower decode. Measured on the
1-degree benchmark store (``benches/RESULTS.md``), writing the recommended rechunk uncompressed instead of
blosc-lz4 roughly doubled fastload's samples/s on a 2-core machine, because decoding was most of its CPU.

:func:`measure_codecs` measures both sides on the store's own data, with fastload's own reader:

- the **read rate** of the store as it is: a few of its chunks' stored bytes fetched one by one through
  :meth:`Store.chunk_bytes`, each the best of ``repeats`` (warm: the page cache and connection pools as a
  training run sees them after its first epoch; a remote store's latency counts in full, while the Loader keeps
  many requests in flight, so for remote stores prefer giving ``read_bps`` from a throughput measurement);
- per candidate codec, the **compression ratio** and the one-thread **decode rate** of the same chunks, encoded as
  :func:`fastload.write.compressors` writes them and decoded by :func:`fastload.store._codecs.build_decoder`, the
  decoder the Loader uses (into a reused buffer, as the cache does).

The model is one line: seconds per decoded byte = 1 / decode rate + 1 / (ratio x read rate); the codec with the
least wins, and among codecs within ``tie`` of the best the one that stores least. The read rate is the store's
as measured here: for a store that will be read from elsewhere (a bucket, another disk), pass that place's rate
as ``read_bps``.

Run::

    fastload inspect era5.zarr --codecs                    # table and recommendation
    fastload inspect era5.zarr --codecs --read-gbps 0.3    # for reads at 300 MB/s (object storage)
    fastload rechunk era5.zarr fast.zarr --config sampling.toml --codec auto
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
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
    seconds_per_gb: float
    """Modelled seconds to read and decode 1 GB of decoded data: ``1e9 / decode_bps + 1e9 / (ratio * read_bps)``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecChoice:
    """The measurement of :func:`measure_codecs` and the codec it recommends."""

    codec: str
    """The recommended codec."""
    array: str
    """Array whose chunks were measured."""
    chunks: tuple[tuple[int, ...], ...]
    """Chunk indices measured."""
    sample_bytes: int
    """Decoded bytes measured (all chunks)."""
    read_bps: float
    """Stored bytes per second the model charges."""
    read_measured: bool
    """Whether :attr:`read_bps` was measured here (False: given by the caller)."""
    current: str
    """The store's codec chain as it is, for the report."""
    costs: tuple[CodecCost, ...]
    """Every candidate, fastest first."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    """``n`` chunk indices spread evenly over a chunk grid (deterministic)."""
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


def _candidate_decoder(info: Any, codec: str, where: str) -> tuple[Any, list[bytes] | None]:
    """The Loader's decoder for ``info``'s chunks written with ``codec`` (as a v2 chunk, C order)."""
    from .store._codecs import build_decoder

    comp = compressors(codec, 2)
    cfg = () if comp is None else (comp[0].get_config(),)
    cand = dataclasses.replace(info, zarr_format=2, shard=None, codecs=cfg, order="C", endian="little")
    return build_decoder(cand, where), (None if comp is None else comp[0])


def measure_codecs(
    store: Any,
    *,
    array: str | None = None,
    n_chunks: int = 8,
    codecs: Sequence[str] = CODECS,
    read_bps: float | None = None,
    repeats: int = 3,
    tie: float = 0.05,
) -> CodecChoice:
    """Measure the store's read rate and each codec's ratio and decode rate on its data; recommend the fastest.

    Parameters
    ----------
    store : Store
        An open store (:func:`fastload.store.open_store`).
    array : str, optional
        Array to measure (default: the largest numeric one).
    n_chunks : int
        Chunks measured, spread evenly over the array's chunk grid.
    codecs : sequence of str
        Candidates (default: every codec the writer knows).
    read_bps : float, optional
        Read rate (stored bytes/s) to charge instead of measuring this store's: where the rechunked store will
        be read from.
    repeats : int
        Timed repeats; the best is kept.
    tie : float
        Codecs within this fraction of the fastest count as tied; the smallest on disk of them is recommended.
    """
    if n_chunks < 1 or repeats < 1 or not 0 <= tie < 1:
        raise ConfigError(f"n_chunks and repeats must be >= 1 and 0 <= tie < 1; got {n_chunks}, {repeats}, {tie}")
    bad = [c for c in codecs if c not in CODECS]
    if bad or not codecs:
        raise ConfigError(f"codecs: expected a non-empty list from {list(CODECS)}, got {list(codecs)}")
    if read_bps is not None and not read_bps > 0:
        raise ConfigError(f"read_bps must be > 0, got {read_bps}")
    name = _pick_array(store, array)
    info = store.arrays[name]
    idx = _spread(info.grid_shape, n_chunks)
    raws = store.chunk_bytes_many(name, idx)
    measured = read_bps is None
    if measured:
        stored = sum(len(r) for r in raws if r is not None)
        if stored == 0:
            raise SchemaError(f"{store.path}: array {name!r} has no stored chunks among {idx} to measure reads on")
        reads = [lambda c=c: store.chunk_bytes(name, c) for c in idx]
        read_bps = stored / _best(reads, repeats)
    data = [store.decode(name, r, c) for r, c in zip(raws, idx)]
    nbytes = sum(d.nbytes for d in data)
    out = np.empty(info.chunk_nbytes, np.uint8)
    costs = []
    for codec in codecs:
        dec, comp = _candidate_decoder(info, codec, f"{store.path}/{name}")
        encoded = [d.tobytes() if comp is None else bytes(comp.encode(d)) for d in data]
        for e, d in zip(encoded, data):  # the measurement is only worth anything if the round trip is exact
            if not np.array_equal(dec.decode(e, out), d, equal_nan=d.dtype.kind == "f"):
                raise SchemaError(f"{store.path}/{name}: codec {codec!r} does not round-trip this data")
        secs = _best([lambda e=e, dec=dec: dec.decode(e, out) for e in encoded], repeats)
        ratio = nbytes / max(1, sum(len(e) for e in encoded))
        dbps = nbytes / secs
        costs.append(CodecCost(codec=codec, ratio=ratio, decode_bps=dbps,
                               seconds_per_gb=1e9 / dbps + 1e9 / (ratio * read_bps)))  # fmt: skip
    costs.sort(key=lambda c: c.seconds_per_gb)
    fastest = costs[0].seconds_per_gb
    tied = [c for c in costs if c.seconds_per_gb <= fastest * (1 + tie)]
    pick = max(tied, key=lambda c: c.ratio).codec
    current = " ".join(c.get("id") or c.get("name", "?") for c in info.codecs) or "raw"
    return CodecChoice(codec=pick, array=name, chunks=tuple(idx), sample_bytes=nbytes, read_bps=float(read_bps),
                       read_measured=measured, current=current, costs=tuple(costs))  # fmt: skip


def format_codecs(choice: CodecChoice) -> str:
    """The report ``fastload inspect --codecs`` prints."""
    how = "measured here, best of repeats" if choice.read_measured else "given"
    lines = [
        f"codecs  measured on {len(choice.chunks)} chunks of {choice.array!r} ({choice.sample_bytes / 1e6:.1f} MB "
        f"decoded; stored now as {choice.current}); reads at {choice.read_bps / 1e9:.2f} GB/s ({how})",
        "  codec        ratio   decode GB/s (1 thread)   read+decode s per GB",
    ]
    for c in choice.costs:
        mark = "  <- recommended" if c.codec == choice.codec else ""
        lines.append(f"  {c.codec:<11} {c.ratio:5.2f}x   {c.decode_bps / 1e9:22.2f}   {c.seconds_per_gb:20.3f}{mark}")
    lines.append(f"  recommended codec: {choice.codec} (fastload rechunk STORE OUT --codec {choice.codec}; "
                 "or --codec auto)")  # fmt: skip
    return "\n".join(lines)
