"""How :mod:`fastload.write` encodes a store's metadata: codec names as zarr compressors, chunk and shard shapes,
CF time offsets, fill values as xarray reads them, and attributes as plain JSON.

Why this exists apart from ``write.py``: these are pure functions of values and settings (no files, no zarr group),
used by the writer and by the tools around it (``synth``, ``convert``, ``rechunk``, ``stats``, ``codec_choice``).
The chunking policy behind :data:`DEFAULT_CHUNKS` is explained in :mod:`fastload.write`'s docstring. Import these
names from :mod:`fastload.write`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, SchemaError
from .store._cf import decode_time

CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "lz4", "gzip", "none")
DEFAULT_CODEC = "blosc-lz4"
DEFAULT_CHUNKS = (6, 1, 64, 128)  # (time, level, latitude, longitude); see fastload.write's docstring
TIME_UNITS = "hours since 1979-01-01"
CALENDAR = "proleptic_gregorian"
_EPOCH = np.datetime64("1979-01-01T00:00:00", "ns")


def parse_ints(text: str | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """Parse ``"6,1,64,128"`` (or a sequence) into ``n`` positive integers; :class:`ConfigError` names ``what``."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise ConfigError(f"{what}: expected {n} comma-separated integers, got {text!r}") from None
    if len(values) != n or any(v < 1 for v in values):
        raise ConfigError(f"{what}: expected {n} integers >= 1, got {text!r}")
    return values


def compressors(codec: str, zarr_format: int, level: int | None = None) -> list[Any] | None:
    """The zarr ``compressors`` argument for a codec name of :data:`CODECS` and a zarr format.

    ``level`` is the compression level (clevel for blosc); ``None`` takes a fast default. In zarr v3 plain
    ``lz4`` has no codec in the specification; it is written as ``numcodecs.lz4``, which zarr-python reads with a
    ``ZarrUserWarning`` (prefer ``blosc-lz4``, which is also faster).
    """
    if codec not in CODECS:
        raise ConfigError(f"codec: expected one of {list(CODECS)}, got {codec!r}")
    if codec == "none":
        return None  # zarr: no compression
    if zarr_format == 2:
        import numcodecs

        if codec.startswith("blosc-"):
            lvl = 5 if level is None else level
            return [numcodecs.Blosc(cname=codec[6:], clevel=lvl, shuffle=numcodecs.Blosc.SHUFFLE)]
        if codec == "zstd":
            return [numcodecs.Zstd(level=1 if level is None else level)]
        if codec == "lz4":
            return [numcodecs.LZ4(acceleration=1)]
        return [numcodecs.GZip(level=1 if level is None else level)]
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if codec.startswith("blosc-"):
        return [BloscCodec(cname=codec[6:], clevel=5 if level is None else level, shuffle="shuffle")]
    if codec == "zstd":
        return [ZstdCodec(level=1 if level is None else level)]
    if codec == "lz4":
        from zarr.codecs.numcodecs import LZ4

        return [LZ4(acceleration=1)]
    return [GzipCodec(level=1 if level is None else level)]


def chunks_for(dims: Sequence[str], shape: Sequence[int], chunks: Sequence[int] | None = None) -> tuple[int, ...]:
    """Map a (time, level, latitude, longitude) chunking onto an array's dimensions, clamped to its shape.

    Field axes of the AtmoRep layout take their whole extent (one chunk holds all fields, as in AtmoRep).
    """
    t, lev, y, x = DEFAULT_CHUNKS if chunks is None else chunks
    per_dim = {"time": t, "level": lev, "latitude": y, "longitude": x}
    return tuple(max(1, min(per_dim.get(d, n), n)) for d, n in zip(dims, shape))


def _clamped(name: str, dims: Sequence[str], shape: Sequence[int], spec: Sequence[int] | None,
             what: str) -> tuple[int, ...]:  # fmt: skip
    """A chunk (or shard) shape given per dimension or in (time, level, latitude, longitude) terms, clamped to
    ``shape`` either way (a 64 x 128 chunk on a 61 x 120 grid is 61 x 120: no chunk padded past the array)."""
    if spec is None:
        return chunks_for(dims, shape)
    spec = tuple(spec)
    if len(spec) not in (len(dims), 4) or not all(isinstance(c, (int, np.integer)) and c >= 1 for c in spec):
        raise ConfigError(f"variable {name!r}: {what} {list(spec)}: expected {len(dims)} integers >= 1 (one per "
                          f"dimension {list(dims)}) or 4 in (time, level, latitude, longitude) terms")  # fmt: skip
    if len(spec) == len(dims):
        return tuple(max(1, min(int(c), n)) for c, n in zip(spec, shape))
    return chunks_for(dims, shape, spec)


def encode_time(times: np.ndarray) -> tuple[np.ndarray, str]:
    """Encode datetimes as int64 CF offsets since 1979-01-01: hours when all are whole hours, else minutes/seconds.

    Returns the values and their ``units`` attribute. Raises :class:`SchemaError` for times that are not
    strictly increasing, not whole seconds, or outside the range datetime64[ns] holds.
    """
    t = np.asarray(times)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise SchemaError(f"time: expected datetime64 values, got dtype {t.dtype}")
    t = decode_time(t, {}, "time")  # ns, range-checked: NumPy wraps (< 2.5) or overflows (>= 2.5) what ns cannot hold
    if np.isnat(t).any():
        raise SchemaError("time: contains NaT (missing time stamps)")
    if t.size > 1 and not (t[1:] > t[:-1]).all():  # np.diff overflows int64 ns over 292 years
        raise SchemaError("time: expected strictly increasing time stamps")
    i = t.astype(np.int64)  # ns since 1970; t - _EPOCH overflows int64 ns before 1686-12 (302 years from 1979)
    epoch = int(_EPOCH.astype(np.int64))
    for unit, ns in (("hours", 3_600_000_000_000), ("minutes", 60_000_000_000), ("seconds", 1_000_000_000)):
        if (i % ns == 0).all():  # the epoch is a whole hour: i - epoch is a whole unit when i is
            return i // ns - epoch // ns, TIME_UNITS.replace("hours", unit)
    bad = int(np.flatnonzero(i % 1_000_000_000)[0])
    raise SchemaError(f"time: time stamps must be whole seconds; time[{bad}] = {t[bad]} is not (times decoded from a "
                      "float encoding carry its rounding: round them, e.g. times.astype('datetime64[s]'))")


def attr_fill_value(v: Any, dtype: Any) -> Any:
    """A ``_FillValue``/``missing_value`` attribute as a value of ``dtype``: numbers as they are, "NaN" and
    "Infinity" as floats, other strings as the base64 of the value's little-endian bytes (how xarray stores a
    floating-point ``_FillValue`` in zarr v3)."""
    if not isinstance(v, str):
        return v
    try:
        return float(v)  # "NaN", "Infinity", "-Infinity", or a number written as text
    except ValueError:
        pass
    kind = np.dtype(dtype).kind
    try:
        raw = base64.b64decode(v, validate=True)
        dt = np.dtype(f"<{kind}{len(raw)}")  # xarray writes a float32 array's NaN as 8 bytes: float64
        return np.frombuffer(raw, dt)[0]
    except (ValueError, TypeError):
        raise SchemaError(f"fill value attribute {v!r}: expected a number, or base64 bytes of a number of kind "
                          f"{kind!r} (dtype {np.dtype(dtype)})") from None  # fmt: skip


def declared_fill_value(store: Any, array: str) -> Any:
    """The value xarray decodes as missing (NaN) in ``array`` of an open :class:`fastload.store.Store`, or None.

    As xarray's zarr backend reads it (checked against ``xr.open_zarr`` in ``tests/fastload/test_stats.py``):

    - zarr v2: the array's ``fill_value`` unless the metadata says null, *even where a* ``_FillValue`` *attribute
      says otherwise* (xarray sets ``attributes["_FillValue"] = zarr_array.fill_value``); with a null
      ``fill_value``, the ``_FillValue`` attribute, else None;
    - zarr v3: the ``_FillValue`` attribute, else None (xarray does not mask v3's required ``fill_value``).

    ``missing_value`` is masked too but is not a fill value (:func:`fastload.stats.missing_markers`). Writers carry
    this over so that xarray reads a copy as it reads the source; ``fastload stats`` leaves these values out.
    """
    info = store.arrays[array]
    if info.zarr_format == 2 and not info.fill_null and info.fill_value is not None:
        return info.fill_value
    if "_FillValue" in info.attrs:
        return attr_fill_value(info.attrs["_FillValue"], info.dtype)
    return None


def _jsonable(v: Any) -> Any:
    """Attribute values as plain JSON types (numpy scalars and arrays become Python numbers and lists)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    # a non-finite float stays a float: zarr writes it as JSON NaN/Infinity/-Infinity, as it does the source's,
    # and xarray reads it back as the float (as a string "inf" it came back as a string)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
