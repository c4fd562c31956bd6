"""Which chunks a set of boxes touches, where their bytes lie, and a plain numcodecs decode of them.

Why this exists: the comparison needs two things no loader hands out the same way: (i) the roof, the raw
read+decode rate of exactly the chunks the samples need, measured with no loader machinery at all, and (ii) the
decoded and stored bytes each peer pays for, which peers do not report. Both need chunk geometry, chunk file
keys, shard indexes and a decoder. This module builds them from zarr-python's *parsed metadata* (read once, not
timed) and then reads chunk files with plain ``open``/``os.pread`` and decodes them with numcodecs, so the roof
shares no code with fastload's reader.

Decoding covers what the benchmarks write: v2 filters + compressor (any numcodecs codec); v3 ``bytes``,
``transpose``, ``blosc``, ``zstd``, ``gzip``, ``crc32c``, ``numcodecs.*`` and ``sharding_indexed`` (one level).
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from typing import Any

import numpy as np

from fastload._zarr_location import zarr_location

from .peers._base import FieldSpec, StoreSpec, x_ranges

__all__ = ["ArrayChunks", "open_chunk_maps", "box_chunks", "window_chunks", "batch_decodes"]

_MISSING = 2**64 - 1


def _bytes_codec(c: Any) -> Any:
    """A numcodecs codec for one v3 bytes->bytes codec object of zarr-python, or ``"crc32c"``."""
    import numcodecs

    kind = type(c).__name__
    if kind == "BloscCodec":
        return numcodecs.Blosc()
    if kind == "ZstdCodec":
        return numcodecs.Zstd()
    if kind == "GzipCodec":
        return numcodecs.GZip()
    if kind == "Crc32cCodec":
        return "crc32c"
    cfg = getattr(c, "codec_config", None)
    if isinstance(cfg, dict) and "id" in cfg:
        return numcodecs.get_codec(dict(cfg))
    raise NotImplementedError(f"no plain decoder for the v3 codec {c!r}")


class _Chain:
    """bytes -> ndarray of ``shape`` for one chunk, v3 style (array->array, array->bytes, bytes->bytes)."""

    def __init__(self, codecs: tuple[Any, ...], shape: tuple[int, ...], dtype: np.dtype):
        self.order: tuple[int, ...] | None = None
        self.endian = "<"
        self.b2b: list[Any] = []
        for c in codecs:
            kind = type(c).__name__
            if kind == "TransposeCodec":
                self.order = tuple(int(i) for i in c.order)
            elif kind == "BytesCodec":
                # zarr < 3.2 holds an Endian enum, zarr >= 3.2 the string ("big"/"little"/None)
                self.endian = ">" if str(getattr(c.endian, "value", c.endian)) == "big" else "<"
            elif kind == "ShardingCodec":
                raise NotImplementedError("nested sharding is not decoded by the roof")
            else:
                self.b2b.append(_bytes_codec(c))
        self.shape = shape
        self.dtype = np.dtype(dtype).newbyteorder(self.endian) if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)

    def decode(self, raw: bytes) -> np.ndarray:
        buf: Any = raw
        for c in reversed(self.b2b):
            buf = memoryview(buf)[:-4] if c == "crc32c" else c.decode(buf)
        stored = self.shape if self.order is None else tuple(self.shape[i] for i in self.order)
        a = np.frombuffer(buf, dtype=self.dtype).reshape(stored)
        if self.order is not None:
            a = a.transpose(np.argsort(self.order))
        return a.astype(self.dtype.newbyteorder("="), copy=False)


class ArrayChunks:
    """Chunk geometry, file keys, raw reads and a plain decoder of one zarr array of a local store.

    Chunk indices are in units of :attr:`chunks` (the inner chunk of a sharded array), as in fastload.
    """

    def __init__(self, root: str, name: str, zarr_format: int):
        import zarr

        with warnings.catch_warnings():  # numcodecs codecs in v3 arrays: zarr warns on every open; we know
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
            arr = zarr.open_array(store=zarr_location(root), path=name, mode="r", zarr_format=zarr_format)
        meta = arr.metadata
        self.root, self.name = root, name
        self.shape = tuple(int(s) for s in arr.shape)
        self.chunks = tuple(int(c) for c in arr.chunks)
        shards = getattr(arr, "shards", None)
        self.shard = tuple(int(s) for s in shards) if shards is not None else None
        self.dtype = np.dtype(arr.dtype)
        self.chunk_nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        self._encode = meta.encode_chunk_key
        self._index: dict[tuple[int, ...], np.ndarray | None] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        if zarr_format == 2:
            native = meta.dtype.to_native_dtype()
            self._v2 = (list(meta.filters or ()), meta.compressor, np.dtype(native), meta.order)
            self._chain = None
        else:
            self._v2 = None
            codecs = tuple(meta.codecs)
            if type(codecs[0]).__name__ == "ShardingCodec":
                sh = codecs[0]
                self._chain = _Chain(tuple(sh.codecs), self.chunks, self.dtype)
                n = int(np.prod([s // c for s, c in zip(self.shard, self.chunks)]))
                has_crc = any(type(c).__name__ == "Crc32cCodec" for c in sh.index_codecs)
                self._index_len = 16 * n + (4 if has_crc else 0)
                self._index_at_end = str(getattr(sh.index_location, "value", sh.index_location)) == "end"
            else:
                self._chain = _Chain(codecs, self.chunks, self.dtype)
        self._fast = self._fast_path()

    # -- keys and bytes ----------------------------------------------------------------------------------------
    def _file(self, key: str) -> str:
        return os.path.join(self.root, self.name, *key.split("/"))

    def _shard_of(self, chunk: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        per = tuple(s // c for s, c in zip(self.shard, self.chunks))  # type: ignore[arg-type]
        shard = tuple(c // p for c, p in zip(chunk, per))
        local = tuple(c % p for c, p in zip(chunk, per))
        return shard, int(np.ravel_multi_index(local, per))

    def _shard_index(self, shard: tuple[int, ...]) -> np.ndarray | None:
        with self._lock:
            if shard in self._index:
                return self._index[shard]
        path = self._file(self._encode(shard))
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                start = size - self._index_len if self._index_at_end else 0
                raw = os.pread(fh.fileno(), self._index_len, start)
            index: np.ndarray | None = np.frombuffer(raw[: self._index_len - (self._index_len % 16)], "<u8")
            index = index.reshape(-1, 2)  # type: ignore[union-attr]
        except FileNotFoundError:
            index = None
        with self._lock:
            self._index[shard] = index
        return index

    def location(self, chunk: tuple[int, ...]) -> tuple[str, int, int] | None:
        """``(file, offset, nbytes)`` of a chunk's stored bytes; ``None`` for a missing chunk."""
        if self.shard is None:
            key = self._encode(chunk)
            path = self._file(key)
            size = self._sizes.get(path)
            if size is None:
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    return None
                self._sizes[path] = size
            return path, 0, size
        shard, pos = self._shard_of(chunk)
        index = self._shard_index(shard)
        if index is None or int(index[pos, 0]) == _MISSING:
            return None
        return self._file(self._encode(shard)), int(index[pos, 0]), int(index[pos, 1])

    def read_raw(self, chunk: tuple[int, ...]) -> bytes | None:
        """Stored bytes of one chunk with one plain read (``None`` when missing)."""
        loc = self.location(chunk)
        if loc is None:
            return None
        path, offset, nbytes = loc
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)

    def decode(self, raw: bytes) -> np.ndarray:
        """Decode one chunk's stored bytes to a chunk-shaped array (native byte order)."""
        if self._chain is not None:
            return self._chain.decode(raw)
        filters, compressor, dtype, order = self._v2  # type: ignore[misc]
        buf: Any = compressor.decode(raw) if compressor is not None else raw
        for f in reversed(filters):
            buf = f.decode(buf)
        a = np.frombuffer(buf, dtype=dtype).reshape(self.chunks, order=order)
        return a.astype(dtype.newbyteorder("="), copy=False)

    def decode_into(self, raw: bytes, out: np.ndarray) -> None:
        """Decode into ``out``, a flat uint8 buffer of :attr:`chunk_nbytes` bytes.

        Where the chain is one compressor (and maybe a crc32c) over little-endian C-order bytes, the common case,
        the codec writes straight into ``out``; otherwise this goes through :meth:`decode` and a copy.
        """
        if self._fast is None:
            out[:] = self.decode(raw).reshape(-1).view(np.uint8)
            return
        codec, trim = self._fast
        src = memoryview(raw)[:-4] if trim else raw
        if codec is None:
            out[:] = np.frombuffer(src, np.uint8)
        else:
            codec.decode(src, out=out)

    def _fast_path(self) -> tuple[Any, bool] | None:
        """``(codec or None, strip a trailing crc32c)`` when :meth:`decode_into` may skip the general chain."""
        if self.dtype.itemsize > 1 and not (self.dtype.byteorder == "<" or (self.dtype.byteorder == "=" and
                                                                              np.little_endian)):  # fmt: skip
            return None
        if self._chain is None:
            filters, compressor, dtype, order = self._v2  # type: ignore[misc]
            stored_little = dtype.itemsize == 1 or dtype.byteorder == "<" or (dtype.byteorder == "=" and np.little_endian)
            ok = not filters and (order == "C" or len(self.chunks) < 2) and stored_little
            return (compressor, False) if ok else None
        c = self._chain
        if c.order is not None or c.endian != "<":
            return None
        trim = bool(c.b2b) and c.b2b[-1] == "crc32c"
        rest = c.b2b[:-1] if trim else c.b2b
        if len(rest) > 1 or "crc32c" in rest:
            return None
        return (rest[0] if rest else None, trim)

    def files(self) -> list[str]:
        """Every file under this array's folder (chunks, shards, metadata)."""
        out = []
        for d, _, names in os.walk(os.path.join(self.root, self.name)):
            out.extend(os.path.join(d, n) for n in names)
        return out


def open_chunk_maps(spec: StoreSpec) -> dict[str, ArrayChunks]:
    """An :class:`ArrayChunks` per array the spec's fields use."""
    return {a: ArrayChunks(spec.path, a, spec.zarr_format) for a in spec.arrays}


def _span(a: int, b: int, c: int) -> range:
    """Chunk indices (chunk length ``c``) of the half-open index range ``[a, b)``."""
    return range(a // c, (b - 1) // c + 1)


def _chunk_sets(field: FieldSpec, geom: ArrayChunks, t_points, y_range, x_ranges_) -> list[list[int]]:
    t, fa, lev, y, x = field.axes
    c = geom.chunks
    sets: list[list[int]] = [[0]] * len(geom.shape)
    if t is not None:
        sets[t] = sorted({int(p) // c[t] for p in t_points})
    if fa is not None:
        sets[fa] = [int(field.field_index) // c[fa]]  # type: ignore[arg-type]
    if lev is not None:
        levels = field.level_index if field.level_index is not None else range(geom.shape[lev])
        sets[lev] = sorted({int(v) // c[lev] for v in levels})
    sets[y] = list(_span(*y_range, c[y]))
    sets[x] = sorted({i for a, b in x_ranges_ for i in _span(a, b, c[x])})
    return sets


def box_chunks(field: FieldSpec, spec: StoreSpec, geom: ArrayChunks, box) -> list[tuple[int, ...]]:
    """Chunks of ``field``'s array that one box ``(t0, y0, x0)`` touches (each once)."""
    t0, y0, x0 = (int(v) for v in box)
    bt, bh, bw = field.box
    t_points = t0 + np.arange(bt) * spec.time_step
    xr = x_ranges(x0, bw, spec.nx, spec.periodic_x)
    return list(itertools.product(*_chunk_sets(field, geom, t_points, (y0, y0 + bh), xr)))


def window_chunks(field: FieldSpec, spec: StoreSpec, geom: ArrayChunks, t0: int) -> list[tuple[int, ...]]:
    """Chunks of the whole globe of ``field`` (its levels) for the time window starting at ``t0``."""
    t_points = int(t0) + np.arange(field.box[0]) * spec.time_step
    return list(itertools.product(*_chunk_sets(field, geom, t_points, (0, spec.ny), [(0, spec.nx)])))


def batch_decodes(spec: StoreSpec, geoms: dict[str, ArrayChunks], boxes: np.ndarray, model: str):
    """The chunk decodes a loader pays for one batch, as ``[(array, chunk), ...]`` (with repeats).

    ``model``: ``per_sample`` (every sample and field decodes the chunks it touches), ``per_window`` (every
    distinct time window decodes the whole globe once per array, AtmoRep's method), ``unique`` (each chunk the
    batch needs, once: what a chunk-aware loader with no cache between batches pays).
    """
    out: list[tuple[str, tuple[int, ...]]] = []
    if model == "per_sample":
        for box in boxes:
            for f in spec.fields:
                out.extend((f.array, c) for c in box_chunks(f, spec, geoms[f.array], box))
    elif model == "per_window":
        for t0 in np.unique(np.asarray(boxes)[:, 0]):
            seen: set[tuple[str, tuple[int, ...]]] = set()
            for f in spec.fields:
                seen.update((f.array, c) for c in window_chunks(f, spec, geoms[f.array], int(t0)))
            out.extend(sorted(seen))
    elif model == "unique":
        seen = set()
        for box in boxes:
            for f in spec.fields:
                seen.update((f.array, c) for c in box_chunks(f, spec, geoms[f.array], box))
        out.extend(sorted(seen))
    else:
        raise ValueError(f"decode model: expected per_sample, per_window or unique, got {model!r}")
    return out
