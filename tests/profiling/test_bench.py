"""``fastload bench`` end to end on a tiny store, and the pieces it is made of (plans, variants, comparison)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from fastload.cli import main as cli
from fastload.errors import ConfigError
from fastload.store import open_store
from profiling import bench
from profiling.bench_report import format_table
from profiling.bench_run import compare_outputs
from profiling.bench_scenarios import Variant, draw_batches, fit_config
from profiling.peers import PEERS
from tests.fastload.stores import make_per_variable

REQUIRED = {"loader", "scenario", "status", "samples_per_s", "useful_gbps", "decoded_gbps", "stored_gbps",
            "roof_pct", "p50_batch_s", "p99_batch_s", "ttfb_s", "peak_mem_mb", "cpu_s_per_sample",
            "cache_hit_rate", "ratio_to_fastload"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.zarr"
    make_per_variable(path, zarr_format=3, nt=8, ny=12, nx=20, chunks=(2, 1, 6, 8))
    return str(path)


def test_cli_end_to_end_writes_json(tiny, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = bench.main([tiny, "--batches", "2", "--batch-size", "2", "--rounds", "1", "--workers", "1",
                     "--json", str(out), "--plot", str(png)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert set(res) >= {"rows", "roofs", "machine"}
    assert res["machine"]["cores_usable"] >= 1 and res["roofs"]["memcpy_gbps"] > 0
    rows = {r["loader"]: r for r in res["rows"]}
    assert set(rows) == {"fastload", "fastload.extract", *PEERS}
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert rows["fastload.extract"]["status"] == "ok"
    for name, peer in PEERS.items():  # every installed peer ran, verified against fastload
        if peer.unavailable() is None:
            assert rows[name]["status"] == "ok", rows[name]
            assert rows[name]["verified_against"].startswith("fastload")
    for r in ok:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["samples_per_s"] > 0 and r["useful_gbps"] > 0 and r["ttfb_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["scenario"] == "as-is warm w1"
        assert r["loader"] in text
    base = next(r for r in ok if r["loader"] in ("fastload", "fastload.extract") and r["ratio_to_fastload"] == 1)
    assert base["fastload_speedup"] == 1.0
    roof = res["roofs"]["scenarios"][0]
    assert roof["samples_per_s"] > 0 and roof["raw_read_gbps"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["config"]["fields"]  # the fitted config is recorded


def test_missing_peer_is_reported_skipped(tiny, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorstore" else real(n, *a))
    opts = bench.BenchOptions(store=tiny, loaders=("fastload.extract", "tensorstore"), batches=1, batch_size=1,
                              rounds=1, workers=(1,), roofs=False)  # fmt: skip
    res = bench.run_bench(opts)
    rows = {r["loader"]: r for r in res["rows"]}
    assert rows["tensorstore"]["status"] == "skipped"
    assert rows["tensorstore"]["reason"] == "not installed: tensorstore"
    assert rows["fastload.extract"]["status"] == "ok"
    assert "tensorstore: skipped (not installed: tensorstore)" in format_table(res)


@pytest.mark.parametrize("plan", ["aligned", "disjoint"])
def test_the_loader_runs_plans_it_does_not_draw_itself(tiny, plan):
    opts = bench.BenchOptions(store=tiny, loaders=("fastload", "fastload.extract"), batch_size=1, rounds=1,
                              batches=2 if plan == "aligned" else 1, workers=(1,), plan=plan, roofs=False)  # fmt: skip
    rows = {r["loader"]: r for r in bench.run_bench(opts)["rows"]}
    assert rows["fastload"]["status"] == "ok", rows["fastload"]  # explicit boxes, checked equal to extract's
    assert rows["fastload.extract"]["status"] == "ok"


def test_bad_options_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="unknown loader"):
        bench.run_bench(bench.BenchOptions(store=tiny, loaders=("nope",), roofs=False))
    with pytest.raises(ConfigError, match="--batches"):
        bench.BenchOptions(store=tiny, batches=0)
    with pytest.raises(ConfigError, match="--plan"):
        bench.BenchOptions(store=tiny, plan="zigzag")


@pytest.mark.parametrize("flag", ["--batches", "--batch-size", "--rounds"])
def test_a_zero_count_is_refused_not_replaced_by_the_default(tiny, flag, capsys):
    """Review h7, item 3: ``--batch-size 0`` / ``--batches 0`` ran with the defaults (16 batches, the config's
    batch size) as if nothing had been given."""
    assert cli(["bench", tiny, flag, "0", "--peers", "fastload.extract", "--no-roofs"]) == 2
    assert f"bench {flag}: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_workers_0_is_refused_where_a_fastload_row_runs(tiny):
    """Review h7, item 3: ``--workers 0`` labelled the rows w0 while fastload's rows ran with 1 worker. A peer's
    0 (its DataLoader in the calling process) stays allowed when none of our rows runs."""
    for loaders in (None, ("fastload.extract", "tensorstore"), ("fastload-proc",)):
        with pytest.raises(ConfigError, match=r"--workers 0: the fastload rows \[.*\] need at least 1 worker"):
            bench.BenchOptions(store=tiny, loaders=loaders, workers=(2, 0))
    assert bench.BenchOptions(store=tiny, loaders=("zarr+DataLoader",), workers=(0,)).workers == (0,)


def test_compare_outputs_counts_a_raw_peers_marker_as_fastloads_nan():
    """fastload writes a store's declared missing values as NaN; a peer reading raw values gives the marker
    there, which matches only where fastload has NaN and only with that field's markers."""
    fast = {"t": np.array([1.0, np.nan, 3.0], np.float32)}
    peer = {"t": np.array([1.0, 1e20, 3.0], np.float32)}
    marks = {"t": np.array([float(np.float32(1e20))])}
    assert compare_outputs(peer, fast, marks) is None
    assert "1 of 3 values differ" in compare_outputs(peer, fast)  # without the markers: a mismatch
    assert "1 of 3 values differ" in compare_outputs(peer, fast, {"t": np.array([-999.0])})
    wrong = {"t": np.array([1e20, np.nan, 3.0], np.float32)}  # a marker where fastload has a value
    assert "1 of 3 values differ" in compare_outputs(wrong, {"t": np.array([1.0, np.nan, 3.0], np.float32)}, marks)


def test_compare_outputs_is_exact_and_nan_aware():
    a = {"t": np.array([1.0, np.nan, 3.0], np.float32)}
    assert compare_outputs({"t": a["t"].copy()}, a) is None
    b = {"t": np.array([1.0, np.nan, 3.0000002], np.float32)}
    assert "1 of 3 values differ" in compare_outputs(b, a)
    assert "shape" in compare_outputs({"t": a["t"][:2]}, a)
    assert "dtype" in compare_outputs({"t": a["t"].astype(np.float64)}, a)
    assert "fields differ" in compare_outputs({"u": a["t"]}, a)


def test_fit_config_and_plans(tiny):
    store = open_store(tiny)
    cfg = fit_config(store, batch_size=3)
    names = [f.name for f in cfg.fields]
    assert sorted(names[:2]) == ["q", "t"] and names[2:] == ["sp"]  # fields on levels, then one surface field
    assert cfg.box == (6, 9, 18) and cfg.fields[0].token_size == (3, 9, 9)  # AtmoRep's, shrunk to 8 x 12 x 20
    assert all(f.normalization == "none" for f in cfg.fields)
    rnd = draw_batches(store, cfg, batches=2, batch_size=3, seed=1, epoch=0)
    assert [b.shape for b in rnd] == [(3, 3), (3, 3)]
    again = draw_batches(store, cfg, batches=2, batch_size=3, seed=1, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(rnd, again))
    win = draw_batches(store, cfg, batches=2, batch_size=3, seed=1, epoch=0, plan="window")
    assert all(len(set(b[:, 0])) == 1 for b in win)  # one time window per batch
    al = draw_batches(store, cfg, batches=2, batch_size=3, seed=1, epoch=0, plan="aligned")
    chunks = store.arrays["t"].chunks
    for b in al:
        assert (b[:, 0] % chunks[0] == 0).all() and (b[:, 1] % chunks[2] == 0).all() and (b[:, 2] % chunks[3] == 0).all()


def test_variant_names():
    assert Variant.parse("as-is") == Variant()
    v = Variant.parse("tiles+v3+sharded+zstd")
    assert (v.chunking, v.zarr_format, v.sharded, v.codec) == ("tiles", 3, True, "zstd")
    assert v.name == "tiles+v3+sharded+zstd"
    assert Variant.parse("recommended+auto").codec == "auto"
    with pytest.raises(ConfigError, match="unknown part"):
        Variant.parse("tiles+v4")
    with pytest.raises(ConfigError, match="sharding needs zarr v3"):
        Variant.parse("v2+sharded")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from fastload.synth import SynthConfig, synthesize

    cfg = SynthConfig(name="bench-test", resolution=10.0, hours=12, level_fields=("temperature",),
                      surface_fields=("t2m",), static_fields=(), chunks=(4, 1, 8, 16))  # fmt: skip
    return str(synthesize(tmp_path_factory.mktemp("synth") / "s.zarr", cfg, 3, progress=False))


@pytest.mark.parametrize("variant", ["atmorep+v3", "tiles+v3+sharded+zstd", "recommended+none", "recommended+auto"])
def test_store_variants_hold_the_same_values(synth, tmp_path, variant):
    from fastload.extract import extract
    from profiling.bench_scenarios import prepare_store

    store = open_store(synth)
    cfg = fit_config(store, batch_size=3)
    v = Variant.parse(variant)
    path = prepare_store(store, v, cfg, str(tmp_path))
    copy = open_store(path)
    assert copy.zarr_format == (v.zarr_format or store.zarr_format)
    assert copy.layout == ("atmorep" if v.chunking == "atmorep" else "per_variable")
    info = copy.arrays[copy.fields["temperature"].array]
    assert (info.shard is not None) == v.sharded
    if v.chunking == "atmorep":
        assert info.chunks[1:] == info.shape[1:]  # all fields, all levels, the whole globe per chunk
    if v.chunking == "recommended":
        from fastload.inspect import recommend_chunks

        assert info.chunks == recommend_chunks(copy, cfg)[info.name].chunks
    boxes = draw_batches(store, cfg, batches=1, batch_size=3, seed=5, epoch=0)[0]
    a, b = extract(store, cfg, boxes), extract(copy, cfg, boxes)
    for name in a:
        np.testing.assert_array_equal(a[name].data, b[name].data)
    assert prepare_store(store, v, cfg, str(tmp_path)) == path  # written once


def test_variants_of_a_non_synthetic_store_are_refused(tiny, tmp_path):
    from profiling.bench_scenarios import prepare_store

    store = open_store(tiny)
    with pytest.raises(ConfigError, match="fastload rechunk"):
        prepare_store(store, Variant.parse("atmorep"), fit_config(store), str(tmp_path))
    assert prepare_store(store, Variant(), fit_config(store), str(tmp_path)) == store.path


def _row(loader, variant, sps, *, plan="random", workers=2, latency=0.0, **kw):
    scenario = f"{variant} warm w{workers}" + (f" {latency:g}ms" if latency else "")
    return {"loader": loader, "status": "ok", "store_variant": variant, "scenario": scenario, "plan": plan,
            "workers": workers, "latency_ms": latency, "cache": "warm", "batch_size": 4, "samples_per_s": sps,
            "useful_gbps": sps * 1e6 / 1e9, **kw}  # fmt: skip


def test_targets_are_ratios_between_rows_of_one_run():
    from profiling.bench_targets import evaluate_targets

    rows = [
        _row("fastload", "tiles", 100.0, ttfb_s=0.5, added_mem_mb=50.0), _row("zarr+DataLoader", "tiles", 8.0),
        _row("tensorstore", "tiles", 60.0),
        _row("fastload", "atmorep", 30.0, plan="window"), _row("atmorep-batch", "atmorep", 5.0, plan="window"),
        _row("fastload", "recommended", 120.0, plan="window"),
        _row("fastload", "tiles", 70.0, latency=20.0), _row("zarr+DataLoader", "tiles", 1.0, latency=20.0),
        _row("fastload", "tiles", 95.0, plan="aligned", roof_pct=93.0),
        {"loader": "tensorstore", "status": "skipped", "scenario": "x"},
    ]  # fmt: skip
    got = {(t["target"].split(" (")[0].split(":")[0], t["where"]): t for t in evaluate_targets(rows)}
    assert got[">= 10x zarr-python in a DataLoader", "tiles warm w2"]["measured"] == 12.5
    assert got[">= 10x zarr-python in a DataLoader", "tiles warm w2"]["met"]
    assert ("tiles warm w2 20ms" not in {w for _, w in got if _.startswith(">= 10x")})  # latency rows excluded
    assert not got[">= 2x tensorstore", "tiles warm w2"]["met"]
    assert got[">= 3x AtmoRep's batch method", "atmorep warm w2"]["measured"] == 6.0
    assert got[">= 20x end to end", "atmorep warm w2 -> recommended warm w2"]["measured"] == 24.0
    assert got[">= 80% of the zero-latency rate with 20 ms per request", "tiles warm w2 20ms"]["measured"] == 0.7
    assert not got[">= 80% of the zero-latency rate with 20 ms per request", "tiles warm w2 20ms"]["met"]
    assert got[">= 90% of the read+decode roof on chunk-aligned reads", "tiles warm w2"]["met"]
    assert got["time to first batch < 1 s", "tiles warm w2"]["met"]
    assert got["peak memory <= cache budget + prefetch ring + 500 MB", "tiles warm w2"]["met"]


def test_disjoint_rows_are_held_to_par_with_tensorstore():
    from profiling.bench_targets import evaluate_targets

    rows = [_row("fastload", "tiles", 50.0, plan="disjoint"), _row("tensorstore", "tiles", 45.0, plan="disjoint")]
    got = {t["target"]: t for t in evaluate_targets(rows)}
    assert not any(k.startswith(">= 2x tensorstore") for k in got)
    t = got[">= 1x tensorstore where nothing overlaps (tile chunks, plan disjoint)"]
    assert t["threshold"] == 1.0 and t["met"] and t["measured"] == pytest.approx(50 / 45)


def test_disjoint_plan_shares_no_chunk(synth):
    from fastload.config import FieldConfig, SamplingConfig

    store = open_store(synth)  # 12 h x 19 x 36 points, chunks 4 x 1 x 8 x 16
    cfg = SamplingConfig(fields=(FieldConfig(name="temperature", num_tokens=(2, 2, 2), token_size=(2, 4, 4),
                                             normalization="none"),), batch_size=2)  # fmt: skip
    plans = [draw_batches(store, cfg, batches=2, batch_size=2, seed=3, epoch=e, plan="disjoint") for e in (0, 0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(plans[0], plans[1]))  # deterministic in (seed, epoch)
    chunks = store.arrays["temperature"].chunks
    t_box, h, w = cfg.box
    nx = store.grid.nx
    for plan in plans:
        boxes = np.concatenate(plan)
        seen = set()
        for t0, y0, x0 in boxes:  # every (t, y, x) chunk of temperature each box touches, by brute force
            foot = {((t0 + a * cfg.time_step) // chunks[0], (y0 + b) // chunks[2], ((x0 + c) % nx) // chunks[3])
                    for a in range(t_box) for b in range(h) for c in range(w)}  # fmt: skip
            assert seen.isdisjoint(foot)
            seen |= foot
    with pytest.raises(ConfigError, match="plan disjoint: only"):
        draw_batches(store, cfg, batches=100, batch_size=100, seed=3, epoch=0, plan="disjoint")


def test_resource_monitor_sees_children():
    import multiprocessing as mp

    from profiling.bench_monitor import ResourceMonitor

    with ResourceMonitor(interval=0.01) as mon:
        p = mp.get_context("fork").Process(target=_burn, args=(0.4,))
        p.start()
        while p.is_alive():
            mon.sample()
            p.join(0.02)
    assert p.exitcode == 0
    assert mon.cpu_seconds >= 0.2  # the child's CPU time, seen while it ran
    assert mon.peak_bytes >= mon.baseline_bytes > 0


def _burn(seconds: float) -> None:
    import time

    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
