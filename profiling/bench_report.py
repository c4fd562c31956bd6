"""The bench's outputs: a console table per scenario, the JSON record, and a PNG of throughput vs workers/latency.

Why this exists: the same result dict (:func:`profiling.bench.run_bench`) goes to three readers: a person at a
terminal (one table per scenario, the roof under it, skipped peers with the reason), a script or
``benches/RESULTS.md`` (JSON: ``{"rows": [...], "roofs": {...}, "machine": {...}}``), and a picture. Files are
written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["format_table", "format_group", "format_footer", "check_output_path", "write_json", "write_plot", "NOTES"]

NOTES = (
    "samples/s: steady rate over the second half of each pass (median over rounds); x ours: fastload's samples/s / this row's",
    "useful = output tensor bytes; decoded/stored = chunk bytes decoded/read (reported by fastload and by "
    "tensorstore's metrics, modelled for the others from the chunks each touches); ampl = decoded/useful",
    "% roof: samples/s / the rate of reading+decoding once the chunks each batch needs (numcodecs, same threads, "
    "same run); >100% = fewer decodes than that (cache across batches, shared in-flight reads) or less per-chunk "
    "overhead than Python's",
    "p50/p99: time between batches; ttfb: construction to first batch; peak MB: memory (PSS) summed over the "
    "process tree, harness included; +MB: peak minus the tree's memory before the loader started",
    "normalisation off for every loader (raw float32, checked bit for bit against fastload before timing); "
    "fastload normalises in the same gather pass",
)

_COLS = (
    ("loader", "loader", "{}"),
    ("samples/s", "samples_per_s", "{:.1f}"),
    ("x ours", "fastload_speedup", "{:.2f}"),
    ("useful GB/s", "useful_gbps", "{:.3f}"),
    ("decoded GB/s", "decoded_gbps", "{:.3f}"),
    ("stored GB/s", "stored_gbps", "{:.3f}"),
    ("ampl", "read_amplification", "{:.1f}"),
    ("% roof", "roof_pct", "{:.0f}"),
    ("p50 ms", "p50_batch_s", "ms"),
    ("p99 ms", "p99_batch_s", "ms"),
    ("ttfb s", "ttfb_s", "{:.2f}"),
    ("peak MB", "peak_mem_mb", "{:.0f}"),
    ("+MB", "added_mem_mb", "{:.0f}"),
    ("cpu ms/smp", "cpu_s_per_sample", "ms"),
    ("hit %", "cache_hit_rate", "pct"),
)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if spec == "ms":
        return f"{1000 * v:.1f}"
    if spec == "pct":
        return f"{100 * v:.0f}"
    return spec.format(v)


def format_group(rows: list[dict[str, Any]], roof: dict[str, Any] | None) -> str:
    """The table of one scenario group (store variant x cache x workers x latency), its roof under it.

    ``fastload bench`` prints it as soon as the group's last pass is done; :func:`format_table` joins the groups
    and :func:`format_footer`.
    """
    lines: list[str] = []
    first = rows[0]
    lines.append(f"== {first['scenario']}  (plan {first['plan']}, {first['batches']} batches x {first['batch_size']} "
                 f"samples, {first['rounds']} round(s))")  # fmt: skip
    if first["batches"] < 8:
        lines.append(f"  (only {first['batches']} batches per pass: prefetching loaders deliver them in a "
                     f"start-up burst, so samples/s is a smoke figure; use --batches >= 16 for figures)")
    table = [[c[0] for c in _COLS]]
    notes = []
    for r in rows:
        if r.get("status") == "ok" and "samples_per_s" in r:
            table.append([_fmt(r.get(key), spec) for _, key, spec in _COLS])
        else:
            notes.append(f"  {r['loader']}: {r.get('status')} ({r.get('reason', '')})")
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLS))]
    for row in table:
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(row, widths))))  # fmt: skip
    lines.extend(notes)
    if roof and roof.get("samples_per_s"):
        res = roof.get("resident_fraction_end")
        local = " (local reads: the added latency is not in the roof)" if roof.get("latency_ms") else ""
        lines.append(f"  roof{local}: read+decode of the needed chunks {roof['samples_per_s']:.1f} samples/s "
                     f"({roof['decoded_gbps']:.2f} GB/s decoded, {roof['stored_gbps']:.2f} GB/s stored); raw "
                     f"chunk reads {roof['raw_read_gbps']:.2f} GB/s; page cache "
                     f"{'?' if res is None else f'{100 * res:.0f}%'} resident after the runs")  # fmt: skip
        if "resident_fraction_after_drop" in roof:
            cold = roof["resident_fraction_after_drop"]
            lines.append(f"  cold cache: {'?' if cold is None else f'{100 * cold:.0f}%'} of the store resident "
                         f"right after posix_fadvise(DONTNEED)")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def format_footer(result: dict[str, Any]) -> str:
    """What follows the group tables: the machine, the notes, what each loader is, the issue targets."""
    lines: list[str] = []
    mem = result["roofs"].get("memcpy_gbps")
    m = result.get("machine", {})
    lines.append(f"machine: {m.get('cpu', '?')}, {m.get('cores_usable', '?')} usable cores, "
                 f"{m.get('memory_gb', '?')} GB; memcpy {_fmt(mem, '{:.1f}')} GB/s (one thread)")  # fmt: skip
    lines.extend(f"note: {n}" for n in NOTES)
    for name, what in result.get("loaders", {}).items():
        lines.append(f"loader {name}: {what}")
    from .bench_targets import format_targets

    targets = format_targets(result.get("targets", []))
    if targets:
        lines += ["", *targets]
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """One table per scenario, the roofs under it, then the notes (:func:`format_group` of each group, then
    :func:`format_footer`)."""
    roofs = {r["scenario"]: r for r in result["roofs"].get("scenarios", [])}
    scenarios = list(dict.fromkeys(r["scenario"] for r in result["rows"]))
    parts = [format_group([r for r in result["rows"] if r["scenario"] == sc], roofs.get(sc)) for sc in scenarios]
    return "\n".join([*parts, format_footer(result)])


def check_output_path(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written, before the run (the bench writes its files at the end).

    Raises
    ------
    ConfigError
        ``path`` is a folder, or the folder it would go in does not exist, is not a folder or is not writable.
    """
    from fastload.errors import ConfigError

    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        raise ConfigError(f"bench {flag} {path}: is a folder; expected the path of a file to write "
                          f"(e.g. bench{_EXT.get(flag, '')})")
    if not os.path.exists(parent):
        raise ConfigError(f"bench {flag} {path}: the folder {parent} does not exist; create it first")
    if not os.path.isdir(parent):
        raise ConfigError(f"bench {flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"bench {flag} {path}: the folder {parent} is not writable")


_EXT = {"--json": ".json", "--plot": ".png"}


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return _jsonable(v.item())
    return v


def write_json(result: dict[str, Any], path: str) -> None:
    """``{"rows", "roofs", "machine", "config", "options"}`` as JSON (NaN/inf written as null)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(_jsonable(result), fh, indent=1, allow_nan=False)
            fh.write("\n")

    _atomic_write(path, write)


def write_plot(result: dict[str, Any], path: str) -> None:
    """samples/s vs workers (latency 0) and vs latency (most workers), one line per loader, per store variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("samples_per_s")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, xkey, fixed, xlabel in ((axes[0], "workers", ("latency_ms", 0.0), "workers"),
                                    (axes[1], "latency_ms", ("workers", None), "added latency per request (ms)")):
        for (variant, loader) in dict.fromkeys((r["store_variant"], r["loader"]) for r in rows):
            sel = [r for r in rows if r["store_variant"] == variant and r["loader"] == loader]
            if fixed[1] is None:
                most = max(r["workers"] for r in sel)
                sel = [r for r in sel if r["workers"] == most]
            else:
                sel = [r for r in sel if r[fixed[0]] == fixed[1]]
            sel.sort(key=lambda r: r[xkey])
            if sel:
                ax.plot([r[xkey] for r in sel], [r["samples_per_s"] for r in sel], "o-", label=f"{loader} [{variant}]")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples/s")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("throughput vs workers (no added latency)")
    axes[1].set_title("throughput vs latency (most workers)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    try:
        _atomic_write(path, write)
    finally:
        plt.close(fig)
