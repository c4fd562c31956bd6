"""Gather kernel benchmarks: throughput vs memcpy, two threads, the AtmoRep per-sample path, JIT compile time.

Why this exists: the gather (crop with longitude wrap, transform, normalisation, cast, token layout) runs for every
byte the model sees, so it must cost about a memory copy; and AtmoRep's own per-sample path is the thing it
replaces. All figures are measured on the same in-memory data in the same run:

- ``test_memcpy``: ``np.copyto`` of exactly the bytes of one output batch (the roof);
- ``test_gather_one_thread``: one kernel call per batch (``norm`` = none, global, or local monthly coefficients),
  with the ratio to a memcpy of the same bytes timed in the same test (alternating rounds, best of each);
- ``test_gather_x_chunked``: one thread on the store layout ``fastload rechunk`` recommends for the 1-degree grid,
  chunks of (24 h, 5 levels, 48, 72) (every 108-wide box row crosses x-chunk edges), with a window plan of 16
  samples sharing a start time (as the Loader gathers them), timed beside the same boxes in whole-globe chunks
  (24, 5, 181, 360) and a memcpy of the same bytes (quick mode: a 61 x 120 grid in (24, 5, 16, 24) chunks);
- ``test_gather_two_threads``: the batch split across two threads (the kernel releases the GIL), with the scaling
  over one thread;
- ``test_atmorep_baseline``: AtmoRep's path per sample and level (``multifield_data_sampler``): fancy-index read
  of the whole time slices, ``np.take`` crop, per-time-step normalisation loop, reshape/permute tokenisation in
  torch, token metadata built from Python lists; with fastload's samples/s (gather + token metadata) timed beside
  it. Coefficients are looked up with ``np.take`` (AtmoRep uses xarray ``.sel``, which is slower). Also reported:
  the same path reading only the box (``np.ix_``) instead of whole time slices, a kinder baseline than AtmoRep;
- ``test_jit_compile``: compile time of the kernels in a fresh process with an empty Numba cache, and the load time
  with the cache filled (compilation is paid once per machine, not per run).

Geometries: AtmoRep's [12,6,12]x[3,9,9], [12,3,6]x[3,18,18], [12,2,4]x[3,27,27] (36 h x 54 x 108 points), 5 levels,
on ERA5's 0.25-degree global grid (721 x 1440) in AtmoRep's whole-globe chunks of 8 hours x 5 levels (quick mode:
a small grid and batch). Every benchmark checks its output against an independent NumPy computation first.

Run::

    pytest benches/bench_sampling.py -s                     # full
    pytest benches/bench_sampling.py --quick -s             # seconds
    pytest benches/bench_sampling.py --benchmark-json benches/results/sampling_<hardware>_<yyyymm>.json

A change to the kernels is judged by ``python benches/ab_gather.py --against HEAD`` (the working tree's kernel
against a git revision's, interleaved in one process and checked bit for bit), not by two runs of this file;
``python benches/pmu_gather.py`` counts its hardware events per output value (``perf stat``, only while it runs);
``python benches/roof_gather.py`` times the same box rows copied without token layout or normalisation (the roof).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pytest
import torch

from fastload.config import FieldConfig, SamplingConfig
from fastload.sampling.chunks import FieldLayout
from fastload.sampling.geometry import GridExtent, box_to_tokens, random_boxes
from fastload.sampling.neighborhood import gather_field
from fastload.sampling.tokenizer import LatLonTokenizer

GEOMETRIES = {
    "9x9": ((12, 6, 12), (3, 9, 9)),
    "18x18": ((12, 3, 6), (3, 18, 18)),
    "27x27": ((12, 2, 4), (3, 27, 27)),
}
LEVELS = 5


# ---------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def world(bench_quick: bool):
    """In-memory field ``(t, l, y, x)``, its chunk arena, local coefficients, coordinates, and a batch of boxes.

    Full mode: ERA5's 0.25-degree grid (721 x 1440), 40 hourly steps, 5 levels (830 MB), in AtmoRep's chunking
    (8 hours x all levels x the whole globe); quick mode: a 61 x 120 grid. All times lie in January, so the
    coefficients hold one month.
    """
    rng = np.random.default_rng(0)
    nt, ny, nx, batch, ct = (40, 61, 120, 2, 4) if bench_quick else (40, 721, 1440, 8, 8)
    data = rng.standard_normal((nt, LEVELS, ny, nx), dtype=np.float32)
    data *= 10
    data += 250
    lat = np.linspace(90, -90, ny)
    lon = np.arange(nx) * (360.0 / nx)
    time_ = np.datetime64("2000-01-01T00:00", "ns") + np.arange(nt) * np.timedelta64(1, "h")
    mean = rng.standard_normal((1, LEVELS, ny, nx), dtype=np.float32) + np.float32(250)
    std = rng.uniform(5, 15, (1, LEVELS, ny, nx)).astype(np.float32)
    layout = FieldLayout(name="t", array="t", shape=data.shape, chunks=(ct, LEVELS, ny, nx), axes=(0, None, 1, 2, 3),
                         lev_idx=np.arange(LEVELS), levels=np.arange(LEVELS, dtype=np.float64) + 96,
                         periodic_x=True)
    slots = data.reshape(nt // ct, -1)  # whole-globe chunks of ct time steps: slot u holds chunk u (no copy)
    # boxes: random, one across the 0/360 seam
    boxes = np.stack([rng.integers(0, nt - 36 + 1, batch), rng.integers(0, ny - 54 + 1, batch),
                      rng.integers(0, nx, batch)], axis=1).astype(np.int64)
    boxes[0, 2] = nx - 20
    grid = types.SimpleNamespace(kind="latlon", lat=lat, lon=lon, periodic_x=True, ny=ny, nx=nx)
    pool = ThreadPoolExecutor(2)
    mean_g = np.ascontiguousarray(mean[:, :, :1, :1])  # global coefficients: one (mean, std) per level and month
    std_g = np.ascontiguousarray(std[:, :, :1, :1])
    yield types.SimpleNamespace(data=data, slots=slots, layout=layout, mean=mean, std=std, mean_g=mean_g, std_g=std_g,
                                lat=lat, lon=lon,
                                time=time_, boxes=boxes, grid=grid, pool=pool, ct=ct)
    pool.shutdown()


def _setup(world, geom: str, norm: str):
    """Config, tokenizer, slot table, coefficients and month table of one geometry."""
    num_tokens, token_size = GEOMETRIES[geom]
    f = FieldConfig(name="t", levels=tuple(float(v) for v in world.layout.levels), num_tokens=num_tokens,
                    token_size=token_size, normalization=norm)
    cfg = SamplingConfig(fields=[f], batch_size=world.boxes.shape[0])
    tok = LatLonTokenizer(world.grid, world.time, cfg, {"t": world.layout})
    plan = tok.plan(world.boxes)
    slot_of = plan.chunks["t"][:, 0].astype(np.int32)  # chunk index along time == arena row
    table = plan.slot_tables({"t": slot_of})["t"]
    months, month_of = tok.month_table(plan.boxes, np.array([0]))  # coefficients for January only
    coef = ({} if norm == "none" else dict(mean=world.mean, std=world.std, month_of=month_of) if norm == "local"
            else dict(mean=world.mean_g, std=world.std_g, month_of=month_of))
    out = np.empty((world.boxes.shape[0], *f.sample_shape), np.float32)
    return types.SimpleNamespace(field=f, cfg=cfg, tok=tok, boxes=plan.boxes, table=table, coef=coef, out=out,
                                 month_of=month_of)


def _expected(world, s, norm: str) -> np.ndarray:
    """The batch straight from the full array with NumPy indexing (independent of chunks and kernels)."""
    T, H, W = s.field.box
    res = []
    for b, (t0, y0, x0) in enumerate(s.boxes):
        x = (x0 + np.arange(W)) % world.data.shape[-1]
        v = world.data[t0:t0 + T][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)  # (L, T, H, W)
        if norm == "local":
            m = s.month_of[b]
            mu = world.mean[m][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)
            sd = world.std[m][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)
            v = (v - mu) / sd
        elif norm == "global":
            m = s.month_of[b]
            v = (v - world.mean_g[m].transpose(1, 0, 2, 3)) / world.std_g[m].transpose(1, 0, 2, 3)
        res.append(box_to_tokens(v, s.field.token_size))
    return np.stack(res)


def _gather(world, s, lo: int = 0, hi: int | None = None) -> None:
    sl = slice(lo, hi)
    coef = {k: (v[sl] if k == "month_of" else v) for k, v in s.coef.items()}
    gather_field(world.slots, s.table[sl], world.layout, s.field, s.boxes[sl], s.out[sl], **coef)


def _best(fn, repeat: int = 10) -> float:
    """Best wall time of ``repeat`` calls (the side-by-side figure that is least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _memcpy_s(nbytes: int) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return _best(lambda: np.copyto(dst, src))


# ---------------------------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_memcpy(benchmark, report, world, geom):
    s = _setup(world, geom, "none")
    src = np.ones_like(s.out)
    benchmark(np.copyto, s.out, src)
    assert (s.out == 1).all()
    report(benchmark, bytes=s.out.nbytes, GBps=s.out.nbytes / _memcpy_s(s.out.nbytes) / 1e9)


@pytest.mark.parametrize("norm", ["none", "global", "local"])
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_gather_one_thread(benchmark, report, world, geom, norm):
    s = _setup(world, geom, norm)
    _gather(world, s)  # compiles (or loads from the cache) and checks
    np.testing.assert_array_equal(s.out, _expected(world, s, norm))
    benchmark(_gather, world, s)
    # gather and memcpy timed in alternating rounds (best of each), so a burst of load on the shared machine
    # does not land on one side of the ratio only
    t_gather = t_copy = float("inf")
    for _ in range(3):
        t_gather = min(t_gather, _best(lambda: _gather(world, s)))
        t_copy = min(t_copy, _memcpy_s(s.out.nbytes))
    report(benchmark, GBps=s.out.nbytes / t_gather / 1e9, memcpy_GBps=s.out.nbytes / t_copy / 1e9,
           ratio_to_memcpy=t_copy / t_gather, samples_per_s=s.boxes.shape[0] / t_gather)


@pytest.fixture(scope="module")
def xworld(bench_quick: bool):
    """A 1-degree field (48 h, 5 levels, 181 x 360) in x chunks of (24, 5, 48, 72) and in whole-globe chunks
    (24, 5, 181, 360), both arenas chunk-major (slot = chunk index), one month of local coefficients; 8 calls of a
    window plan of 16 samples (quick: 61 x 120 in (24, 5, 16, 24) chunks, 2 calls of 4)."""
    rng = np.random.default_rng(1)
    nt, ny, nx, cy, cx, per, calls = (40, 61, 120, 16, 24, 4, 2) if bench_quick else (48, 181, 360, 48, 72, 16, 8)
    data = rng.standard_normal((nt, LEVELS, ny, nx), dtype=np.float32) * 10 + np.float32(250)
    mean = rng.standard_normal((1, LEVELS, ny, nx), dtype=np.float32) + np.float32(250)
    std = rng.uniform(5, 15, (1, LEVELS, ny, nx)).astype(np.float32)
    time_ = np.datetime64("2000-01-01T00:00", "ns") + np.arange(nt) * np.timedelta64(1, "h")
    grid = types.SimpleNamespace(kind="latlon", lat=np.linspace(90, -90, ny), lon=np.arange(nx) * (360.0 / nx),
                                 periodic_x=True, ny=ny, nx=nx)
    stores = {}
    for name, (ch_y, ch_x) in (("x_chunked", (cy, cx)), ("whole_globe", (ny, nx))):
        chunks = (24, LEVELS, ch_y, ch_x)
        n = [-(-e // c) for e, c in zip(data.shape, chunks)]
        slots = np.zeros((n[0] * n[2] * n[3], int(np.prod(chunks))), np.float32)
        for u, (a, b, c) in enumerate(np.ndindex(n[0], n[2], n[3])):
            block = np.zeros(chunks, np.float32)
            part = data[a * 24:(a + 1) * 24, :, b * ch_y:(b + 1) * ch_y, c * ch_x:(c + 1) * ch_x]
            block[:part.shape[0], :, :part.shape[2], :part.shape[3]] = part
            slots[u] = block.ravel()
        layout = FieldLayout(name="t", array="t", shape=data.shape, chunks=chunks, axes=(0, None, 1, 2, 3),
                             lev_idx=np.arange(LEVELS), levels=np.arange(LEVELS, dtype=np.float64) + 96,
                             periodic_x=True)
        stores[name] = types.SimpleNamespace(slots=slots, layout=layout, n=n)
    yield types.SimpleNamespace(data=data, mean=mean, std=std, time=time_, grid=grid, stores=stores, per=per,
                                calls=calls, extent=GridExtent(nt=nt, ny=ny, nx=nx, periodic_x=True))


def _x_calls(xw, st, geom: str, norm: str):
    """Per call of the window plan: (field, boxes, slot table, coefficients, output) for store ``st``."""
    num_tokens, token_size = GEOMETRIES[geom]
    f = FieldConfig(name="t", levels=tuple(float(v) for v in st.layout.levels), num_tokens=num_tokens,
                    token_size=token_size, normalization=norm)
    cfg = SamplingConfig(fields=[f], batch_size=xw.per)
    tok = LatLonTokenizer(xw.grid, xw.time, cfg, {"t": st.layout})
    boxes = random_boxes(xw.per * xw.calls, xw.extent, f.box, seed=0, epoch=0, samples_per_window=xw.per)
    calls = []
    for k in range(xw.calls):
        plan = tok.plan(np.ascontiguousarray(boxes[k * xw.per:(k + 1) * xw.per]))
        c = plan.chunks["t"]
        table = plan.slot_tables({"t": ((c[:, 0] * st.n[2] + c[:, 2]) * st.n[3] + c[:, 3]).astype(np.int32)})["t"]
        month_of = tok.month_table(plan.boxes, np.array([0]))[1]
        coef = {} if norm == "none" else dict(mean=xw.mean, std=xw.std, month_of=month_of)
        if norm == "global":
            coef.update(mean=np.ascontiguousarray(xw.mean[:, :, :1, :1]), std=np.ascontiguousarray(xw.std[:, :, :1, :1]))
        calls.append((f, plan.boxes, table, coef, np.empty((xw.per, *f.sample_shape), np.float32)))
    return calls


@pytest.mark.parametrize("norm", ["none", "global", "local"])
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_gather_x_chunked(benchmark, report, xworld, geom, norm):
    runs = {name: _x_calls(xworld, st, geom, norm) for name, st in xworld.stores.items()}

    def gather(name: str) -> None:
        st = xworld.stores[name]
        for f, boxes, table, coef, out in runs[name]:
            gather_field(st.slots, table, st.layout, f, boxes, out, **coef)

    for name in runs:  # compiles (or loads from the cache) and checks against NumPy indexing of the full array
        gather(name)
        f, boxes, _, coef, out = runs[name][0]
        T, H, W = f.box
        for b, (t0, y0, x0) in enumerate(boxes):
            x = (x0 + np.arange(W)) % xworld.data.shape[-1]
            v = xworld.data[t0:t0 + T][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)
            if norm != "none":
                mu, sd = coef["mean"][0], coef["std"][0]
                if norm == "local":
                    mu, sd = mu[:, y0:y0 + H][..., x], sd[:, y0:y0 + H][..., x]
                v = (v - mu[:, None]) / sd[:, None]
            np.testing.assert_array_equal(out[b], box_to_tokens(v, f.token_size))
    benchmark(gather, "x_chunked")
    nbytes = sum(r[-1].nbytes for r in runs["x_chunked"])
    t_x = t_w = t_copy = float("inf")
    for _ in range(3):  # alternating rounds, best of each
        t_x = min(t_x, _best(lambda: gather("x_chunked"), 5))
        t_w = min(t_w, _best(lambda: gather("whole_globe"), 5))
        t_copy = min(t_copy, _memcpy_s(nbytes))
    report(benchmark, GBps=nbytes / t_x / 1e9, whole_globe_GBps=nbytes / t_w / 1e9, memcpy_GBps=nbytes / t_copy / 1e9,
           ratio_to_whole_globe=t_w / t_x, ratio_to_memcpy=t_copy / t_x)


@pytest.mark.parametrize("norm", ["none", "local"])
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_gather_two_threads(benchmark, report, world, geom, norm):
    s = _setup(world, geom, norm)
    half = s.boxes.shape[0] // 2

    def two() -> None:
        futs = [world.pool.submit(_gather, world, s, 0, half), world.pool.submit(_gather, world, s, half, None)]
        for f in futs:
            f.result()

    two()
    np.testing.assert_array_equal(s.out, _expected(world, s, norm))
    benchmark(two)
    t2 = _best(two)
    t1 = _best(lambda: _gather(world, s))
    report(benchmark, GBps=s.out.nbytes / t2 / 1e9, one_thread_GBps=s.out.nbytes / t1 / 1e9, scaling=t1 / t2)


# ------------------------------------------------------------------------------------ AtmoRep's own path
def _atmorep_tokenize(data: torch.Tensor, token_size) -> torch.Tensor:
    """atmorep.utils.utils.tokenize for a (T, H, W) tensor: reshape, then transposes (a strided view)."""
    tok_t, tok_x, tok_y = (data.shape[-3] // token_size[0], data.shape[-2] // token_size[1],
                           data.shape[-1] // token_size[2])
    t2 = torch.reshape(data, (tok_t, token_size[0], tok_x, token_size[1], tok_y, token_size[2]))
    return torch.transpose(torch.transpose(torch.transpose(t2, 4, 3), 2, 1), 3, 2)


def _atmorep_batch(world, s, token_size, whole_slices: bool = True):
    """One batch the way AtmoRep's MultifieldDataSampler.__iter__ builds it, per sample and per level.

    ``whole_slices``: read whole time slices and crop them (AtmoRep's ``oindex[idxs_t, field, level]``); False
    reads only the box (``np.ix_``), a kinder baseline than AtmoRep itself.
    """
    T, H, W = s.field.box
    nx = world.data.shape[-1]
    times = world.time
    sources, infos = [], []
    for t0, y0, x0 in s.boxes:
        idxs_t = list(np.arange(t0, t0 + T, dtype=np.int64))
        lat_ran = np.arange(y0, y0 + H)
        lon_ran = (x0 + np.arange(W)) % nx
        dates = times[idxs_t].astype("datetime64[us]").astype(datetime)
        month = dates[-1].month  # AtmoRep normalises a sample with the month of its last step
        src_lvl, info_lvl = [], []
        for li, vl in enumerate(world.layout.levels):
            if whole_slices:
                data_t = world.data[idxs_t, li]  # oindex[idxs_t, field, level]: whole time slices
                cdata = np.take(np.take(data_t, lat_ran, -2), lon_ran, -1)
            else:
                cdata = world.data[np.ix_(idxs_t, [li], lat_ran, lon_ran)][:, 0]
            mean = np.take(np.take(world.mean[month - 1, li], lat_ran, -2), lon_ran, -1)  # (the January slab)
            std = np.take(np.take(world.std[month - 1, li], lat_ran, -2), lon_ran, -1)
            for i in range(cdata.shape[0]):  # NormalizerLocal.normalize
                cdata[i] = (cdata[i] - mean) / std
            src_lvl.append(_atmorep_tokenize(torch.from_numpy(cdata), token_size))
            cdates = dates[token_size[0] - 1::token_size[0]]
            dl = [(d.year, d.timetuple().tm_yday - 1, d.hour) for d in cdates]
            lats_sidx = world.lat[lat_ran][token_size[1] // 2::token_size[1]]
            lons_sidx = world.lon[lon_ran][token_size[2] // 2::token_size[2]]
            tok_info = [[[[year, day, hour, vl, la, lo, vl, 1.0] for lo in lons_sidx] for la in lats_sidx]
                        for (year, day, hour) in dl]
            info_lvl.append(torch.tensor(tok_info, dtype=torch.float32).flatten(1, -2))
        sources.append(torch.stack(src_lvl, 0))
        infos.append(torch.stack(info_lvl, 0))
    return torch.stack(sources), torch.stack(infos)


@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_atmorep_baseline(benchmark, report, world, geom):
    s = _setup(world, geom, "local")
    token_size = s.field.token_size
    src, info = _atmorep_batch(world, s, token_size)
    src_box, _ = _atmorep_batch(world, s, token_size, whole_slices=False)
    _gather(world, s)
    meta = s.tok.meta(s.boxes)["t"]
    # same samples (all times are in January, so AtmoRep's per-sample month is ours per step)
    assert torch.equal(src, torch.from_numpy(s.out)) and torch.equal(src_box, src)
    assert info.shape[:2] == (s.boxes.shape[0], LEVELS) and meta.lat.shape == (s.boxes.shape[0], *s.field.num_tokens[1:])
    benchmark.pedantic(_atmorep_batch, args=(world, s, token_size), rounds=3 if s.boxes.shape[0] > 2 else 5,
                       iterations=1)
    t_base = _best(lambda: _atmorep_batch(world, s, token_size), repeat=3)
    t_box = _best(lambda: _atmorep_batch(world, s, token_size, whole_slices=False), repeat=3)

    def ours() -> None:
        _gather(world, s)
        s.tok.meta(s.boxes)

    t_ours = _best(ours)
    n = s.boxes.shape[0]
    report(benchmark, atmorep_samples_per_s=n / t_base, fastload_samples_per_s=n / t_ours, speedup=t_base / t_ours,
           atmorep_box_read_samples_per_s=n / t_box, speedup_vs_box_read=t_box / t_ours)


# --------------------------------------------------------------------------------------------- JIT compile
_COMPILE_SNIPPET = textwrap.dedent("""
    import time
    t = time.perf_counter()
    import numpy as np
    from fastload.config import FieldConfig
    from fastload.sampling.chunks import FieldLayout, plan_batch
    from fastload.sampling.neighborhood import gather_field
    t_import = time.perf_counter() - t
    lay = FieldLayout(name="f", array="a", shape=(4, 2, 6, 16), chunks=(2, 2, 6, 16), axes=(0, None, 1, 2, 3),
                      lev_idx=[0, 1], periodic_x=True)
    data = np.arange(4 * 2 * 6 * 16, dtype=np.float32).reshape(2, -1)
    t = time.perf_counter()
    # float32 with 8-wide tokens: the 8-wide-move kernel (norm none); bfloat16: the row-buffer kernel
    for out_dtype, dt in (("float32", np.float32), ("bfloat16", np.uint16)):
        f = FieldConfig(name="f", levels=(0.0, 1.0), num_tokens=(1, 1, 2), token_size=(2, 3, 8), normalization="none")
        plan = plan_batch([[0, 0, 6]], [lay], f.box)
        out = np.empty((1, *f.sample_shape), dt)
        gather_field(data, plan.slot_tables({"a": plan.chunks["a"][:, 0]})["f"], lay, f, plan.boxes, out,
                     out_dtype=out_dtype)
    print(t_import, time.perf_counter() - t)
""")


def test_jit_compile(benchmark, report, tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    env.pop("FASTLOAD_NO_JIT", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run() -> tuple[float, float]:
        r = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, cwd=root, capture_output=True,
                           text=True, check=True)
        a, b = r.stdout.split()
        return float(a), float(b)

    cold = benchmark.pedantic(run, rounds=1, iterations=1)  # empty cache: compiles both signatures
    warm = run()  # the same signatures loaded from the on-disk cache
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))
    report(benchmark, import_s=cold[0], compile_s=cold[1], cached_load_s=warm[1])


def test_ab_gather_runs(capsys):
    """The A/B script runs and finds the working tree's kernel identical in output to HEAD's (smoke test: small
    grid, one round; its timings mean nothing here)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the A/B script takes the other kernel from git")
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import ab_gather
    finally:
        sys.path.pop(0)
    assert ab_gather.main(["--against", "HEAD", "--grid", "small", "--geoms", "9x9", "--norms", "local",
                           "--reps", "1"]) == 0
    assert "tree/HEAD" in capsys.readouterr().out



def _perf_counts_user_events() -> bool:
    if shutil.which("perf") is None:
        return False
    res = subprocess.run(["perf", "stat", "-x", ",", "-e", "instructions:u", "--", "true"], capture_output=True,
                         text=True)
    return res.returncode == 0 and res.stderr.split(",")[0].isdigit()


def test_pmu_gather_runs(capsys):
    """The counter script counts the kernel's instructions per output value (smoke test: small grid, one round):
    a positive count, and fewer than 100 per value (set-up outside the counted window would add millions)."""
    if not _perf_counts_user_events():
        pytest.skip("perf cannot count user-space instructions here")
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import pmu_gather
    finally:
        sys.path.pop(0)
    counts = pmu_gather.count("small", "9x9", "local", "instructions:u", 1)
    assert 0 < counts["instructions:u"] < 100


def test_missing_gather_runs(capsys):
    """The missing-marker script runs and finds the outputs with a marker that matches nothing equal to those
    without (smoke test: small grid, one round)."""
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import missing_gather
    finally:
        sys.path.pop(0)
    assert missing_gather.main(["--grid", "small", "--geoms", "9x9", "--norms", "local", "--reps", "1"]) == 0
    assert "ratio" in capsys.readouterr().out


def test_roof_gather_runs(capsys):
    """The roof script copies exactly the gather's box rows (checked against NumPy indexing inside) and times every
    way beside memcpy (smoke test: small grid, one round)."""
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import roof_gather
    finally:
        sys.path.pop(0)
    assert roof_gather.main(["--grid", "small", "--geoms", "9x9", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("memcpy", "rows+stream", "gather local"))
