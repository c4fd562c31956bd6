"""Reports from step records: a console table, ``summary.json``, ``steps.csv`` and a PNG; the loader-only variant.

Why this module exists: the numbers from :class:`profiling.timers.StepTimer` (or from Nsight Systems, through
:mod:`profiling.nsys`) are only useful when they answer "where does a step go, and would faster data help?"
in one screen and in files a run can be compared with later. :func:`summarize` turns per-step records into
per-phase mean/p50/p95/share, samples/s, bytes/s, the stall fraction (data wait over step time), MFU when
FLOPs per step and a peak are known, and a what-if (the speed-up if data wait were zero).
:func:`write_report` writes ``summary.json``, ``steps.csv`` and ``steps.png`` (per-step stacked time by phase,
and a timeline of a few steps). :func:`summarize_loader` / :func:`format_loader_table` do the same for the
loader alone (per-stage times, bytes stored/decoded/useful, cache hit rate; per stream for multi-stream loading).

How to run it::

    summary = summarize(timer.flush(), flops_per_step=f, peak_flops=peak_flops(torch.cuda.get_device_name()))
    print(format_table(summary))
    write_report("runs/profile", timer.flush(), summary)

Files are written to a temporary name and renamed when complete. The PNG is drawn on matplotlib's Agg canvas
without pyplot, so importing this module changes no global matplotlib state.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastload.errors import ConfigError

from .timers import PHASES, mfu

__all__ = [
    "EXTRA",
    "LOADER_STAGES",
    "MIN_STEPS_P95",
    "STREAM_STAGES",
    "summarize",
    "summarize_ranks",
    "format_table",
    "write_report",
    "write_summary",
    "write_steps_csv",
    "plot_steps",
    "machine_info",
    "loader_record",
    "summarize_loader",
    "format_loader_table",
    "format_sweep_table",
]

EXTRA = ("other", "idle")
"""Step time outside the timed phases: ``other`` (inside a step, between phases), ``idle`` (between steps)."""

LOADER_STAGES = ("plan", "fetch", "decode", "gather", "copy")
"""Loader worker stages (``copy``: a GPU loader's worker issuing the device copy and masks; 0 on the CPU);
``queue_wait`` (the consumer's wait for a ready batch) is reported beside them."""

STREAM_STAGES = ("fetch", "decode", "gather")
"""Worker stages counted per stream in multi-stream loading (planning is one pass over all streams)."""

MIN_STEPS_P95 = 20
"""Below this many steps a p95 is an interpolation between the largest few values: the report says so."""

_COLORS = {"data_wait": "#d62728", "h2d": "#ff7f0e", "forward": "#1f77b4", "backward": "#2ca02c",
           "optimizer": "#9467bd", "other": "#bcbd22", "idle": "#7f7f7f"}


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:  # (every timed step was empty: no statistics, rather than NumPy's NaN and warnings)
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None}
    return {"mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def machine_info() -> dict[str, Any]:
    """Python, OS, CPU count, and torch/CUDA/GPU where torch is importable."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    info["cuda_available"] = bool(torch.cuda.is_available())
    if info["cuda_available"]:
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
    return info


def summarize(records: Sequence[Mapping[str, Any]], *, phases: Sequence[str] = PHASES,
              flops_per_step: float | None = None, peak_flops: float | None = None,
              batch_size: int | None = None, peak_precision: str | None = None,
              samples_counted: bool | None = None, config: Mapping[str, Any] | None = None,
              machine: Mapping[str, Any] | None = None, source: str = "step_timer") -> dict[str, Any]:
    """Summarise per-step records (from :meth:`StepTimer.records`) into the report's numbers.

    A step whose batch held no sample (``samples`` 0 in a run whose other steps count samples: with
    ``loader.on_bad_chunk = "skip"`` every sample of its batch was skipped) trained on nothing: it is left out of
    the per-phase and per-step statistics, the what-if and MFU, which describe the steps that trained, and counted
    in ``empty_steps``. Samples/s, bytes/s and the stall fraction are over all timed steps' time (the empty steps'
    time, their data wait included, is time the run spent).

    Parameters
    ----------
    records : sequence of mapping
        Per-step records with ``step_ms``, ``<phase>_ms``, ``other_ms``, ``idle_ms``, ``samples`` and byte
        counters.
    phases : sequence of str
        The timed phases, in loop order.
    flops_per_step, peak_flops : float, optional
        Model FLOPs of a step on a full batch and the device's peak FLOP/s; MFU is reported when both are given.
    batch_size : int, optional
        The full batch ``flops_per_step`` was counted on: a step's FLOPs are scaled by its ``samples /
        batch_size`` (a batch partly skipped computes less). None: every trained step counts ``flops_per_step``.
    peak_precision : str, optional
        The precision ``peak_flops`` is for (``bf16``, ``tf32``, ``fp32``: :func:`profiling.timers.step_peak`),
        stored and printed beside MFU.
    samples_counted : bool, optional
        Whether the records' ``samples`` are counted (so that 0 means an empty batch). None: when some record has
        samples (a timer whose steps were all ended without ``samples`` counts every step as trained).
    config, machine : mapping, optional
        Stored as given (``machine`` defaults to :func:`machine_info`).
    source : str
        Where the times come from (``step_timer``, ``nsys``).

    Returns
    -------
    dict
        ``phases`` {name: {mean_ms, p50_ms, p95_ms, share}} (the timed phases, then ``other`` and ``idle``;
        shares are of the trained steps' time and add up to 1), ``step`` {mean_ms, p50_ms, p95_ms}, ``steps``
        (timed steps), ``trained_steps``, ``empty_steps`` {steps, total_ms, data_wait_ms}, ``samples``,
        ``samples_per_s``, ``stall_fraction``, ``bytes_read_per_s``, ``bytes_decoded_per_s``,
        ``read_amplification`` (bytes decoded / bytes used, after the decoded-chunk cache: its hits are not decoded
        again), ``flops_per_step``, ``peak_flops``, ``peak_precision``, ``batch_size``, ``mfu``,
        ``what_if``,
        ``notes`` (caveats the table prints: fewer than :data:`MIN_STEPS_P95` steps), ``idle_note`` (when the last
        step's idle is unmeasured, as in every run: not printed),
        ``config``, ``machine``, ``source``. Idle's mean/p50/p95 leave out records with ``idle_measured``
        False (the last step's gap is unknown); its share counts them (as 0).

    Raises
    ------
    ConfigError
        If there are no records (every step was a warm-up step) or a record lacks a phase.
    """
    if not records:
        raise ConfigError("report: no step records (were all steps warm-up steps? run more steps than warmup)")
    names = [*phases, *EXTRA]
    for key in ("step_ms", *(f"{p}_ms" for p in names)):
        if key not in records[0]:
            raise ConfigError(f"report: step records lack {key!r}; have {sorted(records[0])}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise ConfigError(f"report batch_size: expected an integer > 0, got {batch_size!r}")
    counted = any(int(r.get("samples", 0)) for r in records) if samples_counted is None else bool(samples_counted)
    trained = [r for r in records if int(r.get("samples", 0)) or not counted]
    empty = [r for r in records if counted and not int(r.get("samples", 0))]
    all_ms = float(sum(float(r["step_ms"]) for r in records))
    step = np.array([r["step_ms"] for r in trained], dtype=np.float64)
    total_ms = float(step.sum())  # the trained steps'
    out: dict[str, Any] = {"source": source, "steps": len(records), "trained_steps": len(trained),
                           "empty_steps": {"steps": len(empty),
                                           "total_ms": float(sum(float(r["step_ms"]) for r in empty)),
                                           "data_wait_ms": float(sum(float(r.get("data_wait_ms", 0.0))
                                                                     for r in empty))},
                           "step": _stats(step), "phases": {}}
    for p in names:
        v = [float(r[f"{p}_ms"]) for r in trained]
        share = sum(v) / total_ms if total_ms > 0 else None
        if p == "idle":  # a last step's gap is unknown (0): not a measured idle time, left out of its statistics
            v = [float(r["idle_ms"]) for r in trained if r.get("idle_measured", True)]
        out["phases"][p] = {**_stats(v), "share": share}
    out["notes"] = []
    if 0 < len(trained) < MIN_STEPS_P95:
        out["notes"].append(f"only {len(trained)} step(s) in the statistics: p95 is interpolated between the "
                            f"largest few values (give {MIN_STEPS_P95} or more timed steps for a p95 to trust)")
    if any(not r.get("idle_measured", True) for r in trained):  # every run's last step: summary.json only
        out["idle_note"] = ("the last step's idle (its gap to a next step) is unknown: left out of idle's "
                            "mean/p50/p95 (that step's time ends at its step_end)")
    seconds = all_ms / 1e3  # rates: over every timed step
    samples = int(sum(int(r.get("samples", 0)) for r in records))
    out["samples"] = samples
    out["samples_per_s"] = samples / seconds if seconds > 0 else 0.0
    out["stall_fraction"] = (sum(float(r.get("data_wait_ms", 0.0)) for r in records) / all_ms
                             if all_ms > 0 else 0.0)
    read = sum(int(r.get("bytes_read", 0)) for r in records)
    decoded = sum(int(r.get("bytes_decoded", 0)) for r in records)
    useful = sum(int(r.get("bytes_useful", 0)) for r in records)
    out["bytes_read_per_s"] = read / seconds if seconds > 0 else 0.0
    out["bytes_decoded_per_s"] = decoded / seconds if seconds > 0 else 0.0
    out["read_amplification"] = decoded / useful if useful > 0 else None
    out["flops_per_step"] = flops_per_step
    out["peak_flops"] = peak_flops
    out["peak_precision"] = peak_precision
    out["batch_size"] = batch_size
    out["mfu"] = None
    if flops_per_step and peak_flops and total_ms > 0:  # FLOPs done by the trained steps over their time
        done = sum(flops_per_step * (int(r.get("samples", 0)) / batch_size if batch_size and counted else 1.0)
                   for r in trained)
        out["mfu"] = mfu(done / len(trained), total_ms / len(trained) / 1e3, peak_flops)
    wait = sum(float(r.get("data_wait_ms", 0.0)) for r in trained)
    no_wait = total_ms - wait
    out["what_if"] = {"no_data_wait_step_ms": no_wait / len(trained) if trained else None,
                      "no_data_wait_speedup": total_ms / no_wait if no_wait > 0 else None}
    out["config"] = dict(config) if config is not None else {}
    out["machine"] = dict(machine) if machine is not None else machine_info()
    return out


def summarize_ranks(per_rank: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The run's numbers from every rank's timed step records (rank order; ``step``, ``step_ms``, ``data_wait_ms``,
    ``samples``), for data-parallel training.

    A rank whose batch came fast waits for a slow rank inside DDP's collectives (the forward's buffer broadcast,
    the backward's gradient all-reduce), so its own report books that wait as forward/backward and shows no stall.
    The run's stall takes, per step, the longest data wait of any rank: ``stall_fraction`` = sum over steps of the
    ranks' largest ``data_wait_ms`` over the sum of their largest ``step_ms`` (steps every rank timed).
    ``samples_per_s`` is every rank's samples over the slowest rank's timed seconds (not a sum of per-rank rates).
    ``mean_max_data_wait_ms`` and ``mean_max_step_ms`` are the same per-step maxima averaged over those steps: the
    run's data wait and step time per step, which :func:`profiling.stall.stall_split` compares between data modes.

    Returns
    -------
    dict
        ``world_size``, ``steps`` (steps every rank timed), ``samples``, ``seconds`` (the slowest rank's),
        ``samples_per_s``, ``stall_fraction``, ``mean_max_data_wait_ms``, ``mean_max_step_ms`` (None without a
        step every rank timed), ``data_wait_ms_by_rank`` (each rank's total over those steps),
        ``stalled_rank_steps`` (per rank, the steps whose data wait was the longest, alone and above 0).

    Raises
    ------
    ConfigError
        For no ranks, or a rank without records.
    """
    if not per_rank or any(not recs for recs in per_rank):
        raise ConfigError(f"run summary: every rank needs timed step records; got {[len(r) for r in per_rank]} "
                          f"records by rank")
    by_rank = [{int(r["step"]): r for r in recs} for recs in per_rank]
    common = sorted(set.intersection(*(set(d) for d in by_rank)))
    wait_max = step_max = 0.0
    stalled = [0] * len(by_rank)
    for st in common:
        waits = [float(d[st].get("data_wait_ms", 0.0)) for d in by_rank]
        wait_max += max(waits)
        step_max += max(float(d[st]["step_ms"]) for d in by_rank)
        top = max(waits)
        if top > 0 and waits.count(top) == 1:  # a step the ranks waited alike (or not at all) blames none
            stalled[waits.index(top)] += 1
    seconds = max(sum(float(r["step_ms"]) for r in recs) for recs in per_rank) / 1e3
    samples = int(sum(int(r.get("samples", 0)) for recs in per_rank for r in recs))
    return {"world_size": len(per_rank), "steps": len(common), "samples": samples, "seconds": seconds,
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "stall_fraction": wait_max / step_max if step_max > 0 else 0.0,
            "mean_max_data_wait_ms": wait_max / len(common) if common else None,
            "mean_max_step_ms": step_max / len(common) if common else None,
            "data_wait_ms_by_rank": [sum(float(d[st].get("data_wait_ms", 0.0)) for st in common) for d in by_rank],
            "stalled_rank_steps": stalled}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.1f} MB/s"


def format_table(summary: Mapping[str, Any]) -> str:
    """The console table: per phase mean/p50/p95 (ms) and share; samples/s, stall fraction, MFU, what-if."""
    based = any("basis" in s for s in summary["phases"].values())  # nsys: each phase's clock (host, gpu)
    lines = [f"{'phase':<12}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'share':>9}" + ("  basis" if based else "")]
    for name, s in summary["phases"].items():
        share = s.get("share")
        basis = {"gpu_projected": "gpu"}.get(s.get("basis"), s.get("basis") or "")
        lines.append(f"{name:<12}{_fmt(s.get('mean_ms')):>10}{_fmt(s.get('p50_ms')):>10}"
                     f"{_fmt(s.get('p95_ms')):>10}{_fmt(None if share is None else 100 * share, '.1f'):>8}%"
                     + (f"  {basis}" if based else ""))
    st = summary.get("step")
    if st:
        lines.append(f"{'step':<12}{_fmt(st.get('mean_ms')):>10}{_fmt(st.get('p50_ms')):>10}"
                     f"{_fmt(st.get('p95_ms')):>10}{'100.0':>8}%" + (f"  {st.get('basis', '')}" if based else ""))
    lines.append("")
    sps = summary.get("samples_per_s")
    stall = summary.get("stall_fraction")
    lines.append(f"steps {summary.get('steps', '-')}   samples/s {_fmt(sps, '.1f')}   "
                 f"stall fraction {_fmt(None if stall is None else 100 * stall, '.1f')}%   "
                 f"read {_rate(summary.get('bytes_read_per_s'))}   decoded {_rate(summary.get('bytes_decoded_per_s'))}")
    empty = summary.get("empty_steps") or {}
    if empty.get("steps"):
        lines.append(f"empty steps: {empty['steps']} of {summary.get('steps', '-')} timed steps had no sample (bad "
                     f"chunks, on_bad_chunk = 'skip'; {empty['total_ms']:.1f} ms, {empty['data_wait_ms']:.1f} ms of it data "
                     f"wait): left out of the table, MFU and what-if; samples/s, stall and read rates include them")
    if summary.get("mfu") is not None:
        which = f"{summary['peak_precision']} peak" if summary.get("peak_precision") else "peak"
        lines.append(f"MFU {100 * summary['mfu']:.1f}%  ({summary['flops_per_step']:.3g} FLOP/step, "
                     f"{which} {summary['peak_flops'] / 1e12:g} TFLOP/s)")
    for note in summary.get("notes") or ():
        lines.append(f"note: {note}")
    wi = summary.get("what_if") or {}
    if wi.get("no_data_wait_speedup") is not None and st and st.get("mean_ms") is not None:
        lines.append(f"what-if: with zero data wait a step would take {wi['no_data_wait_step_ms']:.2f} ms instead "
                     f"of {st['mean_ms']:.2f} ms ({wi['no_data_wait_speedup']:.2f}x faster)")
    return "\n".join(lines)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a summary as indented JSON (temporary file, then rename)."""
    text = json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n"
    return _atomic_write(Path(path), lambda p: p.write_text(text))


def write_steps_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as CSV, one row per step; columns in first-seen order, None as an empty cell."""
    columns: list[str] = []
    for r in records:
        columns.extend(k for k in r if k not in columns)

    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            for r in records:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})

    return _atomic_write(Path(path), write)


def plot_steps(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
               phases: Sequence[str] = PHASES, timeline_steps: int = 4, title: str | None = None) -> Path:
    """PNG: per-step stacked time by phase (top) and a timeline of the first ``timeline_steps`` steps (bottom).

    Steps are labelled with the records' ``step`` (the loop writes the console's numbering, from 1). The PNG's
    ``Title`` and ``Description`` text chunks hold the two panels' titles, with the steps shown.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [*phases, *EXTRA]
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, tl = fig.subplots(2, 1, height_ratios=[3, 2])
    steps = np.array([r["step"] for r in records])
    bottom = np.zeros(len(records))
    for p in names:
        v = np.array([float(r.get(f"{p}_ms", 0.0)) for r in records])
        if v.any():
            ax.bar(steps, v, bottom=bottom, width=0.85, label=p, color=_COLORS.get(p))
            bottom += v
    if bottom.size and bottom.max() > 0:
        ax.set_ylim(0, 1.25 * bottom.max())  # room for the legend above the bars
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("time (ms)")
    span = f" (steps {steps[0]}-{steps[-1]})" if len(records) > 1 else (f" (step {steps[0]})" if len(records) else "")
    top = title or f"time per step by phase{span}"
    ax.set_title(top)
    ax.legend(loc="upper right", fontsize=8, ncols=min(len(names), 7))
    shown = records[:timeline_steps]
    lanes = [p for p in phases if any(r.get(f"{p}_at_ms") is not None for r in shown)]
    for i, p in enumerate(lanes):
        bars = [(r["t0_ms"] + r[f"{p}_at_ms"], r[f"{p}_ms"]) for r in shown if r.get(f"{p}_at_ms") is not None]
        tl.broken_barh(bars, (i - 0.4, 0.8), color=_COLORS.get(p))
    for r in shown:
        tl.axvline(r["t0_ms"], color="k", lw=0.5, ls=":")
    tl.set_yticks(range(len(lanes)), lanes)
    tl.invert_yaxis()  # loop order top to bottom
    tl.set_xlabel("time since first recorded step (ms); dotted lines: step starts")
    bottom_title = ("timeline" if not shown else f"timeline of step {shown[0]['step']}" if len(shown) == 1
                    else f"timeline of steps {shown[0]['step']}-{shown[-1]['step']}")
    tl.set_title(bottom_title)
    meta = {"Title": top, "Description": bottom_title}
    return _atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, metadata=meta))


def write_report(out_dir: str | os.PathLike[str], records: Sequence[Mapping[str, Any]],
                 summary: Mapping[str, Any] | None = None, *, phases: Sequence[str] = PHASES,
                 **summarize_kwargs: Any) -> dict[str, Path]:
    """Write ``summary.json``, ``steps.csv`` and ``steps.png`` into ``out_dir``; return their paths by kind."""
    out = Path(out_dir)
    if summary is None:
        summary = summarize(records, phases=phases, **summarize_kwargs)
    return {"summary": write_summary(summary, out / "summary.json"),
            "steps": write_steps_csv(records, out / "steps.csv"),
            "plot": plot_steps(records, out / "steps.png", phases=phases)}


# -- loader-only ---------------------------------------------------------------------------------------------


def loader_record(stats: Any) -> dict[str, Any]:
    """One batch's loader counters (``fastload.reader.IOStats`` or its ``as_dict()``) as a loader record.

    Seconds (``plan_s``, ``fetch_s``, ``decode_s``, ``gather_s``, ``wait_s``) become ``<stage>_ms`` and
    ``queue_wait_ms``; ``hits``/``misses`` become ``cache_hits``/``cache_misses``; byte counters and samples
    are kept.
    """
    d = stats if isinstance(stats, Mapping) else {k: getattr(stats, k) for k in dir(stats)
                                                  if not k.startswith("_") and not callable(getattr(stats, k))}
    rec: dict[str, Any] = {f"{s}_ms": 1e3 * float(d.get(f"{s}_s", 0.0)) for s in LOADER_STAGES}
    rec["queue_wait_ms"] = 1e3 * float(d.get("wait_s", 0.0))
    rec["samples"] = int(d.get("samples", 0))
    for k in ("bytes_stored", "bytes_decoded", "bytes_useful"):
        rec[k] = int(d.get(k, 0))
    rec["cache_hits"] = int(d.get("hits", 0))
    rec["cache_misses"] = int(d.get("misses", 0))
    for name, sd in sorted((d.get("streams") or {}).items()):  # multi-stream loading: flat per-stream columns
        sd = sd if isinstance(sd, Mapping) else dataclasses.asdict(sd)
        for stage in STREAM_STAGES:
            rec[f"stream.{name}.{stage}_ms"] = 1e3 * float(sd.get(f"{stage}_s", 0.0))
        for k in ("bytes_stored", "bytes_decoded", "bytes_useful"):
            rec[f"stream.{name}.{k}"] = int(sd.get(k, 0))
        rec[f"stream.{name}.cache_hits"] = int(sd.get("hits", 0))
        rec[f"stream.{name}.cache_misses"] = int(sd.get("misses", 0))
    return rec


def _stream_summary(records: Sequence[Mapping[str, Any]], wall_s: float) -> dict[str, Any]:
    """Per stream (from the ``stream.<name>.<counter>`` columns of :func:`loader_record`): stage seconds and
    shares of the stream's worker time, bytes per second, read amplification, cache hit rate, and the stream's
    share of all decoded bytes."""
    names = sorted({k.split(".")[1] for r in records for k in r if k.startswith("stream.")})
    out: dict[str, Any] = {}
    all_decoded = sum(int(r.get(f"stream.{n}.bytes_decoded", 0)) for r in records for n in names)
    for n in names:
        tot = {k: sum(float(r.get(f"stream.{n}.{k}", 0)) for r in records)
               for k in (*(f"{s}_ms" for s in STREAM_STAGES), "bytes_stored", "bytes_decoded", "bytes_useful",
                         "cache_hits", "cache_misses")}
        worker = sum(tot[f"{s}_ms"] for s in STREAM_STAGES)
        lookups = tot["cache_hits"] + tot["cache_misses"]
        out[n] = {
            "stages": {s: {"total_s": tot[f"{s}_ms"] / 1e3, "share": tot[f"{s}_ms"] / worker if worker else 0.0}
                       for s in STREAM_STAGES},
            **{f"{k}_per_s": tot[k] / wall_s for k in ("bytes_stored", "bytes_decoded", "bytes_useful")},
            "read_amplification": tot["bytes_decoded"] / tot["bytes_useful"] if tot["bytes_useful"] else None,
            "cache_hit_rate": tot["cache_hits"] / lookups if lookups else None,
            "chunks_decoded": int(tot["cache_misses"]),
            "decoded_share": tot["bytes_decoded"] / all_decoded if all_decoded else None,
        }
    return out


def summarize_loader(records: Sequence[Mapping[str, Any]], *, wall_s: float,
                     config: Mapping[str, Any] | None = None,
                     machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise per-batch loader counters.

    Parameters
    ----------
    records : sequence of mapping
        One per batch (:func:`loader_record` makes one from the loader's ``IOStats``): ``<stage>_ms`` for each of :data:`LOADER_STAGES` (time summed over the worker threads
        that did the batch's work), ``queue_wait_ms`` (consumer wait), ``samples``, ``bytes_stored``,
        ``bytes_decoded``, ``bytes_useful``, ``cache_hits``, ``cache_misses``.
    wall_s : float
        Wall-clock seconds the batches took, first request to last batch.

    Returns
    -------
    dict
        ``stages`` {name: {mean_ms, p50_ms, p95_ms, total_s, share}} (share of summed worker-stage time; for
        ``queue_wait`` the share of wall time), ``batches``, ``samples``, ``samples_per_s``,
        ``bytes_{stored,decoded,useful}_per_s``, ``read_amplification`` (decoded / useful after the decoded-chunk
        cache: only the chunks decoded, its misses, count, so it is below 1 once the cache serves most chunks),
        ``compression_ratio`` (decoded / stored), ``cache_hit_rate``, ``wall_s``, ``config``, ``machine``; with
        per-stream columns (multi-stream loading), ``streams`` {name: {stages {fetch, decode, gather: {total_s,
        share}}, bytes_{stored,decoded,useful}_per_s, read_amplification, cache_hit_rate, chunks_decoded,
        decoded_share}}.
    """
    if not records:
        raise ConfigError("loader report: no batch records")
    if not wall_s > 0:
        raise ConfigError(f"loader report: wall_s must be > 0, got {wall_s!r}")
    stages: dict[str, Any] = {}
    worker_total = sum(float(r.get(f"{s}_ms", 0.0)) for r in records for s in LOADER_STAGES)
    for s in (*LOADER_STAGES, "queue_wait"):
        v = [float(r.get(f"{s}_ms", 0.0)) for r in records]
        total = sum(v)
        share = total / (wall_s * 1e3) if s == "queue_wait" else (total / worker_total if worker_total else 0.0)
        stages[s] = {**_stats(v), "total_s": total / 1e3, "share": share}
    tot = {k: sum(int(r.get(k, 0)) for r in records)
           for k in ("samples", "bytes_stored", "bytes_decoded", "bytes_useful", "cache_hits", "cache_misses")}
    lookups = tot["cache_hits"] + tot["cache_misses"]
    streams = _stream_summary(records, wall_s)
    return {
        **({"streams": streams} if streams else {}),
        "source": "loader", "batches": len(records), "samples": tot["samples"], "wall_s": wall_s,
        "stages": stages, "samples_per_s": tot["samples"] / wall_s,
        "bytes_stored_per_s": tot["bytes_stored"] / wall_s, "bytes_decoded_per_s": tot["bytes_decoded"] / wall_s,
        "bytes_useful_per_s": tot["bytes_useful"] / wall_s,
        "read_amplification": tot["bytes_decoded"] / tot["bytes_useful"] if tot["bytes_useful"] else None,
        "compression_ratio": tot["bytes_decoded"] / tot["bytes_stored"] if tot["bytes_stored"] else None,
        "cache_hit_rate": tot["cache_hits"] / lookups if lookups else None,
        "config": dict(config) if config is not None else {},
        "machine": dict(machine) if machine is not None else machine_info(),
    }


def format_loader_table(summary: Mapping[str, Any]) -> str:
    """Console table of :func:`summarize_loader`: per stage mean/p50/p95 per batch, total, share; then rates."""
    lines = [f"{'stage':<12}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'total s':>10}{'share':>9}"]
    for name, s in summary["stages"].items():
        label = "queue_wait*" if name == "queue_wait" else name
        lines.append(f"{label:<12}{s['mean_ms']:>10.2f}{s['p50_ms']:>10.2f}{s['p95_ms']:>10.2f}"
                     f"{s['total_s']:>10.3f}{100 * s['share']:>8.1f}%")
    lines.append("(stage shares: of summed worker time; *queue_wait: consumer wait, share of wall time)")
    lines.append("")
    ra, cr, hit = summary.get("read_amplification"), summary.get("compression_ratio"), summary.get("cache_hit_rate")
    lines.append(f"batches {summary['batches']}   samples/s {summary['samples_per_s']:.1f}   "
                 f"wall {summary['wall_s']:.2f} s   cache hit rate "
                 f"{'-' if hit is None else f'{100 * hit:.1f}%'}")
    lines.append(f"stored {_rate(summary['bytes_stored_per_s'])}   decoded {_rate(summary['bytes_decoded_per_s'])}"
                 f"   useful {_rate(summary['bytes_useful_per_s'])}   read amplification "
                 f"{_fmt(ra)}x after the cache   compression {_fmt(cr)}x")
    lines.append(f"(read amplification{' and ampl.' if summary.get('streams') else ''}: decoded / useful bytes; "
                 "chunks the cache served are not decoded again, so it falls below 1 as the cache fills; "
                 "fastload inspect's is one sample read alone, no cache)")
    if summary.get("streams"):
        lines.append("")
        lines.append(f"{'stream':<12}{'fetch s':>9}{'decode s':>10}{'gather s':>10}{'decoded':>14}{'useful':>14}"
                     f"{'ampl.':>8}{'hit rate':>10}{'of decoded':>12}")
        for name, st in summary["streams"].items():
            hit, share = st.get("cache_hit_rate"), st.get("decoded_share")
            lines.append(f"{name:<12}" + "".join(f"{st['stages'][k]['total_s']:>{w}.3f}"
                                                 for k, w in (("fetch", 9), ("decode", 10), ("gather", 10)))
                         + f"{_rate(st['bytes_decoded_per_s']):>14}{_rate(st['bytes_useful_per_s']):>14}"
                         + f"{_fmt(st.get('read_amplification')) + 'x':>8}"
                         + f"{'-' if hit is None else f'{100 * hit:.1f}%':>10}"
                         + f"{'-' if share is None else f'{100 * share:.1f}%':>12}")
    return "\n".join(lines)


def format_sweep_table(rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """One line per swept setting: ``(settings, summarize_loader(...))`` pairs -> samples/s, wait, bytes/s."""
    if not rows:
        return "(empty sweep)"
    keys = list(rows[0][0])
    head = "".join(f"{k:>10}" for k in keys)
    lines = [f"{head}{'samples/s':>12}{'queue wait':>12}{'decoded':>14}{'hit rate':>10}"]
    for settings, s in rows:
        hit = s.get("cache_hit_rate")
        lines.append("".join(f"{settings[k]!s:>10}" for k in keys)
                     + f"{s['samples_per_s']:>12.1f}{100 * s['stages']['queue_wait']['share']:>11.1f}%"
                     + f"{_rate(s['bytes_decoded_per_s']):>14}{'-' if hit is None else f'{100 * hit:.1f}%':>10}")
    return "\n".join(lines)
