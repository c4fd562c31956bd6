"""``open_store`` and :class:`Store`: a zarr store checked once, then read chunk by chunk with no zarr machinery.

Why this exists: the reader needs raw chunk bytes and a decode function it can call from many threads, and every
schema problem must surface when the store is opened, not deep inside a worker. ``open_store`` reads all metadata,
refuses unsafe codecs, detects the layout, reads and checks the coordinates, and builds one decoder per array;
afterwards ``chunk_bytes`` is a key computation plus one file read, ``decode`` one numcodecs call.

Run ``python -m fastload.store PATH`` to print what a store holds.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._write_temps import unfinished_message
from ..errors import ChunkReadError, StoreError, StoreNotFoundError
from ._codecs import ChunkDecoder, DecodeError, build_decoder, check_safety, vlen_codec
from ._layout import FieldInfo, Layout, _warn_grid_not_fields, detect_layout, values_why_not
from ._meta import ArrayInfo, load_metadata
from ._region import read_box
from ._shard import ShardIndex, ShardReadError
from ._source import BaseByteSource, FsspecSource, LatencySource, LocalSource
from .grid import Grid

__all__ = ["Store", "open_store", "make_source"]


BACKENDS = ("auto", "fsspec", "obstore")
_BATCH_CHUNKS = 256  # chunks of an array read in one batch (Store._read_coord)
_BATCH_BYTES = 64 << 20  # and at most this many decoded bytes of them
_EXISTS_THREADS = 32  # requests in flight at once when asking a remote source which chunks exist (Store._stored)


def make_source(
    path_or_url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, latency_ms: float = 0.0,
    backend: str = "auto",
) -> BaseByteSource:
    """The byte source for a local path or a URL, optionally slowed.

    ``backend``: ``"auto"`` reads a local path with :class:`LocalSource` and a URL with :class:`FsspecSource`;
    ``"fsspec"`` the same (a local path too through fsspec's ``file://``); ``"obstore"`` any of them with
    :class:`ObstoreSource` (a local path as ``file://``; ``storage_options`` are then
    obstore's ``from_url`` options).

    Raises
    ------
    StoreNotFoundError
        Nothing exists at the path or URL.
    StoreError
        fsspec cannot open the URL (an unknown protocol, its package not installed: the message says which), or
        cannot reach it.
    ConfigError
        ``latency_ms`` is not a finite number >= 0.
    ValueError
        An unknown ``backend``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    s = os.fspath(path_or_url)
    source: BaseByteSource
    if "://" not in s and backend != "auto":
        if not os.path.exists(s):
            raise StoreNotFoundError(f"{os.path.abspath(s)}: no such file or folder")
        # obstore parses the URL (a '%', '#' or '?' in the path must be quoted); fsspec takes the path as it is
        s = Path(os.path.abspath(s)).as_uri() if backend == "obstore" else "file://" + os.path.abspath(s)
    if backend == "obstore":
        from ._obstore import ObstoreSource

        source = ObstoreSource(s, storage_options)  # no LIST here (public buckets may refuse it): an empty
        # prefix fails in load_metadata, naming the metadata expected
    elif "://" in s:
        source = FsspecSource(s, storage_options)  # a URL fsspec cannot open: StoreError naming what is missing
        try:
            found = source.fs.exists(source.root)
        except OSError as e:  # unreachable host, refused credentials, ...: the URL and why, before any work
            raise StoreError(f"{s}: cannot reach the store: {type(e).__name__}: {e}") from e
        if not found:
            raise StoreNotFoundError(f"{s}: no store at this URL")
    else:
        if storage_options:
            raise StoreNotFoundError(f"{s}: storage_options given for a local path; use a URL (e.g. file://{s})")
        if not os.path.exists(s):
            raise StoreNotFoundError(f"{os.path.abspath(s)}: no such file or folder")
        source = LocalSource(s)
    if latency_ms:
        source = LatencySource(source, latency_ms)
    return source


class Store:
    """A zarr store of weather fields, checked at open; raw chunk access and decoding for the reader.

    Build with :func:`open_store`. Every method is safe to call from many threads at once.

    Files changing under an open store: metadata and coordinates are read once, at open. A sharded array's shard
    indexes are cached; on local files each use first checks the shard file's ``(size, mtime_ns, inode)`` (one
    ``stat``) and reads the index again when it changed, so a shard rewritten in place (xarray
    ``to_zarr(region=...)``) reads its new values. The Loader checks each shard once per step and ``extract`` once
    per call (:func:`fastload.store._shard.checked_under`): a shard rewritten between two steps, epochs or calls
    is read fresh; during a step or call the store must not change. A remote store (fsspec other than
    ``file://``, obstore) is read as a snapshot: the indexes stay as first read, and a read past a shard's end
    raises a :class:`~fastload.errors.ChunkReadError` saying the store changed since it was opened; reopen it
    after rewriting it.

    Attributes
    ----------
    path : str
        As given (local paths made absolute).
    layout : str
        ``"atmorep"`` or ``"per_variable"``.
    zarr_format : int
        2 or 3.
    grid : Grid
        The horizontal grid.
    time : numpy.ndarray or None
        ``datetime64[ns]`` times, shape ``(NT,)``; None when no array has a time axis.
    fields : dict of str to FieldInfo
        The fields, in store order.
    not_fields : dict of str to str
        Arrays on the grid that are not fields (e.g. CESM's ``gw(lat)``), and every array of variable-length
        strings or bytes (e.g. ERA5's ``expver(time)``; read them with :meth:`read_array`), each with why it
        cannot be one.
    arrays : dict of str to ArrayInfo
        The data arrays the fields live in (not coordinates).
    source : BaseByteSource
        Raw key/value access.
    storage_options : dict or None
        The fsspec (or obstore) options the store was opened with (a copy; None when none were given), so that
        another process can reopen it (:func:`fastload._procs.storage_options_of`).
    backend : str
        The ``backend`` it was opened with (:func:`make_source`), for the same reason.
    """

    def __init__(
        self, path: str, source: BaseByteSource, *, allow_unsafe_codecs: bool = False,
        storage_options: Mapping[str, Any] | None = None, backend: str = "auto",
    ):  # fmt: skip
        self.path = path
        self.source = source
        self.backend = backend
        self.storage_options: dict[str, Any] | None = dict(storage_options) if storage_options else None
        try:
            meta = load_metadata(source)
        except OSError as e:  # obstore opens a URL without a request: an unreachable bucket fails here, first
            if isinstance(e, (ChunkReadError, FileNotFoundError)):
                raise
            raise StoreError(f"{source.describe()}: cannot read the store's metadata: {e}") from e
        self.zarr_format = meta.zarr_format
        self.attrs = dict(meta.attrs)
        msg = unfinished_message(path, self.attrs)
        if msg:
            raise StoreError(msg)
        self.consolidated = meta.consolidated
        self._all: dict[str, ArrayInfo] = meta.arrays
        self._decoders: dict[str, ChunkDecoder] = {}
        self._shards: dict[str, ShardIndex] = {}
        for name, info in meta.arrays.items():
            check_safety(info, self._where(name), allow_unsafe=allow_unsafe_codecs)
        self._allow_unsafe = allow_unsafe_codecs
        layout = detect_layout(meta, self._read_coord, source.describe(), self._stored)
        self.layout: str = layout.kind
        self.grid: Grid = layout.grid
        self.time: np.ndarray | None = layout.time
        self.fields: dict[str, FieldInfo] = layout.fields
        self.arrays: dict[str, ArrayInfo] = {n: meta.arrays[n] for n in layout.data_arrays}
        self.coords: dict[str, ArrayInfo] = {n: meta.arrays[n] for n in layout.coord_arrays}
        self.not_fields: dict[str, str] = dict(layout.not_fields)
        if layout.kind == "atmorep":  # arrays over the grid beside data / data_sfc, as the per-variable layout
            self.not_fields.update(_atmorep_not_fields(meta.arrays, layout))
        for name, info in meta.arrays.items():  # string arrays: never fields, wherever they lie
            if name in self.arrays or name in self.coords:
                continue
            if info.dtype.kind == "O" or (info.dtype.kind in "SU" and name not in self.not_fields):
                self.not_fields[name] = _object_why(info)  # (fixed-width ones on the grid: the layout's reason)
        if layout.kind == "atmorep":  # the per-variable layout warns of these when it sorts its arrays
            _warn_grid_not_fields(meta, self.not_fields, self.grid.dims, source.describe())
        for name in self.arrays:
            self._prepare(name)

    # -- set-up -------------------------------------------------------------------------------------------------
    def _where(self, name: str) -> str:
        return self.source.describe(f"{name}/{'zarr.json' if self.zarr_format == 3 else '.zarray'}")

    def _prepare(self, name: str) -> None:
        """Build (once) the decoder or shard reader of an array: a field's at open, single-threaded; another
        array's (a coordinate) when it is first read (two threads doing so at once both build one, the same)."""
        if name in self._decoders:
            return
        info = self._all[name]
        if info.shard is not None:
            shard = ShardIndex(info, self._where(name), allow_unsafe=self._allow_unsafe)
            self._shards[name] = shard
            self._decoders[name] = shard.decoder
        else:
            self._decoders[name] = build_decoder(info, self._where(name), allow_unsafe=self._allow_unsafe)

    def _read_coord(self, name: str) -> np.ndarray:
        """All of array ``name``, its chunks fetched in batches (:meth:`chunk_bytes_many`: one concurrent batch of
        requests on a remote store, not one round trip per chunk in turn; at most ``_BATCH_BYTES`` of chunks)."""
        self._prepare(name)
        info = self._all[name]
        out = np.empty(info.shape, info.dtype)
        if out.size == 0:
            return out
        chunks = list(itertools.product(*[range(g) for g in info.grid_shape]))
        step = max(1, min(_BATCH_CHUNKS, _BATCH_BYTES // max(info.chunk_nbytes, 1)))
        for i in range(0, len(chunks), step):
            part = chunks[i:i + step]
            if len(part) == 1:  # one request anyway: the plain path (read_chunk)
                decoded = [self.read_chunk(name, part[0])]
            else:
                decoded = (self.decode(name, raw, c) for c, raw in zip(part, self.chunk_bytes_many(name, part)))
            for chunk, data in zip(part, decoded):
                box = tuple(slice(c * k, min((c + 1) * k, n)) for c, k, n in zip(chunk, info.chunks, info.shape))
                out[box] = data[tuple(slice(0, b.stop - b.start) for b in box)]
        return out

    def _stored(self, name: str, chunks: list[tuple[int, ...]]) -> list[bool]:
        """Whether each of ``chunks`` of array ``name`` is stored, without reading its bytes where the storage can
        say: a sharded array's shard index (read with :meth:`chunk_bytes_many`), else the source's ``exists``; one
        at a time where that is a local ``stat`` (``versioned`` sources), else all in flight at once (a remote or
        slowed source: one round trip per chunk in turn would make open time grow with the chunks)."""
        info = self._all[name]
        if info.shard is not None:
            return [raw is not None for raw in self.chunk_bytes_many(name, chunks)]
        def exists(chunk: tuple[int, ...]) -> bool:
            key = info.key(tuple(chunk))
            try:
                return self.source.exists(key)
            except OSError as e:  # a failed request (not a missing object): name the chunk and its key
                if isinstance(e, ChunkReadError):
                    raise
                raise ChunkReadError(name, chunk, f"asking whether it is stored: {type(e).__name__}: {e}",
                                     self.source.describe(key)) from e

        if self.source.versioned or len(chunks) <= 1:
            return [exists(c) for c in chunks]
        with ThreadPoolExecutor(min(_EXISTS_THREADS, len(chunks)), thread_name_prefix="fastload-exists") as pool:
            return list(pool.map(exists, chunks))

    def read_array(self, name: str) -> np.ndarray:
        """All values of any array of the store, decoded: a coordinate (``latitude``, ERA5's ``expver``, ...) or
        a field's whole array (simple, not fast: for coordinates and small arrays).

        Returns
        -------
        numpy.ndarray
            The array's shape and dtype, values as stored: no CF decoding (``valid_time`` stays numbers with its
            ``units``; :attr:`time` has the decoded times) and no masking of the fill value (xarray masks a
            string array's non-null fill as NaN). Variable-length strings (bytes) come as an object array of
            ``str`` (``bytes``), with the values zarr-python reads (it returns NumPy's ``StringDType``); missing
            chunks read as the fill value.

        Raises
        ------
        KeyError
            No array of that name.
        CodecError
            Its codec chain cannot be decoded (or is unsafe and the store was opened without
            ``allow_unsafe_codecs``).
        ChunkReadError
            A chunk cannot be read or decoded.
        """
        if name not in self._all:
            raise KeyError(f"{self.path}: no array {name!r}; arrays: {sorted(self._all)}")
        return self._read_coord(name)

    def _info(self, array: str) -> ArrayInfo:
        try:
            return self._all[array]
        except KeyError:
            raise KeyError(f"{self.path}: no array {array!r}; data arrays: {list(self.arrays)}") from None

    def _check_chunk(self, info: ArrayInfo, chunk: Sequence[int]) -> tuple[int, ...]:
        chunk = tuple(int(c) for c in chunk)
        grid = info.grid_shape
        if len(chunk) != len(grid) or any(not 0 <= c < g for c, g in zip(chunk, grid)):
            raise IndexError(f"array {info.name!r}: chunk index {chunk} outside its chunk grid {grid}")
        return chunk

    # -- raw chunk access ---------------------------------------------------------------------------------------
    def chunk_bytes(self, array: str, chunk: Sequence[int]) -> bytes | None:
        """Raw stored bytes of one (inner) chunk, or None when the chunk is missing (reads as the fill value).

        Raises
        ------
        ChunkReadError
            The storage failed, or a shard index/range is truncated or corrupt.
        """
        info = self._info(array)
        chunk = self._check_chunk(info, chunk)
        self._prepare(array)  # a coordinate is prepared when first read (a field's at open)
        try:
            shard = self._shards.get(array)
            if shard is not None:
                return shard.read(self.source, chunk)
            return self.source.get(info.key(chunk))
        except (DecodeError, OSError) as e:
            raise ChunkReadError(array, chunk, str(e), self.source.describe(info.key(chunk))) from e

    def chunk_bytes_many(self, array: str, chunks: Sequence[Sequence[int]]) -> list[bytes | None]:
        """:meth:`chunk_bytes` for many chunks of one array, batched into few storage requests (remote stores)."""
        info = self._info(array)
        idx = [self._check_chunk(info, c) for c in chunks]
        self._prepare(array)
        shard = self._shards.get(array)
        try:
            if shard is None:
                return self.source.get_many([info.key(c) for c in idx])
            return shard.read_many(self.source, idx)
        except ShardReadError as e:  # a shard failed: name its file and the chunk that failed (or, when the
            # shard as a whole failed, its first requested chunk)
            raise ChunkReadError(array, e.chunk, f"batched read of {len(idx)} chunks: {e.error}",
                                 self.source.describe(e.key)) from e.error  # fmt: skip
        except (DecodeError, OSError) as e:
            first = idx[0] if idx else ()
            raise ChunkReadError(array, first, f"batched read of {len(idx)} chunks: {e}",
                                 self.source.describe(info.key(first)) if idx else None) from e  # fmt: skip

    def decode(
        self, array: str, raw: bytes | memoryview | None, chunk: Sequence[int], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Decode one chunk's stored bytes (``raw=None``: a missing chunk, filled with the fill value).

        Parameters
        ----------
        array, chunk
            Which chunk (used for messages and the fill value).
        raw : bytes-like or None
            What :meth:`chunk_bytes` returned.
        out : numpy.ndarray, optional
            C-contiguous buffer of ``arrays[array].chunk_nbytes`` bytes (a cache slot) to decode into.

        Returns
        -------
        numpy.ndarray
            Shape ``arrays[array].chunks``, the array's dtype, C-contiguous (a view of ``out`` when given).

        Raises
        ------
        ChunkReadError
            Corrupt or truncated bytes.
        """
        dec = self._decoders.get(array)
        if dec is None:  # a coordinate not read yet (a field's decoder is built at open)
            self._info(array)
            self._prepare(array)
            dec = self._decoders[array]
        if raw is None:
            if out is None:
                return np.full(dec.chunks, self._all[array].fill_value, dec.dtype)
            view = dec.view_out(out)
            view[...] = self._all[array].fill_value
            return view
        try:
            return dec.decode(raw, out)
        except DecodeError as e:
            info = self._all[array]
            raise ChunkReadError(array, tuple(chunk), str(e), self.source.describe(info.key(tuple(chunk)))) from e

    def read_chunk(self, array: str, chunk: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The decoded chunk (fill value where missing); see :meth:`decode`."""
        return self.decode(array, self.chunk_bytes(array, chunk), chunk, out)

    # -- convenience (tools, tests, references) -----------------------------------------------------------------
    def read(self, field: str, t: Any = None, level_idx: Any = None, y: Any = None, x: Any = None) -> np.ndarray:
        """A ``(t, l, y, x)`` box of one field assembled from chunks (simple, not fast).

        Each selection is a slice, an integer, or a sequence of indices (None: everything). ``x`` indices are
        taken modulo NX on periodic grids, so a box may cross the seam. A field without a time (level) axis
        yields extent 1 along t (l) whatever is asked.
        """
        return read_box(self, field, t, level_idx, y, x)

    def level_indices(self, field: str, values: Sequence[float] | None) -> np.ndarray:
        """Store level indices (int64) of the given level values of ``field``.

        Raises
        ------
        ConfigError
            Unknown field, a value the field lacks (names the missing and lists the available), or levels asked
            of a field without a level axis.
        """
        from ._check import level_indices

        return level_indices(self, field, values)

    def check(self, config: Any, *, stream: str | None = None) -> None:
        """Check a :class:`~fastload.config.SamplingConfig` against this store (``ConfigError`` naming the field).

        With a multi-stream config, pass the ``stream`` this store is; only its fields are checked.
        """
        from ._check import check_config

        check_config(self, config, stream=stream)

    def __repr__(self) -> str:
        nt = 0 if self.time is None else self.time.size
        return (
            f"Store({self.path!r}, layout={self.layout}, zarr v{self.zarr_format}, {len(self.fields)} fields, "
            f"{nt} times, {self.grid!r})"
        )


def _atmorep_not_fields(arrays: Mapping[str, ArrayInfo], layout: Layout) -> dict[str, str]:
    """The arrays of an AtmoRep store over both grid dimensions other than its data arrays and coordinates (a
    land-sea mask, a complex spectrum), each with why it is not a field, as :class:`~._layout.FieldSorter` says
    it for the per-variable layout: a dtype no field has (complex, dates) or dates coded as numbers (CF units
    ``... since ...``), in the same words; else that this layout's fields are the entries of ``data`` /
    ``data_sfc`` (a bool or number array, which the per-variable layout would read as a field). Bounds arrays are skipped, as there; string arrays are left to the check of strings, which
    lists them in any layout wherever they lie (:func:`_object_why`)."""
    grid_dims = set(layout.grid.dims)
    bounds = {a.attrs.get("bounds") for a in arrays.values()} - {None}
    data = " and ".join(repr(n) for n in layout.data_arrays)
    out: dict[str, str] = {}
    for name, info in arrays.items():
        if name in layout.data_arrays or name in layout.coord_arrays or name in bounds:
            continue
        if name.endswith(("_bnds", "_bounds")) or info.dims is None or not grid_dims <= set(info.dims):
            continue
        if info.dtype.kind in "OSU":
            continue
        why = values_why_not(info)
        if why is not None:
            out[name] = why
        else:
            out[name] = (f"an AtmoRep store's fields are the entries of {data} along the field axis, named by the "
                         f"'fields' attribute; {name!r} (dims {info.dims}, dtype {info.dtype}) is an array of its own")
    return out


def _object_why(info: ArrayInfo) -> str:
    """Why a string or object array is not a field, naming what it holds (and an object array's codec)."""
    if info.dtype.kind in "SU":
        kind = "bytes" if info.dtype.kind == "S" else "strings"
        return f"fixed-width {kind} (dtype {info.dtype.str}); a field must be numeric (Store.read_array reads its values)"
    if info.vlen is None:
        codec = info.codecs[0]["id"] if info.codecs else "none"
        return f"dtype object (Python objects, codec {codec!r}); a field must be numeric"
    kind = "strings" if info.vlen == "str" else "bytes"
    return (f"variable-length {kind} (dtype object, codec {vlen_codec(info) or 'none'!r}); a field must be numeric "
            "(Store.read_array reads its values)")


def open_store(
    path_or_url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    allow_unsafe_codecs: bool = False,
    latency_ms: float = 0.0,
    backend: str = "auto",
) -> Store:
    """Open and check a zarr store (v2 or v3; AtmoRep or per-variable layout).

    Parameters
    ----------
    path_or_url : str or path-like
        A local folder, or an fsspec URL (``memory://``, ``file://``, ``s3://``, ...).
    storage_options : mapping, optional
        Options for the fsspec filesystem of a URL.
    allow_unsafe_codecs : bool
        Let numcodecs decode object dtypes, pickle and other codecs fastload refuses by default.
    latency_ms : float
        Sleep this long per storage request (simulated slow storage, for benchmarks).
    backend : {"auto", "fsspec", "obstore"}
        How bytes are read (:func:`make_source`): ``"auto"``, plain file reads for a local path and fsspec for a
        URL; ``"obstore"``, obstore's Rust client (``pip install "fastload[obstore]"``), whose batched requests
        are all in flight at once.

    Returns
    -------
    Store

    Raises
    ------
    StoreNotFoundError
        Nothing at the path or URL.
    SchemaError
        Not a zarr group, an unknown layout, unexpected dimensions, inconsistent or non-monotonic coordinates, a
        time axis that does not increase.
    CodecError
        An unsupported or unsafe codec or dtype.
    """
    s = os.fspath(path_or_url)
    path = s if "://" in s else os.path.abspath(s)
    return Store(path, make_source(s, storage_options, latency_ms, backend), allow_unsafe_codecs=allow_unsafe_codecs,
                 storage_options=storage_options, backend=backend)
