"""Zarr v3 ``sharding_indexed``: find the byte range of one inner chunk inside its shard.

Why this exists: a sharded store keeps many inner chunks in one object, with an index of ``(offset, nbytes)``
pairs at its start or end. Reading an inner chunk through zarr-python costs its whole per-chunk machinery; here
it is one cached index read per shard (thread-safe) plus one ranged read per inner chunk. An empty inner chunk
(offset = nbytes = 2**64 - 1) is missing and reads as the fill value.
"""

from __future__ import annotations

import math
import struct
import threading

import numpy as np

from ..errors import CodecError
from ._codecs import ChunkDecoder, DecodeError, build_decoder
from ._meta import ArrayInfo
from ._source import BaseByteSource

__all__ = ["ShardIndex"]

_EMPTY = np.uint64(2**64 - 1)


class ShardIndex:
    """Shard-index reader and inner-chunk decoder of one sharded array.

    Parameters
    ----------
    info : ArrayInfo
        A sharded array (``info.shard`` is not None).
    where : str
        The array's metadata location, for messages.
    allow_unsafe : bool
        Passed to the inner decoder.
    """

    def __init__(self, info: ArrayInfo, where: str, *, allow_unsafe: bool = False):
        assert info.shard is not None and info.chunks_per_shard is not None
        conf = next(c["configuration"] for c in info.codecs if c["name"] == "sharding_indexed")
        self.info = info
        self.cps = info.chunks_per_shard
        self.n = int(math.prod(self.cps))
        self.location = conf.get("index_location", "end")
        if self.location not in ("start", "end"):
            raise CodecError(f"array {info.name!r} ({where}): index_location {self.location!r}, expected start/end")
        idx_codecs = [c if isinstance(c, dict) else {"name": c} for c in conf.get("index_codecs") or []]
        names = [c["name"] for c in idx_codecs]
        if names not in (["bytes"], ["bytes", "crc32c"]):
            raise CodecError(
                f"array {info.name!r} ({where}): shard index codecs {names}; expected ['bytes'] or "
                "['bytes', 'crc32c']"
            )
        endian = (idx_codecs[0].get("configuration") or {}).get("endian", "little")
        self._index_dtype = np.dtype("<u8" if endian == "little" else ">u8")
        self.crc = len(names) == 2
        self.index_nbytes = 16 * self.n + (4 if self.crc else 0)
        self.decoder: ChunkDecoder = build_decoder(
            info, where, allow_unsafe=allow_unsafe, codecs=tuple(conf.get("codecs") or ()), chunks=info.chunks
        )
        self._cache: dict[tuple[int, ...], np.ndarray | None] = {}
        self._lock = threading.Lock()

    def index_request(self, shard: tuple[int, ...]) -> tuple[str, int, int]:
        """``(key, start, length)`` of the shard's index."""
        start = -self.index_nbytes if self.location == "end" else 0
        return self.info.key(tuple(s * c for s, c in zip(shard, self.cps))), start, self.index_nbytes

    def cached(self, shard: tuple[int, ...]) -> tuple[bool, np.ndarray | None]:
        """``(known, index)``: whether the shard's index was read already, and it (None: the shard is missing)."""
        with self._lock:
            if shard in self._cache:
                return True, self._cache[shard]
        return False, None

    def store_index(self, shard: tuple[int, ...], raw: bytes | None) -> np.ndarray | None:
        """Parse the raw index bytes of ``shard`` (None: shard missing), cache and return ``(n, 2)`` uint64."""
        if raw is None:
            index = None
        else:
            if len(raw) != self.index_nbytes:
                raise DecodeError(f"shard index: read {len(raw)} bytes, expected {self.index_nbytes} (truncated shard?)")
            body = raw
            if self.crc:
                import google_crc32c

                body, stored = raw[:-4], struct.unpack("<I", raw[-4:])[0]
                if google_crc32c.value(bytes(body)) != stored:
                    raise DecodeError("shard index: crc32c checksum mismatch")
            index = np.frombuffer(body, self._index_dtype).astype(np.uint64).reshape(self.n, 2)
        with self._lock:
            self._cache[shard] = index
        return index

    def local(self, chunk: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """``(shard index, position of the inner chunk in the shard's flattened index)``."""
        shard = tuple(c // n for c, n in zip(chunk, self.cps))
        within = tuple(c % n for c, n in zip(chunk, self.cps))
        pos = 0
        for w, n in zip(within, self.cps):  # C-order position (np.ravel_multi_index costs ~2 us per call)
            pos = pos * n + w
        return shard, pos

    def byte_range(self, index: np.ndarray | None, pos: int) -> tuple[int, int] | None:
        """``(offset, nbytes)`` of an inner chunk from its shard's index; None when the chunk is empty."""
        if index is None:
            return None
        off, nb = index[pos]
        if off == _EMPTY and nb == _EMPTY:
            return None
        return int(off), int(nb)

    def read(self, source: BaseByteSource, chunk: tuple[int, ...]) -> bytes | None:
        """Stored bytes of one inner chunk (None when missing); reads and caches the shard index if needed."""
        shard, pos = self.local(chunk)
        known, index = self.cached(shard)
        if not known:
            key, start, length = self.index_request(shard)
            index = self.store_index(shard, source.get_range(key, start, length))
        rng = self.byte_range(index, pos)
        if rng is None:
            return None
        raw = source.get_range(self.info.key(chunk), rng[0], rng[1])
        if raw is None or len(raw) != rng[1]:
            got = "nothing" if raw is None else f"{len(raw)} bytes"
            raise DecodeError(f"inner chunk at bytes {rng[0]}+{rng[1]} of its shard: read {got} (truncated shard?)")
        return raw
