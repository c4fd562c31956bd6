"""One timed pass of one loader over one plan, and the medians over interleaved rounds.

Why this exists: the harness (:mod:`profiling.bench`) interleaves loaders round by round so that drift (other
work on the machine, thermal state) hits them all alike; this module is the part that times one pass and turns
passes into a table row. A pass is: (optionally drop the store from the page cache), start the resource monitor,
construct the loader, pull every batch, note each arrival time, close. Time to first batch includes
construction (worker start-up, opening arrays, JIT cache loads). Samples/s is the steady rate over the second
half of the pass, ``B * (N - h) / (t_N - t_h)`` with ``h = N // 2`` (the first batches of a prefetching loader
arrive in a burst); the end-to-end rate ``B * N / (t_N - t_start)`` is kept too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bench_monitor import ResourceMonitor

__all__ = ["Pass", "time_pass", "compare_outputs", "summarise"]


@dataclasses.dataclass(slots=True)
class Pass:
    """What one timed pass measured."""

    samples: int
    start: float
    arrivals: list[float]
    peak_bytes: int
    baseline_bytes: int
    cpu_seconds: float
    counters: dict[str, float] | None

    @property
    def ttfb(self) -> float:
        return self.arrivals[0] - self.start

    @property
    def steady_samples_per_s(self) -> float:
        """Rate over the second half of the batches (after ``h = N // 2`` arrivals).

        Loaders start several batches at once (DataLoader workers, prefetch), so the first few arrive in a burst;
        by the middle of the pass every loader's pipeline is full and batches arrive at its production rate.
        """
        n = len(self.arrivals)
        if n < 2:
            return self.samples / self.ttfb
        h = n // 2
        per_batch = self.samples / n
        return per_batch * (n - h) / max(self.arrivals[-1] - self.arrivals[h - 1], 1e-9)

    @property
    def e2e_samples_per_s(self) -> float:
        return self.samples / max(self.arrivals[-1] - self.start, 1e-9)

    @property
    def gaps(self) -> np.ndarray:
        """Seconds between consecutive batches (the first batch's wait is the time to first batch)."""
        a = np.asarray(self.arrivals)
        return np.diff(a) if a.size > 1 else np.asarray([self.ttfb])


def time_pass(make: Callable[[], Any], batches: Sequence[np.ndarray], *,
              before: Callable[[], None] | None = None) -> Pass:  # fmt: skip
    """Construct a loader with ``make()`` and pull ``batches`` through it, timing each arrival."""
    if before is not None:
        before()
    mon = ResourceMonitor().start()
    try:
        start = time.perf_counter()
        loader = make()
        arrivals = []
        try:
            for _ in loader.iter_batches(batches):
                arrivals.append(time.perf_counter())
            mon.sample()
        finally:
            loader.close()
        counters = loader.counters() if hasattr(loader, "counters") else None
    finally:
        mon.stop()
    if len(arrivals) != len(batches):
        raise RuntimeError(f"{getattr(loader, 'name', loader)} produced {len(arrivals)} batches, expected "
                           f"{len(batches)}")  # fmt: skip
    return Pass(samples=int(sum(len(b) for b in batches)), start=start, arrivals=arrivals, peak_bytes=mon.peak_bytes,
                baseline_bytes=mon.baseline_bytes, cpu_seconds=mon.cpu_seconds, counters=counters)  # fmt: skip


def compare_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                    missing: dict[str, np.ndarray] | None = None) -> str | None:
    """``None`` when every field is bit-identical (NaN equal to NaN), else what differs, in words.

    ``missing``: per field, the store's declared missing values (``fastload.sampling.chunks.missing_of``). fastload
    writes them as NaN; a peer that reads raw values gives the marker itself, which counts as equal there (the
    bench compares raw values, so a peer's marker is the stored value)."""
    if set(got) != set(want):
        return f"fields differ: got {sorted(got)}, expected {sorted(want)}"
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        if g.shape != w.shape:
            return f"field {k!r}: shape {g.shape}, expected {w.shape}"
        if g.dtype != w.dtype:
            return f"field {k!r}: dtype {g.dtype}, expected {w.dtype}"
        same = (g == w) | (np.isnan(g) & np.isnan(w))
        marks = (missing or {}).get(k)
        if marks is not None and len(marks) and g.dtype.kind == "f":
            same |= np.isnan(w) & np.isin(g, np.asarray(marks).astype(g.dtype))
        if not same.all():
            bad = np.argwhere(~same)[0]
            diff = np.nanmax(np.abs(g.astype(np.float64) - w))
            return (f"field {k!r}: {int((~same).sum())} of {same.size} values differ (first at {tuple(bad)}: "
                    f"{g[tuple(bad)]!r} vs {w[tuple(bad)]!r}; max |diff| {diff:.3g})")  # fmt: skip
    return None


def _median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarise(passes: Sequence[Pass], *, sample_nbytes: int, decoded_bytes: float | None,
              stored_bytes: float | None) -> dict[str, Any]:  # fmt: skip
    """Median figures over rounds; ``decoded_bytes``/``stored_bytes`` are per pass (modelled or reported)."""
    sps = [p.steady_samples_per_s for p in passes]
    gaps = np.concatenate([p.gaps for p in passes])
    samples = passes[0].samples
    rate = _median(sps) or 0.0
    out: dict[str, Any] = {
        "samples_per_s": rate,
        "samples_per_s_e2e": _median([p.e2e_samples_per_s for p in passes]),
        "samples_per_s_rounds": sps,
        "useful_gbps": rate * sample_nbytes / 1e9,
        "p50_batch_s": float(np.percentile(gaps, 50)),
        "p99_batch_s": float(np.percentile(gaps, 99)),
        "ttfb_s": _median([p.ttfb for p in passes]),
        "peak_mem_mb": max(p.peak_bytes for p in passes) / 2**20,
        "baseline_mem_mb": min(p.baseline_bytes for p in passes) / 2**20,
        "added_mem_mb": max(p.peak_bytes - p.baseline_bytes for p in passes) / 2**20,
        "cpu_s_per_sample": _median([p.cpu_seconds / p.samples for p in passes]),
    }
    for key, total in (("decoded", decoded_bytes), ("stored", stored_bytes)):
        out[f"{key}_gbps"] = None if total is None else rate * (total / samples) / 1e9
    out["read_amplification"] = None if decoded_bytes is None else decoded_bytes / (samples * sample_nbytes)
    hits = [p.counters.get("cache_hits") for p in passes if p.counters]
    misses = [p.counters.get("cache_misses") for p in passes if p.counters]
    if hits and misses and all(h is not None for h in hits) and all(m is not None for m in misses):
        total = sum(hits) + sum(misses)
        out["cache_hit_rate"] = sum(hits) / total if total else None
    else:
        out["cache_hit_rate"] = None
    return out
