"""Loader benchmarks: the fastload Loader (threads and processes) against zarr-python slicing per sample inside a
``torch.utils.data.DataLoader`` with 2 process workers, on the same samples of a tile-chunked synthetic store with
AtmoRep's geometry, with the raw read+decode roof of the same chunks measured in the same run.

``test_side_by_side`` runs the harness of ``fastload bench`` (:func:`profiling.bench.run_bench`): every loader's
first batch is checked bit for bit against the first one's, then the loaders are timed in interleaved rounds
(medians), and the roof is measured between rounds. It prints a markdown table with samples/s, the speed-up of
fastload over each row, decoded/stored/useful bytes and percent of roof. ``test_loader_pass`` times single passes
of the Loader per worker mode with pytest-benchmark.

Run::

    pytest benches/bench_loader.py --quick -s        # tiny store, 2 batches: a smoke run
    pytest benches/bench_loader.py -s                # the 'small' store (91 x 180, 72 h), 12 batches of 16
    fastload bench STORE --peers fastload fastload-proc zarr+DataLoader   # the same comparison from the CLI
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(3600)  # full runs take minutes on 2 shared cores

ROWS = ("fastload", "fastload-proc", "zarr+DataLoader")


@pytest.fixture(scope="module")
def tile_store(synth_store):
    return synth_store(layout="per-variable")


def _markdown(result: dict) -> str:
    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    roof = (result["roofs"]["scenarios"] or [{}])[0]
    lines = ["| loader | samples/s | fastload speed-up | % of roof | decoded MB/s | ttfb s | CPU s/sample |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def f(key, fmt="{:.3g}", r=r):
            v = r.get(key)
            return "-" if v is None else fmt.format(v)

        dec = r.get("decoded_gbps")
        lines.append(f"| {r['loader']} | {f('samples_per_s')} | {f('fastload_speedup', '{:.2f}x')} | "
                     f"{f('roof_pct', '{:.0f}')} | {'-' if dec is None else f'{dec * 1e3:.0f}'} | "
                     f"{f('ttfb_s')} | {f('cpu_s_per_sample')} |")
    if roof.get("samples_per_s"):
        lines.append(f"| roof: raw read+decode of the same chunks | {roof['samples_per_s']:.3g} | | 100 | "
                     f"{roof.get('decoded_gbps', 0) * 1e3:.0f} | | |")
    return "\n".join(lines)


def test_side_by_side(benchmark, report, tile_store, bench_quick):
    from profiling.bench import BenchOptions, run_bench

    opts = BenchOptions(store=tile_store, loaders=ROWS, batches=2 if bench_quick else 12,
                        batch_size=4 if bench_quick else 16, rounds=1 if bench_quick else 3, workers=(2,),
                        plan="random", seed=0)
    result = benchmark.pedantic(lambda: run_bench(opts), rounds=1, iterations=1)
    rows = {r["loader"]: r for r in result["rows"]}
    for name in ROWS:
        if rows[name]["status"] == "skipped":
            continue
        assert rows[name]["status"] == "ok", rows[name]
    print("\n" + _markdown(result))
    ours = rows["fastload"]
    figures = {f"{k}_samples_per_s": r["samples_per_s"] for k, r in rows.items() if r.get("samples_per_s")}
    zarr_dl = rows.get("zarr+DataLoader", {})
    if zarr_dl.get("samples_per_s"):
        figures["speedup_vs_zarr_dataloader"] = ours["samples_per_s"] / zarr_dl["samples_per_s"]
    if ours.get("roof_pct") is not None:
        figures["fastload_pct_of_roof"] = ours["roof_pct"]
    report(benchmark, **figures)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_loader_pass(benchmark, report, tile_store, bench_config, bench_quick, mode):
    from fastload.loader import Loader

    config = bench_config(tile_store)
    n = 32 if bench_quick else 192

    def one_pass():
        t0 = time.perf_counter()
        with Loader(tile_store, config, samples_per_epoch=n, workers=2, mode=mode, device="cpu", seed=0) as loader:
            first = None
            for _ in loader:
                first = first or time.perf_counter()
            stats = loader.stats
        return time.perf_counter() - t0, first - t0, stats

    secs, ttfb, stats = benchmark.pedantic(one_pass, rounds=1, iterations=1)
    report(benchmark, samples_per_s=stats.samples / secs, ttfb_s=ttfb, hit_rate=stats.hit_rate,
           amplification=stats.amplification, decoded_gbps=stats.bytes_decoded / secs / 1e9)
    assert stats.samples == n // config.batch_size * config.batch_size
    assert np.isfinite(secs)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_memory_growth_script_runs(tile_store, tmp_path, mode):
    """``benches/memory_growth.py`` (the 10,000-batch memory check) runs in both modes and writes its summary
    (smoke test: 20 batches; its figures mean nothing at this length)."""
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import memory_growth
    finally:
        sys.path.pop(0)
    out = tmp_path / "mem.json"
    assert memory_growth.main([str(tile_store), "--batches", "20", "--every", "10", "--batch-size", "2",
                               "--samples-per-epoch", "16", "--mode", mode, "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["batches"] == 20 and summary["epochs"] == 3
    assert summary["pss_end_mb"] > summary["pss_before_mb"] > 0
