"""Reader benchmarks: chunk-aligned reads against the raw read+decode roof of the same chunks, the cost of 20 ms of
latency per request, and what the plan-aware cache saves. Every figure is side by side with its reference, in one
run, as a ratio.

- ``test_aligned_vs_roof``: the Loader on a chunk-aligned plan (each box starts on a chunk boundary) vs the roof
  (:func:`profiling.roofs.read_decode_roof`: plain ``pread`` + numcodecs of each chunk a batch needs, no loader
  code) of the same chunks, same thread count; the Loader's rate is its steady rate after the first batch.
  Target: >= 90 % of the roof.
- ``test_latency``: the same plan through ``open_store(latency_ms=20)`` (each request sleeps 20 ms) vs none.
  Target: >= 80 % of the zero-latency rate.
- ``test_cache_budget``: decoded bytes per useful byte with a cache that holds one step vs the default budget.
- ``test_backends``: the random plan read through each byte source on the same local files: plain reads
  (``backend="auto"``), fsspec and obstore (both as ``file://`` URLs, so through the remote path's batched
  requests), interleaved; ratios to plain reads. Shows each client's cost per request, not network latency.

Run::

    pytest benches/bench_reader.py --quick          # tiny store, seconds
    pytest benches/bench_reader.py                  # the 'small' synthetic store (2-degree, 72 h)
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(3600)  # full runs take minutes on 2 shared cores

WORKERS = 2


@pytest.fixture(scope="module")
def tiles(synth_store, bench_config, bench_quick):
    """(path, config, aligned plan, random plan) on the writer's tile-chunked store."""
    from fastload.store import open_store
    from profiling.bench_scenarios import draw_batches

    path = synth_store(layout="per-variable")
    store = open_store(path)
    config = bench_config(path)
    n = 3 if bench_quick else 12
    bs = config.batch_size
    aligned = draw_batches(store, config, batches=n, batch_size=bs, seed=0, epoch=1, plan="aligned")
    rand = draw_batches(store, config, batches=n, batch_size=bs, seed=0, epoch=2, plan="random")
    return path, config, np.concatenate(aligned), np.concatenate(rand)


def loader_pass(path: str, config, boxes: np.ndarray, *, latency_ms: float = 0.0, backend: str = "auto",
                **settings):
    """Construct a Loader on an explicit plan, pull every batch, close.

    Returns (seconds, IOStats, steady seconds per sample): the steady figure is the time between the first and
    the last batch per sample after the first batch (construction and start-up excluded, as in the roof).
    """
    from fastload.loader import Loader
    from fastload.store import open_store

    store = open_store(path, latency_ms=latency_ms, backend=backend)
    t0 = time.perf_counter()
    arrivals = []
    with Loader(store, config, boxes=boxes, batch_size=config.batch_size, workers=WORKERS, device="cpu",
                **settings) as loader:
        for _ in loader:
            arrivals.append(time.perf_counter())
        stats = loader.stats
    after_first = len(boxes) - config.batch_size
    steady = (arrivals[-1] - arrivals[0]) / after_first if after_first > 0 else (arrivals[0] - t0) / len(boxes)
    return time.perf_counter() - t0, stats, steady


def roof(path: str, config, boxes: np.ndarray) -> dict[str, float]:
    """Raw read+decode of each chunk every batch needs (once per batch), no loader code."""
    from fastload.store import open_store
    from profiling.chunkmap import batch_decodes, open_chunk_maps
    from profiling.peers import spec_from_store
    from profiling.roofs import read_decode_roof

    spec = spec_from_store(open_store(path), config)
    maps = open_chunk_maps(spec)
    bs = config.batch_size
    tasks = [batch_decodes(spec, maps, boxes[i:i + bs], "unique") for i in range(0, len(boxes), bs)]
    return read_decode_roof(maps, tasks, WORKERS)


def test_aligned_vs_roof(benchmark, report, tiles, bench_quick):
    path, config, aligned, _ = tiles
    loader_pass(path, config, aligned[: config.batch_size])  # JIT caches, page cache
    rounds = 1 if bench_quick else 3
    ours, roofs = [], []
    for _ in range(rounds):  # interleaved: drift hits both alike
        ours.append(loader_pass(path, config, aligned, cache_bytes=0))
        roofs.append(roof(path, config, aligned))
    benchmark.pedantic(lambda: loader_pass(path, config, aligned, cache_bytes=0), rounds=1, iterations=1)
    per_sample = float(np.median([o[2] for o in ours]))
    stats = ours[0][1]
    rsecs = float(np.median([r["seconds"] for r in roofs]))
    n = len(aligned)
    report(benchmark, samples_per_s=1.0 / per_sample, roof_samples_per_s=n / rsecs,
           pct_of_roof=100.0 * (rsecs / n) / per_sample, decoded_bytes=stats.bytes_decoded,
           roof_decoded_bytes=roofs[0]["decoded_bytes"], e2e_samples_per_s=n / float(np.median([o[0] for o in ours])))
    assert stats.samples == n


def test_latency(benchmark, report, tiles, bench_quick):
    path, config, _, rand = tiles
    loader_pass(path, config, rand[: config.batch_size])
    rounds = 1 if bench_quick else 3
    zero, slow = [], []
    for _ in range(rounds):
        zero.append(loader_pass(path, config, rand)[2])
        slow.append(loader_pass(path, config, rand, latency_ms=20.0, fetch_concurrency=64)[2])
    benchmark.pedantic(lambda: loader_pass(path, config, rand, latency_ms=20.0, fetch_concurrency=64), rounds=1,
                       iterations=1)
    z, s = float(np.median(zero)), float(np.median(slow))
    report(benchmark, samples_per_s_0ms=1.0 / z, samples_per_s_20ms=1.0 / s, pct_of_0ms=100.0 * z / s)


@pytest.mark.parametrize("budget", ["one-step", "default"])
def test_cache_budget(benchmark, report, tiles, budget):
    path, config, _, rand = tiles
    settings = {"cache_bytes": 0} if budget == "one-step" else {}
    secs, stats, per_sample = benchmark.pedantic(lambda: loader_pass(path, config, rand, **settings), rounds=1,
                                                 iterations=1)
    report(benchmark, samples_per_s=1.0 / per_sample, amplification=stats.amplification, hit_rate=stats.hit_rate,
           decoded_mb=stats.bytes_decoded / 1e6, useful_mb=stats.bytes_useful / 1e6)


def test_backends(benchmark, report, tiles, bench_quick):
    """The same random plan through plain file reads, fsspec and obstore, interleaved (steady samples/s)."""
    backends = ["auto", "fsspec"]
    try:
        import obstore  # noqa: F401
        backends.append("obstore")
    except ImportError:
        pass
    path, config, _, rand = tiles
    for b in backends:  # JIT caches, page cache, each client's start-up
        loader_pass(path, config, rand[: config.batch_size], backend=b)
    rounds = 1 if bench_quick else 3
    per = {b: [] for b in backends}
    for _ in range(rounds):
        for b in backends:
            per[b].append(loader_pass(path, config, rand, backend=b)[2])
    benchmark.pedantic(lambda: loader_pass(path, config, rand, backend=backends[-1]), rounds=1, iterations=1)
    med = {b: float(np.median(v)) for b, v in per.items()}
    report(benchmark, **{f"samples_per_s_{b}": 1.0 / med[b] for b in backends},
           **{f"ratio_{b}_to_plain": med["auto"] / med[b] for b in backends if b != "auto"})
