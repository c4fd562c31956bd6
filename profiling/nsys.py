"""Nsight Systems: a capture window around the profiled steps, and ``nsys stats`` CSVs folded into our report.

Why this module exists: the step timer's CUDA events are cheap enough to run always; Nsight Systems is the
independent check. ``profiling/nsys_profile.sh`` runs a command under ``nsys profile
--capture-range=cudaProfilerApi --trace=cuda,nvtx`` (only the steps between ``cudaProfilerStart`` and
``cudaProfilerStop``, which :class:`CaptureWindow` calls), then ``nsys stats`` writes four CSV reports:
``nvtx_sum`` (host time of each NVTX range), ``nvtx_gpu_proj_sum`` (each range projected onto the GPU: from the
start of the first GPU operation launched inside it to the end of the last), ``cuda_gpu_kern_sum`` and
``cuda_gpu_mem_time_sum``. :func:`load_stats` reads them and :func:`summarize_nsys` turns them into the same
summary format as :func:`profiling.report.summarize` (``phases``, ``stall_fraction``, ``samples_per_s``).

Basis of each number: ``forward``/``backward``/``optimizer``/``h2d`` are GPU-projected times. ``data_wait`` is
the host time of its range: a projection measures GPU work *launched* in a range, and waiting for data launches
none, so its projected time says nothing about the stall. The stall fraction is host data wait over host step
time (the ``step`` start/end range :class:`profiling.timers.StepTimer` emits); ``gpu_busy_fraction`` is kernel
plus memory-operation time over step time. nsys summaries carry median and max, not p95: ``p95_ms`` is None.

How to run it::

    profiling/nsys_profile.sh runs/nsys/profile -- python -m profiling.loop profile --steps 30
    python -m profiling.nsys runs/nsys/profile            # table + runs/nsys/nsys_summary.json

Column names follow the Nsight Systems Analysis Guide ("Statistical Reports Shipped With Nsight Systems"):
``Time (%)``, ``Total Time (ns)``, ``Instances``, ``Avg (ns)``, ``Med (ns)``, ``Min (ns)``, ``Max (ns)``,
``StdDev (ns)``, ``Style``, ``Range`` (nvtx_sum); ``Range``, ``Style``, ``Total Proj Time (ns)``, ``Total Range
Time (ns)``, ``Range Instances``, ``Proj Avg (ns)``, ``Proj Med (ns)``, ... ``Total GPU Ops`` (nvtx_gpu_proj_sum);
``Name`` (kernels); ``Count``, ``Operation`` (memory operations). Any ``--timeunit`` suffix is understood.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastload._nvtx import DOMAIN
from fastload.errors import ConfigError

from .timers import PHASES

__all__ = ["REPORTS", "CaptureWindow", "read_stats_csv", "load_stats", "summarize_nsys", "main"]

REPORTS = ("nvtx_sum", "nvtx_gpu_proj_sum", "cuda_gpu_kern_sum", "cuda_gpu_mem_time_sum")
"""The ``nsys stats`` reports the script writes (``<prefix>_<report>.csv``)."""

_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3, "sec": 1e3}
_COLUMN = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>ns|us|μs|ms|s|sec|%)\)$")


class CaptureWindow:
    """Calls ``cudaProfilerStart`` when step ``start`` begins and ``cudaProfilerStop`` after step ``stop - 1``.

    With ``nsys profile --capture-range=cudaProfilerApi`` only those steps are recorded. Does nothing without
    CUDA. Call :meth:`step` at the top of every step with the step number.
    """

    def __init__(self, start: int, stop: int, *, enabled: bool | None = None):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, stop)) or not 0 <= start < stop:
            raise ConfigError(f"nsys capture window: expected 0 <= start < stop, got start={start!r}, stop={stop!r}")
        self.start, self.stop = start, stop
        if enabled is None:
            import torch

            enabled = torch.cuda.is_available()
        self.enabled = enabled
        self.active = False

    def step(self, step: int) -> None:
        if not self.enabled:
            return
        import torch

        if step == self.start and not self.active:
            torch.cuda.synchronize()  # sync point: start the capture with an empty queue
            torch.cuda.profiler.start()
            self.active = True
        elif step == self.stop and self.active:
            self.close()

    def close(self) -> None:
        """Stop the capture if it is running (call at the end of the loop; safe to repeat)."""
        if self.active:
            import torch

            torch.cuda.synchronize()  # sync point: let the captured steps' GPU work finish inside the capture
            torch.cuda.profiler.stop()
            self.active = False


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_stats_csv(source: str | Path | io.TextIOBase) -> list[dict[str, Any]]:
    """Rows of one ``nsys stats --format csv`` report, times converted to milliseconds.

    Lines before the header (``NOTICE:`` messages, a report title) are skipped. A column ``Total Time (ns)``
    becomes ``Total Time`` in ms; ``Time (%)`` becomes ``Time %``; other numeric cells become floats; text
    stays text.

    Raises
    ------
    ConfigError
        If the file does not exist or holds no CSV header.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"nsys stats CSV {str(path)!r} does not exist (run profiling/nsys_profile.sh first)")
        text = path.read_text(errors="replace")
        where = str(path)
    else:
        text = source.read()
        where = "nsys stats CSV"
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        cells = next(csv.reader([line]), [])
        if len(cells) >= 2 and any(_COLUMN.match(c.strip()) or c.strip() in ("Range", "Name", "Operation")
                                   for c in cells):
            start = i
            break
    if start is None:
        raise ConfigError(f"{where}: no CSV header found (expected columns like 'Total Time (ns)', 'Range')")
    reader = csv.reader(lines[start:])
    header = next(reader)
    columns: list[tuple[str, float | None]] = []  # (key, factor to ms; None = keep as is)
    for h in header:
        h = h.strip()
        m = _COLUMN.match(h)
        if m and m["unit"] == "%":
            columns.append((f"{m['name']} %", 1.0))
        elif m:
            columns.append((m["name"], _UNIT_MS[m["unit"]]))
        else:
            columns.append((h, None))
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        row: dict[str, Any] = {}
        for (key, factor), cell in zip(columns, cells):
            v = _number(cell)
            if factor is not None:
                row[key] = None if v is None else v * factor
            else:
                row[key] = cell.strip() if v is None else v
        rows.append(row)
    return rows


def _split_range(name: str) -> tuple[str, str]:
    """``"fastload:forward"`` -> (``"fastload"``, ``"forward"``); ``":x"`` (default domain) -> ("", "x")."""
    if ":" in name:
        domain, msg = name.split(":", 1)
        return domain, msg
    return "", name


def _ranges(rows: Sequence[Mapping[str, Any]], domain: str, keys: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Rows of an NVTX report for one domain by range name (both styles of one name added up)."""
    prefixed = any(":" in str(r.get("Range", "")) for r in rows)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d, msg = _split_range(str(r.get("Range", "")))
        if prefixed and d != domain:
            continue
        entry = out.setdefault(msg, {k: 0.0 for k in keys})
        for k, col in keys.items():
            v = r.get(col)
            if k in ("total_ms", "range_ms", "instances", "gpu_ops"):
                entry[k] += float(v or 0.0)
            else:  # per-instance statistics: keep the row's own (one row per name in practice)
                entry[k] = v
    return out


_HOST_KEYS = {"total_ms": "Total Time", "instances": "Instances", "avg_ms": "Avg", "med_ms": "Med",
              "min_ms": "Min", "max_ms": "Max"}
_PROJ_KEYS = {"total_ms": "Total Proj Time", "range_ms": "Total Range Time", "instances": "Range Instances",
              "avg_ms": "Proj Avg", "med_ms": "Proj Med", "min_ms": "Proj Min", "max_ms": "Proj Max",
              "gpu_ops": "Total GPU Ops"}


def load_stats(prefix: str | Path, *, domain: str = DOMAIN) -> dict[str, Any]:
    """Read ``<prefix>_<report>.csv`` for :data:`REPORTS` (``nvtx_sum`` is required, the others optional).

    Returns
    -------
    dict
        ``host`` and ``gpu``: {range name: {total_ms, instances, avg_ms, med_ms, min_ms, max_ms, ...}} for the
        domain's NVTX ranges; ``kernels``: [{name, total_ms, instances, avg_ms, med_ms}] by total time;
        ``memops``: {operation: {total_ms, count, avg_ms}}; ``files``: the CSVs read.
    """
    prefix = str(prefix)
    files = {r: Path(f"{prefix}_{r}.csv") for r in REPORTS}
    present = {r: p for r, p in files.items() if p.is_file()}
    if "nvtx_sum" not in present:
        raise ConfigError(f"nsys stats: {str(files['nvtx_sum'])!r} not found; expected the CSVs of "
                          f"'nsys stats --format csv --output {prefix}' (profiling/nsys_profile.sh writes them)")
    out: dict[str, Any] = {"files": {r: str(p) for r, p in present.items()}}
    out["host"] = _ranges(read_stats_csv(present["nvtx_sum"]), domain, _HOST_KEYS)
    out["gpu"] = (_ranges(read_stats_csv(present["nvtx_gpu_proj_sum"]), domain, _PROJ_KEYS)
                  if "nvtx_gpu_proj_sum" in present else {})
    kernels = []
    if "cuda_gpu_kern_sum" in present:
        for r in read_stats_csv(present["cuda_gpu_kern_sum"]):
            kernels.append({"name": r.get("Name", ""), "total_ms": r.get("Total Time") or 0.0,
                            "instances": int(r.get("Instances") or 0), "avg_ms": r.get("Avg"),
                            "med_ms": r.get("Med")})
    out["kernels"] = sorted(kernels, key=lambda k: -k["total_ms"])
    memops: dict[str, dict[str, Any]] = {}
    if "cuda_gpu_mem_time_sum" in present:
        for r in read_stats_csv(present["cuda_gpu_mem_time_sum"]):
            memops[str(r.get("Operation", ""))] = {"total_ms": r.get("Total Time") or 0.0,
                                                   "count": int(r.get("Count") or 0), "avg_ms": r.get("Avg")}
    out["memops"] = memops
    return out


def summarize_nsys(stats: Mapping[str, Any], *, phases: Sequence[str] = PHASES,
                   samples_per_step: int | None = None, config: Mapping[str, Any] | None = None,
                   top_kernels: int = 10) -> dict[str, Any]:
    """The report summary (as :func:`profiling.report.summarize`) from :func:`load_stats`'s output.

    Per phase: ``mean_ms`` = total over the number of steps (instances of the ``step`` range; without one, the
    largest instance count of a phase), ``p50_ms`` = nsys's median per range instance, ``p95_ms`` = None,
    ``max_ms``, ``share`` of host step time (without a step range: of the phases' sum), ``basis``
    (``gpu_projected`` or ``host``: the clock of ``mean_ms`` and ``share``) and ``host_share`` (the phase's host
    time over host step time). With a step range, ``other`` is the host step time outside every phase's range,
    so the host shares add up to 1; the ``share`` column mixes clocks when some phases are GPU-projected (it
    may add up to more or less than 1), which ``notes`` says with the sum.
    """
    host, gpu = stats["host"], stats["gpu"]
    step = host.get("step")
    steps = int(step["instances"]) if step and step["instances"] else 0
    step_total = float(step["total_ms"]) if step else 0.0
    present = [p for p in phases if p in host or p in gpu]
    if not present:
        raise ConfigError(f"nsys stats: no NVTX ranges named {list(phases)} in domain {DOMAIN!r}; was the run "
                          f"made with FASTLOAD_NVTX=1 and the StepTimer?")
    sources: dict[str, tuple[dict[str, Any], str]] = {}
    for p in present:
        use_host = (p == "data_wait" and p in host) or p not in gpu
        sources[p] = (host[p], "host") if use_host else (gpu[p], "gpu_projected")
    if not steps:  # no step range: the most frequent phase counts the steps, the phases make up the step
        steps = max(int(src["instances"]) for src, _ in sources.values()) or 1
        step_total = sum(float(src["total_ms"]) for src, _ in sources.values())
    out_phases: dict[str, Any] = {}
    host_step = bool(step and step["instances"]) and step_total > 0  # the step range: host time
    for p, (src, basis) in sources.items():
        out_phases[p] = {"mean_ms": src["total_ms"] / steps, "p50_ms": src.get("med_ms"), "p95_ms": None,
                         "max_ms": src.get("max_ms"), "instances": int(src["instances"]),
                         "share": src["total_ms"] / step_total if step_total else None, "basis": basis,
                         "host_share": host[p]["total_ms"] / step_total if host_step and p in host else None}
    notes = []
    if host_step and all(p in host for p in present):  # host step time outside the phases' ranges
        other = max(0.0, step_total - sum(float(host[p]["total_ms"]) for p in present))
        out_phases["other"] = {"mean_ms": other / steps, "p50_ms": None, "p95_ms": None, "max_ms": None,
                               "instances": steps, "share": other / step_total, "basis": "host",
                               "host_share": other / step_total}
    if len({b for _, b in sources.values()}) > 1:
        total = sum(v["share"] for v in out_phases.values() if v["share"] is not None)
        notes.append(f"shares mix two clocks (basis column): GPU-projected phase times (gpu: from the first GPU "
                     f"operation a range launched to the end of the last, which runs past the range's host end) "
                     f"and host times (host), each over host step time; they add up to {100 * total:.1f}%, not "
                     f"100% (host_share in the JSON is every phase on the host clock, with other: 100%)")
    kernel_ms = sum(k["total_ms"] for k in stats["kernels"])
    mem_ms = sum(m["total_ms"] for m in stats["memops"].values())
    h2d_ms = sum(m["total_ms"] for op, m in stats["memops"].items() if "Host-to-Device" in op or "HtoD" in op)
    seconds = step_total / 1e3
    wait = host["data_wait"]["total_ms"] if "data_wait" in host else 0.0
    return {
        "source": "nsys", "steps": steps,
        "step": {"mean_ms": step_total / steps if steps else None,
                 "p50_ms": step.get("med_ms") if step else None, "p95_ms": None,
                 "basis": "host" if host_step else "phases"},  # without a step range: the phases' sum
        "phases": out_phases,
        "stall_fraction": wait / step_total if step_total else None,
        "what_if": {"no_data_wait_step_ms": (step_total - wait) / steps if steps else None,
                    "no_data_wait_speedup": step_total / (step_total - wait) if step_total > wait else None},
        "samples_per_s": samples_per_step * steps / seconds if samples_per_step and seconds > 0 else None,
        "gpu_busy_fraction": (kernel_ms + mem_ms) / step_total if step_total and stats["kernels"] else None,
        "kernel_ms": kernel_ms, "memop_ms": mem_ms, "h2d_ms": h2d_ms,
        "top_kernels": stats["kernels"][:top_kernels], "memops": dict(stats["memops"]),
        "notes": notes,
        "config": dict(config) if config is not None else {}, "files": dict(stats.get("files", {})),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m profiling.nsys PREFIX [--out FILE] [--samples-per-step N]``: table + JSON from nsys CSVs."""
    from .report import format_table, write_summary

    ap = argparse.ArgumentParser(prog="python -m profiling.nsys", description=__doc__.split("\n\n")[0])
    ap.add_argument("prefix", help="the --output prefix given to 'nsys stats' (files <prefix>_<report>.csv)")
    ap.add_argument("--out", help="summary JSON path (default: <prefix's folder>/nsys_summary.json)")
    ap.add_argument("--samples-per-step", type=int, default=None, help="batch size, for samples/s")
    args = ap.parse_args(argv)
    try:
        summary = summarize_nsys(load_stats(args.prefix), samples_per_step=args.samples_per_step)
    except ConfigError as e:
        print(f"profiling.nsys: error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary))
    if summary["gpu_busy_fraction"] is not None:
        print(f"GPU busy (kernels + memory operations) {100 * summary['gpu_busy_fraction']:.1f}% of step time")
    for k in summary["top_kernels"][:5]:
        print(f"  {k['total_ms']:10.2f} ms  {k['instances']:6d}x  {k['name'][:90]}")
    out = Path(args.out) if args.out else Path(args.prefix).parent / "nsys_summary.json"
    print(f"wrote {write_summary(summary, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
