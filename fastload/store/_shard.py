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
  ranges of the decoded shard. The most recently used decoded shards are kept in one cache per process, shared by
  every array of every store (:data:`SHARD_CACHE_BYTES` = 256 MiB in all, always able to hold the shard in use;
  a process worker has its own), so reading the inner chunks of one shard one by one decodes it once. A batched
  read decodes each shard it touches once and cuts the wanted inner chunks out of it at once, so it holds one
  decoded shard at a time plus the slices. No lock is held across a shard's read: a hung request holds up only
  its own reader (two readers that miss the same shard at once both decode it).

- element-wise array-to-array codecs before it (``numcodecs.bitround``, ``quantize``, ``fixedscaleoffset``,
  ``astype``: :data:`~._meta.ELEMENTWISE_A2A`, as zarr-python writes ``filters=`` with
  ``serializer=ShardingCodec(...)``) act on each element alone, so they go in front of the inner chain too.

A shard's index is cached for as long as the store is open (one request per shard, not one per inner chunk). On
local files (a source with :attr:`~._source.BaseByteSource.versioned`) each use of a cached index, or of a cached
"shard missing", first checks the file's ``(size, mtime_ns, inode)`` (one ``stat``) and reads the index again when
it changed, so a shard rewritten under an open store (xarray ``to_zarr(region=...)``) reads its new values. Remote
objects are read as a snapshot: the index read first is kept, and a chunk read that runs past the shard's end is a
:class:`DecodeError` saying the store changed since it was opened (reopen it). Every index entry is checked when
read: both "empty" markers, or ``offset + nbytes < 2**63`` and within the shard's length where it is known.

That check is one ``stat`` per use, so a reader that reads a shard's inner chunks one by one pays one per chunk. A
caller that knows the store does not change for a while (a loader's step, an ``extract`` call) passes a token
(``checked=``, or for every read of this thread :func:`checked_under`): each shard is then checked once per token,
and a new token checks it again, so a shard rewritten between two steps (epochs, calls) is read fresh.

Any other codec before the sharding codec (``numcodecs.delta``: not element-wise) is refused at open
(:class:`~fastload.errors.CodecError`), naming the array, the chain and why.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import struct
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import CodecError
from ._codecs import ChunkDecoder, DecodeError, build_decoder, decode_bytes, v3_bytes_steps
from ._meta import ELEMENTWISE_A2A, ArrayInfo, shard_perm
from ._source import BaseByteSource

__all__ = ["InnerChunk", "ShardIndex", "ShardReadError", "SHARD_CACHE_BYTES", "checked_under", "stored_nbytes"]

_EMPTY = np.uint64(2**64 - 1)
_SNAPSHOT: tuple[int, ...] = ()  # the version of every object of a source without versions (remote): never changes
_TOKENS_KEPT = 8  # tokens remembered per shard (steps overlap: a loader runs two at once, and extract calls)
_SCOPE = threading.local()  # .token: the check token of this thread's shard reads (checked_under)


@contextlib.contextmanager
def checked_under(token: Any) -> Iterator[None]:
    """Within the block, this thread's shard reads that pass no ``checked=`` use ``token``: each local shard's
    cached index is checked against the file (one ``stat``) once per token, not once per inner chunk.

    ``token`` is any object compared with ``==`` (None: check at every use, the default); a new one per span in
    which the caller knows the store does not change (a loader's step, one ``extract`` call). Blocks nest.
    """
    prev = getattr(_SCOPE, "token", None)
    _SCOPE.token = token
    try:
        yield
    finally:
        _SCOPE.token = prev


def _scope_token(checked: Any) -> Any:
    return checked if checked is not None else getattr(_SCOPE, "token", None)
_CHECK_STRIPES = 64  # locks for the checks under a token (ShardIndex._check_locks)

SHARD_CACHE_BYTES = 256 * 2**20
"""Decoded whole shards kept per process, all arrays of all open stores together (those with a bytes-to-bytes
codec after the sharding codec), least recently used out first; the shard decoded last is kept whatever its size."""


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
        before = tuple(_named(c) for c in info.codecs[:k])
        perm = shard_perm(before, info.ndim)
        if perm is None:
            bad = next(c["name"] for c in before if c["name"] not in ELEMENTWISE_A2A and shard_perm((c,), info.ndim) is None)
            why = ("a transpose whose order is not a permutation of the axes" if bad == "transpose" else
                   f"{bad!r} is not element-wise, so an inner chunk cannot be decoded without its whole shard")
            raise CodecError(
                f"array {info.name!r} ({where}): codec chain {names}: {why}; before 'sharding_indexed' fastload "
                f"reads only 'transpose' codecs (with a valid order) and element-wise codecs ({sorted(ELEMENTWISE_A2A)}); "
                "after it, bytes-to-bytes codecs (zstd, blosc, gzip, crc32c, numcodecs.*)"
            )  # fmt: skip
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
        # the codecs before sharding (transposes and element-wise codecs) act on each inner chunk as on the shard
        inner = before + tuple(_named(c) for c in conf.get("codecs") or ())
        self.decoder: ChunkDecoder = build_decoder(info, where, allow_unsafe=allow_unsafe, codecs=inner,
                                                   chunks=info.chunks)  # fmt: skip
        # shard -> (its version when its index was read (_SNAPSHOT: remote), the index (None: the shard is missing),
        # the check tokens under which that version was confirmed (checked_under; the last _TOKENS_KEPT))
        self._cache: dict[tuple[int, ...], tuple[tuple[int, ...] | None, np.ndarray | None, tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        # checks under a token (local files: a stat, and an index read): the tasks of one step reading a shard at
        # once make one stat, not one each; locks striped by shard, so a hung index read holds up only the few
        # shards of its stripe, not every shard of the array
        self._check_locks = tuple(threading.Lock() for _ in range(_CHECK_STRIPES))
        self._orphan = 0  # stored bytes of whole shards read for chunks that were all empty, not yet counted
        self._token = next(_TOKENS)  # this array's decoded shards in the process-wide cache, _SHARDS
        weakref.finalize(self, _SHARDS.drop, self._token)

    def shard_key(self, shard: tuple[int, ...]) -> str:
        """Store key of a shard."""
        return self.info.key(tuple(s * c for s, c in zip(shard, self.cps)))

    def index_request(self, shard: tuple[int, ...]) -> tuple[str, int, int]:
        """``(key, start, length)`` of the shard's index."""
        start = -self.index_nbytes if self.location == "end" else 0
        return self.shard_key(shard), start, self.index_nbytes

    def version(self, source: BaseByteSource, shard: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shard object's version now: ``(size, mtime_ns, inode)`` on local files (one ``stat``; None: no
        such file), :data:`_SNAPSHOT` where the source has no cheap version (remote: read as a snapshot)."""
        if getattr(source, "versioned", False):
            return source.version(self.shard_key(shard))
        return _SNAPSHOT

    def cached(self, shard: tuple[int, ...], version: tuple[int, ...] | None = _SNAPSHOT
               ) -> tuple[bool, np.ndarray | None]:  # fmt: skip
        """``(known, index)``: whether the shard's index was read already at this ``version`` (:meth:`version`),
        and it (None: the shard is missing)."""
        with self._lock:
            hit = self._cache.get(shard)
        if hit is not None and hit[0] == version:
            return True, hit[1]
        return False, None

    def store_index(self, shard: tuple[int, ...], raw: bytes | None, version: tuple[int, ...] | None = _SNAPSHOT,
                    size: int | None = None) -> np.ndarray | None:  # fmt: skip
        """Parse and check the raw index bytes of ``shard`` (None: shard missing), cache them for ``version`` and
        return ``(n, 2)`` uint64. ``size``: the shard's length in bytes where known (every entry must lie in it).

        Raises
        ------
        DecodeError
            Truncated index, crc32c mismatch, or an entry that is neither empty nor a range below 2**63 (and
            within ``size``): names the shard's key, the entry and its inner chunk.
        """
        if raw is None:
            index = None
        else:
            key = self.shard_key(shard)
            if len(raw) != self.index_nbytes:
                raise DecodeError(f"shard index of {key!r}: read {len(raw)} bytes, expected {self.index_nbytes} "
                                  "(truncated shard?)")  # fmt: skip
            body = raw
            if self.crc:
                import google_crc32c

                body, stored = raw[:-4], struct.unpack("<I", raw[-4:])[0]
                if google_crc32c.value(bytes(body)) != stored:
                    raise DecodeError(f"shard index of {key!r}: crc32c checksum mismatch")
            index = np.frombuffer(body, self._index_dtype).astype(np.uint64).reshape(self.n, 2)
            self._check_index(shard, index, size)
        with self._lock:
            self._cache[shard] = (version, index, ())
        return index

    def _confirm(self, shard: tuple[int, ...], version: tuple[int, ...] | None, token: Any) -> None:
        """Remember that the cached entry of ``shard`` (if still of ``version``) was checked under ``token``."""
        if token is None:
            return
        with self._lock:
            hit = self._cache.get(shard)
            if hit is not None and hit[0] == version and token not in hit[2]:
                self._cache[shard] = (hit[0], hit[1], (hit[2] + (token,))[-_TOKENS_KEPT:])

    def _confirmed(self, shard: tuple[int, ...], token: Any) -> tuple | None:
        """The cache entry of ``shard`` when it was checked under ``token`` already (no ``stat`` needed), else None."""
        if token is None:
            return None
        hit = self._cache.get(shard)  # (a dict read needs no lock; writes take it)
        if hit is not None and token in hit[2]:
            return hit
        return None

    def _check_index(self, shard: tuple[int, ...], index: np.ndarray, size: int | None) -> None:
        """Every entry empty (both markers) or ``offset + nbytes < 2**63`` and ``<= size`` (when known)."""
        off, nb = index[:, 0], index[:, 1]
        empty = (off == _EMPTY) & (nb == _EMPTY)
        big = np.uint64(2**63)
        bad = ~empty & ((off >= big) | (nb >= big) | (off + nb >= big))  # (each < 2**63: the sum cannot wrap)
        past = ~empty & ~bad & (off + nb > np.uint64(size)) if size is not None else np.zeros_like(bad)
        if not (bad.any() or past.any()):
            return
        pos = int(np.flatnonzero(bad | past)[0])
        seen = np.unravel_index(pos, self._cps_seen)
        within = [0] * len(self.cps)
        for p, w in zip(self.perm, seen):
            within[p] = int(w)
        chunk = tuple(s * c + w for s, c, w in zip(shard, self.cps, within))
        n_bad = int((bad | past).sum())
        if bad[pos]:
            why = ("corrupt index: expected both 2**64-1 (an empty chunk) or a byte range (offset + nbytes < 2**63)")
        else:
            why = f"past the end of the shard's {size} bytes: truncated shard, or a corrupt index"
        raise IndexEntryError(chunk,
            f"shard {self.shard_key(shard)!r}: index entry {pos} (inner chunk {chunk}) is offset {int(off[pos])} + "
            f"nbytes {int(nb[pos])}: {why}{f' ({n_bad} such entries)' if n_bad > 1 else ''}"
        )

    def _load_index(self, source: BaseByteSource, shard: tuple[int, ...], key: str | None = None,
                    token: Any = None) -> np.ndarray | None:  # fmt: skip
        """The shard's index from the cache when the shard (store key ``key``) has not changed since it was read,
        else read (and cached) now. A local shard rewritten between its ``stat`` and the read is read again once.
        (Runs once per inner chunk read: one ``stat`` and a dict look-up on the way that hits; none when the
        shard was checked under ``token`` already.)"""
        hit = self._confirmed(shard, token)
        if hit is not None:
            return hit[1]
        if token is None or not getattr(source, "versioned", False):  # (remote: no stat to save)
            return self._fresh_index(source, shard, key)[0]
        with self._check_locks[hash(shard) % _CHECK_STRIPES]:  # one stat per shard for the step's tasks
            hit = self._confirmed(shard, token)
            if hit is not None:
                return hit[1]
            index, version = self._fresh_index(source, shard, key)
            self._confirm(shard, version, token)
            return index

    def _fresh_index(self, source: BaseByteSource, shard: tuple[int, ...], key: str | None = None
                     ) -> tuple[np.ndarray | None, tuple[int, ...] | None]:  # fmt: skip
        """``(index, version)``: :meth:`_load_index`'s check (a ``stat`` on local files) and, where the shard
        changed, its read."""
        key = key or self.shard_key(shard)
        versioned = getattr(source, "versioned", False)
        for attempt in (0, 1):
            version = source.version(key) if versioned else _SNAPSHOT
            hit = self._cache.get(shard)  # (a dict read needs no lock; writes take it)
            if hit is not None and hit[0] == version:
                return hit[1], version
            _, start, length = self.index_request(shard)
            raw = None if version is None else source.get_range(key, start, length)
            try:
                return self.store_index(shard, raw, version, None if not version else version[0]), version
            except DecodeError:
                if attempt or version == _SNAPSHOT or self.version(source, shard) == version:
                    raise
        raise AssertionError("unreachable")

    def _short(self, source: BaseByteSource, chunk: tuple[int, ...], rng: tuple[int, int], raw: bytes | None
               ) -> DecodeError:  # fmt: skip
        """The error of an inner chunk read that came back short: past the shard's end."""
        got = "nothing" if raw is None else f"{len(raw)} bytes"
        shard = self.shard_key(self.local(chunk)[0])
        if not getattr(source, "versioned", False):
            why = ("the shard is shorter than the index this store read earlier says: the store changed since it "
                   "was opened (a remote store is read as a snapshot; reopen it), or the shard is truncated")
        else:
            why = "the shard is truncated, or it changed while being read"
        return DecodeError(f"shard {shard!r}: inner chunk {chunk} at bytes {rng[0]}+{rng[1]}: read {got}: {why}")

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

    def read(self, source: BaseByteSource, chunk: tuple[int, ...], checked: Any = None) -> bytes | None:
        """Stored bytes of one inner chunk (None when missing); reads and caches the shard index if needed.

        ``checked``: a token (default: this thread's :func:`checked_under`, else None): a local shard's cached
        index is checked against its file once per token (None: at every call)."""
        token = _scope_token(checked)
        if self.whole:
            return self._read_many_whole(source, [chunk], wrap=False, token=token)[0]  # one chunk: the caller names it
        shard, pos = self.local(chunk)
        key = self.info.key(chunk)  # (the shard's key)
        index = self._load_index(source, shard, key, token)
        rng = self.byte_range(index, pos)
        if rng is None:
            return None
        raw = source.get_range(key, rng[0], rng[1])
        if raw is None or len(raw) != rng[1]:
            raise self._short(source, chunk, rng, raw)
        return raw

    def read_many(self, source: BaseByteSource, chunks: Sequence[tuple[int, ...]], checked: Any = None
                  ) -> list[bytes | None]:  # fmt: skip
        """Stored bytes of many inner chunks (None where missing), in few storage requests: the indexes not yet
        cached in one batch of ranged reads, then the chunks in another; with codecs after the sharding codec,
        each shard not cached is read whole once and decoded. ``checked``: as in :meth:`read` (a local shard is
        checked once per call without a token, once per token with one)."""
        token = _scope_token(checked)
        if self.whole:
            return self._read_many_whole(source, chunks, token=token)
        locs = [self.local(c) for c in chunks]
        first: dict[tuple[int, ...], tuple[int, ...]] = {}  # shard -> its first requested chunk (named on failure)
        wanted = set(chunks)
        for c, (s, _) in zip(chunks, locs):
            first.setdefault(s, c)
        indexes: dict[tuple[int, ...], np.ndarray | None] = {}
        versions: dict[tuple[int, ...], tuple[int, ...] | None] = {}
        for s in first:
            hit = self._confirmed(s, token)
            if hit is not None:
                indexes[s] = hit[1]
            else:
                versions[s] = self.version(source, s)  # one stat per shard on local files
        need = []
        for s, v in versions.items():
            known, index = self.cached(s, v)
            if known or v is None:  # (None: no such local file)
                indexes[s] = index if known else self.store_index(s, None, None)
                self._confirm(s, v, token)
            else:
                need.append(s)
        if need:
            for s, raw in zip(need, source.get_ranges([self.index_request(s) for s in need])):
                v = versions[s]
                try:
                    try:
                        indexes[s] = self.store_index(s, raw, v, v[0] if v else None)
                        self._confirm(s, v, token)
                    except DecodeError:
                        if v == _SNAPSHOT or self.version(source, s) == v:
                            raise
                        indexes[s] = self._load_index(source, s, token=token)  # rewritten since its stat: again
                except DecodeError as e:  # named: the requested chunk whose entry is bad, else the shard's first
                    bad = getattr(e, "chunk", None)
                    raise ShardReadError(bad if bad in wanted else first[s], self.shard_key(s), e) from e
        ranges = [self.byte_range(indexes[s], p) for s, p in locs]
        todo = [(i, self.info.key(c), r) for i, (c, r) in enumerate(zip(chunks, ranges)) if r is not None]
        got = source.get_ranges([(k, r[0], r[1]) for _, k, r in todo])
        out: list[bytes | None] = [None] * len(chunks)
        for (i, _, r), raw in zip(todo, got):
            if raw is None or len(raw) != r[1]:
                e = self._short(source, chunks[i], r, raw)
                raise ShardReadError(chunks[i], self.shard_key(locs[i][0]), e) from e
            out[i] = raw
        return out

    # -- whole shards (bytes-to-bytes codecs after the sharding codec) ------------------------------------------
    def _read_many_whole(
        self, source: BaseByteSource, chunks: Sequence[tuple[int, ...]], wrap: bool = True, token: Any = None
    ) -> list[bytes | None]:
        """Each shard the chunks touch is read and decoded once (or taken from the cache), its inner chunks are cut
        out of it as copies at once, and it is let go: the peak is one decoded shard plus the slices (and what the
        process-wide cache holds, :data:`SHARD_CACHE_BYTES`), not every shard of the batch. A shard that fails raises
        :class:`ShardReadError` naming it and its first requested chunk (``wrap=False``: the error itself)."""
        by_shard: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # shard -> [(position in chunks, in index)]
        for i, c in enumerate(chunks):
            shard, pos = self.local(c)
            by_shard.setdefault(shard, []).append((i, pos))
        out: list[bytes | None] = [None] * len(chunks)
        with self._lock:  # shard bytes read earlier for requested chunks that were all empty (no chunk to carry them)
            fetched, self._orphan = self._orphan, 0
        for shard, wanted in by_shard.items():  # in order of first use
            failing = chunks[wanted[0][0]]  # the chunk an error names: the shard's first, or the one that failed
            try:
                blob, index, got = self._blob(source, shard, token)
                fetched += got
                if blob is None:
                    continue
                view = memoryview(blob)
                for i, pos in wanted:
                    rng = self.byte_range(index, pos)
                    if rng is None:
                        continue
                    if rng[0] + rng[1] > len(blob):  # (store_index checked it: cannot happen)
                        failing = chunks[i]
                        raise DecodeError(f"inner chunk {chunks[i]} at bytes {rng[0]}+{rng[1]} of its decoded shard "
                                          f"of {len(blob)} bytes: corrupt shard index")  # fmt: skip
                    inner = InnerChunk(view[rng[0] : rng[0] + rng[1]])  # a copy: the result keeps no shard alive
                    inner.fetched, fetched = fetched, 0  # the shard's stored bytes go to the next chunk handed out
                    out[i] = inner
                view.release()
            except (DecodeError, OSError) as e:
                if not wrap:
                    raise
                bad = getattr(e, "chunk", None)  # a bad index entry of a requested chunk: that chunk
                if bad is not None and any(chunks[i] == bad for i, _ in wanted):
                    failing = bad
                raise ShardReadError(failing, self.shard_key(shard), e) from e
            del blob
        if fetched:  # every chunk asked for was empty: counted on a later request's first chunk
            with self._lock:
                self._orphan += fetched
        return out

    def _blob(self, source: BaseByteSource, shard: tuple[int, ...], token: Any = None
              ) -> tuple[bytes | None, np.ndarray | None, int]:  # fmt: skip
        """The decoded shard (None when it is missing), from the process-wide cache or read and decoded, its index,
        and the stored bytes read for it (0 from the cache). Both are cached under the shard's version (a local
        shard rewritten since is read again; remote ones are a snapshot). No lock is held across the read: a
        reader that misses the cache reads and decodes the shard itself, so a hung request holds up only the
        reader that made it (two readers missing the same shard at once both decode it; the cache keeps one).
        ``token``: as in :meth:`read` (a shard checked under it already takes no ``stat``)."""
        hit = self._confirmed(shard, token)
        if hit is not None:
            version, known, index = hit[0], True, hit[1]
        else:
            version = self.version(source, shard)
            known, index = self.cached(shard, version)
        if known and index is None or version is None:  # known missing, or no such local file
            if not known:
                self.store_index(shard, None, None)
            self._confirm(shard, version, token)
            return None, None, 0
        blob = _SHARDS.get((self._token, shard, version))
        if blob is not None:
            if not known:  # (its index was replaced by another version's since: parse it again)
                index = self._blob_index(shard, blob, version)
            self._confirm(shard, version, token)
            return blob, index, 0
        raw = source.get(self.shard_key(shard))
        if raw is None:
            self.store_index(shard, None, version)
            self._confirm(shard, version, token)
            return None, None, 0
        fetched = len(raw)
        try:
            blob = bytes(decode_bytes(self.whole, raw))
        except DecodeError as e:
            codecs = [cid for cid, _ in reversed(self.whole)]
            raise DecodeError(f"shard (codecs {codecs} after sharding_indexed): {e}") from e
        del raw
        index = self._blob_index(shard, blob, version)
        _SHARDS.put((self._token, shard, version), blob)
        self._confirm(shard, version, token)
        return blob, index, fetched

    def _blob_index(self, shard: tuple[int, ...], blob: bytes, version: tuple[int, ...] | None) -> np.ndarray | None:
        """Parse, check and cache the index of a decoded whole shard."""
        if len(blob) < self.index_nbytes:
            raise DecodeError(f"shard {self.shard_key(shard)!r}: decoded shard of {len(blob)} bytes is shorter "
                              f"than its index ({self.index_nbytes})")  # fmt: skip
        at = len(blob) - self.index_nbytes if self.location == "end" else 0
        return self.store_index(shard, blob[at : at + self.index_nbytes], version, len(blob))


def stored_nbytes(raw: bytes | None) -> int:
    """The bytes read from the store for ``raw``, one chunk's stored bytes as a store hands them out: its length, or
    for an inner chunk of a whole shard (:class:`InnerChunk`) the stored bytes of the shards read for it."""
    return 0 if raw is None else getattr(raw, "fetched", len(raw))


class InnerChunk(bytes):
    """The stored bytes of one inner chunk cut out of a decoded whole shard, with ``fetched``: the bytes actually read
    from the store for it. A shard read for a request counts whole (encoded, as stored) on the first chunk cut from
    it, the others and chunks of shards taken from the cache count 0; the reader's ``bytes_stored`` adds
    ``fetched`` instead of the chunk's length (which is the inner chunk's size after the shard was decoded)."""

    fetched: int = 0


class IndexEntryError(DecodeError):
    """A shard index entry that is neither empty nor a byte range in the shard; ``chunk`` is its inner chunk."""

    def __init__(self, chunk: tuple[int, ...], message: str):
        super().__init__(message)
        self.chunk = chunk


class ShardReadError(Exception):
    """Reading or decoding one whole shard of a batched read failed (:meth:`ShardIndex.read_many`): ``chunk`` is
    the first requested inner chunk in that shard, ``key`` the shard's store key, ``error`` what failed (also the
    ``__cause__``); the store turns it into a ChunkReadError naming that chunk and file."""

    def __init__(self, chunk: tuple[int, ...], key: str, error: BaseException):
        super().__init__(f"shard {key!r}: {error}")
        self.chunk, self.key, self.error = tuple(chunk), key, error


class _ShardCache:
    """Decoded whole shards of every array of every store in this process, least recently used first out, within
    :data:`SHARD_CACHE_BYTES` together (read at each insert); the shard inserted last is kept whatever its size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (array token, shard, shard version) -> decoded shard: a shard rewritten since is another key (the old one
        # ages out)
        self._items: collections.OrderedDict[tuple[Any, ...], bytes] = collections.OrderedDict()
        self.nbytes = 0
        # arrays whose ShardIndex is gone, their shards dropped at the next get/put: the finalizer only appends
        # here (it may run from a garbage collection inside this lock, on the thread holding it)
        self._dead: collections.deque[int] = collections.deque()

    def drop(self, token: int) -> None:
        """Forget the shards of one array (its ShardIndex is gone): lock-free, done at the next get or put."""
        self._dead.append(token)

    def _purge(self) -> None:
        """Drop the shards of the arrays :meth:`drop` named (the lock is held)."""
        if not self._dead:
            return
        dead = set()
        while self._dead:
            dead.add(self._dead.popleft())
        for key in [k for k in self._items if k[0] in dead]:
            self.nbytes -= len(self._items.pop(key))

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            self._purge()
            blob = self._items.get(key)
            if blob is not None:
                self._items.move_to_end(key)
            return blob

    def put(self, key: tuple[Any, ...], blob: bytes) -> None:
        with self._lock:
            self._purge()
            old = self._items.pop(key, None)
            if old is not None:  # decoded twice by readers that missed at once: keep the newer
                self.nbytes -= len(old)
            self._items[key] = blob
            self.nbytes += len(blob)
            while len(self._items) > 1 and self.nbytes > SHARD_CACHE_BYTES:
                _, gone = self._items.popitem(last=False)
                self.nbytes -= len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


_SHARDS = _ShardCache()
_TOKENS = itertools.count()
