"""The reader issue's speed targets, evaluated on whatever rows a ``fastload bench`` run produced.

Why this exists: the targets (fastload vs zarr-python in a DataLoader, vs AtmoRep's method, vs tensorstore; % of
the roof on chunk-aligned reads; throughput under latency; memory; time to first batch) are ratios between rows of
one run, so the run itself should say which it met. Each target is checked on every scenario that can show it
(e.g. the AtmoRep-method target needs an ``atmorep`` store variant with the ``window`` plan) and skipped where no
row can; ``fastload bench --json`` stores the list under ``"targets"``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_targets", "format_targets"]


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("samples_per_s")]


def _same_group(a: dict, b: dict, *keys: str) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


def _speedups(rows: list[dict], peer: str, want: float, label: str, where) -> list[dict]:
    out = []
    for r in rows:
        if r["loader"] != peer or not where(r):
            continue
        ours = next((o for o in rows if o["loader"] == "fastload" and o["scenario"] == r["scenario"]), None)
        if ours is None:
            continue
        x = ours["samples_per_s"] / r["samples_per_s"]
        out.append({"target": label, "threshold": want, "measured": x, "met": x >= want, "where": r["scenario"]})
    return out


def evaluate_targets(rows: list[dict], *, cache_bytes: int | None = None, prefetch: int | None = None) -> list[dict]:
    """``[{"target", "threshold", "measured", "met", "where"}, ...]`` for every target some rows can show."""
    from fastload.config import LoaderConfig

    defaults = LoaderConfig()
    cache_mb = (cache_bytes if cache_bytes is not None else defaults.cache_bytes) / 2**20
    depth = prefetch if prefetch is not None else defaults.prefetch
    ok = _ok(rows)
    out: list[dict] = []
    out += _speedups(ok, "zarr+DataLoader", 10.0, ">= 10x zarr-python in a DataLoader (tile chunks, 2 workers)",
                     lambda r: "tiles" in r["store_variant"] and r["workers"] == 2 and not r["latency_ms"])
    out += _speedups(ok, "atmorep-batch", 3.0, ">= 3x AtmoRep's batch method (AtmoRep chunks, its plan)",
                     lambda r: "atmorep" in r["store_variant"] and r["plan"] == "window")
    out += _speedups(ok, "tensorstore", 2.0, ">= 2x tensorstore (tile chunks, overlapping samples)",
                     lambda r: "tiles" in r["store_variant"] and not r["latency_ms"] and r["plan"] != "disjoint")
    out += _speedups(ok, "tensorstore", 1.0, ">= 1x tensorstore where nothing overlaps (tile chunks, plan disjoint)",
                     lambda r: "tiles" in r["store_variant"] and not r["latency_ms"] and r["plan"] == "disjoint")
    for a in ok:  # end to end: AtmoRep's method on its store vs fastload on the recommended copy, same plan
        if a["loader"] != "atmorep-batch" or "atmorep" not in a["store_variant"] or a["plan"] != "window":
            continue
        for f in ok:
            if (f["loader"] == "fastload" and "recommended" in f["store_variant"]
                    and _same_group(a, f, "plan", "workers", "latency_ms", "cache", "batch_size")):  # fmt: skip
                x = f["samples_per_s"] / a["samples_per_s"]
                out.append({"target": ">= 20x end to end: AtmoRep's method on its store vs fastload on the "
                            "recommended rechunk", "threshold": 20.0, "measured": x, "met": x >= 20.0,
                            "where": f"{a['scenario']} -> {f['scenario']}"})  # fmt: skip
    for f in ok:
        if f["loader"] != "fastload":
            continue
        if f["plan"] == "aligned" and f.get("roof_pct") is not None:
            out.append({"target": ">= 90% of the read+decode roof on chunk-aligned reads", "threshold": 90.0,
                        "measured": f["roof_pct"], "met": f["roof_pct"] >= 90.0, "where": f["scenario"]})
        if f["latency_ms"] >= 20:
            base = next((b for b in ok if b["loader"] == "fastload" and not b["latency_ms"]
                         and _same_group(b, f, "store_variant", "workers", "plan", "cache")), None)  # fmt: skip
            if base is not None:
                x = f["samples_per_s"] / base["samples_per_s"]
                out.append({"target": f">= 80% of the zero-latency rate with {f['latency_ms']:g} ms per request",
                            "threshold": 0.8, "measured": x, "met": x >= 0.8, "where": f["scenario"]})  # fmt: skip
        if f.get("ttfb_s") is not None:
            out.append({"target": "time to first batch < 1 s (JIT caches warm)", "threshold": 1.0,
                        "measured": f["ttfb_s"], "met": f["ttfb_s"] < 1.0, "where": f["scenario"]})
        if f.get("added_mem_mb") is not None:
            sample_mb = f["useful_gbps"] * 1e9 / f["samples_per_s"] / 2**20
            budget = cache_mb + (depth + 2) * f["batch_size"] * sample_mb + 500.0
            out.append({"target": "peak memory <= cache budget + prefetch ring + 500 MB", "threshold": budget,
                        "measured": f["added_mem_mb"], "met": f["added_mem_mb"] <= budget, "where": f["scenario"]})
    return out


def format_targets(targets: list[dict[str, Any]]) -> list[str]:
    """Console lines, one per evaluated target."""
    if not targets:
        return []
    lines = ["targets (issue 4), as measured in this run:"]
    for t in targets:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']:.3g} "
                     f"(threshold {t['threshold']:.3g}) in {t['where']}")  # fmt: skip
    return lines
