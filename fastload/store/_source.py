"""Byte sources: raw key/value access to a zarr store, without zarr's per-chunk machinery.

Why this exists: zarr-python spends about 0.4 ms of Python per chunk; a direct file read of the same chunk costs
about 0.04 ms. The reader fetches thousands of chunks per second, so it talks to storage through these small
classes instead. A key is a ``/``-separated path relative to the store root (``"t/c/0/1/2"``, ``".zmetadata"``).

- :class:`LocalSource` reads files with plain ``open``/``os.pread``.
- :class:`FsspecSource` reads through any fsspec filesystem (``memory://``, ``file://``, ``s3://``, ...), with
  batched ``cat``/``cat_ranges`` for many keys at once.
- :class:`LatencySource` wraps another source and sleeps per request, to simulate slow (object) storage in
  benchmarks and tests.

Every source is safe to use from many threads at once: no method keeps state between calls. A missing key is
``None``; any other failure raises ``OSError`` (or the filesystem's own error), which the store turns into a
:class:`~fastload.errors.ChunkReadError` naming the array and chunk.
"""

from __future__ import annotations

import abc
import math
import numbers
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, StoreError

__all__ = ["BaseByteSource", "LocalSource", "FsspecSource", "LatencySource", "fsspec_filesystem"]

_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # O_BINARY: no newline translation where it exists (Windows)
_PREADV = hasattr(os, "preadv")  # read_into's system call (POSIX); elsewhere a file object's readinto


class BaseByteSource(abc.ABC):
    """Raw bytes by key. Subclasses implement :meth:`get`, :meth:`get_range`, :meth:`list_dir`, :meth:`describe`.

    ``get_many`` and ``get_ranges`` default to loops over the single-key methods; remote sources override them
    to issue the requests concurrently.
    """

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """All bytes stored under ``key``, or ``None`` when the key does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """``length`` bytes from ``start``; a negative ``start`` counts from the end (``length`` must be -start).

        Returns ``None`` when the key does not exist. Returns fewer bytes when the object is shorter (the caller
        checks).
        """

    @abc.abstractmethod
    def list_dir(self, prefix: str) -> list[str]:
        """Names of the direct children of the folder ``prefix`` (``""`` is the root); empty when none."""

    @abc.abstractmethod
    def describe(self, key: str = "") -> str:
        """The full path or URL of ``key``, for error messages."""

    versioned = False
    """Whether :meth:`version` is cheap (one local ``stat``) and may be asked at every read: local files. Readers
    that cache what they read of an object (a shard's index) check it against :meth:`version` then; a source without
    it (remote objects) is taken as a snapshot that does not change while a store is open."""

    def version(self, key: str) -> tuple[int, ...] | None:
        """The object's ``(size, mtime_ns, inode)``, changed by any rewrite; None when ``key`` does not exist.

        Only sources with :attr:`versioned` implement it (one ``stat``)."""
        raise NotImplementedError(f"{type(self).__name__} has no cheap version check (versioned is False)")

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object (reads it; override where a cheaper test exists)."""
        return self.get(key) is not None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`get` for many keys, in order."""
        return [self.get(k) for k in keys]

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        """:meth:`get_range` for many ``(key, start, length)`` requests, in order."""
        return [self.get_range(k, s, n) for k, s, n in requests]

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every object below the folder ``prefix``, at any depth, as ``(key, size in bytes)``, in no set order.

        The default lists folder by folder and reads each object for its size; sources override it with a
        listing that carries sizes (a file system's ``stat``, an object store's LIST).
        """
        stack = [prefix.strip("/")]
        while stack:
            folder = stack.pop()
            for child in self.list_dir(folder):
                key = f"{folder}/{child}" if folder else child
                if self.list_dir(key):
                    stack.append(key)
                else:
                    b = self.get(key)
                    if b is not None:
                        yield key, len(b)


class LocalSource(BaseByteSource):
    """Files under a local folder, read with plain OS calls (no fsspec, no zarr).

    Parameters
    ----------
    root : str or path-like
        The store folder. Made absolute.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(root))
        self._prefix = os.path.join(self.root, "")

    def _path(self, key: str) -> str:
        if not key:
            return self.root
        return self._prefix + (key if os.sep == "/" else os.path.join(*key.split("/")))

    def _open_file(self, key: str) -> tuple[int, int] | None:
        """An open descriptor of ``key``'s file and its size (the caller closes it); None when there is no such
        file (or it is a directory)."""
        try:
            fd = os.open(self._path(key), _O_READ)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            return None
        return fd, st.st_size

    def get(self, key: str) -> bytes | None:
        # open, fstat, one pread, close: a third fewer system calls and Python objects than ``open().readall()``
        # (this runs once per chunk the loader fetches)
        opened = self._open_file(key)
        if opened is None:
            return None
        fd, size = opened
        try:
            data = os.pread(fd, size, 0) if size > 0 else b""
            if len(data) == size and size > 0:
                return data
            parts = [data]  # a short read, or a size the file system does not know: read on to the end
            pos = len(data)
            while True:
                more = os.pread(fd, 1 << 20, pos)
                if not more:
                    return b"".join(parts)
                parts.append(more)
                pos += len(more)
        finally:
            os.close(fd)

    def read_into(self, key: str, out: Any) -> int | None:
        """Read all of ``key`` straight into the writable buffer ``out`` when the file is exactly ``out``'s size.

        One copy, page cache to ``out``: no bytes object in between (for an uncompressed chunk and a cache slot
        that saves a fresh multi-MB allocation, its page faults and a second copy). Returns the file's size: equal
        to ``out``'s byte length when ``out`` holds the whole file; any other size (``out`` untouched, or partly
        written when the file shrank while being read) tells the caller to read the bytes the ordinary way. None
        when the key does not exist.
        """
        opened = self._open_file(key)
        if opened is None:
            return None
        fd, size = opened
        try:
            mv = memoryview(out).cast("B")
            if size != mv.nbytes:
                return size
            got = 0
            while got < size:  # a read may return fewer bytes than asked
                if _PREADV:
                    n = os.preadv(fd, [mv[got:]], got)
                else:  # no preadv (Windows): a file object over the same descriptor, not closed by it
                    with open(fd, "rb", buffering=0, closefd=False) as fh:
                        fh.seek(got)
                        n = fh.readinto(mv[got:]) or 0
                if n <= 0:
                    break
                got += n
            return got
        finally:
            os.close(fd)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        try:
            fd = os.open(self._path(key), _O_READ)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            if start < 0:
                size = os.fstat(fd).st_size
                start = max(size + start, 0)
            parts = []
            got = 0
            while got < length:  # pread may return fewer bytes than asked
                b = os.pread(fd, length - got, start + got)
                if not b:
                    break
                parts.append(b)
                got += len(b)
            return b"".join(parts)
        finally:
            os.close(fd)

    versioned = True

    def version(self, key: str) -> tuple[int, ...] | None:
        return _stat_version(self._path(key))

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        stack = [prefix.strip("/")]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(self._path(folder)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                key = f"{folder}/{e.name}" if folder else e.name
                if e.is_dir():
                    stack.append(key)
                elif e.is_file():
                    yield key, e.stat().st_size

    def describe(self, key: str = "") -> str:
        return self._path(key)

    def __repr__(self) -> str:
        return f"LocalSource({self.root!r})"


class FsspecSource(BaseByteSource):
    """Objects under a URL read through an fsspec filesystem.

    Parameters
    ----------
    url : str
        Store URL (``memory://store.zarr``, ``file:///data/era5.zarr``, ``s3://bucket/era5.zarr``).
    storage_options : mapping, optional
        Passed to the filesystem (credentials, endpoint, anonymous access, ...).
    fs : fsspec.AbstractFileSystem, optional
        An existing filesystem; then ``url`` is a path on it.

    Raises
    ------
    StoreError
        fsspec cannot open ``url`` (:func:`fsspec_filesystem`).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *, fs: Any = None):
        if fs is None:
            fs, path = fsspec_filesystem(url, storage_options)
        else:
            path = url
        self.fs = fs
        self.url = url
        self.root = path.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        # local files through fsspec (file://): a stat is as cheap as LocalSource's
        self.versioned = "file" in protocol or "local" in protocol

    def version(self, key: str) -> tuple[int, ...] | None:
        if not self.versioned:
            return super().version(key)
        return _stat_version(self.fs._strip_protocol(self._path(key)))

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        end = None if start < 0 else start + length
        try:
            return self.fs.cat_file(self._path(key), start=start, end=end)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        paths = [self._path(k) for k in keys]
        # cat_ranges, not cat: cat expands glob characters ("b[1].zarr" matched nothing and every chunk read as
        # missing or fell back to one request each); whole objects are the ranges (None, None)
        nones = [None] * len(paths)
        got = self.fs.cat_ranges(paths, nones, nones, on_error="return")
        return [_missing_or_raise(v) for v in got]

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        if not requests:
            return []
        paths = [self._path(k) for k, _, _ in requests]
        starts = [s for _, s, _ in requests]
        ends = [None if s < 0 else s + n for _, s, n in requests]
        got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        return [_missing_or_raise(v) for v in got]

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.fs._strip_protocol(self.root).rstrip("/")
        try:
            found = self.fs.find(self._path(prefix.strip("/")), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return
        for path, info in found.items():
            path = self.fs._strip_protocol(path)
            if info.get("type", "file") == "file" and path.startswith(base + "/"):
                yield path[len(base) + 1:], int(info.get("size") or 0)

    def list_dir(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.fs._strip_protocol(self._path(prefix)).rstrip("/")
        names = []
        for e in entries:
            e = self.fs._strip_protocol(e).rstrip("/")
            if e == base:  # some filesystems list a file as itself
                continue
            names.append(e.rsplit("/", 1)[-1])
        return sorted(set(names))

    def describe(self, key: str = "") -> str:
        return self.fs.unstrip_protocol(self._path(key))

    def __repr__(self) -> str:
        return f"FsspecSource({self.url!r})"


def fsspec_filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path on it (``fsspec.core.url_to_fs``), or a :class:`StoreError`.

    The one place a URL becomes an fsspec filesystem (:class:`FsspecSource`, and the check of a normalisation
    store's URL in :class:`~fastload.norm.Normalizer`), so that a URL fsspec cannot open is the same clear error
    everywhere, fsspec's own as its ``__cause__``.

    Raises
    ------
    StoreError
        The protocol needs a package that is not installed (``s3://`` without s3fs: the message says what to
        install), fsspec knows no such protocol (``foo://``), or ``storage_options`` do not fit its filesystem.
    """
    import fsspec
    import fsspec.core

    opts = dict(storage_options or {})
    protocol = fsspec.core.split_protocol(url.split("::")[0])[0] or "file"
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ImportError as e:  # fsspec knows the protocol; its package is missing ("Install s3fs to access S3")
        raise StoreError(
            f"{url}: reading {protocol}:// URLs needs a package that is not installed: {e} "
            f"(fsspec's implementation of {protocol!r}; then run the command again)"
        ) from e
    except ValueError as e:  # "Protocol not known: foo", or a value the filesystem refuses
        unknown = _unknown_protocol(url)  # (not available_protocols(): a class registered at runtime is known)
        if unknown is not None:
            raise StoreError(
                f"{url}: fsspec knows no protocol {unknown!r}; expected a local path or a URL fsspec can open "
                "(file://, memory://, s3://, gs://, az://, https://, ...; fsspec.available_protocols() lists them)"
            ) from e
        raise StoreError(f"{url}: fsspec cannot open this URL with storage_options {sorted(opts)}: {e}") from e
    except TypeError as e:  # an option the filesystem's constructor does not take
        raise StoreError(
            f"{url}: storage_options {sorted(opts)} do not fit fsspec's {protocol!r} filesystem: {e}"
        ) from e


def _unknown_protocol(url: str) -> str | None:
    """The first protocol of ``url`` (each of a chain ``a::b://...``) that fsspec has no filesystem class for, or None.

    Decided by ``fsspec.get_filesystem_class``'s own ValueError, which looks in the registry (classes registered at
    runtime with ``fsspec.register_implementation``) and in the table of known implementations."""
    import fsspec
    import fsspec.core

    for part in url.split("::"):
        protocol = fsspec.core.split_protocol(part)[0] or "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            return protocol
        except ImportError:  # known, its package missing: not what this asks
            continue
    return None


def _stat_version(path: str) -> tuple[int, ...] | None:
    """``(size, mtime_ns, inode)`` of a local file (:meth:`BaseByteSource.version`); None when it does not exist
    or is a folder."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _missing_or_raise(v: Any) -> bytes | None:
    if isinstance(v, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return None
    if isinstance(v, BaseException):
        raise v
    return v


class LatencySource(BaseByteSource):
    """Another source with ``ms`` milliseconds of sleep added to every request (simulated slow storage).

    A batched call (:meth:`get_many`, :meth:`get_ranges`) sleeps once: its requests are in flight together, as
    they would be against an object store. The sleep releases the GIL, so threads overlap their waits.

    Parameters
    ----------
    inner : BaseByteSource
        The source that holds the bytes.
    ms : float
        Added latency per request, in milliseconds (>= 0).

    Raises
    ------
    ConfigError
        ``ms`` is not a finite number >= 0.
    """

    def __init__(self, inner: BaseByteSource, ms: float):
        if isinstance(ms, bool) or not (isinstance(ms, numbers.Real) and math.isfinite(ms) and ms >= 0):
            raise ConfigError(f"latency_ms: expected a finite number of milliseconds >= 0, got {ms!r}")
        self.inner = inner
        self.ms = float(ms)
        self.root = getattr(inner, "root", "")

    def _sleep(self) -> None:
        if self.ms > 0:
            time.sleep(self.ms / 1000.0)

    def get(self, key: str) -> bytes | None:
        self._sleep()
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        self._sleep()
        return self.inner.get_range(key, start, length)

    def exists(self, key: str) -> bool:
        self._sleep()
        return self.inner.exists(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._sleep()
        return self.inner.get_many(keys)

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        self._sleep()
        return self.inner.get_ranges(requests)

    def list_dir(self, prefix: str) -> list[str]:
        self._sleep()
        return self.inner.list_dir(prefix)

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        self._sleep()
        return self.inner.walk(prefix)

    def describe(self, key: str = "") -> str:
        return self.inner.describe(key)

    def __repr__(self) -> str:
        return f"LatencySource({self.inner!r}, ms={self.ms})"
