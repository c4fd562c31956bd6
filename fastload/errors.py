"""The error tree of fastload.

Every error raised on purpose by fastload derives from :class:`FastloadError` and, where one fits, from the
builtin a caller would already catch (as zarr-python does): a missing store is a ``FileNotFoundError``, a bad
setting a ``ValueError``, a failed chunk read an ``OSError``. Messages name the file, field, chunk or setting at
fault and say what was expected. The CLI prints the message of a ``FastloadError`` and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "FastloadError",
    "ConfigError",
    "StoreError",
    "StoreNotFoundError",
    "SchemaError",
    "CodecError",
    "ChunkReadError",
    "ChunkTimeoutError",
    "LoaderClosedError",
    "WorkerError",
    "CacheBusyError",
]


class FastloadError(Exception):
    """Base class of every error fastload raises on purpose."""


class ConfigError(FastloadError, ValueError):
    """A configuration value is missing, of the wrong type, or impossible (names the setting)."""


class StoreError(FastloadError):
    """Something is wrong with a store as a whole."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given path or URL."""


class SchemaError(StoreError, ValueError):
    """The store exists but its layout, dimensions or coordinates are not what fastload reads."""


class CodecError(StoreError, ValueError):
    """An array uses a codec fastload cannot or will not decode (unknown, or unsafe such as pickle)."""


class ChunkReadError(FastloadError, OSError):
    """Reading or decoding one chunk failed.

    Parameters
    ----------
    array : str
        Name of the array (as in the store).
    chunk : tuple of int
        Chunk index in the array's chunk grid.
    cause : str
        What went wrong, in words.
    path : str, optional
        The file or URL that was read.
    """

    def __init__(self, array: str, chunk: tuple[int, ...], cause: str, path: str | None = None):
        self.array = array
        self.chunk = tuple(int(c) for c in chunk)
        self.cause = cause
        self.path = path
        where = f" ({path})" if path else ""
        super().__init__(f"array {array!r}, chunk {self.chunk}{where}: {cause}")

    def __reduce__(self):  # keep the fields when the error crosses a process boundary
        return (type(self), (self.array, self.chunk, self.cause, self.path))


class ChunkTimeoutError(ChunkReadError):
    """A chunk's store request went unanswered for ``loader.read_timeout_s`` and the step waiting for it gave it up.

    The store was slow or stuck, not necessarily the chunk bad: a later step that needs the chunk fetches it again.
    A :class:`ChunkReadError` (and so an ``OSError``), so code catching those catches this too; catch this class to
    tell a timeout from a bad chunk (never the message text).
    """


class LoaderClosedError(FastloadError, RuntimeError):
    """The loader was used after ``close()``."""


class WorkerError(FastloadError, RuntimeError):
    """A loader worker process died (or could not start); the message names the worker, its pid and exit code.
    The next iteration starts a new process in its place."""


class CacheBusyError(FastloadError, RuntimeError):
    """The decoded-chunk cache cannot start a new plan: steps of the running one still hold (pin) chunks; the message
    names the arrays and steps and says what to release."""
