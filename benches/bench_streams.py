"""Multi-stream throughput beside the single-stream figure: an atmosphere alone vs atmosphere + ocean + mesh.

Same reference boxes, same atmosphere fields, in one run; the multi-stream figures add a daily curvilinear ocean
(``previous`` time rule, 2 depth levels + surface) and a 6-hourly unstructured mesh (``nearest``, binned nodes) at
the same place and time window, so the ratio says what the extra streams cost.

- ``test_extract[single|multi]``: :func:`fastload.extract` on the atmosphere vs
  :func:`fastload.streams.extract_streams` on all three (one thread, no cache: every chunk read and decoded per
  call, the point gather and the node binning included).
- ``test_backend[single|multi]``: the loader's own path (epoch plan, plan-aware cache, reader threads, gather) for
  an epoch of batches: :class:`fastload._backend.ThreadBackend` on the atmosphere vs
  :class:`fastload._stream_backend.StreamBackend` on all streams, the same cache budget.

- ``test_loader[single|multi]``: the whole :class:`fastload.Loader` (the above plus the prefetch pump and the ring
  of batch buffers, CPU tensors), one epoch of new places per timed call (the cache keeps what earlier epochs
  decoded, as in training); the multi-stream loader reports its per-stream counters (``Batch.stats.streams``).

Figures: samples/s and output MB/s (token tensors written), with the per-stream decoded bytes. Run::

    pytest benches/bench_streams.py --quick       # tiny stores, seconds
    pytest benches/bench_streams.py               # 1-degree atmosphere and ocean, 60k-node mesh
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zarr

from fastload.config import FieldConfig, SamplingConfig, StreamConfig

T0 = np.datetime64("2000-01-01T00:00", "ns")
BATCH = 16


def _write(group, name, data, dims, chunks, attrs=None, compressor="default"):
    import numcodecs

    comp = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE) if compressor == "default" else None
    arr = group.create_array(name, shape=data.shape, chunks=tuple(min(c, s) for c, s in zip(chunks, data.shape)),
                             dtype=data.dtype, compressors=comp,
                             attributes={**(attrs or {}), "_ARRAY_DIMENSIONS": list(dims)},
                             fill_value=np.nan if data.dtype.kind == "f" else 0)
    arr[...] = data


def _smooth(rng, shape, offset):
    v = rng.standard_normal(shape).astype(np.float32).cumsum(axis=-1)
    return (v / np.float32(np.sqrt(shape[-1])) + np.float32(offset)).astype(np.float32)


def _hours(times):
    return ((times - T0) // np.timedelta64(1, "h")).astype(np.int64), {"units": "hours since 2000-01-01 00:00:00"}


def build(root: str, quick: bool) -> dict[str, str]:
    """Write the three stores (1-degree in full mode, 4-degree in quick mode); returns their paths."""
    rng = np.random.default_rng(0)
    res = 4.0 if quick else 1.0
    ny, nx = int(180 / res) + 1, int(360 / res)
    nt = 48 if quick else 96
    cy, cx = (12, 24) if quick else (46, 90)  # tile chunks: a box touches a few, never the whole globe
    paths = {k: os.path.join(root, f"{k}.zarr") for k in ("era5", "ocean", "fesom")}
    # atmosphere: hourly, 3 model levels, tile chunks
    g = zarr.open_group(paths["era5"], mode="w", zarr_format=2)
    for name in ("t", "u"):
        _write(g, name, _smooth(rng, (nt, 3, ny, nx), 250.0), ("time", "level", "latitude", "longitude"),
               (6, 1, cy, cx))
    _write(g, "sp", _smooth(rng, (nt, ny, nx), 1e5), ("time", "latitude", "longitude"), (6, cy, cx))
    h, ta = _hours(T0 + np.arange(nt) * np.timedelta64(1, "h"))
    _write(g, "time", h, ("time",), (nt,), ta)
    _write(g, "level", np.array([96.0, 114.0, 137.0]), ("level",), (3,), {"level_type": "model"})
    _write(g, "latitude", np.linspace(90, -90, ny), ("latitude",), (ny,))
    _write(g, "longitude", np.arange(nx) * res, ("longitude",), (nx,))
    # ocean: daily, 3 depths, curvilinear, land
    oy = ny - 10 // int(res) - 1
    jj, ii = np.meshgrid(np.arange(oy), np.arange(nx), indexing="ij")
    olat = -80.0 + res * jj + 0.3 * res * np.sin(2 * np.pi * ii / nx)
    olon = (0.5 * res + res * ii + 0.2 * res * np.cos(np.pi * jj / oy)) % 360
    ndays = nt // 24 + 2
    g = zarr.open_group(paths["ocean"], mode="w", zarr_format=2)
    th = _smooth(rng, (ndays, 3, oy, nx), 10.0)
    th[:, :, oy // 2: oy // 2 + oy // 8, nx // 8: nx // 4] = np.nan
    _write(g, "thetao", th, ("time", "depth", "y", "x"), (1, 1, cy, cx))
    _write(g, "zos", _smooth(rng, (ndays, oy, nx), 0.0), ("time", "y", "x"), (1, cy, cx))
    h, ta = _hours(T0 - np.timedelta64(1, "D") + np.arange(ndays) * np.timedelta64(1, "D"))
    _write(g, "time", h, ("time",), (ndays,), ta)
    _write(g, "depth", np.array([5.0, 50.0, 200.0]), ("depth",), (3,), {"units": "m", "positive": "down"})
    _write(g, "latitude", olat, ("y", "x"), (oy, nx))
    _write(g, "longitude", olon, ("y", "x"), (oy, nx), {"periodic_x": True})
    # mesh: 6-hourly, 2 levels, Fibonacci nodes stored in 10-degree tiles (spatially local node chunks)
    n = 6000 if quick else 60000
    cn = 512 if quick else 4096
    k = np.arange(n) + 0.5
    lat = np.rad2deg(np.arcsin(1 - 2 * k / n))
    lon = (k * 137.50776405) % 360
    order = np.lexsort((lon, (lon // 10).astype(int), (lat // 10).astype(int)))
    lat, lon = lat[order], lon[order]
    nm = nt // 6 + 2
    g = zarr.open_group(paths["fesom"], mode="w", zarr_format=2)
    _write(g, "temp", _smooth(rng, (nm, 2, n), 12.0), ("time", "nz1", "nod2"), (4, 1, cn))
    _write(g, "ssh", _smooth(rng, (nm, n), 0.0), ("time", "nod2"), (4, cn))
    h, ta = _hours(T0 + np.arange(nm) * np.timedelta64(6, "h"))
    _write(g, "time", h, ("time",), (nm,), ta)
    _write(g, "nz1", np.array([5.0, 100.0]), ("nz1",), (2,), {"units": "m", "positive": "down"})
    _write(g, "latitude", lat, ("nod2",), (n,))
    _write(g, "longitude", lon, ("nod2",), (n,))
    return paths


def configs(paths: dict[str, str], quick: bool) -> tuple[SamplingConfig, SamplingConfig]:
    """(atmosphere alone, all three streams): [4, 3, 4] tokens of [3, 6, 6] points (quick: [2, 2, 2] of [3, 3, 3])."""
    nt, tok = ((2, 2, 2), (3, 3, 3)) if quick else ((4, 3, 4), (3, 6, 6))

    def f(name, stream, levels=None):
        return FieldConfig(name=name, levels=levels, num_tokens=nt, token_size=tok, normalization="none", stream=stream)

    atmo = (f("t", "era5", (96, 114, 137)), f("u", "era5", (96, 137)), f("sp", "era5"))
    multi = SamplingConfig(
        streams=(StreamConfig(name="era5", path=paths["era5"]),
                 StreamConfig(name="ocean", path=paths["ocean"], time_rule="previous"),
                 StreamConfig(name="fesom", path=paths["fesom"], time_rule="nearest")),
        fields=atmo + (f("thetao", "ocean", (5.0, 200.0)), f("zos", "ocean"), f("temp", "fesom", (5.0,)),
                       f("ssh", "fesom")),
        batch_size=BATCH)
    import dataclasses

    single = SamplingConfig(fields=tuple(dataclasses.replace(x, stream=None) for x in atmo), batch_size=BATCH)
    return single, multi


@pytest.fixture(scope="module")
def world(tmp_path_factory, bench_quick):
    from fastload.store import open_store
    from fastload.streams import MultiStream

    paths = build(str(tmp_path_factory.mktemp("streams")), bench_quick)
    single, multi = configs(paths, bench_quick)
    ms = MultiStream(multi)
    n_batches = 3 if bench_quick else 12
    boxes = ms.random_boxes(n_batches * BATCH, seed=0, epoch=0)
    return {"store": open_store(paths["era5"]), "single": single, "ms": ms, "boxes": boxes}


def _seconds(benchmark, fn) -> float:
    """Median seconds of the benchmark's rounds (one timed call when benchmarks are disabled: CI smoke runs)."""
    if getattr(benchmark, "stats", None) is None:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return benchmark.stats.stats.median


def _out_bytes(config) -> int:
    return sum(int(np.prod(f.sample_shape)) * 4 for f in config.fields)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_extract(benchmark, report, world, kind, bench_quick):
    from fastload.extract import extract
    from fastload.streams import extract_streams

    boxes = world["boxes"][:BATCH]
    if kind == "single":
        fn, cfg = (lambda: extract(world["store"], world["single"], boxes)), world["single"]
    else:
        fn, cfg = (lambda: extract_streams(world["ms"], boxes)), world["ms"].config
    out = fn()  # warm (JIT) and check: the atmosphere is the same in both
    if kind == "multi":
        ref = extract(world["store"], world["single"], boxes)
        assert all(np.array_equal(out[f].data, ref[f].data) for f in ("t", "u", "sp"))
    benchmark.pedantic(fn, rounds=3 if bench_quick else 7, iterations=1, warmup_rounds=0)
    s = _seconds(benchmark, fn)
    report(benchmark, samples_per_s=BATCH / s, out_MBps=BATCH * _out_bytes(cfg) / s / 1e6, fields=len(cfg.fields))


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_backend(benchmark, report, world, kind, bench_quick):
    from fastload._backend import LoadSpec, ThreadBackend
    from fastload._stream_backend import StreamBackend
    from fastload.sampling.neighborhood import allocate_outputs
    from fastload.sampling.tokenizer import build_tokenizer

    ms, boxes = world["ms"], world["boxes"]
    cfg = world["single"] if kind == "single" else ms.config
    useful = ms.useful_bytes_per_sample
    spec = LoadSpec(batch_size=BATCH, drop_last=True, prefetch=2, workers=2, cache_bytes=256 * 2**20,
                    fetch_concurrency=4, retries=0, on_bad_chunk="raise", months=None, useful_bytes_per_sample=useful,
                    jit=None, pin=False)
    outs = allocate_outputs(cfg, BATCH)
    n_batches = boxes.shape[0] // BATCH
    decoded = {}

    def epoch():
        if kind == "single":
            store = world["store"]
            be = ThreadBackend(store, build_tokenizer(store, cfg), cfg, spec, None)
        else:
            be = StreamBackend(ms, spec, None)
        before = ms.stream_counters()
        try:
            be.start(boxes, 0)
            for b in range(n_batches):
                be.read(b, outs, None, lambda: False)
        finally:
            be.close()
        after = ms.stream_counters()
        decoded.update({s: after[s]["bytes_decoded"] - before[s]["bytes_decoded"] for s in after})

    epoch()
    benchmark.pedantic(epoch, rounds=3 if bench_quick else 5, iterations=1, warmup_rounds=0)
    s = _seconds(benchmark, epoch)
    n = n_batches * BATCH
    extra = {f"decoded_MB_{k}": v / 1e6 for k, v in decoded.items()} if kind == "multi" else {}
    report(benchmark, samples_per_s=n / s, out_MBps=n * _out_bytes(cfg) / s / 1e6, fields=len(cfg.fields), **extra)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_loader(benchmark, report, world, kind, bench_quick):
    from fastload.extract import extract
    from fastload.loader import Loader

    ms = world["ms"]
    n = world["boxes"].shape[0]

    def plan(epoch):  # the same reference places for both loaders, new ones every epoch
        return world["boxes"] if epoch == 0 else ms.random_boxes(n, seed=0, epoch=epoch)

    kw = dict(boxes=plan, batch_size=BATCH, workers=2, prefetch=2, cache_bytes=256 * 2**20, device="cpu")
    if kind == "single":
        loader = Loader(world["store"], world["single"], **kw)
    else:
        loader = Loader({st.name: st.store for st in ms.streams}, ms.config, **kw)
    cfg = loader.config
    totals = {}
    calls = [0]

    def epoch():
        calls[0] += 1
        samples = 0
        for batch in loader:
            samples += len(batch)
            for name, st in (batch.stats.streams or {}).items():
                t = totals.setdefault(name, [0, 0, 0])
                t[0] += st.bytes_decoded
                t[1] += st.hits
                t[2] += st.misses
        assert samples == n

    try:
        first = next(iter(loader))  # warm (JIT) and check: the atmosphere is what extract gives
        ref = extract(world["store"], world["single"], first.boxes.numpy())
        assert all(np.array_equal(first[f].numpy(), ref[f].data) for f in ("t", "u", "sp"))
        del first
        loader.set_epoch(1)
        benchmark.pedantic(epoch, rounds=3 if bench_quick else 5, iterations=1, warmup_rounds=0)
        s = _seconds(benchmark, epoch)
    finally:
        loader.close()
    extra = {}
    for name, (dec, hits, misses) in totals.items():  # per epoch
        extra[f"decoded_MB_{name}"] = dec / 1e6 / calls[0]
        extra[f"hit_rate_{name}"] = hits / max(1, hits + misses)
    report(benchmark, samples_per_s=n / s, out_MBps=n * _out_bytes(cfg) / s / 1e6, fields=len(cfg.fields), **extra)
