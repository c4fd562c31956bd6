"""Copy a store into the per-variable layout with a better chunking: ``fastload rechunk STORE OUT``.

Why this exists: the chunking decides how many bytes a sampler decodes per useful byte (AtmoRep's whole-globe
chunks decode hundreds of times what a sample uses). ``fastload inspect STORE --config CFG`` says what a config
costs on a store and which chunking would be cheaper; this tool writes that chunking (``--config``), or the one
given (``--chunks``, default :data:`fastload.write.DEFAULT_CHUNKS`), into a new store that xarray opens as it is.

It reads through :func:`fastload.store.open_store` (either layout, zarr v2 or v3, sharded or not, local or fsspec
URLs), decoding each source chunk once: it walks the time axis in blocks that are whole multiples of both the
source and the output time chunks when that fits in ``max_block_bytes``, so memory stays bounded by one such
block of one source array (for an AtmoRep source, whose chunks hold every field, the block holds every field).
Writes go through :class:`fastload.write.StoreWriter`: an interrupted run leaves no store at OUT. The fill value
xarray masks in the source (:func:`fastload.write.declared_fill_value`) is the copy's, so xarray reads both alike.

Run::

    fastload rechunk atmorep.zarr era5.zarr --config sampling.toml
    fastload rechunk era5.zarr era5-6h.zarr --chunks 6,1,64,128 --zarr-format 3 --shard 24,1,256,256
    fastload rechunk atmorep.zarr era5.zarr --config sampling.toml --codec auto   # fastest codec, measured
    fastload rechunk packed.zarr floats.zarr --unpack    # scale_factor/add_offset fields as float32, as xarray reads them
    fastload rechunk half.zarr floats.zarr --dtype float32   # float16 fields (which fastload does not sample) as float32

A per-variable source keeps its names: the copy's dimensions and their coordinates are named as the source's
(``valid_time``, ``pressure_level``, ``lat``...), and the source's other small arrays along the copied dimensions
(CDS's ``expver(valid_time)`` and scalar ``number``; :func:`copy_plan`) are copied as they are, so code written for
the source (``ds.sel(pressure_level=500)``) reads the copy. Not copied, and printed by the CLI: fields left out by
``--fields``, an array over both grid dimensions that is not a field (``Store.not_fields``: a field written with its
dimensions out of order or without its level coordinate; logged as a WARNING too), arrays along a dimension the copy
does not have (``time_bnds(time, nv)``), arrays over 64 MiB. An
AtmoRep source becomes per-variable arrays over ``time``, ``level``, ``latitude``, ``longitude`` (it has no
per-variable names to keep). Times are re-encoded as ``hours since 1979-01-01`` (same values, other units); the
level coordinate is the source's stored values in its dtype (an int64 ``pressure_level`` stays int64).
Attributes are the source's, none invented (85000 Pa without units is not labelled hPa), but for the layout's
(root ``fastload_layout``, ``latitude_order``, ``rechunked_from``; ``level_type`` where the level's name does not tell).

``--dtype float32`` stores every floating-point field as float32, converted as xarray's ``astype`` converts: a float16
store, which the sampler does not read, becomes one it reads.

``--unpack`` is how a packed zarr store (``scale_factor``/``add_offset``, which fastload refuses to sample) becomes
one fastload reads: each packed field is decoded as xarray decodes it (:func:`unpack_values`) and stored as float32.
A CF ``_Unsigned`` integer field is read in the type xarray gives it (``"true"`` on int8/int16: uint8/uint16, fill
value included; :func:`fastload.store._meta._cf_unsigned`), so it is unpacked from those values, or copied in that
type, and the copy carries no ``_Unsigned``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_options import add_backend_option, add_storage_option, parse_storage_options
from ._progress import Progress
from ._rechunk_plan import _copy_extra, _field_names, _fill_attr, _source_group, copy_plan
from ._zarr_location import zarr_location
from .errors import ConfigError, SchemaError
from .store._check import warn_not_fields
from .write import (
    CODECS,
    DEFAULT_CHUNKS,
    DEFAULT_CODEC,
    LEVEL_TYPES,
    StoreWriter,
    attr_fill_value,
    check_output,
    declared_fill_value,
    parse_ints,
)

log = logging.getLogger("fastload")

__all__ = ["rechunk", "auto_codec", "chunks_from_config", "copy_plan", "unpack_values", "main"]

_LAYOUT_KEYS = ("fastload_layout", "fields", "sfc_fields", "levels", "level_type", "latitude_order")
_DROP_ATTRS = ("_ARRAY_DIMENSIONS", "_FillValue", "fields", "levels", "level_type", "units", "long_names")
_PACKING = ("scale_factor", "add_offset")
_UNPACKED_DROP = (*_PACKING, "missing_value")  # in packed units, and decoded to NaN: meaningless on the copy


def chunks_from_config(store: Any, config: Any, default: Sequence[int] = DEFAULT_CHUNKS, *,
                       samples_per_window: int = 1) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Per field, the (time, level, latitude, longitude) chunking :func:`fastload.inspect.recommend_chunks` finds
    cheapest for ``config`` (and the loader's ``samples_per_window``); fields the config does not sample get
    ``default``.

    The recommendation is per source array (an AtmoRep ``data`` array holds many fields); its time, level,
    latitude and longitude lengths are carried over to each field of that array (a field axis does not exist in
    the per-variable layout).
    """
    from .inspect import recommend_chunks

    store.check(config)
    recs = recommend_chunks(store, config, samples_per_window=samples_per_window)
    out: dict[str, tuple[int, ...]] = {}
    sampled = set(config.field_names)
    for name, f in store.fields.items():
        rec = recs.get(f.array)
        if rec is None or name not in sampled:
            out[name] = tuple(default)
            continue
        t_ax, _, l_ax, y_ax, x_ax = f.axes
        out[name] = (
            rec.chunks[t_ax] if t_ax is not None else default[0],
            rec.chunks[l_ax] if l_ax is not None else default[1],
            rec.chunks[y_ax],
            rec.chunks[x_ax],
        )
    return out


def _read_block(store: Any, array: str, t0: int, t1: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """``array[t0:t1, ...]`` (the whole array when it has no time axis), decoding each chunk once, in threads."""
    info = store.arrays[array]
    has_time = any(f.array == array and f.has_time for f in store.fields.values())
    shape, chunks = info.shape, info.chunks
    lo = (t0,) + (0,) * (len(shape) - 1) if has_time else (0,) * len(shape)
    hi = (t1,) + tuple(shape[1:]) if has_time else tuple(shape)
    out = np.empty(tuple(h - lo_ for lo_, h in zip(lo, hi)), dtype=info.dtype)
    ranges = [range(a // c, -(-b // c)) for a, b, c in zip(lo, hi, chunks)]
    idxs = list(product(*ranges))

    def place(idx: tuple[int, ...]) -> None:
        data = store.read_chunk(array, idx)  # full chunk shape, edge chunks padded
        src, dst = [], []
        for i, c, a, b in zip(idx, chunks, lo, hi):
            s, e = max(i * c, a), min((i + 1) * c, b)
            src.append(slice(s - i * c, e - i * c))
            dst.append(slice(s - a, e - a))
        out[tuple(dst)] = data[tuple(src)]

    for _ in pool.map(place, idxs):  # chunks do not overlap: threads write disjoint parts of out
        pass
    return out


def _field_view(block: np.ndarray, f: Any) -> np.ndarray:
    """The (time, [level], y, x) part of a source block that belongs to field ``f``."""
    return block if f.field_index is None else np.take(block, f.field_index, axis=f.axes[1])


def unpack_values(values: np.ndarray, *, scale_factor: float | None = None, add_offset: float | None = None,
                  missing: Sequence[Any] = ()) -> np.ndarray:  # fmt: skip
    """Decode CF-packed values as xarray decodes them: a value equal to one of ``missing`` (stored values, the
    ``_FillValue`` xarray masks and every ``missing_value``) becomes NaN, every other one ``value * scale_factor +
    add_offset``, in float64 (xarray's dtype for a scale and offset read from JSON, where every number is a
    float64), multiplied first and then added, as xarray does. Returns a new float64 array."""
    out = values.astype(np.float64)  # (a copy)
    if missing:
        hit = np.zeros(values.shape, dtype=bool)
        for v in missing:
            hit |= values == v
        out[hit] = np.nan
    if scale_factor is not None:
        out *= scale_factor
    if add_offset is not None:
        out += add_offset
    return out


def _packing(store: Any, name: str) -> dict[str, Any] | None:
    """The :func:`unpack_values` arguments of field ``name`` (its ``scale_factor``, ``add_offset`` and the stored
    values xarray masks), or None when the field is not packed."""
    attrs = store.fields[name].attrs
    if not any(k in attrs for k in _PACKING):
        return None
    out: dict[str, Any] = {}
    for k in _PACKING:
        v = attrs.get(k)
        if v is None:
            out[k] = None
            continue
        try:
            x = np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            x = np.empty(0)
        if x.size != 1 or not np.isfinite(x[0]):
            raise SchemaError(f"{store.path}: field {name!r}: attribute {k} = {v!r}; expected one finite number "
                              "(the CF packing fastload rechunk --unpack decodes)")  # fmt: skip
        out[k] = float(x[0])
    info = store.fields[name]
    mv = attrs.get("missing_value")
    markers = [declared_fill_value(store, info.array)] + (list(mv) if isinstance(mv, (list, tuple)) else [mv])
    missing = []
    for v in markers:
        if v is None:
            continue
        try:
            x = np.asarray(attr_fill_value(v, info.dtype))
        except SchemaError as e:
            raise SchemaError(f"{store.path}: field {name!r}: {e}") from None
        if x.dtype.kind not in "biuf":
            raise SchemaError(f"{store.path}: field {name!r}: fill value {v!r} is not a number")
        if not (x.dtype.kind == "f" and np.isnan(x)):  # NaN stays NaN anyway (xarray skips it too)
            missing.append(x[()])
    out["missing"] = tuple(missing)
    return out


def auto_codec(
    store: Any, *, zarr_format: int, read_bps: float | None = None, field: str | None = None,
    block: Sequence[int] | None = None, dataset_bytes: int | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> str:
    """The codec :func:`fastload.codec_choice.measure_codecs` recommends for a copy of ``store`` in
    ``zarr_format`` (measured on blocks of ``block`` cut from ``field`` when given, turned by ``transform`` into
    what the copy stores: unpacked, in the copy's dtype)."""
    from .codec_choice import measure_codecs

    choice = measure_codecs(store, field=field, block=block, dataset_bytes=dataset_bytes, zarr_format=zarr_format,
                            read_bps=read_bps, transform=transform)  # fmt: skip
    log.info("fastload rechunk: --codec auto chose %s, measured on %s", choice.codec, choice.measured_on)
    return choice.codec


def rechunk(
    store: Any,
    out: str | os.PathLike[str],
    *,
    chunks: Sequence[int] | None = None,
    config: Any = None,
    samples_per_window: int = 1,
    fields: Sequence[str] | None = None,
    codec: str = DEFAULT_CODEC,
    read_bps: float | None = None,
    shards: Sequence[int] | None = None,
    zarr_format: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    max_block_bytes: int = 512 * 2**20,
    workers: int | None = None,
    unpack: bool = False,
    dtype: Any = None,
) -> Path:
    """Copy ``store`` into the per-variable layout with a new chunking; returns the new store's path.

    A per-variable source's dimension and coordinate names are kept and its small arrays along the copied
    dimensions are copied as they are; :func:`copy_plan` says what is renamed (an AtmoRep source's axes) and what is
    left out, and why.

    Parameters
    ----------
    store : str, path or Store
        The source (any layout :func:`fastload.store.open_store` reads).
    out : path
        The store to create.
    chunks : (time, level, latitude, longitude), optional
        Chunking of every field (of the fields ``config`` does not sample, when ``config`` is given).
    config : SamplingConfig or path, optional
        Use the chunking :func:`fastload.inspect.recommend_chunks` finds cheapest for this sampling config.
    samples_per_window : int
        With ``config``: the Loader's ``samples_per_window`` the store will be read with (several samples per time
        window read each chunk once for all of them, which favours other chunkings; default 1, independent samples).
    fields : sequence of str, optional
        Fields to copy (default: all, and each array left out of them, ``Store.not_fields``, is logged as a WARNING
        with why).
    codec, shards : str, sequence of int
        As for :class:`fastload.write.StoreWriter`; ``codec="auto"`` takes the codec
        :func:`fastload.codec_choice.measure_codecs` finds fastest to read and decode, measured on blocks of the
        new chunk shape cut from the largest field copied (the first of equals).
    read_bps : float, optional
        With ``codec="auto"``: the read rate (stored bytes/s) of wherever the new store will be read from;
        default: the source store's, measured.
    zarr_format : {2, 3}, optional
        Default: the source's.
    overwrite, progress :
        Replace an existing ``out``; draw a progress bar (default: when stderr is a terminal).
    max_block_bytes : int
        Largest source block read at once when aligning it to the source chunks (decode each chunk once).
    workers : int, optional
        Decoding threads (default: up to 8, the CPU count).
    unpack : bool
        Decode every packed field (``scale_factor``/``add_offset`` attributes, which fastload does not sample) to
        float32 as xarray decodes it (:func:`unpack_values`: the fill values xarray masks become NaN), and drop the
        packing attributes (``scale_factor``, ``add_offset``, ``_FillValue``, ``missing_value``); other fields are
        copied as they are. A block of a packed field is held once more in float64 while it is decoded. With
        ``codec="auto"`` the codecs are still measured on the stored (packed) values.
    dtype : floating dtype, optional
        Store every floating-point field (unpacked ones included) in this dtype, converted as numpy's (and xarray's)
        ``astype`` converts, fill value included: ``dtype="float32"`` makes a float16 store, which the sampler does
        not read, into one it reads. Integer fields are copied as they are (``unpack`` decodes packed ones).
    """
    from .config import SamplingConfig
    from .store import open_store

    if fields is not None and (isinstance(fields, (str, bytes)) or len(fields) == 0):
        raise ConfigError(f"fields: expected a non-empty list of field names (None: all fields), got {fields!r}")
    src = store if hasattr(store, "read_chunk") else open_store(store)
    check_output(out, overwrite=overwrite, sources=[src.path])  # before any work: OUT must not hold the source
    if src.grid.kind != "latlon":
        raise SchemaError(f"{src.path}: rechunk writes latitude-longitude grids; this store's grid is {src.grid.kind}")
    names = _field_names(src, fields)
    if fields is None:  # all fields: every array left out of them (and not copied as it is) is said, with why
        warn_not_fields(src, "rechunk", kept={n for n, _ in copy_plan(src, names)[1]})
    default = tuple(chunks) if chunks is not None else DEFAULT_CHUNKS
    if samples_per_window != 1 and config is None:
        raise ConfigError(f"rechunk: samples_per_window={samples_per_window} chooses the chunking recommended for a "
                          f"sampling config; give config= too")
    if config is not None:
        cfg = config if isinstance(config, SamplingConfig) else SamplingConfig.from_file(config)
        per_field = chunks_from_config(src, cfg, default, samples_per_window=samples_per_window)
    else:
        per_field = {n: default for n in names}
    packing = {n: _packing(src, n) for n in names} if unpack else {}
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError as e:
            raise ConfigError(f"dtype: {dtype!r} is not a numpy dtype ({e})") from None
        if dtype.kind != "f":
            raise ConfigError(f"dtype: expected a floating-point dtype (float32, float64), got {dtype}")
    lev = [(n, src.fields[n]) for n in names if src.fields[n].levels is not None]
    for n, f in lev[1:]:
        if not np.array_equal(f.levels, lev[0][1].levels):
            raise SchemaError(f"{src.path}: field {n!r} has levels {f.levels.tolist()} but {lev[0][0]!r} has "
                              f"{lev[0][1].levels.tolist()}; the per-variable layout has one level axis "
                              "(copy them separately with --fields)")  # fmt: skip
    dim_names, extras, _ = copy_plan(src, names)
    kept = {dim_names.get(d, d) for d in ("time", "level", "latitude", "longitude")} | {n for n, _ in extras}
    attrs = {k: v for k, v in src.attrs.items() if k not in _LAYOUT_KEYS}
    attrs["rechunked_from"] = str(src.path)
    arrays: dict[str, list[str]] = {}
    for n in names:
        arrays.setdefault(src.fields[n].array, []).append(n)
    field_bytes = {}
    for n in names:
        f, info = src.fields[n], src.arrays[src.fields[n].array]
        field_bytes[n] = math.prod(s for i, s in enumerate(info.shape) if i != f.axes[1]) * info.dtype.itemsize
    nbytes = sum(field_bytes.values())
    fmt = zarr_format or src.zarr_format
    if codec == "auto":  # measured on the copy's own chunk shape, of the largest field copied (the first of equals)
        big = max(names, key=field_bytes.__getitem__)
        as_stored = _copy_dtype(src.fields[big].dtype, packing.get(big) is not None, dtype)

        def stored(block: np.ndarray) -> np.ndarray:  # the block as the copy stores it (unpacked, its dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                return _decoded(block, packing.get(big)).astype(as_stored, copy=False)

        out_bytes = sum(b // np.dtype(src.fields[n].dtype).itemsize
                        * _copy_dtype(src.fields[n].dtype, packing.get(n) is not None, dtype).itemsize
                        for n, b in field_bytes.items())  # fmt: skip
        codec = auto_codec(src, zarr_format=fmt, read_bps=read_bps, field=big, block=per_field[big],
                           dataset_bytes=out_bytes, transform=stored)  # fmt: skip
    elif read_bps is not None:
        raise ConfigError(f"read_bps={read_bps} goes with codec='auto' (it is the read rate the choice charges)")
    with StoreWriter(out, zarr_format=fmt, overwrite=overwrite, attrs=attrs, sources=[src.path],
                     dim_names=dim_names, default_attrs=False) as w, \
            ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # fmt: skip
        if src.time is not None:
            w.set_time(src.time, attrs=_copied_attrs(src.coords.get(dim_names.get("time", "time"))))
        w.set_grid(*(_as_stored(src, d, v) for d, v in zip(src.grid.dims, (src.grid.lat, src.grid.lon))),
                   lat_attrs=_copied_attrs(src.coords.get(src.grid.dims[0])),
                   lon_attrs=_copied_attrs(src.coords.get(src.grid.dims[1])))  # fmt: skip
        if lev:
            f0 = lev[0][1]
            lattrs = _level_attrs(src, f0)
            lt = f0.level_type if f0.level_type in LEVEL_TYPES else "model"
            if src.layout != "per_variable":  # an AtmoRep source's, on its data array: the copy's is on the level
                lattrs["level_type"] = lt
            w.set_levels(_level_values(src, f0), level_type=lt, units=lattrs.pop("units", None), attrs=lattrs)
        if extras:
            group = _source_group(src)
            for name, dims in extras:
                _copy_extra(w, group[name], name, dims, fmt)
        out_dtypes: dict[str, np.dtype] = {}
        overflow = dict.fromkeys(names, 0)  # finite values the narrowing to out_dtypes made infinite, per field

        def cast(n: str, part: np.ndarray) -> np.ndarray:
            """``part`` of field ``n`` in the copy's dtype, as astype converts; counts what overflowed."""
            if part.dtype == out_dtypes[n] or part.dtype.kind != "f" or out_dtypes[n].kind != "f":
                return part
            got, k = cast_counting_overflow(part, out_dtypes[n])  # counted and said once, below
            overflow[n] += k
            return got

        for n in names:
            f = src.fields[n]
            dims = (("time",) if f.has_time else ()) + (("level",) if f.levels is not None else ())
            a = {k: v for k, v in f.attrs.items() if k not in _DROP_ATTRS}
            if isinstance(a.get("coordinates"), str):  # xarray's list of a variable's coordinates: those copied
                a["coordinates"] = " ".join(c for c in a["coordinates"].split() if c in kept)
                if not a["coordinates"]:
                    del a["coordinates"]
            long_names = src.arrays[f.array].attrs.get("long_names")
            if isinstance(long_names, Mapping) and n in long_names:
                a.setdefault("long_name", long_names[n])
            fill = declared_fill_value(src, f.array)  # what xarray masks in the source, masked in the copy too
            out_dt = _copy_dtype(f.dtype, packing.get(n) is not None, dtype)
            if packing.get(n) is not None:  # decoded: missing values are NaN, NaN is the fill value
                a = {k: v for k, v in a.items() if k not in _UNPACKED_DROP}
                fill = None
            elif out_dt != np.dtype(f.dtype) and fill is not None:  # as astype converts: the fill value too
                fill = np.asarray(fill).astype(out_dt)[()]
            if packing.get(n) is None and fill is not None and fmt == 3 and not (out_dt.kind == "f" and np.isnan(fill)):
                a["_FillValue"] = _fill_attr(fill, out_dt)  # xarray masks only this in v3, not the fill_value
            w.add_variable(n, dims + ("latitude", "longitude"), dtype=out_dt, chunks=per_field[n], codec=codec,
                           shards=shards, units=f.units, attrs=a, fill_value=fill)  # fmt: skip
            out_dtypes[n] = out_dt
        with Progress(nbytes, "rechunk", "B", enabled=progress) as bar:
            for array, fs in arrays.items():
                bar.set_description(f"rechunk {array}")
                info = src.arrays[array]
                if not src.fields[fs[0]].has_time:  # static: small, read whole
                    block = _read_block(src, array, 0, 0, pool)
                    for n in fs:
                        part = _field_view(block, src.fields[n])
                        w.write(n, cast(n, _decoded(part, packing.get(n))), (0,) * part.ndim)
                        bar.update(part.nbytes)
                    continue
                step_bytes = math.prod(info.shape[1:]) * info.dtype.itemsize
                units = math.lcm(*(w.write_unit(n)[0] for n in fs))
                both = math.lcm(units, info.chunks[0])
                size = both if both * step_bytes <= max_block_bytes else units
                for t0 in range(0, info.shape[0], size):
                    t1 = min(t0 + size, info.shape[0])
                    block = _read_block(src, array, t0, t1, pool)  # (T, [F], [L], Y, X): one source block
                    for n in fs:
                        part = _field_view(block, src.fields[n])
                        w.write(n, cast(n, _decoded(part, packing.get(n))), t0)
                        bar.update(part.nbytes)
                    del block
        for n, k in overflow.items():
            warn_overflow("rechunk", "field", n, k, out_dtypes[n])
    return w.out


def cast_counting_overflow(values: np.ndarray, dtype: Any) -> tuple[np.ndarray, int]:
    """``values`` in ``dtype`` as numpy's (and xarray's) ``astype`` converts them, and how many finite values
    became +-inf on the way (floats narrowed beyond the range of ``dtype``, e.g. float64 1e39 to float32), without
    numpy's overflow warning, which names no field: the caller says the count once per field
    (:func:`warn_overflow`). ``values`` itself when it already has ``dtype``."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values, 0
    with np.errstate(over="ignore", invalid="ignore"):
        got = values.astype(dtype)
    if values.dtype.kind == "f" and dtype.kind == "f" and dtype.itemsize < values.dtype.itemsize:
        return got, int(np.count_nonzero(np.isinf(got) & np.isfinite(values)))
    return got, 0


def warn_overflow(tool: str, kind: str, name: str, count: int, dtype: Any) -> None:
    """Log, as a WARNING of the ``fastload`` logger, that ``count`` finite values of ``kind`` (field, variable)
    ``name`` became +-inf in ``tool``'s copy in ``dtype`` (:func:`cast_counting_overflow`); nothing when 0."""
    if count:
        log.warning("fastload %s: %s %r: %d finite values beyond the range of %s (|x| > %g) became +-inf in the "
                    "copy", tool, kind, name, count, np.dtype(dtype), float(np.finfo(dtype).max))  # fmt: skip


def _copy_dtype(source: Any, unpacked: bool, dtype: np.dtype | None) -> np.dtype:
    """The dtype a field of dtype ``source`` has in the copy: ``dtype`` or float32 when it is unpacked, ``dtype``
    for a floating-point one when given, else its own."""
    source = np.dtype(source)
    if unpacked:
        return dtype or np.dtype(np.float32)
    return dtype if dtype is not None and source.kind == "f" else source


def _decoded(part: np.ndarray, packing: Mapping[str, Any] | None) -> np.ndarray:
    """A field's block as the copy stores it: decoded when the field is packed and ``--unpack`` was asked."""
    return part if packing is None else unpack_values(part, **packing)


def _copied_attrs(info: Any) -> dict[str, Any]:
    """A source coordinate's own attributes as the copy's (``units`` included: the copy invents none, a level
    coordinate in Pa without units must not become hPa), less the zarr/xarray encoding ones."""
    attrs = dict(info.attrs) if info is not None else {}
    return {k: v for k, v in attrs.items() if k not in ("_ARRAY_DIMENSIONS", "_FillValue")}


def _level_coord(src: Any, f: Any) -> str | None:
    """The name of the source's level coordinate array of field ``f`` (None: an AtmoRep ``levels`` attribute)."""
    if f.field_index is None:  # per-variable: the level coordinate is the dimension at the level axis
        dims = src.arrays[f.array].dims or ()
        return dims[f.axes[2]] if len(dims) > f.axes[2] else None
    return "level" if "level" in src.coords else None


def _level_attrs(src: Any, f: Any) -> dict[str, Any]:
    name = _level_coord(src, f)
    return _copied_attrs(src.coords.get(name) if name is not None else None)


def _level_values(src: Any, f: Any) -> np.ndarray:
    """Field ``f``'s level values as the source stores them, in its dtype (an int64 ``pressure_level`` stays
    int64; ``f.levels``, which the store hands out, are float64): its level coordinate array, or an AtmoRep
    store's ``levels`` attribute as JSON gives it. ``f.levels`` when those are not the same values."""
    name = _level_coord(src, f)
    if name is not None and name in src.coords:
        return _as_stored(src, name, f.levels)
    return _same_or(np.asarray(src.arrays[f.array].attrs.get("levels", src.attrs.get("levels"))), f.levels)


def _as_stored(src: Any, name: str, values: np.ndarray) -> np.ndarray:
    """The source's coordinate array ``name`` as stored (its dtype: a float32 latitude, an int64 level) when it
    holds ``values`` (what the store hands out, as float64); else ``values``."""
    return _same_or(np.asarray(src.read_array(name)), values) if name in src.coords else values


def _same_or(stored: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``stored`` (1-D) when it is numbers equal to ``values`` in float64, else ``values``."""
    stored = stored.reshape(-1)
    if stored.dtype.kind not in "iuf" or stored.shape != values.shape:
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        return stored if np.array_equal(stored.astype(np.float64), values) else values


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload rechunk STORE OUT [--config CFG | --chunks T,L,Y,X]``: copy a store with a new chunking."""
    p = argparse.ArgumentParser(
        prog="fastload rechunk",
        description="Copy a store (AtmoRep or per-variable layout, zarr v2/v3) into the per-variable layout with "
        "the chunking best for a sampling config (--config) or a given one (--chunks), in bounded memory.",
        epilog="see what a config costs first: fastload inspect STORE --config CFG",
    )
    p.add_argument("store", help="source store (path or fsspec URL; --storage-option for a remote one's options)")
    p.add_argument("out", help="store to create")
    p.add_argument("--config", help="sampling config (TOML/YAML): use the chunking recommended for it")
    p.add_argument("--chunks", metavar="T,L,Y,X",
                   help=f"chunk shape (time, level, lat, lon); default {','.join(map(str, DEFAULT_CHUNKS))}; with "
                   "--config, for the fields the config does not sample")  # fmt: skip
    p.add_argument("--samples-per-window", type=int, default=1, metavar="K",
                   help="with --config: the Loader's samples_per_window the store will be read with (AtmoRep's "
                   "several samples per time window; default 1, independent samples)")
    p.add_argument("--fields", help="comma-separated fields to copy (default: all)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=(*CODECS, "auto"),
                   help=f"compression (default {DEFAULT_CODEC}); auto: the codec fastest to read and decode here, "
                   "measured on blocks of the copy (its chunks, after --unpack/--dtype; fastload inspect STORE --codecs shows "
                   "the measurement on the source)")
    p.add_argument("--read-gbps", type=float,
                   help="with --codec auto: read rate of where OUT will be read from (default: the source's)")
    p.add_argument("--shard", metavar="T,L,Y,X", help="zarr v3 shard shape, a multiple of the chunks")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), help="zarr format (default: the source's)")
    p.add_argument("--unpack", action="store_true",
                   help="decode packed fields (scale_factor/add_offset) to float32 as xarray reads them (fill values "
                   "become NaN) and drop the packing attributes: a packed store fastload can then sample")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="store every floating-point field in this dtype (as xarray astype converts it): a float16 "
                   "store, which fastload does not sample, becomes one it samples")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    add_storage_option(p, "source store")
    add_backend_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.samples_per_window < 1 or (a.samples_per_window > 1 and not a.config):
        p.error("--samples-per-window takes an integer >= 1 and goes with --config")
    if a.read_gbps is not None and (a.codec != "auto" or not a.read_gbps > 0):
        p.error("--read-gbps takes a rate > 0 and goes with --codec auto")
    fields = None if a.fields is None else [f.strip() for f in a.fields.split(",") if f.strip()]
    if fields == []:  # '--fields ,' copied no field at all, '--fields ""' every one
        p.error(f"--fields: expected comma-separated field names, got {a.fields!r} (leave --fields out to copy all "
                "fields)")
    from .store import open_store

    src = open_store(a.store, storage_options=parse_storage_options(a.storage_option), backend=a.backend)
    dim_names, extras, left_out = copy_plan(src, fields)
    out = rechunk(
        src, a.out, config=a.config, samples_per_window=a.samples_per_window, chunks=parse_ints(a.chunks, 4, "--chunks") if a.chunks else None,
        fields=fields, codec=a.codec,
        read_bps=None if a.read_gbps is None else a.read_gbps * 1e9,
        shards=parse_ints(a.shard, 4, "--shard") if a.shard else None, zarr_format=a.zarr_format,
        overwrite=a.overwrite, progress=False if a.quiet else None, unpack=a.unpack, dtype=a.dtype,
    )  # fmt: skip
    import zarr

    g = zarr.open_group(zarr_location(out), mode="r")
    print(f"wrote {out}:")
    dims = ", ".join(dim_names.get(d, d) for d in ("time", "level", "latitude", "longitude") if dim_names.get(d, d) in g)
    print(f"  dimensions {dims}" + (" (the source's names)" if dim_names else
                                   f" (the per-variable layout's names; the {src.layout} source's are not kept)"))
    for n in sorted(g.array_keys()):
        if n in {n for n, _ in extras}:
            print(f"  {n:<20} {g[n].dtype}  shape {g[n].shape}  copied as it is")
        elif n not in dim_names.values() and n not in ("time", "level", "latitude", "longitude"):
            comp = " ".join(type(c).__name__ for c in g[n].compressors) or "uncompressed"
            print(f"  {n:<20} {g[n].dtype}  shape {g[n].shape}  chunks {g[n].chunks}" + (f"  shards {g[n].shards}" if g[n].shards
                                                                            else "") + f"  {comp}")  # fmt: skip
    for n, why in left_out.items():
        print(f"  not copied: {n}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
