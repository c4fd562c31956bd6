"""Compute normalisation coefficients into their own zarr store: ``fastload stats STORE --out NORM``.

Why this module exists: AtmoRep-style training normalises every field per calendar month, either per level
("global": one mean and std per month and level) or per grid point ("local": a mean and std map per month and
level). Those coefficients must be computed once, from the data store, streaming (a 0.25 degree record is
terabytes) and NaN-aware (ocean data have land), and kept apart from the data so another set can be swapped in.

How: the (field, level) pairs to compute are packed into passes that fit a memory budget (a local accumulator
is 12 months x the grid x 24 bytes). Each pass reads every chunk holding its pairs once, in time order, with a few
threads decoding, and merges each chunk's per-month count/mean/M2 into float64 accumulators (Chan's parallel
update, numerically stable). Global statistics are the exact Chan merge of the local ones. Missing values (NaN,
and the fill value or ``missing_value`` xarray would mask, e.g. -999 in an int16 field) and non-finite ones (inf,
or a value the transform maps to NaN/inf such as log1p of x <= -1) are left out and counted. Packed fields
(``scale_factor``/``add_offset``) are refused, as the loader refuses them. Statistics
are population statistics (ddof = 0) over all grid points with equal weight (no area weighting).

The coefficient store's layout is documented in :mod:`fastload.norm`. It is written to a temporary folder next to
``--out`` and renamed when complete, so an interrupted run leaves nothing that opens as a coefficient store.

Run::

    fastload stats era5.zarr --out era5-norm.zarr --transform total_precipitation=log1p \\
        --time-range 1979-01-01 2017-12-31 --fields temperature,total_precipitation
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import logging
import math
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any

import numpy as np

from ._cli_options import add_backend_option, add_storage_option, parse_storage_options
from ._progress import Progress
from ._stats_pass import ChunkPlan, CoefficientWriter, Target, feed
from ._write_temps import (
    check_marker,
    make_temporary,
    release_temporary,
    remove_marker,
    remove_stale_temporaries,
    write_marker,
    writing,
)
from .errors import ConfigError, FastloadError, SchemaError
from .norm import months_of
from .store._cf import NS_RANGE, outside_ns_range
from .store._check import refuse_packed, unknown_field, warn_not_fields
from .write import attr_fill_value, check_output, declared_fill_value, move_into_place

__all__ = ["StatsConfig", "compute_stats", "main"]

log = logging.getLogger("fastload")

_ACC_BYTES_PER_POINT = 12 * 24  # months x (int64 count + float64 mean + float64 M2)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StatsConfig:
    """What ``fastload stats`` computes and how."""

    fields: tuple[str, ...] | None = None
    """Fields to compute; None: every field of the store (each array left out of its fields, ``Store.not_fields``,
    is logged as a WARNING with why)."""
    levels: Any = None
    """Level values: a sequence (kept for every field that has them) or a mapping field -> sequence; None: all."""
    time_range: tuple[str | None, str | None] | None = None
    """Inclusive (start, end) as ISO dates/times; None (or a None end) leaves that end open. The end includes its
    whole unit, as xarray's ``sel(time=slice(...))`` does: ``2017-12-31`` runs to 23:59, ``2017-12`` to the month's
    end."""
    transforms: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Field -> transform applied before the statistics (``log1p``, e.g. for precipitation)."""
    memory_bytes: int = 2**30
    """Soft budget for the accumulators of one pass (at least one (field, level) pair per pass)."""
    workers: int = 2
    """Threads reading and decoding chunks."""
    zarr_format: int = 3
    """Zarr format of the coefficient store (2 or 3)."""
    overwrite: bool = False
    """Replace an existing store at the output path."""
    progress: bool | None = None
    """Draw a progress bar on stderr; None: when stderr is a terminal."""

    def __post_init__(self) -> None:
        if self.fields is not None:
            if (isinstance(self.fields, str) or not isinstance(self.fields, Sequence)
                    or not all(isinstance(f, str) and f for f in self.fields) or len(self.fields) == 0):
                raise ConfigError(f"stats.fields: expected a non-empty list of field names (None: all fields), got "
                                  f"{self.fields!r}")
            object.__setattr__(self, "fields", tuple(self.fields))
        if self.levels is not None:
            if isinstance(self.levels, Mapping):
                lv = {str(k): _floats(f"stats.levels.{k}", v) for k, v in self.levels.items()}
                object.__setattr__(self, "levels", MappingProxyType(lv))
            else:
                object.__setattr__(self, "levels", _floats("stats.levels", self.levels))
        if self.time_range is not None:
            if isinstance(self.time_range, str) or len(self.time_range) != 2:
                raise ConfigError(f"stats.time_range: expected (start, end), got {self.time_range!r}")
            for v in self.time_range:
                if v is not None:
                    _datetime("stats.time_range", v)
            object.__setattr__(self, "time_range", tuple(self.time_range))
        tr = dict(self.transforms)
        for k, v in tr.items():
            if v not in (None, "log1p", "none"):
                raise ConfigError(f"stats.transforms.{k}: expected 'log1p' or 'none', got {v!r}")
        object.__setattr__(
            self, "transforms", MappingProxyType({k: v for k, v in tr.items() if v not in (None, "none")})
        )
        for key, lo in (("memory_bytes", 1), ("workers", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"stats.{key}: expected an integer >= {lo}, got {v!r}")
        if self.zarr_format not in (2, 3):
            raise ConfigError(f"stats.zarr_format: expected 2 or 3, got {self.zarr_format!r}")


def _floats(name: str, v: Any) -> tuple[float, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
        raise ConfigError(f"{name}: expected a non-empty list of level values, got {v!r}")
    try:
        return tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected numbers, got {v!r}") from None


def _datetime(name: str, v: Any) -> np.datetime64:
    """``v`` at its own precision (a date is a day, ``2000-01`` a month), no finer than ns, checked to lie in the
    range datetime64[ns] holds.

    NumPy converts a date outside that range to ns without a word (< 2.5: ``1000-01-01`` became 2169-02-08) or
    with a bare ``OverflowError`` (>= 2.5), and wraps a string with 10 or more digits of a second as it parses
    it: such a value is read at ns (finer digits cut) and at us (which holds ±290,000 years), and is in range
    when the two agree.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2.5: NaT's generic unit is deprecated
            d = np.datetime64(v)
        unit = np.datetime_data(d.dtype)[0]
        if unit == "generic":  # NaT: it selects nothing
            raise ValueError(v)
        if unit in ("ns", "ps", "fs", "as"):
            d, coarse = np.datetime64(v, "ns"), np.datetime64(v, "us")
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: expected an ISO date or time such as 2000-01-31T18:00, got {v!r}"
        ) from None
    except OverflowError:
        outside = True
    else:
        if unit in ("ns", "ps", "fs", "as"):
            ns, us = int(d.astype(np.int64)), int(coarse.astype(np.int64))  # ints: NumPy 2.5's astype overflows
            outside = bool(np.isnat(d) or ns // 1000 != us)  # near the range's ends
        else:
            outside = bool(outside_ns_range(np.asarray(d)))
    if outside:
        raise ConfigError(
            f"{name}: {v!r} is outside the range of dates fastload reads (datetime64[ns]), {NS_RANGE}"
        )
    return d


def _select(store: Any, cfg: StatsConfig) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
    """(field, store level indices or None, level values or None) for every field to compute."""
    names = list(store.fields) if cfg.fields is None else list(cfg.fields)
    if cfg.fields is None:  # all fields: every array left out of them is said, with why
        warn_not_fields(store, "stats")
    unknown = [f for f in names if f not in store.fields]
    unknown += [f for f in cfg.transforms if f not in store.fields]
    if isinstance(cfg.levels, Mapping):
        unknown += [f for f in cfg.levels if f not in store.fields]
    if unknown:
        raise ConfigError("stats: " + "; ".join(f"field {f!r}: {unknown_field(store, f)}"
                                                for f in dict.fromkeys(unknown)))
    out = []
    used: set[float] = set()
    for name in names:
        info = store.fields[name]
        arr = store.arrays[info.array]
        refuse_packed(info, f"stats: field {name!r} of {store.path!r} (or leave it out with --fields)")
        if sum(a is not None for a in info.axes) != len(arr.shape):
            raise SchemaError(
                f"stats: array {info.array!r} of field {name!r} has dims {arr.dims} with axes I cannot place "
                f"(expected only time, field, level, y, x)"
            )
        if info.levels is None:
            if isinstance(cfg.levels, Mapping) and name in cfg.levels:
                raise ConfigError(f"stats.levels.{name}: field {name!r} has no level axis")
            out.append((name, None, None))
            continue
        have = np.asarray(info.levels, np.float64)
        want = cfg.levels.get(name) if isinstance(cfg.levels, Mapping) else cfg.levels
        if want is None:
            values = have
        elif isinstance(cfg.levels, Mapping):
            values = np.asarray(want, np.float64)  # all must exist: level_indices says which do not
        else:
            values = np.asarray([v for v in want if np.isclose(have, v).any()], np.float64)
            used.update(v for v in want if np.isclose(have, v).any())
            if values.size == 0:
                raise ConfigError(
                    f"stats.levels: none of {list(want)} is a level of field {name!r} (it has {have.tolist()}); "
                    f"leave it out with --fields or give its levels as {name}=..."
                )
        idx = np.asarray(store.level_indices(name, values.tolist()), np.int64)
        order = np.argsort(idx, kind="stable")  # keep the store's level order
        out.append((name, idx[order], have[idx[order]]))
    if cfg.levels is not None and not isinstance(cfg.levels, Mapping):
        unused = [v for v in cfg.levels if v not in used]
        if unused:
            raise ConfigError(f"stats.levels: level(s) {unused} belong to none of the fields {names}")
    return out


def missing_markers(store: Any, name: str) -> tuple:
    """Stored values of field ``name`` that mean missing, as xarray decodes them (NaN is always missing): the fill
    value xarray masks (:func:`fastload.write.declared_fill_value`: in zarr v2 the array's ``fill_value`` over a
    ``_FillValue`` attribute, in v3 the attribute) and every ``missing_value``.

    One exception: a zarr v2 ``fill_value`` of 0 counts as unset. That is zarr-python's default (for floats too),
    so it says nothing about missing data, and 0 is a real value of many fields (a dry hour's precipitation, a land
    mask), which the loader feeds to the model as 0; leaving every 0 out (as xarray does) would fit the coefficients
    to other values than the model sees. So a ``_FillValue`` attribute applies there, as xarray applies it where
    ``fill_value`` is null (an attribute of 0 keeps 0 missing)."""
    info = store.fields[name]
    arr = store.arrays[info.array]
    if arr.zarr_format == 2 and not arr.fill_null and arr.fill_value is not None and arr.fill_value == 0:
        declared = arr.attrs.get("_FillValue")  # zarr's default 0 read as a null fill value
    else:
        declared = declared_fill_value(store, info.array)
    # (the field's attrs are its array's in every layout that has them: only the array's are read, as xarray does)
    mv = arr.attrs.get("missing_value")
    values = [declared] + (list(mv) if isinstance(mv, (list, tuple)) else [mv])
    out = []
    for v in values:
        if v is None or (isinstance(v, bool) and arr.dtype.kind != "b"):  # (a JSON true marks a bool array's True)
            continue
        try:
            with np.errstate(all="ignore"):
                raw = np.asarray(attr_fill_value(v, arr.dtype))
                if raw.dtype.kind not in "biuf":
                    raise TypeError
                if raw.dtype.kind == "f" and np.isnan(raw):
                    continue  # NaN is missing anyway
                cast = raw.astype(arr.dtype)[()]  # compared as stored
        except (TypeError, ValueError, OverflowError):
            raise SchemaError(f"stats: field {name!r}: fill value {v!r} is not a number of dtype {arr.dtype}") from None
        # a value the dtype cannot hold exactly (1e20 or -1 on int16/uint8, 1e300 or the double 1e20 on float32) is
        # in no stored value: xarray compares the stored values with it in float64 and masks none; casting it (to 0,
        # 255, inf, float32(1e20)) would mark values no one declared missing, so it marks nothing
        fits = bool(cast == raw)
        if fits and cast not in out:
            out.append(cast)
    return tuple(out)


def _time_mask(store: Any, cfg: StatsConfig) -> np.ndarray | None:
    if store.time is None:
        return None
    mask = np.ones(store.time.shape, bool)
    if cfg.time_range is not None:
        start, end = cfg.time_range
        if start is not None:
            mask &= store.time >= _datetime("stats.time_range", start).astype("datetime64[ns]")
        if end is not None:
            e = _datetime("stats.time_range", end)  # at its own precision: a date is a whole day
            unit = np.datetime_data(e.dtype)[0]
            if unit == "ns":
                mask &= store.time <= e
            else:
                after = e + np.timedelta64(1, unit)  # past the ns range (end 2262-04-11): every time is before it
                if not outside_ns_range(np.asarray(after)):
                    mask &= store.time < after.astype("datetime64[ns]")
        if not mask.any():
            raise ConfigError(
                f"stats.time_range: {cfg.time_range} selects no time step of {store.path!r} "
                f"(it runs {store.time[0]} .. {store.time[-1]})"
            )
    return mask


def compute_stats(store: Any, out: str | os.PathLike[str], config: StatsConfig | None = None) -> str:
    """Compute normalisation coefficients of ``store`` into a new coefficient store at ``out``.

    Parameters
    ----------
    store : Store or str
        An open :class:`fastload.store.Store`, or a path/URL to open.
    out : str or path-like
        Local path of the coefficient store to write (layout in :mod:`fastload.norm`).
    config : StatsConfig, optional
        Fields, levels, time range, transforms, memory budget, workers.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    ConfigError
        Unknown field or level, an empty time range, a store without a time axis (coefficients are monthly, and
        the loader normalises only stores with one), ``out`` exists without ``overwrite``, or ``out`` is, holds
        or lies inside the data store, or is something other than a zarr store (which ``overwrite`` would delete).
    """
    cfg = StatsConfig() if config is None else config
    if isinstance(store, (str, os.PathLike)):
        from .store import open_store

        store = open_store(os.fspath(store))
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not cfg.overwrite:
        raise ConfigError(f"stats: output {out!r} exists; pass --overwrite to replace it")
    src = str(store.path)
    if "://" not in src and os.path.commonpath([os.path.abspath(src), out]) == os.path.abspath(src):
        raise ConfigError(
            f"stats: output {out!r} is (inside) the data store; coefficients go in their own store"
        )
    check_output(out, overwrite=cfg.overwrite, sources=[src])  # nor may it hold the data store, or other files
    if store.time is None:  # before any work: the loader normalises only stores with a time axis
        raise ConfigError(
            f"stats: {store.path!r} has no time axis. Coefficients are per calendar month, and fastload normalises "
            "only fields of a store with a time axis (a timeless store's fields load with normalization = 'none'); "
            "for static fields such as orography, compute them from a store that also holds time-varying fields")
    selection = _select(store, cfg)
    tmask = _time_mask(store, cfg)
    tmonths = months_of(store.time) if store.time is not None else None
    ny, nx = int(store.grid.ny), int(store.grid.nx)

    # one target per (field, level); passes bounded by the memory budget
    pending = []
    for name, lev_idx, _ in selection:
        info = store.fields[name]
        fills = missing_markers(store, name)
        for pos, li in enumerate([None] if lev_idx is None else lev_idx.tolist()):
            pending.append((name, info.array, pos, li, info.field_index, fills))
    per_pass = max(1, cfg.memory_bytes // (_ACC_BYTES_PER_POINT * ny * nx))
    passes = [pending[i : i + per_pass] for i in range(0, len(pending), per_pass)]

    remove_stale_temporaries(out)  # what killed runs for out on this host left (SIGKILL runs no cleanup)
    tmp = str(make_temporary(out))  # this run's own (two runs in one process: two), removable once it is gone
    counts = {name: {"missing": 0, "excluded": 0, "transform_dropped": 0, "values": 0} for name, _, _ in selection}
    try:
        writer = CoefficientWriter(tmp, store, selection, cfg, tmask, out)
        token = f"stats run {uuid.uuid4().hex}"
        with writing(tmp, out, "the writer's marker"):
            write_marker(tmp, token)  # zarr never remakes it: a temporary removed during the passes has none
        plans = []
        for group in passes:
            targets = [Target(field=f, array=a, level_pos=p, store_level=li, field_index=fi, fill_values=fv)
                       for f, a, p, li, fi, fv in group]  # fmt: skip
            plans.append((targets, ChunkPlan(store, targets, tmask)))
        total = sum(plan.nbytes() for _, plan in plans)
        with (
            Progress(total=total, desc="stats", unit="B", enabled=cfg.progress) as bar,
            ThreadPoolExecutor(cfg.workers, thread_name_prefix="fastload-stats") as pool,
        ):
            for i, (targets, plan) in enumerate(plans):
                bar.set_description(f"stats {i + 1}/{len(plans)} {targets[0].field}")
                for tg in targets:
                    tg.allocate(ny, nx)
                window: collections.deque = collections.deque()
                items = iter(plan)
                while True:  # keep 2 x workers chunks in flight, consume in plan (time) order
                    while len(window) < 2 * cfg.workers:
                        nxt = next(items, None)
                        if nxt is None:
                            break
                        window.append((nxt, pool.submit(store.read_chunk, *nxt[0])))
                    if not window:
                        break
                    (key, tgs), fut = window.popleft()
                    data = fut.result()
                    feed(store, key, data, tgs, cfg, tmask, tmonths, counts)
                    bar.update(store.arrays[key[0]].chunk_nbytes)
                for tg in targets:
                    writer.write_target(tg)
                    tg.release()
        check_marker(tmp, token, out)  # still this run's temporary, with the metadata written at the start
        remove_marker(tmp)  # not zarr's: neither consolidated nor published
        writer.finish(counts)
        move_into_place(tmp, out, overwrite=cfg.overwrite)  # the old store goes only once the new one is there
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_temporary(tmp)
    _warn_transform_dropped(counts, cfg)
    return out


def _warn_transform_dropped(counts: Mapping[str, Mapping[str, int]], cfg: StatsConfig) -> None:
    """Log a WARNING (``fastload`` logger; one line on the CLI's stderr) for every field whose transform left out
    values: log1p of a value <= -1 is not finite, so it is only counted (attribute ``excluded_nonfinite``)."""
    for name, c in counts.items():
        dropped, total = c["transform_dropped"], c["values"]
        if dropped:
            log.warning("stats: transform %s of field %r dropped %d of its %d values (%.1f%%): %s is not finite for "
                        "values <= -1, so the coefficients leave them out", cfg.transforms[name], name, dropped,
                        total, 100.0 * dropped / max(total, 1), cfg.transforms[name])


def _parse_kv(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--{what}: expected FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _parse_levels(items: Sequence[str]) -> Any:
    if not items:
        return None
    plain = [it for it in items if "=" not in it]
    keyed = [it for it in items if "=" in it]
    if plain and keyed:
        raise ConfigError("--levels: give either plain level values or FIELD=v1,v2 entries, not both")

    def nums(s: str) -> list[float]:
        try:
            return [float(v) for v in s.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"--levels: expected numbers, got {s!r}") from None

    if plain:
        return [v for it in plain for v in nums(it)]
    return {k: nums(v) for k, v in _parse_kv(keyed, "levels").items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastload stats",
        description="Compute monthly normalisation coefficients (global: per level; local: per grid point) of a "
        "store into their own zarr store, streaming and NaN-aware. The data store is never written to.",
        epilog="Example: fastload stats era5.zarr --out norm.zarr --transform total_precipitation=log1p "
        "--time-range 1979-01-01 2017-12-31",
    )
    p.add_argument("store", help="data store (path or URL)")
    p.add_argument("--out", required=True,
                   help="coefficient store to write (local path; refused if it exists, unless --overwrite)")
    p.add_argument("--fields", help="comma-separated fields (default: all)")
    p.add_argument(
        "--levels",
        nargs="+",
        metavar="LEVELS",
        help="level values for every field that has them (96 105 or 96,105), or FIELD=96,105 entries",
    )
    p.add_argument(
        "--time-range",
        nargs=2,
        metavar=("START", "END"),
        help="inclusive ISO dates/times (an END date includes that whole day); '..' leaves an end open",
    )
    p.add_argument(
        "--transform",
        action="append",
        default=[],
        metavar="FIELD=log1p",
        help="transform applied before the statistics (repeatable)",
    )
    p.add_argument("--memory", type=float, default=1.0, help="accumulator memory budget in GiB (default 1)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument(
        "--zarr-format", type=int, default=3, choices=(2, 3), help="format of the output (default 3)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_storage_option(p, "data store")
    add_backend_option(p)
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload stats``: parse arguments, compute, print a one-line summary. Returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        fields = None if args.fields is None else tuple(f.strip() for f in args.fields.split(",") if f.strip())
        if fields == ():  # '--fields ,' wrote no field's coefficients, '--fields ""' every field's
            parser.error(f"--fields: expected comma-separated field names, got {args.fields!r} (leave --fields out "
                         "for all fields)")
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    try:
        if not (math.isfinite(args.memory) and args.memory > 0):
            raise ConfigError(f"--memory: expected a positive number of GiB (the accumulator budget), got {args.memory:g}")
        tr = args.time_range
        cfg = StatsConfig(
            fields=fields,
            levels=_parse_levels(args.levels or []),
            time_range=None if tr is None else tuple(None if v == ".." else v for v in tr),
            transforms=_parse_kv(args.transform, "transform"),
            memory_bytes=max(1, int(args.memory * 2**30)),
            workers=args.workers,
            zarr_format=args.zarr_format,
            overwrite=args.overwrite,
            progress=False if args.quiet else None,
        )
        from .store import open_store

        opts = parse_storage_options(args.storage_option)
        store = open_store(args.store, storage_options=opts, backend=args.backend)
        t0 = datetime.datetime.now()
        path = compute_stats(store, args.out, cfg)
    except FastloadError as e:
        print(f"fastload stats: error: {e}", file=sys.stderr)
        return 2
    secs = (datetime.datetime.now() - t0).total_seconds()
    print(f"wrote normalisation coefficients of {args.store} to {path} in {secs:.1f} s")
    if cfg.fields is None:  # (logged as a WARNING too, by compute_stats)
        for name, why in getattr(store, "not_fields", {}).items():
            print(f"  no coefficients for {name}: not a field: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
