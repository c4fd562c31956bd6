"""Decode throughput per codec on weather-like float32 data: one thread, and a pool of threads over many chunks.

Why this exists: past the loader's overheads the cost of a sample is decoding the chunks it touches, so the codec
sets the roof (fastload's DESIGN.md: blosc-lz4 ~3.3 GB/s per core, zstd ~1.9). The data are a block of the
synthetic ``temperature`` field (smooth structure plus correlated noise, compressing like real data), encoded
with the codecs the stores use (:func:`fastload.write.compressors`, zarr v2), decoded with numcodecs, checked
equal to the original, and reported as decoded GB/s and compression ratio.

    pytest benches/bench_decode.py --quick
    pytest benches/bench_decode.py --benchmark-json benches/results/decode_<hardware>_<yyyymm>.json
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "lz4", "gzip", "none")


@pytest.fixture(scope="module")
def block(synth_store, bench_quick) -> np.ndarray:
    """About 1.8 MB (quick) or 4 MB (full) of ``temperature``: 12 hours x 5 levels x the globe."""
    import zarr

    path = synth_store(preset="tiny" if bench_quick else "small")
    z = zarr.open_array(store=path, path="temperature", mode="r")
    return np.ascontiguousarray(z[0:12])


def _codec(name: str):
    from fastload.write import compressors

    c = compressors(name, 2)
    return None if c is None else c[0]


def _decode(codec, raw: bytes, like: np.ndarray) -> np.ndarray:
    if codec is None:
        return np.frombuffer(raw, dtype=like.dtype).reshape(like.shape).copy()  # "none" still copies once
    return np.frombuffer(codec.decode(raw), dtype=like.dtype).reshape(like.shape)


@pytest.fixture
def no_blosc_threads(monkeypatch):
    """Blosc spawns its own threads when called from the main thread; measure one core."""
    import numcodecs.blosc

    monkeypatch.setattr(numcodecs.blosc, "use_threads", False)


@pytest.mark.parametrize("name", CODECS)
def test_decode_one_thread(benchmark, report, block, no_blosc_threads, name):
    codec = _codec(name)
    raw = block.tobytes() if codec is None else bytes(codec.encode(block))
    out = benchmark(_decode, codec, raw, block)
    np.testing.assert_array_equal(out, block)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        report(benchmark, codec=name, decoded_gbps=block.nbytes / stats.stats.median / 1e9,
               ratio=block.nbytes / len(raw))  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["blosc-lz4", "zstd"])
def test_decode_threads(benchmark, report, block, bench_quick, name, threads):
    """Many chunks on a pool: numcodecs releases the GIL while it decodes, so two threads near double."""
    codec = _codec(name)
    chunks = [bytes(codec.encode(block[i : i + 1])) for i in range(block.shape[0])]
    chunks = chunks * (1 if bench_quick else 4)

    def run(pool: ThreadPoolExecutor) -> list[np.ndarray]:
        return list(pool.map(lambda r: _decode(codec, r, block[:1]), chunks))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        outs = benchmark(run, pool)
    np.testing.assert_array_equal(np.concatenate(outs[: block.shape[0]]), block)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        report(benchmark, codec=name, threads=threads,
               decoded_gbps=len(chunks) * block[:1].nbytes / stats.stats.median / 1e9)  # fmt: skip
