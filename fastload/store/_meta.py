"""Zarr metadata, parsed once at open: v2 ``.zgroup``/``.zarray``/``.zattrs`` (and consolidated ``.zmetadata``),
v3 ``zarr.json`` (with or without inline consolidated metadata), into :class:`ArrayInfo` records.

Why not zarr's own objects: we need a handful of numbers per array (shape, chunk grid, dtype, fill value, codec
list, dimension names, chunk key encoding) and want them as plain, picklable values the reader threads can use
with no zarr machinery per chunk. Malformed metadata raises :class:`~fastload.errors.SchemaError` naming the
file and the key that is wrong.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SchemaError
from ._source import BaseByteSource

__all__ = ["ArrayInfo", "ELEMENTWISE_A2A", "StoreMetadata", "VLEN_CODECS", "load_metadata", "shard_perm"]

_V3_DTYPES = {
    "bool": "bool",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "float16": "f2", "float32": "f4", "float64": "f8",
    "complex64": "c8", "complex128": "c16",
}  # fmt: skip
_V3_OBJECT_DTYPES = ("string", "bytes", "variable_length_bytes", "variable_length_utf8")
_V3_VLEN = {"string": "str", "variable_length_utf8": "str", "bytes": "bytes", "variable_length_bytes": "bytes"}
"""v3 variable-length data types (zarr-python 3.1 writes ``string`` for ``dtype=str`` and ``variable_length_bytes``
for its ``VariableLengthBytes``; 3.0 wrote ``bytes``) -> the Python type of their elements."""
VLEN_CODECS = {"vlen-utf8": "str", "vlen-bytes": "bytes"}
"""The variable-length codecs fastload decodes (numcodecs' ``VLenUTF8``/``VLenBytes``: v2 filters, v3 array-to-bytes
codecs) -> the Python type of the elements they give."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ArrayInfo:
    """One zarr array as fastload reads it.

    A chunk index is always in units of :attr:`chunks`; for a sharded array that is the *inner* chunk, the unit
    read and decoded.
    """

    name: str
    """Array name (its key in the store)."""
    zarr_format: int
    """2 or 3."""
    dims: tuple[str, ...] | None
    """Dimension names (``_ARRAY_DIMENSIONS`` in v2, ``dimension_names`` in v3); None when the store has none."""
    shape: tuple[int, ...]
    """Array shape."""
    chunks: tuple[int, ...]
    """Shape of the unit read and decoded (the inner chunk of a sharded array)."""
    shard: tuple[int, ...] | None
    """Shard shape of a sharded v3 array, else None."""
    dtype: np.dtype
    """Element type of decoded chunks (native byte order); ``object`` for string/object arrays."""
    fill_value: Any
    """Value of elements in missing chunks (a NumPy scalar of :attr:`dtype`, 0 where the store says null)."""
    codecs: tuple[dict, ...]
    """The codec chain as in the metadata (v2: filters then the compressor, each a numcodecs config dict with
    ``id``; v3: the ``codecs`` list, each ``{"name": ..., "configuration": ...}``)."""
    attrs: Mapping[str, Any]
    """User attributes (without ``_ARRAY_DIMENSIONS``)."""
    order: str = "C"
    """v2 memory order of a chunk ("C" or "F"); always "C" in v3 (``transpose`` is a codec there)."""
    key_style: str = "v2"
    """Chunk key encoding: ``"v2"`` (``0.1.2``) or ``"default"`` (``c/0/1/2``)."""
    separator: str = "."
    """Separator between chunk coordinates in keys."""
    endian: str = "little"
    """Byte order of stored elements in v2 (from the dtype string); v3 says it in its ``bytes`` codec."""
    fill_null: bool = False
    """The metadata's ``fill_value`` is null (zarr v2; :attr:`fill_value` then holds 0): xarray masks no fill value
    then, and a ``_FillValue`` attribute instead of it (:func:`fastload.write.declared_fill_value`)."""
    stored_dtype: np.dtype | None = None
    """The metadata's integer dtype where a CF ``_Unsigned`` attribute makes :attr:`dtype` its twin of the other
    signedness, as xarray decodes it (:func:`_cf_unsigned`); None otherwise."""
    vlen: str | None = None
    """``"str"`` or ``"bytes"`` for an array of variable-length strings or bytes (:attr:`dtype` ``object``): what
    its metadata says its elements are (v3 ``data_type`` ``string`` / ``bytes``; in v2 the object codec,
    ``vlen-utf8`` / ``vlen-bytes``); None for any other array. Chunks decode to object arrays of that type."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of chunks (inner chunks when sharded) along each axis."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    @property
    def chunk_nbytes(self) -> int:
        """Decoded size of one chunk in bytes."""
        return int(math.prod(self.chunks)) * self.dtype.itemsize

    @property
    def chunks_per_shard(self) -> tuple[int, ...] | None:
        """Inner chunks along each axis of one shard (None when not sharded)."""
        if self.shard is None:
            return None
        return tuple(s // c for s, c in zip(self.shard, self.chunks))

    def storage_index(self, chunk: tuple[int, ...]) -> tuple[int, ...]:
        """Index of the stored object (the shard, or the chunk itself) holding ``chunk``."""
        cps = self.chunks_per_shard
        if cps is None:
            return tuple(chunk)
        return tuple(c // n for c, n in zip(chunk, cps))

    def key(self, chunk: tuple[int, ...]) -> str:
        """Store key of the object holding ``chunk`` (the shard's key for a sharded array)."""
        idx = self.storage_index(chunk)
        if self.key_style == "default":
            tail = "c" + "".join(self.separator + str(i) for i in idx)
        else:
            tail = self.separator.join(str(i) for i in idx) if idx else "0"
        return f"{self.name}/{tail}"


@dataclasses.dataclass(frozen=True, slots=True)
class StoreMetadata:
    """Everything read from the metadata documents of a store's root group."""

    zarr_format: int
    attrs: Mapping[str, Any]
    arrays: dict[str, ArrayInfo]
    consolidated: bool


def _json(source: BaseByteSource, key: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(f"{source.describe(key)}: not valid JSON ({e})") from None


def _get_json(source: BaseByteSource, key: str) -> Any:
    raw = source.get(key)
    return None if raw is None else _json(source, key, raw)


def load_metadata(source: BaseByteSource) -> StoreMetadata:
    """Read the root group's metadata and that of every array directly under it.

    Raises
    ------
    SchemaError
        The root is not a zarr group, or a metadata document is malformed.
    """
    where = source.describe()
    zj = _get_json(source, "zarr.json")
    if zj is not None:
        return _load_v3(source, zj)
    zg = _get_json(source, ".zgroup")
    if zg is not None:
        return _load_v2(source, zg)
    if source.exists(".zarray"):
        raise SchemaError(f"{where}: is a single zarr v2 array, expected a group (open the folder that holds it)")
    root = getattr(source, "root", None)
    if isinstance(root, str) and os.path.isfile(root):  # a local file: a NetCDF/GRIB file given as a store?
        raise SchemaError(f"{where}: is a file, not a zarr store (a folder); convert NetCDF or GRIB files to one with "
                          "'fastload convert'")
    found = source.list_dir("")
    listing = f"; found {found[:8]}{' ...' if len(found) > 8 else ''}" if found else " (the folder is empty)"
    raise SchemaError(f"{where}: not a zarr store: expected zarr.json (v3) or .zgroup (v2) at its root{listing}")


# -- v2 ---------------------------------------------------------------------------------------------------------
def _load_v2(source: BaseByteSource, zgroup: Any) -> StoreMetadata:
    if not isinstance(zgroup, dict) or zgroup.get("zarr_format") != 2:
        raise SchemaError(f"{source.describe('.zgroup')}: expected {{'zarr_format': 2}}, got {zgroup!r}")
    consolidated = _get_json(source, ".zmetadata")
    docs: dict[str, Any]
    if consolidated is not None:
        docs = consolidated.get("metadata") if isinstance(consolidated, dict) else None
        if not isinstance(docs, dict):
            raise SchemaError(f"{source.describe('.zmetadata')}: expected a 'metadata' table")
        names = sorted({k.rsplit("/", 1)[0] for k in docs if k.count("/") == 1 and k.endswith("/.zarray")})
    else:
        docs = {}
        names = []
        for child in source.list_dir(""):
            z = _get_json(source, f"{child}/.zarray")
            if z is None:
                continue
            names.append(child)
            docs[f"{child}/.zarray"] = z
            docs[f"{child}/.zattrs"] = _get_json(source, f"{child}/.zattrs") or {}
        docs[".zattrs"] = _get_json(source, ".zattrs") or {}
    arrays = {n: _parse_v2_array(source, n, docs[f"{n}/.zarray"], docs.get(f"{n}/.zattrs") or {}) for n in names}
    attrs = docs.get(".zattrs") or {}
    return StoreMetadata(2, attrs, arrays, consolidated is not None)


def _parse_v2_array(source: BaseByteSource, name: str, z: Any, zattrs: Any) -> ArrayInfo:
    where = source.describe(f"{name}/.zarray")
    if not isinstance(z, dict):
        raise SchemaError(f"{where}: expected a JSON object")
    for key in ("shape", "chunks", "dtype"):
        if key not in z:
            raise SchemaError(f"{where}: missing required key {key!r}")
    if z.get("zarr_format", 2) != 2:
        raise SchemaError(f"{where}: zarr_format {z.get('zarr_format')!r}, expected 2")
    shape = _int_tuple(z["shape"], where, "shape")
    chunks = _int_tuple(z["chunks"], where, "chunks", positive=True)
    if len(chunks) != len(shape):
        raise SchemaError(f"{where}: chunks {list(chunks)} has {len(chunks)} axes but shape {list(shape)} has {len(shape)}")
    try:
        dtype = np.dtype(z["dtype"] if isinstance(z["dtype"], str) else [tuple(x) for x in z["dtype"]])
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{where}: unknown dtype {z['dtype']!r} ({e})") from None
    if dtype.fields is not None:
        raise SchemaError(f"{where}: structured dtype {z['dtype']!r} is not supported; expected a numeric dtype")
    order = z.get("order", "C")
    if order not in ("C", "F"):
        raise SchemaError(f"{where}: order {order!r}, expected 'C' or 'F'")
    sep = z.get("dimension_separator", ".") or "."
    if sep not in (".", "/"):
        raise SchemaError(f"{where}: dimension_separator {sep!r}, expected '.' or '/'")
    filters = z.get("filters") or []
    compressor = z.get("compressor")
    codecs = tuple(dict(f) for f in filters) + ((dict(compressor),) if compressor else ())
    for c in codecs:
        if "id" not in c:
            raise SchemaError(f"{where}: codec {c!r} has no 'id'")
    if not isinstance(zattrs, dict):
        raise SchemaError(f"{source.describe(f'{name}/.zattrs')}: expected a JSON object")
    attrs = dict(zattrs)
    dims = attrs.pop("_ARRAY_DIMENSIONS", None)
    dims = _dims(dims, len(shape), source.describe(f"{name}/.zattrs"), "_ARRAY_DIMENSIONS")
    endian = "big" if dtype.byteorder == ">" else "little"
    native = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
    # an object array's elements are what its object codec makes (the first filter, by zarr's rule)
    vlen = VLEN_CODECS.get(codecs[0]["id"]) if native.kind == "O" and filters else None
    return _cf_unsigned(ArrayInfo(
        name=name, zarr_format=2, dims=dims, shape=shape, chunks=chunks, shard=None, dtype=native,
        fill_value=_fill(z.get("fill_value"), native, where, vlen), codecs=codecs, attrs=attrs, order=order,
        key_style="v2", separator=sep, endian=endian, fill_null=z.get("fill_value") is None, vlen=vlen,
    ))  # fmt: skip


# -- v3 ---------------------------------------------------------------------------------------------------------
def _load_v3(source: BaseByteSource, zj: Any) -> StoreMetadata:
    where = source.describe("zarr.json")
    if not isinstance(zj, dict) or zj.get("zarr_format") != 3:
        raise SchemaError(f"{where}: expected zarr_format 3")
    if zj.get("node_type") == "array":
        raise SchemaError(f"{where}: is a single zarr array, expected a group (open the folder that holds it)")
    if zj.get("node_type") != "group":
        raise SchemaError(f"{where}: node_type {zj.get('node_type')!r}, expected 'group'")
    cm = zj.get("consolidated_metadata")
    docs: dict[str, Any] = {}
    if isinstance(cm, dict) and isinstance(cm.get("metadata"), dict):
        docs = {k: v for k, v in cm["metadata"].items() if "/" not in k}
        consolidated = True
    else:
        consolidated = False
        for child in source.list_dir(""):
            doc = _get_json(source, f"{child}/zarr.json")
            if doc is not None:
                docs[child] = doc
    arrays = {}
    for name in sorted(docs):
        doc = docs[name]
        if isinstance(doc, dict) and doc.get("node_type") == "array":
            arrays[name] = _parse_v3_array(source, name, doc)
    return StoreMetadata(3, zj.get("attributes") or {}, arrays, consolidated)


def _parse_v3_array(source: BaseByteSource, name: str, z: dict) -> ArrayInfo:
    where = source.describe(f"{name}/zarr.json")
    for key in ("shape", "data_type", "chunk_grid", "codecs"):
        if key not in z:
            raise SchemaError(f"{where}: missing required key {key!r}")
    shape = _int_tuple(z["shape"], where, "shape")
    grid = z["chunk_grid"]
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise SchemaError(f"{where}: chunk_grid {grid!r}; only the 'regular' chunk grid is supported")
    outer = _int_tuple((grid.get("configuration") or {}).get("chunk_shape"), where, "chunk_shape", positive=True)
    if len(outer) != len(shape):
        raise SchemaError(f"{where}: chunk_shape {list(outer)} has {len(outer)} axes but shape has {len(shape)}")
    dtype = _v3_dtype(z["data_type"], where)
    codecs = _named_chain(z["codecs"], where, "codecs")
    chunks, shard = outer, None
    for k, c in enumerate(codecs):
        if c["name"] == "sharding_indexed":
            inner = _int_tuple(c["configuration"].get("chunk_shape"), where, "sharding chunk_shape", positive=True)
            # transposes before the sharding codec: the shard is cut into inner chunks *after* being transposed
            perm = shard_perm(codecs[:k], len(shape)) or tuple(range(len(shape)))
            seen = tuple(outer[p] for p in perm)  # the shard as the sharding codec sees it
            if len(inner) != len(shape) or any(o % i for o, i in zip(seen, inner)):
                raise SchemaError(
                    f"{where}: sharding chunk_shape {list(inner)} must divide the shard shape {list(seen)}"
                    + (f" (the shard {list(outer)} transposed by {list(perm)})" if seen != outer else "")
                )
            # the inner chunk in array axes (each inner chunk is an array-axis box, stored transposed)
            chunks, shard = tuple(inner[perm.index(d)] for d in range(len(shape))), outer
    if z.get("storage_transformers"):
        raise SchemaError(f"{where}: storage_transformers {z['storage_transformers']!r} are not supported")
    enc = z.get("chunk_key_encoding") or {"name": "default"}
    enc = _named(enc, where)
    if enc["name"] not in ("default", "v2"):
        raise SchemaError(f"{where}: chunk_key_encoding {enc['name']!r}, expected 'default' or 'v2'")
    sep = enc["configuration"].get("separator", "/" if enc["name"] == "default" else ".")
    if sep not in (".", "/"):
        raise SchemaError(f"{where}: chunk key separator {sep!r}, expected '.' or '/'")
    dims = _dims(z.get("dimension_names"), len(shape), where, "dimension_names")
    dt = z["data_type"]
    dt_name = dt.get("name") if isinstance(dt, dict) else dt
    vlen = _V3_VLEN.get(dt_name) if isinstance(dt_name, str) else None
    return _cf_unsigned(ArrayInfo(
        name=name, zarr_format=3, dims=dims, shape=shape, chunks=chunks, shard=shard, dtype=dtype,
        fill_value=_fill(z.get("fill_value"), dtype, where, vlen), codecs=codecs,
        attrs=dict(z.get("attributes") or {}), order="C", key_style=enc["name"], separator=sep,
        fill_null=z.get("fill_value") is None, vlen=vlen,
    ))  # fmt: skip


ELEMENTWISE_A2A = frozenset({
    "numcodecs.bitround", "numcodecs.quantize", "numcodecs.fixedscaleoffset", "numcodecs.astype",
})  # fmt: skip
"""v3 array-to-array codecs fastload decodes that act on each element alone (their decode commutes with cutting an
array into boxes), so they may sit before ``sharding_indexed``: each inner chunk is decoded through them."""


def shard_perm(before: tuple[dict, ...], ndim: int) -> tuple[int, ...] | None:
    """The axis order the codecs ``before`` a v3 ``sharding_indexed`` codec put a shard in: axis ``i`` of what the
    sharding codec sees is array axis ``perm[i]`` (transposes compose; element-wise codecs,
    :data:`ELEMENTWISE_A2A`, leave it). None when one of them is neither an element-wise codec nor a ``transpose``
    with a valid order (the store then refuses the array, :class:`~._shard.ShardIndex`)."""
    perm = tuple(range(ndim))
    for c in before:
        if c.get("name") in ELEMENTWISE_A2A:
            continue
        order = (c.get("configuration") or {}).get("order") if c.get("name") == "transpose" else None
        if not isinstance(order, (list, tuple)) or sorted(order) != list(range(ndim)):
            return None
        perm = tuple(perm[int(o)] for o in order)
    return perm


def _v3_dtype(dt: Any, where: str) -> np.dtype:
    if isinstance(dt, str):
        if dt in _V3_DTYPES:
            return np.dtype(_V3_DTYPES[dt])
        if dt in _V3_OBJECT_DTYPES:
            return np.dtype(object)
    elif isinstance(dt, dict):
        name = dt.get("name")
        conf = dt.get("configuration") or {}
        if name in ("numpy.datetime64", "numpy.timedelta64") and conf.get("scale_factor", 1) == 1:
            return np.dtype(f"{'M8' if name == 'numpy.datetime64' else 'm8'}[{conf.get('unit', 's')}]")
        if name in _V3_OBJECT_DTYPES:
            return np.dtype(object)
        if name in ("fixed_length_utf32", "null_terminated_bytes"):
            # zarr-python's fixed-size string types (NumPy U and S; not yet in the v3 spec): ``length_bytes`` is
            # the item size, UTF-32 code points (byte order set by the ``bytes`` codec) or NUL-padded bytes
            n = conf.get("length_bytes")
            unit = 4 if name == "fixed_length_utf32" else 1
            if not isinstance(n, int) or isinstance(n, bool) or n < unit or n % unit:
                raise SchemaError(
                    f"{where}: data_type {dt!r}: configuration length_bytes must be a positive integer"
                    f"{' multiple of 4' if unit == 4 else ''}, got {n!r}"
                )
            return np.dtype(f"{'U' if unit == 4 else 'S'}{n // unit}")
    raise SchemaError(
        f"{where}: data_type {dt!r} is not supported; expected a numeric type such as 'float32', a datetime, or a "
        "string type"
    )


def _named(c: Any, where: str) -> dict:
    if isinstance(c, str):
        return {"name": c, "configuration": {}}
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        raise SchemaError(f"{where}: expected {{'name': ..., 'configuration': ...}}, got {c!r}")
    conf = c.get("configuration") or {}
    if not isinstance(conf, dict):
        raise SchemaError(f"{where}: codec {c['name']!r}: configuration must be a JSON object, got {conf!r}")
    return {"name": c["name"], "configuration": dict(conf)}


def _named_chain(chain: Any, where: str, key: str) -> tuple[dict, ...]:
    """A v3 codec list with every codec as ``{"name", "configuration"}``, the chains inside ``sharding_indexed``
    too: the spec lets a codec leave out its configuration (zarr-python writes ``{"name": "bytes"}`` for a
    one-byte type), and every reader of the chain may then look the configuration up."""
    if not isinstance(chain, (list, tuple)):
        raise SchemaError(f"{where}: {key} must be a list of codecs, got {chain!r}")
    out = []
    for c in chain:
        c = _named(c, where)
        if c["name"] == "sharding_indexed":
            conf = c["configuration"]
            for k in ("codecs", "index_codecs"):
                if conf.get(k) is not None:
                    conf[k] = list(_named_chain(conf[k], where, f"sharding_indexed {k}"))
        out.append(c)
    return tuple(out)


# -- shared helpers ---------------------------------------------------------------------------------------------
def _cf_unsigned(info: ArrayInfo) -> ArrayInfo:
    """``info`` as xarray decodes a CF ``_Unsigned`` attribute: ``"true"`` on a signed integer array (netCDF3's
    way to store uint8/uint16) reads its values as the unsigned type of the same width, ``"false"`` on an unsigned
    one as the signed type; the bytes are the same, only their meaning changes. Then :attr:`ArrayInfo.dtype` is the
    decoded type (so chunks decode to it, the gather and the statistics see the values xarray sees), the fill value
    and an integer ``_FillValue`` attribute are reinterpreted alike (xarray converts the ``_FillValue`` it masks,
    not ``missing_value``, which it compares with the reinterpreted values as written), and ``_Unsigned`` is
    dropped from the attributes (a copy written in the decoded type must not carry it).

    Like xarray, only the strings ``"true"`` and ``"false"`` count; any other value, or ``_Unsigned`` on a
    non-integer array, changes nothing. A ``_FillValue`` attribute outside the stored type's range (xarray fails
    to open such an array) is kept as written: it is then compared with the decoded values as it is. (xarray also
    fails on a ``"false"`` array whose ``_FillValue`` attribute is past the signed range, e.g. 255 on uint8; here
    it is reinterpreted like any other, to -1.)"""
    flag, kind = info.attrs.get("_Unsigned"), info.dtype.kind
    if not ((flag == "true" and kind == "i") or (flag == "false" and kind == "u")):
        return info
    to = np.dtype(f"{'u' if kind == 'i' else 'i'}{info.dtype.itemsize}")
    attrs = {k: v for k, v in info.attrs.items() if k != "_Unsigned"}
    fv = attrs.get("_FillValue")
    if isinstance(fv, (int, float)) and not isinstance(fv, bool) and float(fv).is_integer():
        try:
            attrs["_FillValue"] = np.array(int(fv), info.dtype).view(to).item()
        except OverflowError:
            pass  # not a value of the stored type: kept as written
    fill = np.array(info.fill_value, info.dtype).view(to)[()]
    return dataclasses.replace(info, dtype=to, fill_value=fill, attrs=attrs, stored_dtype=info.dtype)


def _vlen_fill(v: Any, vlen: str, where: str) -> str | bytes:
    if v is None:
        return "" if vlen == "str" else b""
    if vlen == "str" and isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    if vlen == "bytes" and isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except ValueError:
            pass
    raise SchemaError(
        f"{where}: fill_value {v!r} is not a value of variable-length {'strings' if vlen == 'str' else 'bytes'}; "
        f"expected {'a string (or a number)' if vlen == 'str' else 'a base64 string'} or null"
    )


def _int_tuple(v: Any, where: str, key: str, positive: bool = False) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise SchemaError(f"{where}: {key} must be a list of integers, got {v!r}")
    if any(x < (1 if positive else 0) for x in v):
        raise SchemaError(f"{where}: {key} must be {'positive' if positive else 'non-negative'}, got {v!r}")
    return tuple(int(x) for x in v)


def _dims(dims: Any, ndim: int, where: str, key: str) -> tuple[str, ...] | None:
    if dims is None:
        return None
    if not isinstance(dims, (list, tuple)) or len(dims) != ndim:
        raise SchemaError(f"{where}: {key} {dims!r} must list one name per axis ({ndim} axes)")
    if dims and all(d is None for d in dims):
        return None
    if not all(isinstance(d, str) for d in dims):
        raise SchemaError(f"{where}: {key} {dims!r} must be strings")
    return tuple(dims)


_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_HEX_FLOATS = {4: ">f2", 8: ">f4", 16: ">f8"}
"""A v3 hex float fill value's type by its number of hex digits, as zarr-python 3.1 reads it."""


def _float_fill(v: Any, dtype: np.dtype) -> Any:
    """A float fill value (a JSON number, "NaN"/"Infinity"/"-Infinity", a v3 hex bit pattern "0x..." or a number
    written as text) as a scalar of the float ``dtype``, as zarr-python 3.1 reads it. A hex pattern as wide as
    ``dtype`` is its bits (a NaN keeps its payload); one of another width (4, 8 or 16 digits) is the half, single
    or double it spells, cast, as zarr-python reads it."""
    if isinstance(v, str):
        if v in _SPECIAL_FLOATS:
            v = _SPECIAL_FLOATS[v]
        elif v.startswith("0x"):
            digits = v[2:]
            if len(digits) not in _HEX_FLOATS:
                raise ValueError("a hex float has 4, 8 or 16 hex digits after '0x'")
            spelt = np.dtype(_HEX_FLOATS[len(digits)])
            value = np.frombuffer(bytes.fromhex(digits), spelt)[0]
            if spelt.itemsize == dtype.itemsize:
                return value.astype(dtype)  # the bits as written
            v = float(value)
        else:
            v = float(v)  # a number as text ("-999", "1e20", "nan"): zarr-python reads it so
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("expected a number")
    with np.errstate(over="ignore"):  # 1e300 as float32 is inf, as zarr-python casts it
        return np.array(float(v)).astype(dtype)[()]


def _int_fill(v: Any, dtype: np.dtype) -> Any:
    """An integer fill value (a JSON integer, a float with no fraction, or an integer written as text) as a scalar
    of the integer ``dtype``; one the type cannot hold is refused, as zarr-python refuses it."""
    if isinstance(v, str):
        v = int(v)  # "-999": zarr-python reads it so (a ValueError otherwise)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("expected an integer")
    info = np.iinfo(dtype)
    if not info.min <= v <= info.max:
        raise OverflowError(f"outside [{info.min}, {info.max}]")
    return np.array(v, dtype)[()]


def _fill(v: Any, dtype: np.dtype, where: str, vlen: str | None = None) -> Any:
    """The fill value as a NumPy scalar of ``dtype`` (0 / NaT-free zero where the metadata says null); for
    variable-length strings (bytes) a ``str`` (``bytes``), as zarr-python 3.1 reads it: null is empty, a string is
    the value (base64 for bytes), a number is its text (strings only). Numbers are read as zarr-python 3.1 reads
    them (:func:`_float_fill`, :func:`_int_fill`); a string is never the base64 of a number's bytes (no zarr
    format writes one: such a reading gave "1000" as a wrong number)."""
    if dtype.kind == "O":
        return None if vlen is None else _vlen_fill(v, vlen, where)
    if v is None:
        return np.zeros((), dtype)[()]
    try:
        if dtype.kind == "U" and isinstance(v, str):  # fixed-size unicode: the string itself
            return np.array(v, dtype)[()]
        if dtype.kind == "S" and isinstance(v, str):  # fixed-size bytes: base64 (v2 and zarr-python's v3)
            return np.array(base64.b64decode(v), dtype)[()]
        if dtype.kind == "f":
            return _float_fill(v, dtype)
        if dtype.kind in "iu":
            return _int_fill(v, dtype)
        if dtype.kind == "c":
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return np.array(v).astype(dtype)[()]  # (zarr v2 metadata of older writers)
                raise TypeError("expected [real, imaginary]")
            part = np.dtype(f"f{dtype.itemsize // 2}")
            return np.array(complex(_float_fill(v[0], part), _float_fill(v[1], part)), dtype)[()]
        if isinstance(v, str) and dtype.kind not in "bmM":
            raw = base64.b64decode(v)  # other fixed-size types: base64 of the bytes
            return np.frombuffer(raw.ljust(dtype.itemsize, b"\0")[: dtype.itemsize], dtype)[0]
        if dtype.kind in "mM":
            return np.array(int(v), "i8").view(dtype)[()]
        return np.array(v).astype(dtype)[()]
    except (ValueError, TypeError, OverflowError, struct.error) as e:
        raise SchemaError(f"{where}: fill_value {v!r} does not fit dtype {dtype} ({e})") from None
