"""Tiny zarr stores of every kind fastload reads, written with zarr-python directly, for tests.

Each ``make_*`` function writes a store at ``path`` and returns the NumPy arrays it wrote, so a test can compare
what fastload reads with what went in. Shapes are deliberately not multiples of the chunk shape (partial edge
chunks) and, with ``missing_chunk=True``, one chunk is all fill value so zarr never writes it.

    from tests.fastload.stores import make_per_variable, make_atmorep
    truth = make_per_variable(tmp_path / "s.zarr", zarr_format=3, sharded=True, codec="zstd")
    truth["t"]           # (time, level, lat, lon) float32, as written
    truth["time"]        # datetime64[ns]

Codecs: ``"blosc-lz4"`` (Blosc lz4 + shuffle), ``"zstd"``, ``"lz4"``, ``"gzip"``, ``"none"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = ["CODECS", "make_per_variable", "make_atmorep", "make_curvilinear", "cf_hours"]

CODECS = ("blosc-lz4", "zstd", "lz4", "gzip", "none")
T0 = np.datetime64("2000-01-01T00:00", "ns")
_DEFAULT = object()  # _array's fill_value when none is given


def _compressors(codec: str, zarr_format: int) -> Any:
    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {CODECS}, got {codec!r}")
    if codec == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        return {
            "blosc-lz4": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            "zstd": numcodecs.Zstd(level=3),
            "lz4": numcodecs.LZ4(),
            "gzip": numcodecs.GZip(level=5),
        }[codec]
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if codec == "lz4":
        from zarr.codecs.numcodecs import LZ4

        with warnings.catch_warnings():  # "numcodecs codecs are not in the v3 spec": we know
            warnings.simplefilter("ignore")
            return LZ4()
    return {
        "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        "zstd": ZstdCodec(level=3),
        "gzip": GzipCodec(level=5),
    }[codec]


def _array(
    group: zarr.Group, name: str, data: np.ndarray, dims: Sequence[str], *, zarr_format: int, chunks: Sequence[int],
    shards: Sequence[int] | None = None, codec: str = "blosc-lz4", attrs: dict | None = None,
    fill_value: Any = _DEFAULT,
) -> None:
    """``fill_value``: NaN for floats, else 0, unless given (``None``: no fill value, null in the metadata)."""
    attrs = dict(attrs or {})
    kw: dict[str, Any] = {}
    if zarr_format == 2:
        attrs["_ARRAY_DIMENSIONS"] = list(dims)
    else:
        kw["dimension_names"] = list(dims)
        if shards is not None:
            kw["shards"] = tuple(shards)
    if fill_value is _DEFAULT:
        fill_value = np.nan if data.dtype.kind == "f" else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about numcodecs codecs in v3 on use as well
        arr = group.create_array(
            name, shape=data.shape, chunks=tuple(min(c, max(s, 1)) for c, s in zip(chunks, data.shape)),
            dtype=data.dtype, compressors=_compressors(codec, zarr_format), attributes=attrs, fill_value=fill_value,
            **kw,
        )  # fmt: skip
        arr[...] = data


def cf_hours(time: np.ndarray) -> tuple[np.ndarray, dict]:
    """datetime64 -> (int64 hours since T0, CF attributes), as xarray encodes hourly times."""
    hours = ((time - T0) // np.timedelta64(1, "h")).astype(np.int64)
    return hours, {"units": "hours since 2000-01-01 00:00:00", "calendar": "proleptic_gregorian"}


def _time_coord(group: zarr.Group, time: np.ndarray, *, zarr_format: int, codec: str) -> None:
    """The ``time`` coordinate in CF hours, with the fill value ``fastload synth`` gives it
    (``fastload.write.StoreWriter.set_time``): none (null) in zarr v2, 0 in v3, where xarray masks only with a
    ``_FillValue`` attribute. A v2 fill value of 0 made xarray read hour 0, the first time T0, as NaT."""
    hours, tattrs = cf_hours(time)
    _array(group, "time", hours, ("time",), zarr_format=zarr_format, codec=codec, chunks=(hours.size,), attrs=tattrs,
           fill_value=None if zarr_format == 2 else 0)  # fmt: skip


def _latlon(ny: int, nx: int, regional: bool, lat_descending: bool) -> tuple[np.ndarray, np.ndarray]:
    if regional:
        lat = np.linspace(30.0, 30.0 + 0.5 * (ny - 1), ny)
        lon = np.linspace(-10.0, -10.0 + 0.5 * (nx - 1), nx)
    else:
        lat = np.linspace(-90.0, 90.0, ny)
        lon = np.arange(nx) * (360.0 / nx)
    if lat_descending:
        lat = lat[::-1].copy()
    return lat, lon


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    base = rng.standard_normal(shape).cumsum(axis=-1).cumsum(axis=-2)
    return (base / np.sqrt(shape[-1] * shape[-2]) + 280.0).astype(dtype)


def make_per_variable(
    path: str | os.PathLike[str], *, zarr_format: int = 2, sharded: bool = False, codec: str = "blosc-lz4",
    regional: bool = False, lat_descending: bool = True, nt: int = 4, levels: Sequence[float] = (500.0, 850.0),
    level_type: str | None = "pressure", ny: int = 9, nx: int = 16, chunks: Sequence[int] = (2, 1, 4, 6),
    shards: Sequence[int] = (4, 2, 8, 12), missing_chunk: bool = True, static: bool = True, dtype: str = "float32",
    lat_name: str = "latitude", lon_name: str = "longitude", consolidated: bool = False, seed: int = 0,
) -> dict[str, np.ndarray]:
    """A per-variable store as xarray writes it: ``t``, ``q`` (time, level, lat, lon), ``sp`` (time, lat, lon) and
    (``static``) ``orog`` (lat, lon); coordinates ``time`` (CF hours), ``level``, ``latitude``, ``longitude``.

    ``chunks`` is (time, level, lat, lon) and applies to every field (dropping absent axes); ``shards`` likewise
    when ``sharded`` (zarr v3 only). With ``missing_chunk``, the first time chunk of ``q`` is all NaN (not
    stored). Returns ``{name: array written}`` for fields and coordinates (``time`` as datetime64[ns]).
    """
    if sharded and zarr_format != 3:
        raise ValueError("sharding needs zarr_format=3")
    rng = np.random.default_rng(seed)
    lat, lon = _latlon(ny, nx, regional, lat_descending)
    time = T0 + np.arange(nt) * np.timedelta64(6, "h")
    lev = np.asarray(levels, dtype=np.float64)
    nl = lev.size
    out: dict[str, np.ndarray] = {
        "t": _smooth(rng, (nt, nl, ny, nx), dtype),
        "q": _smooth(rng, (nt, nl, ny, nx), dtype) * np.asarray(1e-3, dtype),
        "sp": _smooth(rng, (nt, ny, nx), dtype) + np.asarray(1e5, dtype),
    }
    if missing_chunk:
        out["q"][: chunks[0]] = np.nan
    if static:
        out["orog"] = _smooth(rng, (ny, nx), dtype)
    root = zarr.open_group(Path(path), mode="w", zarr_format=zarr_format)  # a str: zarr >= 3.2 cuts it at # or ?
    kw = dict(zarr_format=zarr_format, codec=codec)
    ct, cl, cy, cx = chunks
    st, sl, sy, sx = shards
    dims4 = ("time", "level", lat_name, lon_name)
    for name in ("t", "q"):
        _array(root, name, out[name], dims4, chunks=(ct, cl, cy, cx), shards=(st, sl, sy, sx) if sharded else None,
               attrs={"units": "K" if name == "t" else "kg kg-1"}, **kw)  # fmt: skip
    _array(root, "sp", out["sp"], ("time", lat_name, lon_name), chunks=(ct, cy, cx),
           shards=(st, sy, sx) if sharded else None, attrs={"units": "Pa"}, **kw)  # fmt: skip
    if static:
        _array(root, "orog", out["orog"], (lat_name, lon_name), chunks=(cy, cx), shards=(sy, sx) if sharded else None,
               attrs={"units": "m"}, **kw)  # fmt: skip
    _time_coord(root, time, **kw)
    lattrs = {"units": "hPa" if level_type == "pressure" else "1"}
    if level_type is not None:
        lattrs["level_type"] = level_type
    _array(root, "level", lev, ("level",), chunks=(nl,), attrs=lattrs, **kw)
    _array(root, lat_name, lat, (lat_name,), chunks=(ny,), attrs={"units": "degrees_north"}, **kw)
    _array(root, lon_name, lon, (lon_name,), chunks=(nx,), attrs={"units": "degrees_east"}, **kw)
    if consolidated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(Path(path), zarr_format=zarr_format)
    out.update(time=time, level=lev, latitude=lat, longitude=lon)
    return out


def make_atmorep(
    path: str | os.PathLike[str], *, zarr_format: int = 2, sharded: bool = False, codec: str = "blosc-lz4",
    fields: Sequence[str] = ("temperature", "velocity_u"), sfc_fields: Sequence[str] | None = ("t2m", "msl"),
    levels: Sequence[float] = (96, 105, 114, 123, 137), nt: int = 4, ny: int = 9, nx: int = 16,
    chunks: Sequence[int] = (2, 2, 2, 4, 6), shards: Sequence[int] = (4, 2, 4, 8, 12), regional: bool = False,
    lat_descending: bool = True, level_coord: bool = False, seed: int = 1,
) -> dict[str, Any]:
    """An AtmoRep store: ``data`` (time, field, level, lat, lon) with attributes ``fields``, ``levels``,
    ``level_type``; optional ``data_sfc`` (time, field, lat, lon) with attribute ``fields``; coordinates
    ``time`` (CF hours), ``lat``, ``lon`` (and ``level`` when ``level_coord``).

    ``chunks``/``shards`` are (time, field, level, lat, lon); the surface array drops the level entry.
    Returns ``{"data", "data_sfc", "time", "lat", "lon", "levels", "fields", "sfc_fields"}``.
    """
    if sharded and zarr_format != 3:
        raise ValueError("sharding needs zarr_format=3")
    rng = np.random.default_rng(seed)
    lat, lon = _latlon(ny, nx, regional, lat_descending)
    time = T0 + np.arange(nt) * np.timedelta64(1, "h")
    lev = np.asarray(levels, dtype=np.float64)
    data = _smooth(rng, (nt, len(fields), lev.size, ny, nx), "float32")
    root = zarr.open_group(Path(path), mode="w", zarr_format=zarr_format)  # a str: zarr >= 3.2 cuts it at # or ?
    kw = dict(zarr_format=zarr_format, codec=codec)
    dims = ("time", "field", "level", "lat", "lon")
    attrs = {"fields": list(fields), "levels": lev.tolist(), "level_type": "model"}
    _array(root, "data", data, dims, chunks=chunks, shards=shards if sharded else None, attrs=attrs, **kw)
    out: dict[str, Any] = {"data": data, "fields": list(fields), "levels": lev}
    if sfc_fields:
        sfc = _smooth(rng, (nt, len(sfc_fields), ny, nx), "float32")
        c5, s5 = list(chunks), list(shards)
        _array(root, "data_sfc", sfc, ("time", "field", "lat", "lon"), chunks=c5[:2] + c5[3:],
               shards=s5[:2] + s5[3:] if sharded else None, attrs={"fields": list(sfc_fields)}, **kw)  # fmt: skip
        out.update(data_sfc=sfc, sfc_fields=list(sfc_fields))
    _time_coord(root, time, **kw)
    _array(root, "lat", lat, ("lat",), chunks=(ny,), **kw)
    _array(root, "lon", lon, ("lon",), chunks=(nx,), **kw)
    if level_coord:
        _array(root, "level", lev, ("level",), chunks=(lev.size,), attrs={"level_type": "model"}, **kw)
    out.update(time=time, lat=lat, lon=lon)
    return out


def make_curvilinear(
    path: str | os.PathLike[str], *, zarr_format: int = 2, periodic_x: bool = True, nt: int = 4,
    depths: Sequence[float] = (5.0, 50.0), ny: int = 7, nx: int = 10, chunks: Sequence[int] = (2, 1, 4, 4),
    codec: str = "zstd", seed: int = 2,
) -> dict[str, np.ndarray]:
    """An ocean-model-like store: ``thetao`` (time, depth, y, x) with NaN over a land patch, ``zos`` (time, y, x);
    2-D ``latitude``/``longitude`` over (y, x) with ``periodic_x`` on ``longitude``; ``depth`` in m, positive down.
    """
    rng = np.random.default_rng(seed)
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lat = -60.0 + 120.0 * jj / (ny - 1) + 2.0 * np.sin(ii / nx * 2 * np.pi)
    lon = (ii * 360.0 / nx + 3.0 * jj / ny) % 360.0
    dep = np.asarray(depths, dtype=np.float64)
    time = T0 + np.arange(nt) * np.timedelta64(24, "h")
    thetao = _smooth(rng, (nt, dep.size, ny, nx), "float32") - np.float32(270.0)
    thetao[:, :, 2:4, 3:6] = np.nan  # land
    zos = _smooth(rng, (nt, ny, nx), "float32") - np.float32(280.0)
    root = zarr.open_group(Path(path), mode="w", zarr_format=zarr_format)  # a str: zarr >= 3.2 cuts it at # or ?
    kw = dict(zarr_format=zarr_format, codec=codec)
    _array(root, "thetao", thetao, ("time", "depth", "y", "x"), chunks=chunks, attrs={"units": "degC"}, **kw)
    _array(root, "zos", zos, ("time", "y", "x"), chunks=(chunks[0], *chunks[2:]), attrs={"units": "m"}, **kw)
    _time_coord(root, time, **kw)
    _array(root, "depth", dep, ("depth",), chunks=(dep.size,), attrs={"units": "m", "positive": "down"}, **kw)
    _array(root, "latitude", lat, ("y", "x"), chunks=(ny, nx), **kw)
    _array(root, "longitude", lon, ("y", "x"), chunks=(ny, nx), attrs={"periodic_x": periodic_x}, **kw)
    return {"thetao": thetao, "zos": zos, "time": time, "depth": dep, "latitude": lat, "longitude": lon}
