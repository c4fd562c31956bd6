"""The human-readable reports of ``fastload inspect``: a store's summary, its read amplification and chunking
recommendation (one sample, or K samples per time window), one report per stream of a multi-stream config.

Why this exists apart from ``inspect.py``: :mod:`fastload.inspect` gathers the figures (:func:`fastload.inspect.describe`,
the amplification and recommendation, the streams) and writes them as JSON; the text they print as is laid out
here. :func:`format_summary` and :func:`format_streams` are public as ``fastload.inspect.format_summary`` and
``fastload.inspect.format_streams`` (re-exported there), as are ``_window_current`` and ``_window_totals``, which
the JSON uses too.

Run its tests with ``python -m pytest tests/fastload/test_inspect.py -q``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._amplification import Amplification, ChunkRecommendation

__all__ = ["format_summary", "format_streams"]


def _b(x: float | None) -> str:
    if x is None:
        return "?"
    for p in ("B", "kB", "MB", "GB", "TB"):
        if abs(x) < 1000 or p == "TB":
            return f"{x:.0f} {p}" if p == "B" else f"{x:.3g} {p}"
        x /= 1000.0
    return str(x)  # pragma: no cover


def _grid_line(g: Mapping[str, Any], res: str) -> str:
    """The ``grid`` line of the summary: a lat-lon grid's coordinates first .. last with the latitude order, a
    mesh's or curvilinear grid's min .. max (their node and row order says nothing about north and south)."""
    lat, lon = g["lat_range"], g["lon_range"]
    if g["kind"] == "mesh":
        return (f"mesh {g['shape'][1]} nodes, latitude {lat[0]:g} .. {lat[1]:g}, longitude {lon[0]:g} .. {lon[1]:g} "
                "(min .. max)")  # fmt: skip
    wrap = "global (x wraps)" if g["global"] else "regional (no wrap)"
    head = f"{g['kind']} {g['shape'][0]} x {g['shape'][1]}{res}, {wrap}"
    if g["lat_order"] is None:
        return f"{head}, latitude {lat[0]:g} .. {lat[1]:g}, longitude {lon[0]:g} .. {lon[1]:g} (min .. max)"
    return f"{head}, latitude {g['lat_order']} ({lat[0]:g} .. {lat[1]:g}), longitude {lon[0]:g} .. {lon[1]:g}"


def _table(rows: list[list[str]]) -> list[str]:
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows]


def format_summary(
    desc: Mapping[str, Any],
    amp: Amplification | None = None,
    rec: Mapping[str, ChunkRecommendation] | None = None,
    rec_amp: Amplification | None = None,
    config: Any = None,
    *,
    samples_per_window: int = 1,
) -> str:
    """The human-readable report of :func:`describe` (and, given a config, its amplification and recommendation).

    ``samples_per_window`` > 1: ``rec`` was computed for that many samples per time window; the recommendation's
    section then shows its and the current chunking's figures under that model (the read amplification section
    is still one sample read alone, and says so), and ``rec_amp`` is not used."""
    g, t = desc["grid"], desc["time"]
    res = (
        ""
        if g["resolution_deg"] is None
        else f", {g['resolution_deg'][0]:g} x {g['resolution_deg'][1]:g} deg"
    )
    lines = [
        f"store   {desc['path']}  ({desc['layout']} layout, zarr v{desc['zarr_format']})",
        f"grid    {_grid_line(g, res)}",
        *([f"NOTE    a global grid with its seam column repeated, read as regional: no sample box crosses the seam, "
           f"and a box that would is refused; {g['note']}"] if g.get("note") else []),
        "time    none (no array has a time axis)" if t is None
        else f"time    {t['start']} .. {t['end']}, step {t['step']}, {t['length']} steps",
        *([f"        median step {t['median_step']}; steps vary within half of it"
           + (f"; {len(t['gaps'])} gap(s), steps off it by half a step or more (sample windows that cross one "
              f"are never drawn; the loader logs how many): "
              + ", ".join(f"{g['from']} -> {g['to']} ({g['step']})" for g in t["gaps"][:5])
              + (", ..." if len(t["gaps"]) > 5 else "") if t["gaps"] else "")]
          if t is not None and t.get("step") == "irregular" and t.get("median_step") else []),
        f"fields  ({len(desc['fields'])})",
    ]  # fmt: skip
    rows = [["name", "levels", "level type", "units", "dtype", "array"]]
    for name, f in desc["fields"].items():
        lv = "-" if f["levels"] is None else "[" + ", ".join(f"{v:g}" for v in f["levels"]) + "]"
        rows.append([name + ("" if f["has_time"] else " (static)"), lv, f["level_type"] or "-", f["units"] or "-",
                     f["dtype"], f["array"]])  # fmt: skip
    lines += _table(rows)
    lines += [f"  {name}  not a field: {why}" for name, why in (desc.get("not_fields") or {}).items()]
    lines.append(f"arrays  ({len(desc['arrays'])})")
    rows = [["name", "shape", "chunks", "shard", "dtype", "codecs", "chunk", "stored", "decoded", "ratio"]]
    for name, a in desc["arrays"].items():
        ratio = "?" if a["compression_ratio"] is None else f"{a['compression_ratio']:.2f}x"
        rows.append([name, "x".join(map(str, a["shape"])), "x".join(map(str, a["chunks"])),
                     "-" if a["shard"] is None else "x".join(map(str, a["shard"])), a["dtype"],
                     " ".join(a["codecs"]) or "raw", _b(a["chunk_nbytes"]), _b(a["stored_bytes"]),
                     _b(a["decoded_bytes"]), ratio])  # fmt: skip
    lines += _table(rows)
    ratio = "?" if desc["compression_ratio"] is None else f"{desc['compression_ratio']:.2f}x"
    lines.append(
        f"total   stored {_b(desc['stored_bytes'])}, decoded {_b(desc['decoded_bytes'])}, ratio {ratio}"
    )
    k = int(samples_per_window)
    if amp is not None:
        head = "read amplification (expected bytes decoded per useful byte, one random sample)"
        if k > 1:
            head = ("read amplification (expected bytes decoded per useful byte, one random sample read alone: K = 1; "
                    f"K = {k} below)")
        if config is not None:
            head += f": box {list(config.box)} (t, lat, lon), time_step {config.time_step}, centers {config.centers}"
        lines += ["", head]
        rows = [
            ["array", "fields", "chunks", "chunks/sample", "decoded/sample", "useful/sample", "amplification"]
        ]
        for p in amp.arrays:
            rows.append([p.array, ",".join(p.fields), "x".join(map(str, p.chunks)), f"{p.chunks_per_sample:.2f}",
                         _b(p.decoded_bytes), _b(p.useful_bytes), f"{p.amplification:.2f}x"])  # fmt: skip
        lines += _table(rows)
        lines.append(f"  total: {amp.amplification:.2f}x ({_b(amp.decoded_bytes)} decoded per sample for "
                     f"{_b(amp.useful_bytes)} useful, {amp.chunks_per_sample:.1f} chunks)")  # fmt: skip
    if rec and k > 1:
        lines += _window_section(rec, amp, k)
    elif rec:
        lines += [
            "",
            "recommended chunking (minimises cost = decoded bytes + per-chunk overhead as bytes, per sample)",
        ]
        rows = [["array", "chunks", "chunk", "chunks/sample", "amplification (now)", "cost/sample (now)"]]
        for r in rec.values():
            rows.append([r.array, "x".join(map(str, r.chunks)), _b(r.chunk_nbytes), f"{r.chunks_per_sample:.2f}",
                         f"{r.amplification:.2f}x ({r.current_amplification:.2f}x)",
                         f"{_b(r.cost_bytes)} ({_b(r.current_cost_bytes)})"])  # fmt: skip
        lines += _table(rows)
        if rec_amp is not None:
            lines.append(f"  total with the recommendation: {rec_amp.amplification:.2f}x "
                         f"(fastload rechunk STORE OUT --config CFG writes it)")  # fmt: skip
    if amp is not None:
        lines += [f"WARNING: {w}" + ("" if k == 1 else " (one sample read alone, K = 1)") for w in amp.warnings]
    return "\n".join(lines)


def _window_current(rec: Mapping[str, ChunkRecommendation], amp: Amplification) -> dict[str, dict[str, float]]:
    """Per array, the current chunking's chunks and decoded bytes per sample under the model ``rec`` was made with
    (its ``current_amplification`` x the useful bytes; chunks: those bytes / the current chunk's bytes)."""
    parts = {p.array: p for p in amp.arrays}
    out = {}
    for name, r in rec.items():
        p = parts[name]
        decoded = r.current_amplification * p.useful_bytes
        out[name] = {"chunks_per_sample": decoded / p.chunk_nbytes, "decoded_bytes": decoded}
    return out


def _window_totals(rec: Mapping[str, ChunkRecommendation], amp: Amplification) -> tuple[float, float]:
    """(recommended, current) total amplification under the model ``rec`` was made with."""
    cur = _window_current(rec, amp)
    return (sum(r.decoded_bytes for r in rec.values()) / amp.useful_bytes,
            sum(c["decoded_bytes"] for c in cur.values()) / amp.useful_bytes)  # fmt: skip


def _window_section(rec: Mapping[str, ChunkRecommendation], amp: Amplification | None, k: int) -> list[str]:
    """The recommendation's report for ``k`` samples per time window: its figures and the current chunking's."""
    lines = [
        "",
        f"recommended chunking for K = {k} samples per time window (each chunk the window needs is read once for "
        f"its {k} samples; per sample = per window / {k}; minimises cost = decoded bytes + per-chunk overhead as "
        "bytes, per sample)",
    ]
    rows = [["array", "chunks (now)", "chunk (now)", "chunks/sample (now)", "decoded/sample (now)",
             "amplification (now)", "cost/sample (now)"]]  # fmt: skip
    cur = _window_current(rec, amp) if amp is not None else {}
    parts = {p.array: p for p in amp.arrays} if amp is not None else {}
    for r in rec.values():
        p, c = parts.get(r.array), cur.get(r.array)
        now = "?" if p is None else "x".join(map(str, p.chunks))
        rows.append([r.array, f"{'x'.join(map(str, r.chunks))} ({now})",
                     f"{_b(r.chunk_nbytes)} ({'?' if p is None else _b(p.chunk_nbytes)})",
                     f"{r.chunks_per_sample:.2f} ({'?' if c is None else format(c['chunks_per_sample'], '.2f')})",
                     f"{_b(r.decoded_bytes)} ({'?' if c is None else _b(c['decoded_bytes'])})",
                     f"{r.amplification:.2f}x ({r.current_amplification:.2f}x)",
                     f"{_b(r.cost_bytes)} ({_b(r.current_cost_bytes)})"])  # fmt: skip
    lines += _table(rows)
    if amp is not None:
        best, now = _window_totals(rec, amp)
        lines.append(f"  total with the recommendation, K = {k}: {best:.2f}x ({now:.2f}x now) (fastload rechunk "
                     f"STORE OUT --config CFG --samples-per-window {k} writes it)")  # fmt: skip
    return lines


def format_streams(reports: Sequence[Mapping[str, Any]]) -> str:
    """The human-readable report of :func:`inspect_streams`: one :func:`format_summary` per stream, then its
    chunking warnings."""
    parts = []
    for r in reports:
        head = f"== stream {r['name']} ({r['kind']}, time_rule {r['time_rule']}) =="
        body = format_summary(r["describe"], r["amplification"], r["recommendation"],
                              r["recommended_amplification"], r["config"] if r["amplification"] else None,
                              samples_per_window=r.get("samples_per_window", 1))
        warn = [f"WARNING: {m}" for m in r["chunking_warnings"]] or ["chunking: no stream chunking warning"]
        parts.append("\n".join([head, body, *warn]))
    return "\n\n".join(parts)
