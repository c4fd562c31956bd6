"""Memory over many batches: does a long-running Loader grow? (issue 4: no growth over 10,000 batches)

Why this exists: a leak of a few kilobytes per batch (a buffer that is replaced but still held, a cache entry
never dropped, a shared-memory segment never unlinked) is invisible in a benchmark of a hundred batches and fatal
in a training run of a week. This runs one Loader for many batches over many epochs (``set_epoch`` each time, as
a training loop does) and samples the memory of the whole process tree every ``--every`` batches: the
proportional set size (PSS: shared pages counted once across the parent and its worker processes, so process mode
is not counted twice) and the bytes of files named after this process in ``/dev/shm`` (ring buffers are nameless
now, so anything there is a leak).
It reports the figures at 10 % and half of the run, at the end and the largest, and the growth from those points
to the end; growth over the second half is the number to watch (caches and rings fill during the first epochs,
and a single sample can land on a transient).

Run::

    python benches/memory_growth.py STORE --batches 10000 --batch-size 4                 # threads (the default)
    python benches/memory_growth.py STORE --batches 10000 --batch-size 4 --mode process --json out.json
    python benches/memory_growth.py STORE --batches 10000 --cache-mb 64      # a cache smaller than the store

``STORE`` is any store the Loader reads (e.g. ``fastload synth /tmp/tiny.zarr --preset tiny``); the sampling
config is AtmoRep's geometry fitted to it (:func:`profiling.bench_scenarios.fit_config`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import psutil

from fastload.loader import Loader
from fastload.store import open_store
from profiling.bench_scenarios import fit_config


def tree_pss_mb(proc: psutil.Process) -> float:
    """PSS of ``proc`` and its children, in MiB (RSS where PSS cannot be read)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.AccessDenied, AttributeError):
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def shm_mb() -> float:
    """Bytes of this process's fastload shared-memory segments in /dev/shm, in MiB."""
    return sum(os.path.getsize(f) for f in glob.glob(f"/dev/shm/fastload-{os.getpid()}-*")) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--batches", type=int, default=10000, help="batches in all (over as many epochs as it takes)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples-per-epoch", type=int, default=4096)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=("thread", "process"), default="thread")
    p.add_argument("--cache-mb", type=float, default=None,
                   help="decoded-chunk cache budget (default: the Loader's); below the store's size, evictions run")
    p.add_argument("--every", type=int, default=100, help="sample the memory every this many batches")
    p.add_argument("--json", help="write the samples and the summary here")
    opts = p.parse_args(argv)
    store = open_store(opts.store)
    config = fit_config(store, batch_size=opts.batch_size)
    proc = psutil.Process()
    before = tree_pss_mb(proc)
    print(f"PSS before the loader: {before:.1f} MiB", flush=True)
    samples: list[tuple[int, float, float, float]] = []  # (batch, seconds, PSS MiB, /dev/shm MiB)
    n, epoch, t0 = 0, 0, time.perf_counter()
    extra = {} if opts.cache_mb is None else {"cache_bytes": int(opts.cache_mb * 2**20)}
    with Loader(store, config, batch_size=opts.batch_size, workers=opts.workers, mode=opts.mode, device="cpu",
                samples_per_epoch=opts.samples_per_epoch, **extra) as loader:
        print(f"{len(loader)} batches per epoch, {opts.mode} mode, {opts.workers} workers", flush=True)
        while n < opts.batches:
            loader.set_epoch(epoch)
            for _ in loader:
                n += 1
                if n % opts.every == 0:
                    samples.append((n, time.perf_counter() - t0, tree_pss_mb(proc), shm_mb()))
                    print(" ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in samples[-1]), flush=True)
                if n >= opts.batches:
                    break
            epoch += 1
    if not samples:
        print("fewer batches than --every: nothing sampled", file=sys.stderr)
        return 1
    early, half = samples[len(samples) // 10], samples[len(samples) // 2]
    summary = {"batches": n, "epochs": epoch, "mode": opts.mode, "pss_before_mb": before,
               "pss_at_10pct_mb": early[2], "pss_at_half_mb": half[2], "pss_end_mb": samples[-1][2],
               "pss_max_mb": max(s[2] for s in samples), "growth_after_10pct_mb": samples[-1][2] - early[2],
               "growth_second_half_mb": samples[-1][2] - half[2], "shm_at_10pct_mb": early[3],
               "shm_end_mb": samples[-1][3]}
    print(json.dumps(summary, indent=1))
    if opts.json:
        tmp = opts.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"summary": summary, "samples": samples}, fh)
        os.replace(tmp, opts.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
