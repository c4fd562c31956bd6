"""Describe a store and what a sampling config would cost on it: ``fastload inspect STORE [--config CFG]``.

Why this module exists: the reference setup decoded about 6 GB per batch to cut out 96 small boxes, because the
store was chunked as whole globes. This tool shows, before anyone trains, the schema and chunking of every array,
stored vs decoded bytes, and, given a config, the *read amplification* (expected bytes decoded per useful byte for
one random sample) and a recommended chunking that minimises it plus a per-chunk overhead. The arithmetic (exact,
checked against a Monte-Carlo count in the tests) lives in :mod:`fastload._amplification` and is re-exported here;
the text reports (:func:`format_summary`, :func:`format_streams`) are laid out in :mod:`fastload._inspect_format`,
also re-exported here.

A multi-stream config (``[streams.NAME]`` tables) is inspected stream by stream: every stream's store, the read
amplification and recommendation of the first (lat-lon, box-sampled) stream, and for every stream the chunking
warnings the loader would give (:func:`fastload._stream_chunks.warn_chunking`: one sample decoding most of an
array's record, with a recommended chunking).

``--samples-per-window K`` (the Loader's ``samples_per_window``: K samples share a time window and each chunk the
window needs is read once for all of them) makes the recommendation, and its figures and the current chunking's
next to it, those of that plan (:func:`recommend_chunks`); the read amplification section stays the K = 1 figure
of one sample read alone, and the report says which K each figure is for.

Run::

    fastload inspect era5.zarr
    fastload inspect era5.zarr --config sampling.toml --json
    fastload inspect era5.zarr --config sampling.toml --samples-per-window 16   # K samples share a time window
    fastload inspect --config multi.toml            # every stream; or name one stream's store first
    fastload inspect era5.zarr --codecs             # which codec reads+decodes fastest here (measured)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._amplification import (
    DECODE_BPS,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    OVERHEAD_S,
    Amplification,
    ArrayAmplification,
    ChunkRecommendation,
    distinct_per_window,
    expected_chunks,
    read_amplification,
    recommend_chunks,
    touch_probabilities,
)
from ._cli_options import add_backend_option, add_storage_option, parse_storage_options
from ._inspect_format import (  # noqa: F401
    _b,
    _grid_line,
    _table,
    _window_current,
    _window_section,
    _window_totals,
    format_streams,
    format_summary,
)
from .errors import ConfigError, FastloadError, StoreError
from .store.grid import repeats_seam, seam_hint

log = logging.getLogger("fastload")

__all__ = [
    "Amplification",
    "ArrayAmplification",
    "ChunkRecommendation",
    "expected_chunks",
    "read_amplification",
    "recommend_chunks",
    "describe",
    "format_summary",
    "inspect_streams",
    "format_streams",
    "main",
    "OVERHEAD_S",
    "DECODE_BPS",
    "MIN_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "distinct_per_window",
    "touch_probabilities",
]


# -- schema summary ------------------------------------------------------------------------------------------------
_META_FILES = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}


def _stored_bytes(store: Any, name: str, remote: bool) -> tuple[int, int] | None:
    """(bytes, objects) of an array's stored chunks or shards, from a listing with sizes (no object is read); None
    when unknown (remote and not asked)."""
    src = store.source
    if not (remote or os.path.isdir(src.describe(name))):  # local: the file system's sizes, always
        return None
    total = files = 0
    try:
        for key, size in src.walk(name):
            if key.rsplit("/", 1)[-1] not in _META_FILES:
                total += size
                files += 1
    except (OSError, StoreError) as e:  # a store that cannot be listed (a public bucket without LIST): unknown
        log.warning("inspect: stored bytes of %r unknown: %s", name, e)
        return None
    return total, files


def _codec_str(c: Mapping[str, Any]) -> str:
    name = c.get("id") or c.get("name") or "?"
    conf = c.get("configuration", c) or {}
    if name == "sharding_indexed":
        return "sharding_indexed[" + " ".join(_codec_str(i) for i in conf.get("codecs", ())) + "]"
    keys = [k for k in ("cname", "clevel", "shuffle", "level", "endian", "order") if k in conf]
    args = ",".join(f"{conf[k]}" for k in keys)
    return f"{name}({args})" if args else str(name)


def _gaps(t: np.ndarray, unit: str) -> dict[str, Any]:
    """An irregular time axis: its median step and each gap, a step off it by half a step or more (to the nearest
    whole step, as the loader judges windows: :func:`fastload._stream_time.first_irregular`), as ``{"index", "from",
    "to", "step"}``."""
    from ._stream_time import _on_cadence, median_step

    med = median_step(t)
    if med is None or int(med.astype(np.int64)) <= 0:
        return {"median_step": None, "gaps": []}
    ti = t.astype(np.int64)
    bad = np.flatnonzero(~_on_cadence(np.diff(ti), int(med.astype(np.int64)), 1))
    return {"median_step": _timedelta_str(int(med.astype(np.int64))),
            "gaps": [{"index": int(i), "from": str(t[i].astype(f"datetime64[{unit}]")),
                      "to": str(t[i + 1].astype(f"datetime64[{unit}]")), "step": _timedelta_str(int(ti[i + 1] - ti[i]))}
                     for i in bad.tolist()]}  # fmt: skip


def _timedelta_str(ns: int) -> str:
    for unit, size in (("D", 86400e9), ("h", 3600e9), ("min", 60e9), ("s", 1e9)):
        if ns % size == 0:
            return f"{int(ns // size)}{unit}"
    return f"{ns}ns"


def describe(store: Any, *, sizes: str = "auto") -> dict[str, Any]:
    """A JSON-able summary of a store: layout, grid, time axis, fields, and per array chunks, codecs and bytes.

    Parameters
    ----------
    store : Store
        An open store.
    sizes : {"auto", "always", "never"}
        Stored bytes: from the file system for local stores ("auto"), also from a listing of a remote store's
        objects with their sizes ("always"; reads none of them), or not at all ("never").

    Notes
    -----
    ``grid``: a lat-lon grid's ``lat_range``/``lon_range`` are its first and last coordinates (store order, with
    ``lat_order``); a mesh's or curvilinear grid's are min and max, and their ``lat_order`` is None (nodes and rows
    run in no latitude order), as is a mesh's ``global``. ``repeated_seam``: the longitudes are a 360-degree circle
    whose first column is repeated at the end (0 .. 360 inclusive), which is read as regional; ``note`` then says
    how to make the grid periodic.
    """
    if sizes not in ("auto", "always", "never"):
        raise ConfigError(f"sizes: expected 'auto', 'always' or 'never', got {sizes!r}")
    g = store.grid
    lat, lon = np.asarray(g.lat, np.float64), np.asarray(g.lon, np.float64)
    if g.kind == "latlon":  # 1-D axes: first .. last, in store order
        lat_range, lon_range = [float(lat[0]), float(lat[-1])], [float(lon[0]), float(lon[-1])]
    else:  # a mesh's nodes and a curvilinear grid's rows are in no lat/lon order: min .. max
        lat_range, lon_range = [float(lat.min()), float(lat.max())], [float(lon.min()), float(lon.max())]
    seam = g.kind == "latlon" and not g.periodic_x and repeats_seam(lon)
    grid: dict[str, Any] = {
        "kind": g.kind, "shape": [int(g.ny), int(g.nx)],
        "global": None if g.kind == "mesh" else bool(g.periodic_x),
        "lat_order": None if g.kind != "latlon" else "north-to-south" if g.lat_descending else "south-to-north",
        "lat_range": lat_range, "lon_range": lon_range, "resolution_deg": None,
        "repeated_seam": seam, "note": seam_hint(lon, g.dims[1]) if seam else None,
    }  # fmt: skip
    if g.kind == "latlon" and lat.size > 1 and lon.size > 1:
        grid["resolution_deg"] = [
            float(np.median(np.abs(np.diff(lat)))),
            float(np.median(np.abs(np.diff(lon)))),
        ]
    time = None
    if store.time is not None and len(store.time):
        t = np.asarray(store.time, "datetime64[ns]")
        d = np.diff(t).astype(np.int64)
        step = None if d.size == 0 else (_timedelta_str(int(d[0])) if np.all(d == d[0]) else "irregular")
        unit = "s" if np.all(t.astype(np.int64) % 10**9 == 0) else "ns"
        time = {"start": str(t[0].astype(f"datetime64[{unit}]")), "end": str(t[-1].astype(f"datetime64[{unit}]")),
                "step": step, "length": int(t.size), "median_step": step, "gaps": []}  # fmt: skip
        if step == "irregular":
            time.update(_gaps(t, unit))
    fields = {
        name: {
            "array": f.array, "levels": None if f.levels is None else np.asarray(f.levels).tolist(),
            "level_type": f.level_type, "units": f.units, "dtype": str(np.dtype(f.dtype)), "has_time": bool(f.has_time),
        }
        for name, f in store.fields.items()
    }  # fmt: skip
    arrays = {}
    for name, a in store.arrays.items():
        decoded = math.prod(a.shape) * a.dtype.itemsize
        got = None if sizes == "never" else _stored_bytes(store, name, remote=sizes == "always")
        arrays[name] = {
            "dims": None if a.dims is None else list(a.dims), "shape": list(a.shape), "chunks": list(a.chunks),
            "shard": None if a.shard is None else list(a.shard), "dtype": str(a.dtype),
            "codecs": [_codec_str(c) for c in a.codecs], "chunk_nbytes": int(a.chunk_nbytes),
            "n_chunks": int(math.prod(a.grid_shape)), "decoded_bytes": int(decoded),
            "stored_bytes": None if got is None else got[0], "stored_objects": None if got is None else got[1],
            "compression_ratio": None if not got or not got[0] else decoded / got[0],
        }  # fmt: skip
    stored = [a["stored_bytes"] for a in arrays.values()]
    decoded_total = sum(a["decoded_bytes"] for a in arrays.values())
    stored_total = None if any(s is None for s in stored) else sum(stored)
    return {
        "path": str(store.path), "layout": store.layout, "zarr_format": int(store.zarr_format), "grid": grid,
        "time": time, "fields": fields, "not_fields": dict(getattr(store, "not_fields", {})), "arrays": arrays,
        "decoded_bytes": int(decoded_total),
        "stored_bytes": stored_total,
        "compression_ratio": None if not stored_total else decoded_total / stored_total,
    }  # fmt: skip


def inspect_streams(config: Any, store: str | None = None, *, storage_options: Mapping[str, Any] | None = None,
                    sizes: str = "auto", overhead_bytes: float = OVERHEAD_S * DECODE_BPS,
                    samples_per_window: int = 1, backend: str = "auto") -> list[dict[str, Any]]:
    """Inspect the streams of a multi-stream sampling config (all of them, or the one whose store is ``store``).

    ``samples_per_window``: the Loader's setting (its windows are placed on the reference stream), for the
    reference stream's recommendation (:func:`recommend_chunks`).

    Returns
    -------
    list of dict
        Per stream: ``name``, ``kind`` (``reference``, ``box`` or ``mesh``), ``time_rule``, ``config`` (the
        stream's share of the config), ``describe`` (:func:`describe` of its store), ``amplification``,
        ``recommendation``, ``recommended_amplification`` (the reference stream's; None for the others: their
        samples are mapped regions, not index boxes; with ``samples_per_window`` > 1, None: the recommendation
        carries the window figures), ``samples_per_window`` and ``chunking_warnings`` (the loader's messages about
        this stream's chunking).

    Raises
    ------
    ConfigError
        ``store`` is none of the streams' stores, or the streams do not fit together (as the Loader would say).
    """
    import warnings

    from ._stream_chunks import warn_chunking
    from .streams import ChunkingWarning, MultiStream

    paths = {st.name: st.path for st in config.streams}
    chosen = None
    if store is not None:
        want = store if "://" in store else os.path.abspath(store)
        chosen = [n for n, p in paths.items() if (p if "://" in p else os.path.abspath(p)) == want]
        if not chosen:
            raise ConfigError(f"{store!r} is none of the config's stream stores {paths}; give one of them, or no "
                              f"store to inspect every stream")
    ms = MultiStream(config, storage_options=storage_options, warn_chunking=False, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChunkingWarning)
        messages = warn_chunking(ms)
    out = []
    for st in ms.streams:
        if chosen is not None and st.name not in chosen:
            continue
        amp = rec = rec_amp = None
        if st.kind == "reference":
            amp = read_amplification(st.store, st.config)
            rec, rec_amp = _recommend(st.store, st.config, overhead_bytes, samples_per_window)
        out.append({"name": st.name, "kind": st.kind, "time_rule": st.rule, "config": st.config,
                    "describe": describe(st.store, sizes=sizes), "amplification": amp, "recommendation": rec,
                    "recommended_amplification": rec_amp, "samples_per_window": int(samples_per_window),
                    "chunking_warnings": [m for m in messages if m.startswith(f"stream {st.name!r}:")]})
    return out


def _streams_json(config: Any, reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    streams = {}
    for r in reports:
        d = dict(r["describe"])
        d.update(kind=r["kind"], time_rule=r["time_rule"], chunking_warnings=list(r["chunking_warnings"]))
        if r["amplification"] is not None:
            d.update(_recommendation_json(r["amplification"], r["recommendation"], r["recommended_amplification"],
                                          r.get("samples_per_window", 1)))
        streams[r["name"]] = d
    return {"config": config.to_dict(), "streams": streams}


def _recommend(store: Any, config: Any, overhead_bytes: float,
               samples_per_window: int) -> tuple[dict[str, ChunkRecommendation], Amplification | None]:
    """The recommendation and, for one sample per window, the read amplification of its chunking (None for
    several: :func:`read_amplification` is the K = 1 model; the recommendation carries the window figures)."""
    rec = recommend_chunks(store, config, overhead_bytes=overhead_bytes, samples_per_window=samples_per_window)
    if samples_per_window > 1:
        return rec, None
    return rec, read_amplification(store, config, chunks={k: r.chunks for k, r in rec.items()})


def _recommendation_json(amp: Amplification, rec: Mapping[str, ChunkRecommendation], rec_amp: Amplification | None,
                         samples_per_window: int) -> dict[str, Any]:
    """The JSON of the amplification and recommendation. One sample per window: ``amplification``,
    ``recommendation`` and ``recommended_amplification`` (as before). K > 1 adds ``samples_per_window`` and
    ``current_window`` (per array the current chunking's ``chunks_per_sample`` and ``decoded_bytes`` under the
    window model), and ``recommended_amplification`` / ``current_window_amplification`` are the window totals;
    ``amplification`` stays one sample read alone (K = 1)."""
    out: dict[str, Any] = {"amplification": amp.to_dict(),
                           "recommendation": {k: dataclasses.asdict(r) for k, r in rec.items()}}  # fmt: skip
    if samples_per_window > 1:
        best, now = _window_totals(rec, amp)
        out.update(samples_per_window=int(samples_per_window), recommended_amplification=best,
                   current_window_amplification=now, current_window=_window_current(rec, amp))
    else:
        assert rec_amp is not None
        out["recommended_amplification"] = rec_amp.amplification
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastload inspect",
        description="Summarise a store: layout, fields and levels, grid, time axis, and per array its shape, "
        "chunks, shards, codecs, stored and decoded bytes. With --config, the read amplification that sampling "
        "config suffers on this chunking and a recommended chunking.",
        epilog="Example: fastload inspect era5.zarr --config sampling.toml",
    )
    p.add_argument("store", nargs="?", help="store path or URL (with a multi-stream --config: one stream's store, or "
                                            "none for every stream)")
    p.add_argument("--config", help="sampling config (TOML/YAML) to evaluate against the chunking")
    p.add_argument("--samples-per-window", type=int, default=1, metavar="K",
                   help="with --config: the Loader's samples_per_window the store is read with (AtmoRep's several "
                   "samples per time window, each chunk read once for all of them): the recommendation and its "
                   "figures are for that plan (default 1, independent samples)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--sizes",
        choices=("auto", "always", "never"),
        default="auto",
        help="stored bytes: local file sizes (auto), also list remote objects with their sizes (always), or skip "
        "(never)",
    )
    p.add_argument(
        "--chunk-overhead-ms",
        type=float,
        default=OVERHEAD_S * 1e3,
        help="per-chunk overhead the recommendation charges (default %(default)s ms)",
    )
    p.add_argument(
        "--decode-gbps",
        type=float,
        default=DECODE_BPS / 1e9,
        help="decode rate that converts the overhead into bytes (default %(default)s GB/s)",
    )
    p.add_argument("--codecs", action="store_true",
                   help="measure this store's read rate and every codec's ratio and decode rate on its data, and "
                   "recommend the fastest codec (fastload.codec_choice)")
    p.add_argument("--read-gbps", type=float,
                   help="with --codecs: charge this read rate (GB/s) instead of the store's measured one, e.g. "
                   "that of the bucket or disk a rechunked copy will live on")
    add_storage_option(p)
    add_backend_option(p)
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload inspect``: print the summary (and amplification and recommendation). Returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    try:
        if not (args.chunk_overhead_ms >= 0 and args.decode_gbps > 0):
            raise ConfigError("--chunk-overhead-ms must be >= 0 and --decode-gbps > 0")
        if args.read_gbps is not None and not (args.codecs and args.read_gbps > 0):
            raise ConfigError("--read-gbps takes a rate > 0 and goes with --codecs")
        k = args.samples_per_window
        if k < 1 or (k > 1 and not args.config):
            raise ConfigError(f"--samples-per-window takes an integer >= 1 and goes with --config, got {k}"
                              + ("" if args.config else " without --config"))
        opts = parse_storage_options(args.storage_option)
        from .config import SamplingConfig
        from .store import open_store

        config = SamplingConfig.from_file(args.config) if args.config else None
        overhead = args.chunk_overhead_ms * 1e-3 * args.decode_gbps * 1e9
        if config is not None and config.streams:
            if args.codecs:
                raise ConfigError("--codecs measures one store: give it without a multi-stream --config (or "
                                  "inspect each stream's store on its own)")  # fmt: skip
            reports = inspect_streams(config, args.store, storage_options=opts, sizes=args.sizes,
                                      overhead_bytes=overhead, samples_per_window=k, backend=args.backend)
            print(json.dumps(_streams_json(config, reports), indent=2) if args.json else format_streams(reports))
            return 0
        if args.store is None:
            raise ConfigError("give the STORE to inspect (or --config with a multi-stream sampling config)")
        store = open_store(args.store, storage_options=opts, backend=args.backend)
        desc = describe(store, sizes=args.sizes)
        amp = rec = rec_amp = None
        if config is not None:
            amp = read_amplification(store, config)
            rec, rec_amp = _recommend(store, config, overhead, k)
        codecs = None
        if args.codecs:
            from .codec_choice import measure_codecs

            codecs = measure_codecs(store, read_bps=None if args.read_gbps is None else args.read_gbps * 1e9)
    except FastloadError as e:
        print(f"fastload inspect: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = dict(desc)
        if amp is not None:
            out["config"] = config.to_dict()
            out.update(_recommendation_json(amp, rec, rec_amp, k))
        if codecs is not None:
            out["codecs"] = codecs.to_dict()
        print(json.dumps(out, indent=2))
    else:
        print(format_summary(desc, amp, rec, rec_amp, config, samples_per_window=k))
        if codecs is not None:
            from .codec_choice import format_codecs

            print("\n" + format_codecs(codecs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
