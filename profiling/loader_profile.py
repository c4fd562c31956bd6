"""``fastload profile-loader``: the loader alone, no model, no GPU: where a batch's time goes, and a sweep.

Why this module exists: before blaming (or buying) a GPU, see what the data pipeline can deliver by itself on
this machine and this store. Each batch's :class:`fastload.reader.IOStats` says how long its worker threads spent
planning, fetching raw chunk bytes, decoding and gathering (thread-seconds, summed over threads), how long the
consumer waited for it (``queue_wait``), and how many bytes were stored, decoded and actually used (decoded / used:
the read amplification after the cache, whose hits are not decoded again, so below 1 once it serves most chunks), and
how many chunks came from the decoded-chunk cache. The consumer here does nothing but take
batches, so samples/s is the pipeline's ceiling. ``--sweep-workers 1,2,4 --sweep-prefetch 1,2,4`` runs every
combination and prints one line each.

Run::

    fastload profile-loader                                       # the built-in dataset and sampling config
    fastload profile-loader era5.zarr --config sampling.toml --batches 50 --sweep-workers 1,2,4
    fastload profile-loader era5.zarr --config sampling.toml --data cold --store-latency-ms 10

Writes ``loader_summary.json`` (every run's summary and settings), ``loader_batches.csv`` (one row per batch) and
``loader.png`` (per-batch stage times of the first run; samples/s per swept setting) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastload._cli_options import add_backend_option, add_storage_option, parse_storage_options
from fastload.config import LoaderConfig, SamplingConfig, apply_overrides
from fastload.errors import ConfigError

__all__ = ["profile_loader", "sweep", "plot_loader", "main"]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _clock() -> float:
    """The wall clock of the profiled window (a seam: tests check what happens before it is read)."""
    return time.perf_counter()


def _sync(device: Any) -> None:
    """Wait for the device's queued work (a GPU loader's last host-to-device copies are asynchronous): the clock
    is read only after it, so the window holds the copies of its batches, not those of the warm-up ones."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))  # sync point: once before the window, once at its end


def profile_loader(store: str, sampling: SamplingConfig, loader: LoaderConfig, *, batches: int = 20,
                   warmup: int = 2, data: str = "cached", latency_ms: float = 0.0, masking: Any = None,
                   log: Callable[[str], None] = _print, storage_options: Mapping[str, Any] | None = None,
                   backend: str = "auto") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Iterate a :class:`fastload.Loader` for ``warmup + batches`` batches; summarise the last ``batches``.

    Parameters
    ----------
    store : str
        Store path or URL.
    sampling, loader : SamplingConfig, LoaderConfig
        What to sample and how to load it (``loader.device`` None means the CPU here: no GPU needed).
    batches, warmup : int
        Batches recorded, and batches taken before (Numba JIT, thread start, cold decoded-chunk cache).
    data : {"cached", "cold"}
        Warm the page cache first, or drop the store's pages before every read (:mod:`profiling.slowstore`).
    latency_ms : float
        Simulated storage latency per request.
    storage_options, backend
        A remote store's client options, and how bytes are read (:func:`fastload.store.open_store`).

    Returns
    -------
    summary, records
        :func:`profiling.report.summarize_loader` of the recorded batches, and their per-batch records.
    """
    from fastload.loader import Loader

    from .report import loader_record, summarize_loader
    from .slowstore import check_cold_workers, open_run_store

    for key, v, lo in (("batches", batches, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"profile-loader {key}: expected an integer >= {lo}, got {v!r}")
    _check_latency(latency_ms, "profile-loader latency_ms")
    if data not in ("cached", "cold"):
        raise ConfigError(f"profile-loader --data: expected 'cached' or 'cold', got {data!r}")
    check_cold_workers(data, loader.mode, "profile-loader --data")
    if loader.device is None:
        loader = dataclasses.replace(loader, device="cpu")
    s = open_run_store(store, mode=data, latency_ms=latency_ms, fields=sampling.field_names, log=log,
                       storage_options=storage_options, backend=backend)
    records: list[dict[str, Any]] = []
    with Loader(s, sampling, loader, masking=masking) as ld:
        it = iter(ld)

        def take() -> Any:
            nonlocal it
            try:
                return next(it)
            except StopIteration:  # an epoch ended: the loader goes on with the next one
                it = iter(ld)
                return next(it)

        for _ in range(warmup):
            take()
        _sync(loader.device)
        t0 = _clock()
        for _ in range(batches):
            records.append(loader_record(take().stats))
        _sync(loader.device)
        wall = _clock() - t0
    from .presets import redact

    settings = {"store": redact(store), "backend": backend, "data": data, "latency_ms": latency_ms, "batches": batches,
                "warmup": warmup,
                "loader": loader.to_dict(), "sampling": sampling.to_dict()}
    return summarize_loader(records, wall_s=wall, config=settings), records


def sweep(store: str, sampling: SamplingConfig, loader: LoaderConfig, *, workers: Sequence[int] = (),
          prefetch: Sequence[int] = (), log: Callable[[str], None] = _print,
          **kwargs: Any) -> list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]]:
    """:func:`profile_loader` for every (workers, prefetch) combination; ``[(settings, summary, records)]``."""
    ws = list(workers) or [loader.workers]
    ps = list(prefetch) or [loader.prefetch]
    out = []
    for w in ws:
        for p in ps:
            cfg = dataclasses.replace(loader, workers=w, prefetch=p)  # validated by LoaderConfig
            log(f"profile-loader: workers={w} prefetch={p}")
            summary, records = profile_loader(store, sampling, cfg, log=log, **kwargs)
            out.append(({"workers": w, "prefetch": p}, summary, records))
    return out


_STAGE_COLORS = {"plan": "#8c564b", "fetch": "#ff7f0e", "decode": "#1f77b4", "gather": "#2ca02c", "copy": "#9467bd"}


def plot_loader(runs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                path: str | os.PathLike[str]) -> Path:
    """PNG: per-batch worker-stage times and consumer wait of the first run; samples/s per swept setting."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .report import LOADER_STAGES, _atomic_write

    swept = len(runs) > 1
    fig = Figure(figsize=(10, 6.5 if swept else 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1) if swept else [fig.subplots(1, 1)]
    settings, _, records = runs[0]
    ax = axes[0]
    x = np.arange(len(records))
    bottom = np.zeros(len(records))
    for st in LOADER_STAGES:
        v = np.array([float(r.get(f"{st}_ms", 0.0)) for r in records])
        ax.bar(x, v, bottom=bottom, width=0.85, label=f"{st} (thread-ms)", color=_STAGE_COLORS[st])
        bottom += v
    ax.plot(x, [float(r.get("queue_wait_ms", 0.0)) for r in records], "k.-", label="queue wait (consumer ms)")
    ax.set_xlabel("batch")
    ax.set_ylabel("ms")
    ax.set_title("per batch: worker stage times and consumer wait (" +
                 ", ".join(f"{k}={v}" for k, v in settings.items()) + ")")
    ax.legend(fontsize=8, loc="upper right")
    if swept:
        bx = axes[1]
        labels = [", ".join(f"{k[0]}{v}" for k, v in s.items()) for s, _, _ in runs]
        rates = [s["samples_per_s"] for _, s, _ in runs]
        bx.bar(range(len(runs)), rates, color="#1f77b4")
        bx.set_xticks(range(len(runs)), labels, rotation=30, fontsize=8)
        bx.set_ylabel("samples/s")
        bx.set_title("sweep: samples/s (w = workers, p = prefetch)")
    return _atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))


def _ints(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"{flag}: expected integers >= 1, got {text!r}")
    return vals


def _check_latency(ms: Any, flag: str) -> None:
    """A simulated latency is a finite number of milliseconds >= 0 (-1 or nan would fail in the store's
    ``LatencySource`` after the setup; inf would sleep forever)."""
    if isinstance(ms, bool) or not (isinstance(ms, numbers.Real) and math.isfinite(ms) and ms >= 0):
        raise ConfigError(f"{flag}: expected a finite number of milliseconds >= 0, got {ms!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload profile-loader [STORE --config CFG] [options]``."""
    p = argparse.ArgumentParser(prog="fastload profile-loader",
                                description="Profile the loader alone (no model, no GPU): per-stage times, bytes "
                                            "stored/decoded/useful, cache hit rate, samples/s; optional sweep.")
    p.add_argument("store", nargs="?", help="data store (default: the built-in synthetic dataset)")
    p.add_argument("--config", help="sampling config (TOML/YAML); required with STORE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="loader setting, e.g. loader.batch_size=8, loader.cache_bytes=0 (repeatable)")
    p.add_argument("--batches", type=int, default=20, help="batches recorded per run (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="batches taken before recording (default 2)")
    p.add_argument("--sweep-workers", metavar="N,N,...", help="worker counts to sweep")
    p.add_argument("--sweep-prefetch", metavar="N,N,...", help="prefetch depths to sweep")
    p.add_argument("--data", default="cached", choices=("cached", "cold"),
                   help="warm page cache (default) or pages dropped before every read")
    p.add_argument("--store-latency-ms", type=float, default=0.0, help="simulated latency per storage request")
    add_storage_option(p, "data store")
    add_backend_option(p)
    p.add_argument("--device", help="where batches go (default cpu; cuda adds the host-to-device copy)")
    p.add_argument("--out", help="report folder (default runs/profile-loader-<time>)")
    a = p.parse_args(argv)
    _check_latency(a.store_latency_ms, "--store-latency-ms")
    if a.store is not None and a.config is None:
        raise ConfigError("profile-loader STORE needs --config SAMPLING.toml (what a sample is)")
    if a.store is None and a.config is not None:
        raise ConfigError("profile-loader --config needs the STORE it describes")
    workers, prefetch = _ints(a.sweep_workers, "--sweep-workers"), _ints(a.sweep_prefetch, "--sweep-prefetch")
    for item in a.overrides:
        if not item.startswith("loader."):
            raise ConfigError(f"--set {item}: profile-loader takes loader.* settings only")
    from ._loop_checks import check_output_dir

    out = Path(a.out or f"runs/profile-loader-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_dir(out, "--out" if a.out else "the report folder")  # a file there fails now, not after the sweep
    loader = LoaderConfig(device=a.device)
    if a.store is None:
        from .loop import prepare_data
        from .presets import cpu_tiny

        run = cpu_tiny()
        store, sampling = prepare_data(run, _print)
        loader = dataclasses.replace(run.loader, device=a.device)
    else:
        store, sampling = a.store, SamplingConfig.from_file(a.config)
    loader = apply_overrides(loader, [o.removeprefix("loader.") for o in a.overrides], prefix="loader.")
    opts = parse_storage_options(a.storage_option)
    if a.store is None and (opts or a.backend != "auto"):
        raise ConfigError("--storage-option and --backend are for a STORE given; the built-in dataset is local")
    from .slowstore import check_cold_workers

    check_cold_workers(a.data, loader.mode, "profile-loader --data")  # (before the sweep's first line)
    runs = sweep(store, sampling, loader, workers=workers, prefetch=prefetch, batches=a.batches, warmup=a.warmup,
                 data=a.data, latency_ms=a.store_latency_ms, storage_options=opts, backend=a.backend)
    from .report import format_loader_table, format_sweep_table, write_steps_csv, write_summary

    print()
    for settings, summary, _ in runs:
        print(f"-- {', '.join(f'{k}={v}' for k, v in settings.items())}")
        print(format_loader_table(summary))
        print()
    if len(runs) > 1:
        print(format_sweep_table([(s, m) for s, m, _ in runs]))
        print()
    rows = [{**settings, "batch": i, **r} for settings, _, records in runs for i, r in enumerate(records)]
    files = [write_summary({"runs": [{"settings": s, "summary": m} for s, m, _ in runs]}, out / "loader_summary.json"),
             write_steps_csv(rows, out / "loader_batches.csv"), plot_loader(runs, out / "loader.png")]
    print(f"report: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    from fastload.cli import main as _cli

    sys.exit(_cli(["profile-loader", *sys.argv[1:]]))
