"""What fastload decodes without ``allow_unsafe_codecs``: the safety checks of a store's codec chains at open.

Why this exists apart from ``_codecs.py``: :func:`check_safety` runs on every array of a store when it is opened,
also on arrays fastload never reads, so that a store needing unsafe decoding (object dtypes without a
variable-length codec, pickle and other object codecs, codecs fastload does not know) is refused with a
:class:`~fastload.errors.CodecError` before any data is touched; the decoders :mod:`._codecs` builds apply the same
rules (:data:`SAFE_NUMCODECS`, :func:`_refuse`, :func:`_check_object`) to the chain they decode. Everything here is
importable from :mod:`._codecs` too, where it was.

Run its tests with ``python -m pytest tests/fastload/test_store_errors.py tests/fastload/test_store_strings.py -q``.
"""

from __future__ import annotations

from ..errors import CodecError
from ._meta import VLEN_CODECS, ArrayInfo

__all__ = ["SAFE_NUMCODECS", "check_safety", "vlen_codec"]

SAFE_NUMCODECS = frozenset({
    "blosc", "zstd", "lz4", "gzip", "zlib", "bz2", "lzma", "delta", "fixedscaleoffset", "astype", "quantize",
    "bitround", "shuffle", "crc32", "crc32c", "adler32", "fletcher32", "packbits",
})  # fmt: skip
"""numcodecs codec ids decoded without ``allow_unsafe_codecs`` (numeric in, numeric out, no code execution)."""
_V3_BYTES_BYTES = frozenset({"blosc", "zstd", "gzip", "crc32c"})
_V3_KNOWN = frozenset({"bytes", "transpose", "sharding_indexed", *VLEN_CODECS}) | _V3_BYTES_BYTES


def _refuse(info: ArrayInfo, where: str, what: str, allow_unsafe: bool) -> None:
    if not allow_unsafe:
        raise CodecError(
            f"array {info.name!r} ({where}): {what}; fastload refuses it by default because it can run "
            "arbitrary code or is not a numeric codec. Pass allow_unsafe_codecs=True to let numcodecs decode it."
        )


def _unsafe_object(info: ArrayInfo) -> str:
    """Why an object-dtype array is decoded only with ``allow_unsafe`` (a v2 object codec other than vlen-utf8 or
    vlen-bytes, which numcodecs may run as code: pickle), or "" when it is variable-length strings or bytes."""
    if info.dtype.kind != "O" or info.vlen is not None:
        return ""
    first = info.codecs[0]["id"] if info.codecs else None
    has = first is not None and first not in SAFE_NUMCODECS
    return f"object dtype (v2 dtype '|O') with {'object codec ' + repr(first) if has else 'no object codec'}"


def vlen_codec(info: ArrayInfo, codecs: tuple[dict, ...] | None = None) -> str | None:
    """The variable-length codec (``"vlen-utf8"``/``"vlen-bytes"``) that turns ``info``'s elements into bytes: the
    first v2 filter, or a v3 array-to-bytes codec (in the chain or inside ``sharding_indexed``); None without one."""
    if info.zarr_format == 2:
        return info.codecs[0]["id"] if info.codecs and info.codecs[0]["id"] in VLEN_CODECS else None
    chains = [info.codecs if codecs is None else codecs]
    while chains:
        for c in chains.pop():
            name = c.get("name") if isinstance(c, dict) else c
            if name in VLEN_CODECS:
                return name
            if name == "sharding_indexed":
                chains.append(tuple((c.get("configuration") or {}).get("codecs") or ()))
    return None


def _check_object(info: ArrayInfo, where: str, allow_unsafe: bool, codecs: tuple[dict, ...] | None = None) -> None:
    """An object-dtype array decodes only as variable-length strings or bytes through their codec: refuse (unless
    ``allow_unsafe``) a v2 object array whose object codec is another (pickle, msgpack, ...: :func:`_unsafe_object`);
    raise CodecError for a variable-length type without its codec, or a variable-length codec on another dtype."""
    codec = vlen_codec(info, codecs)
    names = [c.get("id") or c.get("name") for c in (info.codecs if codecs is None else codecs)]
    if info.dtype.kind != "O":
        if codec is not None:
            raise CodecError(f"array {info.name!r} ({where}): codec {codec!r} encodes variable-length values, but "
                             f"the array's dtype is {info.dtype}; expected an object (string/bytes) dtype")
        return
    if _unsafe_object(info):
        _refuse(info, where, _unsafe_object(info), allow_unsafe)
        return
    want = next(k for k, v in VLEN_CODECS.items() if v == info.vlen)
    if codec != want:
        kind = "strings" if info.vlen == "str" else "bytes"
        raise CodecError(f"array {info.name!r} ({where}): variable-length {kind} need the codec {want!r} (the "
                         f"{'first filter' if info.zarr_format == 2 else 'array-to-bytes codec'}); the codec chain "
                         f"is {names}")


def check_safety(info: ArrayInfo, where: str, *, allow_unsafe: bool = False) -> None:
    """Refuse object dtypes and object, pickle or unknown codecs anywhere in ``info``'s chain (CodecError).

    Runs on every array of a store at open, including arrays fastload never reads, so a store that would need
    unsafe decoding is noticed before any data is touched. Variable-length strings and bytes with their codec
    (``vlen-utf8``/``vlen-bytes``) are safe; whether their chain can be decoded is checked when they are read.
    """
    if _unsafe_object(info):
        _refuse(info, where, _unsafe_object(info), allow_unsafe)
    if info.zarr_format == 2:
        for i, c in enumerate(info.codecs):
            if c["id"] in VLEN_CODECS and i == 0:
                continue  # safe; whether it fits the dtype is checked when it is read (_check_object)
            if c["id"] not in SAFE_NUMCODECS:
                _refuse(info, where, f"codec {c['id']!r}", allow_unsafe)
        return
    chains = [info.codecs]
    while chains:
        for c in chains.pop():
            name = c["name"]
            if name == "sharding_indexed":
                conf = c["configuration"]
                chains.append(tuple(x if isinstance(x, dict) else {"name": x} for x in conf.get("codecs") or ()))
                chains.append(tuple(x if isinstance(x, dict) else {"name": x} for x in conf.get("index_codecs") or ()))
            elif name.startswith("numcodecs."):
                if name.split(".", 1)[1] not in SAFE_NUMCODECS:
                    _refuse(info, where, f"codec {name!r}", allow_unsafe)
            elif name not in _V3_KNOWN:
                _refuse(info, where, f"unknown codec {name!r}", allow_unsafe)
