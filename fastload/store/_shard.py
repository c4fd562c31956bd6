"""Zarr v3 ``sharding_indexed``: find the byte range of one inner chunk inside its shard.

Why this exists: a sharded store keeps many inner chunks in one object, with an index of ``(offset, nbytes)``
pairs at its start or end. Reading an inner chunk through zarr-python costs its whole per-chunk machinery; here
it is one cached index read per shard (thread-safe) plus one ranged read per inner chunk. An empty inner chunk
(offset = nbytes = 2**64 - 1) is missing and reads as the fill value.

The codecs around ``sharding_indexed`` in the array's chain are honoured:

- ``transpose`` codecs before it transpose the whole shard before it is cut into inner chunks. Each inner chunk
  is then a box of the array in array axes, stored transposed, so the inner decoder gets the same transpose in
  front of its own chain, and an inner chunk's place in the index is found in the transposed axis order.
- bytes-to-bytes codecs after it (zarr-python 3.1 appends ``zstd`` when given ``serializer=ShardingCodec(...)``;
  ``crc32c``) encode the whole shard object, index included, so no inner chunk can be read by byte range: the
  whole shard is read and decoded (zarr-python reads these shards whole too), its index and inner chunks are then
  ranges of the decoded shard. The last few decoded shards are kept (:data:`SHARD_CACHE_BYTES`), so reading the
  inner chunks of one shard one by one decodes it once, and a batched read decodes each shard once.

Any other codec before the sharding codec is refused at open (:class:`~fastload.errors.CodecError`).
"""

from __future__ import annotations

import collections
import math
import struct
import threading
from collections.abc import Sequence

import numpy as np

from ..errors import CodecError
from ._codecs import ChunkDecoder, DecodeError, build_decoder, decode_bytes, v3_bytes_steps
from ._meta import ArrayInfo, shard_perm
from ._source import BaseByteSource

__all__ = ["ShardIndex", "SHARD_CACHE_BYTES"]

_EMPTY = np.uint64(2**64 - 1)
SHARD_CACHE_BYTES = 256 * 2**20
"""Decoded whole shards kept per array (those with a bytes-to-bytes codec after the sharding codec); the most
recent one is kept whatever its size."""


def _named(c: object) -> dict:
    return dict(c) if isinstance(c, dict) else {"name": c, "configuration": {}}


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
        names = [c["name"] for c in info.codecs]
        k = names.index("sharding_indexed")
        conf = info.codecs[k]["configuration"]
        perm = shard_perm(info.codecs[:k], info.ndim)
        if perm is None:
            raise CodecError(
                f"array {info.name!r} ({where}): codec chain {names}: before 'sharding_indexed' fastload reads only "
                "'transpose' codecs (with a valid order); after it, bytes-to-bytes codecs (zstd, blosc, gzip, "
                "crc32c, numcodecs.*)"
            )
        self.info = info
        self.cps = info.chunks_per_shard  # inner chunks per shard, in array axes
        self.perm = perm  # axis i of the shard as the sharding codec sees it is array axis perm[i]
        self._cps_seen = tuple(self.cps[p] for p in perm)
        self.n = int(math.prod(self.cps))
        # bytes-to-bytes codecs after sharding_indexed: the shard is decoded whole (see the module docstring)
        self.whole = v3_bytes_steps(info, where, allow_unsafe, info.codecs[k + 1 :])
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
        inner = tuple(_named(c) for c in conf.get("codecs") or ())
        if perm != tuple(range(info.ndim)):  # the shard's transpose, per inner chunk
            inner = ({"name": "transpose", "configuration": {"order": list(perm)}},) + inner
        self.decoder: ChunkDecoder = build_decoder(info, where, allow_unsafe=allow_unsafe, codecs=inner,
                                                   chunks=info.chunks)  # fmt: skip
        self._cache: dict[tuple[int, ...], np.ndarray | None] = {}
        self._lock = threading.Lock()
        self._blobs: collections.OrderedDict[tuple[int, ...], bytes] = collections.OrderedDict()  # decoded shards
        self._blob_bytes = 0
        self._shard_locks: dict[tuple[int, ...], threading.Lock] = {}  # one reader decodes a shard, others wait

    def shard_key(self, shard: tuple[int, ...]) -> str:
        """Store key of a shard."""
        return self.info.key(tuple(s * c for s, c in zip(shard, self.cps)))

    def index_request(self, shard: tuple[int, ...]) -> tuple[str, int, int]:
        """``(key, start, length)`` of the shard's index."""
        start = -self.index_nbytes if self.location == "end" else 0
        return self.shard_key(shard), start, self.index_nbytes

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
        for p, n in zip(self.perm, self._cps_seen):  # C-order position in the shard's (transposed) axes
            pos = pos * n + within[p]  # (np.ravel_multi_index costs ~2 us per call)
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
        if self.whole:
            return self.read_many(source, [chunk])[0]
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

    def read_many(self, source: BaseByteSource, chunks: Sequence[tuple[int, ...]]) -> list[bytes | None]:
        """Stored bytes of many inner chunks (None where missing), in few storage requests: the indexes not yet
        cached in one batch of ranged reads, then the chunks in another; with codecs after the sharding codec,
        each shard not cached is read whole once and decoded."""
        if self.whole:
            return self._read_many_whole(source, chunks)
        locs = [self.local(c) for c in chunks]
        need = sorted({s for s, _ in locs if not self.cached(s)[0]})
        if need:
            for s, raw in zip(need, source.get_ranges([self.index_request(s) for s in need])):
                self.store_index(s, raw)
        ranges = [self.byte_range(self.cached(s)[1], p) for s, p in locs]
        todo = [(i, self.info.key(c), r) for i, (c, r) in enumerate(zip(chunks, ranges)) if r is not None]
        got = source.get_ranges([(k, r[0], r[1]) for _, k, r in todo])
        out: list[bytes | None] = [None] * len(chunks)
        for (i, _, r), raw in zip(todo, got):
            if raw is None or len(raw) != r[1]:
                raise DecodeError(f"inner chunk {chunks[i]} at bytes {r[0]}+{r[1]} of its shard: truncated shard")
            out[i] = raw
        return out

    # -- whole shards (bytes-to-bytes codecs after the sharding codec) ------------------------------------------
    def _read_many_whole(self, source: BaseByteSource, chunks: Sequence[tuple[int, ...]]) -> list[bytes | None]:
        locs = [self.local(c) for c in chunks]
        blobs: dict[tuple[int, ...], bytes | None] = {}
        for shard in dict.fromkeys(s for s, _ in locs):  # in order of first use, each once
            blobs[shard] = self._blob(source, shard)
        out: list[bytes | None] = []
        for c, (shard, pos) in zip(chunks, locs):
            blob = blobs[shard]
            rng = None if blob is None else self.byte_range(self.cached(shard)[1], pos)
            if rng is None:
                out.append(None)
                continue
            if rng[0] + rng[1] > len(blob):
                raise DecodeError(f"inner chunk {c} at bytes {rng[0]}+{rng[1]} of its decoded shard of "
                                  f"{len(blob)} bytes: corrupt shard index")  # fmt: skip
            out.append(blob[rng[0] : rng[0] + rng[1]])
        return out

    def _blob(self, source: BaseByteSource, shard: tuple[int, ...]) -> bytes | None:
        """The decoded shard (None when it is missing), from the cache or read and decoded; its index parsed."""
        with self._lock:
            if self._cache.get(shard, 0) is None:  # known missing
                return None
            lock = self._shard_locks.setdefault(shard, threading.Lock())
        with lock:  # another thread decoding this shard: wait for it rather than decode it twice
            with self._lock:
                if shard in self._blobs:
                    self._blobs.move_to_end(shard)
                    return self._blobs[shard]
            raw = source.get(self.shard_key(shard))
            if raw is None:
                self.store_index(shard, None)
                return None
            try:
                blob = bytes(decode_bytes(self.whole, raw))
            except DecodeError as e:
                codecs = [cid for cid, _ in reversed(self.whole)]
                raise DecodeError(f"shard (codecs {codecs} after sharding_indexed): {e}") from e
            if len(blob) < self.index_nbytes:
                raise DecodeError(f"decoded shard of {len(blob)} bytes is shorter than its index ({self.index_nbytes})")
            at = len(blob) - self.index_nbytes if self.location == "end" else 0
            self.store_index(shard, blob[at : at + self.index_nbytes])
            with self._lock:
                self._blobs[shard] = blob
                self._blob_bytes += len(blob)
                while len(self._blobs) > 1 and self._blob_bytes > SHARD_CACHE_BYTES:
                    _, old = self._blobs.popitem(last=False)
                    self._blob_bytes -= len(old)
                self._shard_locks.pop(shard, None)
            return blob
