"""``fastload bench STORE``: fastload and the peers users would pick, on the same store and samples, side by side.

Why this exists: users choose a loader by its numbers, so ours must be reproducible by anyone, in one command,
with the competition and the hardware's roof measured in the same run. For each scenario (store variant x cache
state x latency x workers) the harness:

1. fits AtmoRep's geometry to the store (or reads ``--config``), with raw values (normalisation off, float32);
2. draws one plan per round (``--plan``; ``random_boxes`` by seed and round) that every loader gets;
3. runs each loader once on the first batch, untimed (JIT, imports, page cache), and checks its tensors equal
   fastload's bit for bit; a loader that differs is reported as a mismatch and not timed;
4. times every loader and the roofs round-robin for ``--rounds`` rounds (order rotated each round) and takes
   medians: samples/s, useful/decoded/stored GB/s, % of the read+decode roof, p50/p99 time between batches,
   time to first batch, peak memory of the process tree, CPU seconds per sample, cache hit rate, ratios.

Run::

    fastload bench STORE                                   # every installed peer, warm cache, 2 workers
    fastload bench STORE --scenario tiles atmorep --workers 1 2 --latency-ms 0 20 --json out.json --plot out.png
    fastload bench STORE --quick                           # a smoke run: few small batches, 1 round
    python -m profiling.bench --help

Normalisation is off for every loader so the tensors compare exactly; fastload normalises in the same gather
pass, so its cost with normalisation on is close to what is shown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastload.errors import ConfigError

from .bench_fastload import DEFAULT_ROWS, FASTLOAD_ROWS, fastload_status
from .bench_report import check_output_path, format_footer, format_group, write_json, write_plot
from .bench_run import Pass, compare_outputs, summarise, time_pass
from .bench_scenarios import PLANS, Variant, draw_batches, fit_config, prepare_store, raw_config
from .bench_targets import evaluate_targets
from .chunkmap import batch_decodes, open_chunk_maps
from .peers import PEERS, peer_status, spec_from_store
from .roofs import (
    drop_page_cache,
    machine_info,
    memcpy_gbps,
    read_decode_roof,
    read_roof,
    resident_fraction,
    store_files,
)

__all__ = ["main", "BenchOptions", "run_bench", "loader_factory", "first_batch"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BenchOptions:
    """What ``fastload bench`` runs (the CLI's arguments, as a config)."""

    store: str
    config: str | None = None
    loaders: tuple[str, ...] | None = None
    scenarios: tuple[str, ...] = ("as-is",)
    batches: int = 16
    batch_size: int | None = None
    rounds: int = 3
    workers: tuple[int, ...] = (2,)
    latency_ms: tuple[float, ...] = (0.0,)
    cold: bool = False
    plan: str = "random"
    seed: int = 0
    workdir: str | None = None
    roofs: bool = True

    def __post_init__(self) -> None:
        from fastload.errors import ConfigError

        for key in ("batches", "rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bench --{key}: expected an integer >= 1, got {getattr(self, key)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"bench --batch-size: expected an integer >= 1, got {self.batch_size}")
        if any(w < 0 for w in self.workers):
            raise ConfigError(f"bench --workers: expected integers >= 0, got {list(self.workers)}")
        ours = [n for n in (self.loaders or DEFAULT_ROWS) if n in FASTLOAD_ROWS]
        if 0 in self.workers and ours:  # 0 is a peer's in-process DataLoader; our rows need a thread or process
            raise ConfigError(f"bench --workers 0: the fastload rows {ours} need at least 1 worker (they would run "
                              f"with 1 under the label w0); use --workers 1 or more, or --peers without them")
        if not all(math.isfinite(v) and v >= 0 for v in self.latency_ms):  # nan < 0 is False
            raise ConfigError(f"bench --latency-ms: expected finite numbers >= 0, got {list(self.latency_ms)}")
        if self.plan not in PLANS:
            raise ConfigError(f"bench --plan: expected one of {list(PLANS)}, got {self.plan!r}")


def _all_status(latency_ms: float) -> dict[str, str | None]:
    return {**fastload_status(), **peer_status(None, latency_ms)}


def loader_factory(name: str, path: str, spec: Any, config: Any, workers: int, latency_ms: float,
                   plan: dict[str, int]):
    """A factory of the loader ``name``; ``plan`` (seed, epoch, samples_per_window) lets the Loader redraw it."""
    if name in FASTLOAD_ROWS:
        return lambda: FASTLOAD_ROWS[name](path, config, workers=workers, latency_ms=latency_ms, plan=plan)
    return lambda: PEERS[name](spec, workers=workers, latency_ms=latency_ms)


def _decode_model(name: str) -> str:
    return FASTLOAD_ROWS[name].decode_model if name in FASTLOAD_ROWS else PEERS[name].decode_model


def _bytes_of(maps: dict, spec: Any, plan: list[np.ndarray], model: str) -> tuple[float, float]:
    """(decoded, stored) bytes a loader with decode ``model`` pays for ``plan``."""
    dec = sto = 0.0
    for boxes in plan:
        for array, chunk in batch_decodes(spec, maps, boxes, model):
            loc = maps[array].location(chunk)
            if loc is not None:
                dec += maps[array].chunk_nbytes
                sto += loc[2]
    return dec, sto


def _group(opts: BenchOptions, path: str, scenario: str, workers: int, latency_ms: float, config: Any,
           names: list[str], log) -> tuple[list[dict], dict]:  # fmt: skip
    """Verify, then time every loader round-robin on one scenario; returns rows and roofs."""
    from fastload.store import open_store

    vstore = open_store(path)
    spec = spec_from_store(vstore, config)
    from fastload.sampling.chunks import missing_of

    missing = {f.name: missing_of(vstore, f.name) for f in config.fields}  # fastload's NaN, a raw peer's marker
    bs = opts.batch_size or config.batch_size
    # epoch 0: the verification batch; epoch r + 1: round r. Every loader gets the same boxes.
    metas = [{"seed": opts.seed, "epoch": e, "samples_per_window": bs if opts.plan == "window" else 1,
              "plan": opts.plan}
             for e in range(opts.rounds + 1)]  # fmt: skip
    plans = [draw_batches(vstore, config, batches=1 if e == 0 else opts.batches, batch_size=bs, seed=opts.seed,
                          epoch=e, plan=opts.plan) for e in range(opts.rounds + 1)]  # fmt: skip
    files = store_files(path)
    cache = "cold" if opts.cold else "warm"
    label = f"{scenario} {cache} w{workers}" + (f" {latency_ms:g}ms" if latency_ms else "")
    base = {"scenario": label, "store_variant": scenario, "cache": cache, "workers": workers,
            "latency_ms": latency_ms, "plan": opts.plan, "batch_size": bs, "batches": opts.batches,
            "rounds": opts.rounds}  # fmt: skip
    status = _all_status(latency_ms)
    rows: dict[str, dict] = {}
    runnable = []
    reference: dict[str, np.ndarray] | None = None
    ref_name = None
    for name in names:  # fastload rows come first: the first one that runs is the reference
        if status.get(name) is not None:
            rows[name] = {**base, "loader": name, "status": "skipped", "reason": status[name]}
            log(f"[{label}] {name}: skipped ({status[name]})")
            continue
        log(f"[{label}] verify {name}")
        try:
            out = first_batch(loader_factory(name, path, spec, config, workers, latency_ms, metas[0]), plans[0])
        except Exception as e:  # a peer that crashes is reported, the bench goes on
            rows[name] = {**base, "loader": name, "status": "error", "reason": f"{type(e).__name__}: {e}"}
            log(f"[{label}] {name}: error ({rows[name]['reason']})")
            continue
        if reference is None:
            reference, ref_name = out, name
            problem = None
        else:
            problem = compare_outputs(out, reference, missing)
        if problem is not None:
            rows[name] = {**base, "loader": name, "status": "mismatch", "reason": f"vs {ref_name}: {problem}"}
            log(f"[{label}] {name}: mismatch, not timed ({rows[name]['reason']})")
            continue
        rows[name] = {**base, "loader": name, "status": "ok", "verified_against": ref_name}
        runnable.append(name)
    maps = open_chunk_maps(spec)
    before = (lambda: drop_page_cache(files)) if opts.cold else None
    passes: dict[str, list[Pass]] = {n: [] for n in runnable}
    roof_runs: list[dict] = []
    for r in range(opts.rounds):
        order = runnable[r % len(runnable):] + runnable[: r % len(runnable)] if runnable else []
        for name in order:
            log(f"[{label}] round {r + 1}/{opts.rounds}: {name}")
            try:
                make = loader_factory(name, path, spec, config, workers, latency_ms, metas[r + 1])
                done = time_pass(make, plans[r + 1], before=before)
                passes[name].append(done)
            except Exception as e:
                rows[name].update(status="error", reason=f"{type(e).__name__}: {e}")
                log(f"[{label}] round {r + 1}/{opts.rounds}: {name}: error ({rows[name]['reason']})")
            else:  # this pass's figures now: a run stopped early still shows what it measured
                log(f"[{label}] round {r + 1}/{opts.rounds}: {name}: {done.steady_samples_per_s:.1f} samples/s, "
                    f"first batch {done.ttfb:.2f} s")
        if opts.roofs:
            roof_runs.append(_roof(maps, spec, plans[r + 1], max(1, workers), before))
    roofs: dict[str, Any] = {"scenario": label, "latency_ms": latency_ms, "workers": max(1, workers),
                             "resident_fraction_end": resident_fraction(files)}  # fmt: skip
    if before is not None:  # show that dropping works on this filesystem
        before()
        roofs["resident_fraction_after_drop"] = resident_fraction(files)
    if roof_runs:
        for key in ("samples_per_s", "decoded_gbps", "stored_gbps", "raw_read_gbps"):
            roofs[key] = float(np.median([rr[key] for rr in roof_runs if rr[key] is not None]))
    for name in runnable:
        if rows[name]["status"] != "ok" or not passes[name]:
            continue
        model = _decode_model(name)
        reported = [p.counters for p in passes[name] if p.counters and "decoded_bytes" in p.counters]
        if model == "reported" and reported:
            dec = float(np.median([c["decoded_bytes"] for c in reported]))
            sto = float(np.median([c.get("stored_bytes", np.nan) for c in reported]))
            source = "reported by the loader"
        else:
            model = "unique" if model == "reported" else model
            dec = sto = 0.0
            for plan in plans[1:]:
                d, s_ = _bytes_of(maps, spec, plan, model)
                dec, sto = dec + d / opts.rounds, sto + s_ / opts.rounds
            source = f"modelled: {model}"
        row = summarise(passes[name], sample_nbytes=spec.sample_nbytes(), decoded_bytes=dec, stored_bytes=sto)
        row["bytes_source"] = source
        if roofs.get("samples_per_s"):
            row["roof_pct"] = 100.0 * row["samples_per_s"] / roofs["samples_per_s"]
        rows[name].update(row)
    _ratios(list(rows.values()))
    return list(rows.values()), roofs


def _roof(maps: dict, spec: Any, plan: list[np.ndarray], workers: int, before) -> dict[str, float]:
    """Best of three read+decode passes over the chunks each batch needs (a roof is the best the machine can do;
    one pass on a busy machine can be an outlier), and the raw read rate of the same chunks."""
    tasks = [batch_decodes(spec, maps, b, "unique") for b in plan]
    runs = []
    for _ in range(3):
        if before is not None:
            before()
        runs.append(read_decode_roof(maps, tasks, workers))
    roof = min(runs, key=lambda r: r["seconds"])
    samples = sum(len(b) for b in plan)
    roof["samples_per_s"] = samples / roof["seconds"] if roof["seconds"] else None
    if before is not None:
        before()
    roof["raw_read_gbps"] = read_roof(maps, [t for b in tasks for t in b], workers)["stored_gbps"]
    return roof


def first_batch(make, batches) -> dict[str, np.ndarray]:
    """Construct a loader with ``make()``, pull one batch (``batches`` holds one), copy it out, close."""
    loader = make()
    try:
        outs = [{k: np.array(v, copy=True) for k, v in b.items()} for b in loader.iter_batches(batches)]
    finally:
        loader.close()
    if len(outs) != 1:
        raise RuntimeError(f"produced {len(outs)} batches for 1 batch of boxes")
    return outs[0]


def _ratios(rows: list[dict]) -> None:
    ok = {r["loader"]: r for r in rows if r.get("status") == "ok" and r.get("samples_per_s")}
    ours = ok.get("fastload") or ok.get("fastload.extract")
    for r in rows:
        if ours is None or r.get("status") != "ok" or not r.get("samples_per_s"):
            r["ratio_to_fastload"] = r["fastload_speedup"] = None
            continue
        r["ratio_to_fastload"] = r["samples_per_s"] / ours["samples_per_s"]
        r["fastload_speedup"] = ours["samples_per_s"] / r["samples_per_s"]
        r["fastload_row"] = ours["loader"]


def run_bench(opts: BenchOptions, log=lambda s: None,
              on_group: Callable[[list[dict], dict], None] | None = None) -> dict[str, Any]:
    """Run every scenario of ``opts``.

    ``log`` gets a line when the run starts (how many loaders, groups and rounds), before and after every timed
    pass (its samples/s) and for every loader skipped or refused; ``on_group(rows, roof)`` is called with each
    scenario group's finished rows and roof as soon as the group is done (``fastload bench`` prints its table).

    Returns ``{"rows", "roofs", "machine", "config", "options", "targets", "loaders"}`` (``loaders``: what each
    row does, in words).
    """
    from fastload.config import SamplingConfig
    from fastload.store import open_store

    store = open_store(opts.store)
    if opts.config is not None:
        config = raw_config(SamplingConfig.from_file(opts.config))
    else:
        config = fit_config(store, batch_size=opts.batch_size or 16)
    known = [*FASTLOAD_ROWS, *PEERS]
    names = list(opts.loaders) if opts.loaders else [*DEFAULT_ROWS, *PEERS]
    unknown = [n for n in names if n not in known]
    if unknown:
        from fastload.errors import ConfigError

        raise ConfigError(f"bench --peers: unknown loader(s) {unknown}; known: {known}")
    names = [n for n in known if n in names]  # fastload rows first
    groups = len(opts.scenarios) * len(opts.workers) * len(opts.latency_ms)
    log(f"bench: {len(names)} loader(s) ({', '.join(names)}) in {groups} scenario group(s) (store variants x "
        f"workers x latencies); in each, one verification batch per loader, then {opts.rounds} interleaved "
        f"round(s) of {opts.batches} batches x {opts.batch_size or config.batch_size} samples per loader; a loader "
        f"that is not installed is skipped")
    rows: list[dict] = []
    roofs: dict[str, Any] = {"memcpy_gbps": memcpy_gbps() if opts.roofs else None, "scenarios": []}
    with contextlib.ExitStack() as stack:
        workdir = opts.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="fastload-bench-"))
        for scenario in opts.scenarios:
            variant = Variant.parse(scenario)
            log(f"preparing store variant {variant.name}")
            # the recommended chunking is asked for the plan's samples per window, as `fastload rechunk
            # --samples-per-window` would be for this training plan
            spw = (opts.batch_size or config.batch_size) if opts.plan == "window" else 1  # as _group draws it
            path = prepare_store(store, variant, config, workdir, samples_per_window=spw)
            for workers in opts.workers:
                for lat in opts.latency_ms:
                    r, roof = _group(opts, path, variant.name, workers, lat, config, names, log)
                    rows.extend(r)
                    roofs["scenarios"].append(roof)
                    if on_group is not None:
                        on_group(r, roof)
    return {"rows": rows, "roofs": roofs, "machine": machine_info(opts.store), "config": config.to_dict(),
            "options": dataclasses.asdict(opts), "targets": evaluate_targets(rows),
            "loaders": {n: (FASTLOAD_ROWS[n] if n in FASTLOAD_ROWS else PEERS[n]).description for n in names}}


def _given(value: int | None, default: int | None) -> int | None:
    return default if value is None else value  # (a 0 given is checked, not taken as "not given")


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload bench STORE ...``: print the comparison table (and write JSON / a plot)."""
    p = argparse.ArgumentParser(
        prog="fastload bench",
        description="Run the fastload Loader and the peer loaders (zarr-python in a DataLoader, AtmoRep's batch "
        "method, xarray+xbatcher, tensorstore, zarrs) on the same store and the same samples, check that their "
        "tensors are equal, time them interleaved, and print a table with the read+decode roof beside them.",
        epilog="examples:\n  fastload bench STORE\n  fastload bench STORE --scenario tiles atmorep --workers 1 2 "
        "--latency-ms 0 20 --json out.json --plot out.png\n  fastload bench STORE --quick --peers fastload "
        "tensorstore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="local zarr store (fastload synth writes one)")
    p.add_argument("--config", help="sampling config (TOML/YAML); default: AtmoRep's geometry fitted to the store")
    p.add_argument("--peers", nargs="+", metavar="NAME", help=f"loaders to run (default: all): "
                   f"{', '.join([*FASTLOAD_ROWS, *PEERS])}")  # fmt: skip
    p.add_argument("--scenario", nargs="+", default=["as-is"], metavar="VARIANT",
                   help="store variants, '+'-joined parts: atmorep|tiles|recommended, v2|v3, sharded, a codec")
    p.add_argument("--batches", type=int, default=None, help="batches per pass (default 16; --quick 2)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: config's; --quick 4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds, medians taken (default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to run (default 2)")
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0], help="added delay per request")
    p.add_argument("--cold", action="store_true", help="drop the store from the page cache before every pass")
    p.add_argument("--plan", choices=PLANS, default="random", help="sample plan (default random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write rows, roofs and machine as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot samples/s vs workers and vs latency")
    p.add_argument("--workdir", help="where store variants are written (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 batches of 4, 1 round")
    p.add_argument("--no-roofs", action="store_true", help="skip the roof measurements")
    a = p.parse_args(argv)
    for flag, path in (("--json", a.json), ("--plot", a.plot)):  # written after the run: refused before it
        if path is not None:
            check_output_path(path, flag)
    if a.json is not None and a.plot is not None and os.path.abspath(a.json) == os.path.abspath(a.plot):
        raise ConfigError(f"bench --json and --plot: both name {a.json}; give each its own file")
    if a.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("bench --plot needs matplotlib, which is not installed (pip install matplotlib)")
    opts = BenchOptions(
        store=a.store, config=a.config, loaders=tuple(a.peers) if a.peers else None, scenarios=tuple(a.scenario),
        batches=_given(a.batches, 2 if a.quick else 16), batch_size=_given(a.batch_size, 4 if a.quick else None),
        rounds=_given(a.rounds, 1 if a.quick else 3), workers=tuple(a.workers), latency_ms=tuple(a.latency_ms),
        cold=a.cold, plan=a.plan, seed=a.seed, workdir=a.workdir, roofs=not a.no_roofs,
    )  # fmt: skip
    # each group's table as soon as it is done (stdout), progress and per-pass figures on stderr; together the
    # tables and the footer are profiling.bench_report.format_table(result)
    result = run_bench(opts, log=lambda s: print(s, file=sys.stderr, flush=True),
                       on_group=lambda rows, roof: print(format_group(rows, roof), flush=True))
    print(format_footer(result))
    if a.json:
        write_json(result, a.json)
    if a.plot:
        write_plot(result, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
