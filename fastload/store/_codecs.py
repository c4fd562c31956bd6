"""The decode pipeline: stored chunk bytes -> a full, C-contiguous chunk of the array's dtype.

Why this exists: zarr-python builds per-chunk objects and async tasks around every decode; we call numcodecs
directly, once per chunk, from whichever thread holds the bytes (numcodecs releases the GIL while it
decompresses). Built once per array at open (:func:`build_decoder`), so an unsupported or unsafe codec fails at
``open_store``, not in a worker thread.

Supported: v2 compressors and filters from numcodecs (Blosc, Zstd, LZ4, GZip, Zlib, BZ2, LZMA, Delta,
FixedScaleOffset, AsType, Quantize, BitRound, Shuffle, checksums) with C or F order and either byte order; v3
codecs ``bytes`` (endian), ``transpose``, ``blosc``, ``zstd``, ``gzip``, ``crc32c``, ``numcodecs.*``
bytes-to-bytes codecs, the element-wise ``numcodecs.*`` array-to-array codecs (bitround, quantize,
fixedscaleoffset, astype: :data:`~._meta.ELEMENTWISE_A2A`) and ``numcodecs.delta`` without a transpose
(:data:`WHOLE_CHUNK_A2A`); ``sharding_indexed`` is handled by :mod:`._shard`
around an inner decoder built here.
Variable-length strings and bytes (object dtype: v2 ``|O`` with the filter ``vlen-utf8``/``vlen-bytes``, v3
``data_type`` ``string``/``bytes``/``variable_length_bytes`` with the array-to-bytes codec of that name, also inside
``sharding_indexed``) decode through numcodecs' ``VLenUTF8``/``VLenBytes`` (a length-prefixed parser that checks
its bounds and runs no code) to object arrays of ``str``/``bytes``, as zarr-python reads them; they are never
fields (coordinates such as ERA5's ``expver``). Other object codecs (pickle, msgpack, JSON, vlen-array,
categorize), object dtypes without an object codec, and codecs we do not know raise
:class:`~fastload.errors.CodecError` unless ``allow_unsafe_codecs=True``, which hands them to numcodecs (these rules,
and :func:`check_safety` that applies them at open, are :mod:`._codecs_safety`, re-exported here).

The fast path (a single Blosc/Zstd/LZ4/GZip compressor, native byte order, C order) decompresses straight into
the caller's ``out`` buffer (a cache slot) after checking the size the stream declares.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CodecError
from ._codecs_safety import (  # noqa: F401
    _V3_BYTES_BYTES,
    _V3_KNOWN,
    SAFE_NUMCODECS,
    _check_object,
    _refuse,
    _unsafe_object,
    check_safety,
    vlen_codec,
)
from ._meta import ELEMENTWISE_A2A, VLEN_CODECS, ArrayInfo

__all__ = [
    "ChunkDecoder", "DecodeError", "build_decoder", "check_safety", "decode_bytes", "stored_as_is", "v3_bytes_steps",
    "vlen_codec", "SAFE_NUMCODECS",
]  # fmt: skip

_OUT_CAPABLE = frozenset({"blosc", "zstd", "lz4", "gzip"})


class DecodeError(Exception):
    """A chunk's bytes could not be decoded; the store wraps it in a ChunkReadError naming array and chunk."""


def _numcodec(config: dict, info: ArrayInfo, where: str) -> Any:
    import numcodecs

    try:
        return numcodecs.get_codec(dict(config))
    except (ValueError, TypeError, KeyError) as e:
        raise CodecError(f"array {info.name!r} ({where}): codec {config!r} is not available in numcodecs ({e})") from None


def _expected_size(codec_id: str, raw: bytes | memoryview) -> int | None:
    """Decoded size declared in a compressed stream's header, or None when the format does not say."""
    n = len(raw)
    if codec_id == "blosc" and n >= 16:
        return struct.unpack_from("<I", raw, 4)[0]
    if codec_id == "lz4" and n >= 4:
        return struct.unpack_from("<i", raw, 0)[0]
    if codec_id == "gzip" and n >= 18:
        return struct.unpack_from("<I", raw, n - 4)[0]
    if codec_id == "zstd" and n >= 6 and struct.unpack_from("<I", raw, 0)[0] == 0xFD2FB528:
        fhd = raw[4]
        fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
        size = (1 if single else 0, 2, 4, 8)[fcs_flag]
        if size == 0 or n < pos + size:
            return None
        v = int.from_bytes(bytes(raw[pos : pos + size]), "little")
        return v + 256 if size == 2 else v
    return None


def _direct_decompress(codec_id: str) -> Callable[[Any, Any], Any] | None:
    """numcodecs' ``decompress(source, dest)`` of a codec id (blosc, zstd, lz4), or None where it has none.

    They take any contiguous writable buffer as ``dest``, check its size against the stream's, and release the
    GIL while they work; Blosc's picks its threading per call as ``Blosc.decode`` does.
    """
    import importlib

    if codec_id not in ("blosc", "zstd", "lz4"):
        return None
    try:
        fn = importlib.import_module(f"numcodecs.{codec_id}").decompress
    except (ImportError, AttributeError):
        return None
    return fn if callable(fn) else None


class ChunkDecoder:
    """Decodes the stored bytes of one chunk of one array. Stateless after construction: thread-safe.

    Parameters
    ----------
    info : ArrayInfo
        The array (for a sharded array, the decoder of its inner chunks is built with the inner codec list).
    bytes_steps : list of (codec id, numcodecs codec)
        Bytes-to-bytes decoders, in decode order.
    array_steps : list of callables
        Array-to-array decoders (v2 filters, v3 transpose), in decode order, applied after the bytes are viewed.
    stored_dtype : numpy.dtype
        Dtype of the serialised elements (with its byte order).
    stored_shape : tuple of int
        Shape of the serialised chunk (the chunk shape, permuted by v3 transpose, reversed for v2 F order).
    """

    def __init__(
        self,
        info: ArrayInfo,
        chunks: tuple[int, ...],
        bytes_steps: list[tuple[str, Any]],
        buffer_steps: list[Any],
        array_steps: list[Callable[[np.ndarray], np.ndarray]],
        stored_dtype: np.dtype,
        stored_shape: tuple[int, ...],
    ):
        self.name = info.name
        self.chunks = tuple(chunks)
        self.dtype = info.dtype
        self.count = int(math.prod(chunks))
        self.nbytes = self.count * self.dtype.itemsize
        self._bytes_steps = bytes_steps
        self._buffer_steps = buffer_steps  # v2 filters: numcodecs codecs on the flat buffer
        self._array_steps = array_steps
        self._stored_dtype = stored_dtype
        self._stored_shape = stored_shape
        native = stored_dtype.byteorder in ("=", "|") or stored_dtype == stored_dtype.newbyteorder("=")
        self._fast = (
            not buffer_steps and not array_steps and native and self.dtype.kind != "O"
            and len(bytes_steps) <= 1 and all(cid in _OUT_CAPABLE for cid, _ in bytes_steps)
        )  # fmt: skip
        # the fast path's decompressor: numcodecs' module-level function where it has one (the codec object's
        # decode adds a buffer normalisation per call that the fast path does not need), else the codec's decode
        self._decompress: Callable[[Any, Any], Any] | None = None
        if self._fast and bytes_steps:
            cid, codec = bytes_steps[0]
            self._decompress = _direct_decompress(cid) or codec.decode

    @property
    def raw_is_chunk(self) -> bool:
        """Whether a chunk's stored bytes *are* the decoded chunk (no codec, native byte order, C order): then a
        reader may read them straight into a cache slot, and a slot holding exactly :attr:`nbytes` stored bytes is
        the decoded chunk."""
        return self._fast and not self._bytes_steps

    def decode(self, raw: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one chunk.

        Parameters
        ----------
        raw : bytes-like
            The stored bytes of the chunk.
        out : numpy.ndarray, optional
            C-contiguous buffer of ``chunk_nbytes`` bytes (any shape/dtype view of it) to decode into.

        Returns
        -------
        numpy.ndarray
            The chunk, shape :attr:`chunks`, dtype :attr:`dtype`, C-contiguous (a view of ``out`` when given).

        Raises
        ------
        DecodeError
            Corrupt or truncated bytes, or a decoded size that is not the chunk's.
        """
        dest = self.view_out(out)
        try:
            if self._fast:
                self._decode_fast(raw, dest if out is None else out)
                return dest
            # no overflow or invalid-value warnings: what writers store makes them in readable chunks: the NaN
            # zarr-python pads an edge chunk with, which fixedscaleoffset stores as INT_MIN (-inf in float16); an inf
            # among float values under delta, stored as inf then y - inf, whose decode sums inf + -inf. The values
            # are zarr-python's either way; a warning per chunk and thread is noise, and where warnings are errors it
            # made such a chunk a ChunkReadError. (Also silenced: a stored NaN that a filter casts to an integer,
            # which zarr-python warns about: review r3 M2, a trade-off.)
            with np.errstate(over="ignore", invalid="ignore"):
                result = self._decode_general(raw)
        except DecodeError:
            raise
        except Exception as e:  # numcodecs raises RuntimeError/ValueError/EOFError/zlib.error on bad input
            raise DecodeError(f"cannot decode: {type(e).__name__}: {e}") from e
        if dest is None:
            return result
        dest[...] = result
        return dest

    def view_out(self, out: np.ndarray | None) -> np.ndarray | None:
        """``out`` viewed as one chunk (checked: C-contiguous, ``nbytes`` long); a new buffer or None without."""
        if out is None:
            return np.empty(self.chunks, self.dtype) if self._fast else None
        if self.dtype.kind == "O":
            raise ValueError(
                f"out: array {self.name!r} holds variable-length values (dtype object): its chunks are arrays of "
                "Python objects and cannot be decoded into a byte buffer; decode it with out=None"
            )
        if not out.flags.c_contiguous or out.nbytes != self.nbytes:
            raise ValueError(
                f"out: expected a C-contiguous buffer of {self.nbytes} bytes for a chunk of {self.name!r}, "
                f"got {out.nbytes} bytes (contiguous={out.flags.c_contiguous})"
            )
        return out.reshape(-1).view(self.dtype).reshape(self.chunks)

    def _decode_fast(self, raw: bytes | memoryview, dest: np.ndarray) -> None:
        """Decode into ``dest``: a C-contiguous buffer of :attr:`nbytes` bytes, any shape and dtype."""
        if not self._bytes_steps:  # no compressor: the bytes are the chunk
            if len(raw) != self.nbytes:
                raise DecodeError(f"stored {len(raw)} bytes uncompressed, expected {self.nbytes}")
            dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, np.uint8)
            return
        cid, codec = self._bytes_steps[0]
        declared = _expected_size(cid, raw)
        if declared is None or (cid == "gzip" and declared != self.nbytes):
            # gzip's trailer holds only the last member's size (mod 2**32): several members or zero padding after
            # the member (zarr-python reads both) or a truncated stream make it another number, so the codec's own
            # decode decides, and then the decoded size is checked
            try:
                buf = codec.decode(raw)
            except Exception as e:  # EOFError, zlib.error, BadGzipFile, ...
                raise DecodeError(f"{cid} stream truncated or corrupt ({len(raw)} stored bytes): "
                                  f"{type(e).__name__}: {e}") from e  # fmt: skip
            if memoryview(buf).nbytes != self.nbytes:
                raise DecodeError(f"decoded {memoryview(buf).nbytes} bytes, expected {self.nbytes}")
            dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(buf, np.uint8)
            return
        if declared != self.nbytes:
            raise DecodeError(f"{cid} stream declares {declared} decoded bytes, expected {self.nbytes}")
        if cid != "gzip":
            self._decompress(raw, dest)  # type: ignore[misc]
            return
        # gzip's trailer says the chunk's size, but only the last member's: members before it decode too, and
        # numcodecs then stops at the end of ``dest`` ("Unable to fit data into `out`", its only ValueError here)
        try:
            self._decompress(raw, dest)  # type: ignore[misc]
        except ValueError as e:
            raise DecodeError(f"gzip stream decodes to more than {self.nbytes} bytes, the chunk's size "
                              f"({len(raw)} stored bytes): corrupt, or not this array's chunk") from e  # fmt: skip
        except Exception as e:  # EOFError, zlib.error, BadGzipFile, ...
            raise DecodeError(f"gzip stream truncated or corrupt ({len(raw)} stored bytes): "
                              f"{type(e).__name__}: {e}") from e  # fmt: skip

    def _decode_general(self, raw: bytes | memoryview) -> np.ndarray:
        from numcodecs.compat import ensure_ndarray_like

        buf: Any = raw
        for _, codec in self._bytes_steps:
            buf = codec.decode(buf)
        for codec in self._buffer_steps:
            buf = codec.decode(buf)
        arr = ensure_ndarray_like(buf)
        if self.dtype.kind == "O":
            arr = np.asarray(arr, dtype=object).reshape(-1)
        else:
            arr = arr.reshape(-1).view(np.uint8)
            expect = self.count * self._stored_dtype.itemsize
            if arr.nbytes != expect:
                raise DecodeError(f"decoded {arr.nbytes} bytes, expected {expect}")
            arr = arr.view(self._stored_dtype)
        if arr.size != self.count:
            raise DecodeError(f"decoded {arr.size} elements, expected {self.count}")
        arr = arr.reshape(self._stored_shape)
        for step in self._array_steps:
            arr = step(arr)
        return np.ascontiguousarray(arr, dtype=self.dtype)


def build_decoder(
    info: ArrayInfo, where: str, *, allow_unsafe: bool = False, codecs: tuple[dict, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
) -> ChunkDecoder:
    """The decoder of ``info``'s chunks (of its inner chunks when ``codecs``/``chunks`` are a shard's inner chain).

    Raises
    ------
    CodecError
        Unknown codec, object dtype, or object/pickle codec (unless ``allow_unsafe``), or a codec chain fastload
        cannot decode.
    """
    chunks = tuple(info.chunks if chunks is None else chunks)
    _check_object(info, where, allow_unsafe, codecs)
    if info.zarr_format == 2:
        return _build_v2(info, where, allow_unsafe, chunks)
    return _build_v3(info, where, allow_unsafe, info.codecs if codecs is None else codecs, chunks)


def _build_v2(info: ArrayInfo, where: str, allow_unsafe: bool, chunks: tuple[int, ...]) -> ChunkDecoder:
    # info.codecs = filters + (compressor,): decoding runs them all in reverse, so the compressor goes first
    for i, c in enumerate(info.codecs):
        if c["id"] in VLEN_CODECS and i == 0:
            continue  # the object codec of a string array (checked against the dtype: _check_object)
        if c["id"] not in SAFE_NUMCODECS:
            _refuse(info, where, f"codec {c['id']!r}", allow_unsafe)
    objs = [(c["id"], _numcodec(c, info, where)) for c in info.codecs]
    if objs and objs[0][0] in VLEN_CODECS:
        objs[0] = (objs[0][0], _VLenStream(objs[0][1], math.prod(chunks)))
    bytes_steps = [objs.pop()] if objs else []
    buffer_steps = [o for _, o in reversed(objs)]
    stored = info.dtype
    if info.dtype.itemsize > 1 and info.dtype.kind != "O":
        stored = info.dtype.newbyteorder("<" if info.endian == "little" else ">")
    array_steps: list[Callable[[np.ndarray], np.ndarray]] = []
    shape = chunks
    if info.order == "F":  # an F-order chunk is the C-order bytes of its transpose
        shape = chunks[::-1]
        array_steps.append(np.transpose)
    return ChunkDecoder(info, chunks, bytes_steps, buffer_steps, array_steps, stored, shape)


def _build_v3(
    info: ArrayInfo, where: str, allow_unsafe: bool, codecs: tuple[dict, ...], chunks: tuple[int, ...]
) -> ChunkDecoder:
    names = [c["name"] for c in codecs]
    a2b = [i for i, n in enumerate(names) if n in ("bytes", "sharding_indexed", *VLEN_CODECS)]
    if len(a2b) != 1:
        raise CodecError(
            f"array {info.name!r} ({where}): codec chain {names} has no array-to-bytes codec fastload knows "
            "(expected exactly one of 'bytes', 'sharding_indexed', 'vlen-utf8' or 'vlen-bytes')"
        )
    pos = a2b[0]
    if names[pos] == "sharding_indexed":
        raise CodecError(f"array {info.name!r} ({where}): nested sharding is not supported")
    if names[pos] in VLEN_CODECS:
        return _build_v3_vlen(info, where, allow_unsafe, codecs, pos, chunks)
    stored_shape = chunks
    array_steps: list[Callable[[np.ndarray], np.ndarray]] = []
    dtype = info.dtype  # what the next array-to-array codec encodes (element-wise ones may change it)
    for c in codecs[:pos]:
        if c["name"] in ELEMENTWISE_A2A:
            cid, conf = c["name"].split(".", 1)[1], c.get("configuration") or {}
            codec = _numcodec({"id": cid, **conf}, info, where)
            array_steps.append(lambda a, codec=codec, dt=dtype: _decode_elementwise(codec, a, dt))
            dtype = _encoded_dtype(cid, conf, dtype, info, where)
            continue
        if c["name"] in WHOLE_CHUNK_A2A:
            identity = list(range(len(chunks)))
            if any(x["name"] == "transpose" and list(x["configuration"].get("order", ())) != identity
                   for x in codecs[:pos]):  # fmt: skip
                raise CodecError(
                    f"array {info.name!r} ({where}): codec chain {names}: {c['name']!r} with a 'transpose' (in this "
                    "chain or outside a shard holding it) is not supported: zarr-python runs it over the transposed "
                    "chunk in memory order and reads some such chunks back scrambled, so fastload does not guess "
                    "which reading was meant; expected no transpose with it (rewrite the array without one)"
                )  # fmt: skip
            cid, conf = c["name"].split(".", 1)[1], c.get("configuration") or {}
            codec = _numcodec({"id": cid, **conf}, info, where)
            array_steps.append(lambda a, codec=codec, dt=dtype: _decode_whole_chunk(codec, a, dt))
            dtype = _encoded_dtype(cid, conf, dtype, info, where)
            continue
        if c["name"] != "transpose":
            raise CodecError(
                f"array {info.name!r} ({where}): array-to-array codec {c['name']!r} is not one fastload decodes "
                f"(it reads 'transpose', {sorted(WHOLE_CHUNK_A2A | ELEMENTWISE_A2A)})"
            )
        order = tuple(c["configuration"].get("order", ()))
        if sorted(order) != list(range(len(chunks))):
            raise CodecError(f"array {info.name!r} ({where}): transpose order {list(order)} is not a permutation")
        stored_shape = tuple(stored_shape[o] for o in order)
        inverse = tuple(int(i) for i in np.argsort(order))
        array_steps.append(lambda a, inv=inverse: a.transpose(inv))
    array_steps.reverse()
    endian = codecs[pos]["configuration"].get("endian", "little")
    if endian not in ("little", "big"):
        raise CodecError(f"array {info.name!r} ({where}): bytes codec endian {endian!r}, expected little or big")
    stored = dtype
    if dtype.itemsize > 1 and dtype.kind != "O":
        stored = dtype.newbyteorder("<" if endian == "little" else ">")
    return ChunkDecoder(info, chunks, v3_bytes_steps(info, where, allow_unsafe, codecs[pos + 1 :]), [], array_steps,
                        stored, stored_shape)  # fmt: skip


def _build_v3_vlen(
    info: ArrayInfo, where: str, allow_unsafe: bool, codecs: tuple[dict, ...], pos: int, chunks: tuple[int, ...]
) -> ChunkDecoder:
    """A v3 variable-length array: ``vlen-utf8``/``vlen-bytes`` turns the chunk (C order) into bytes, then
    bytes-to-bytes codecs. Nothing may come before it: zarr-python 3.1 writes a ``transpose`` there in the wrong
    element order (it flattens the transposed view in memory order) and reads it back scrambled, so no reading of
    such a chunk is right."""
    names = [c["name"] for c in codecs]
    if pos:
        raise CodecError(
            f"array {info.name!r} ({where}): codec chain {names}: {names[:pos]} before {names[pos]!r} is not "
            f"supported (zarr-python writes a transpose before it in the wrong element order); expected "
            f"[{names[pos]!r}, bytes-to-bytes codecs...]"
        )
    codec = _VLenStream(_numcodec({"id": names[pos]}, info, where), math.prod(chunks))
    return ChunkDecoder(info, chunks, v3_bytes_steps(info, where, allow_unsafe, codecs[pos + 1 :]), [codec], [],
                        np.dtype(object), chunks)  # fmt: skip


WHOLE_CHUNK_A2A = frozenset({"numcodecs.delta"})
"""v3 array-to-array codecs fastload decodes that act on the chunk as a whole (delta: a running sum over its
elements in memory order), so not before ``sharding_indexed`` (:class:`~._shard.ShardIndex` refuses them there)."""


def _decode_whole_chunk(codec: Any, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Undo a whole-chunk numcodecs codec (:data:`WHOLE_CHUNK_A2A`) as zarr-python does: numcodecs decodes the
    chunk (C order: no transpose comes with it, :func:`_build_v3`) and the flat result is put back in the chunk's
    shape. The values are first put in native byte order (a big-endian ``bytes`` codec's): numcodecs reinterprets
    the bytes as its ``dtype`` (zarr-python 3.1 does not, and misreads such chunks)."""
    native = a.astype(a.dtype.newbyteorder("="), copy=False)
    return np.asarray(codec.decode(native)).reshape(a.shape).astype(dtype, copy=False)


def _encoded_dtype(cid: str, conf: dict, dtype: np.dtype, info: ArrayInfo, where: str) -> np.dtype:
    """The dtype an element-wise numcodecs codec (:data:`ELEMENTWISE_A2A`) encodes ``dtype`` to."""
    name = {"quantize": "astype", "fixedscaleoffset": "astype", "astype": "encode_dtype", "delta": "astype"}.get(cid)
    to = conf.get(name) if name else None
    if cid == "delta" and to is None:  # numcodecs' Delta encodes to its dtype when astype is not given
        to = conf.get("dtype")
    try:
        return dtype if to is None else np.dtype(to).newbyteorder("=")
    except TypeError:
        raise CodecError(f"array {info.name!r} ({where}): codec 'numcodecs.{cid}' {name} {to!r} is not a dtype") from None


def _decode_elementwise(codec: Any, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Undo an element-wise numcodecs codec on a decoded array ``a`` (any byte order); the result is ``dtype``."""
    flat = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")).reshape(-1)
    return np.asarray(codec.decode(flat)).reshape(a.shape).astype(dtype, copy=False)


def v3_bytes_steps(
    info: ArrayInfo, where: str, allow_unsafe: bool, codecs: tuple[dict, ...]
) -> list[tuple[str, Any]]:
    """Decoders of the v3 bytes-to-bytes ``codecs`` (as listed, i.e. in encode order), in decode order.

    Raises
    ------
    CodecError
        A codec fastload does not know, or one it refuses without ``allow_unsafe``.
    """
    bytes_steps: list[tuple[str, Any]] = []
    for c in codecs:
        name, conf = c["name"], c.get("configuration") or {}
        if name == "blosc":
            bytes_steps.append(("blosc", _numcodec({"id": "blosc"}, info, where)))
        elif name == "zstd":
            bytes_steps.append(("zstd", _numcodec({"id": "zstd", "level": conf.get("level", 0)}, info, where)))
        elif name == "gzip":
            bytes_steps.append(("gzip", _numcodec({"id": "gzip", "level": conf.get("level", 5)}, info, where)))
        elif name == "crc32c":
            bytes_steps.append(("crc32c", _Crc32c()))
        elif name.startswith("numcodecs."):
            cid = name.split(".", 1)[1]
            if cid not in SAFE_NUMCODECS:
                _refuse(info, where, f"codec {name!r}", allow_unsafe)
            bytes_steps.append((cid, _numcodec({"id": cid, **conf}, info, where)))
        else:
            _refuse(info, where, f"unknown codec {name!r}", allow_unsafe)
            raise CodecError(f"array {info.name!r} ({where}): codec {name!r} is unknown to fastload and numcodecs")
    bytes_steps.reverse()
    return bytes_steps


def decode_bytes(steps: list[tuple[str, Any]], raw: bytes | memoryview) -> bytes | memoryview:
    """Run bytes-to-bytes decoders (:func:`v3_bytes_steps`) over ``raw``; DecodeError on bad input."""
    buf: Any = raw
    try:
        for _, codec in steps:
            buf = codec.decode(buf)
    except DecodeError:
        raise
    except Exception as e:  # numcodecs raises RuntimeError/ValueError/EOFError/zlib.error on bad input
        raise DecodeError(f"cannot decode: {type(e).__name__}: {e}") from e
    return buf


def stored_as_is(info: ArrayInfo) -> bool:
    """Whether every stored chunk of ``info`` is its decoded chunk's bytes (:attr:`ChunkDecoder.raw_is_chunk`; a
    sharded array never is: its chunks are ranges of a shard). False where no decoder can be built."""
    if info.shard is not None or info.dtype.kind in "OmM":  # objects, datetimes: not plain buffer bytes
        return False
    try:
        return build_decoder(info, info.name).raw_is_chunk
    except CodecError:
        return False


class _VLenStream:
    """numcodecs' ``VLenUTF8``/``VLenBytes`` decode, after checking the stream's item count (its first 4 bytes,
    little-endian) is the chunk's and that the stream can hold that many items (each carries a 4-byte length):
    numcodecs allocates that many object slots before it reads any item, so a corrupt 4-byte header, or metadata
    claiming a huge chunk over a short file, would otherwise claim gigabytes."""

    def __init__(self, codec: Any, count: int):
        self.codec, self.count = codec, int(count)

    def decode(self, buf: Any, out: Any = None) -> Any:
        mv = memoryview(buf).cast("B")
        if mv.nbytes < 4:
            raise DecodeError(f"variable-length stream of {mv.nbytes} bytes, too short to hold its item count")
        n = struct.unpack_from("<I", mv, 0)[0]
        if n != self.count:
            raise DecodeError(f"variable-length stream holds {n} items, expected {self.count} (the chunk's)")
        if mv.nbytes < 4 + 4 * n:
            raise DecodeError(f"variable-length stream of {mv.nbytes} bytes is too short for its {n} items (each "
                              "needs at least 4 bytes)")
        return self.codec.decode(buf)


class _Crc32c:
    """v3 ``crc32c``: the last 4 bytes are the little-endian CRC32C of the rest; checked, then stripped."""

    def decode(self, buf: Any, out: Any = None) -> memoryview:
        import google_crc32c

        mv = memoryview(buf).cast("B")
        if mv.nbytes < 4:
            raise DecodeError(f"crc32c: {mv.nbytes} bytes, too short to hold a checksum")
        body, stored = mv[:-4], struct.unpack("<I", mv[-4:])[0]
        computed = google_crc32c.value(bytes(body))
        if computed != stored:
            raise DecodeError(f"crc32c checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
        return body
