"""Where a store is, in the form zarr-python opens the same way in every zarr 3 version."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError


def zarr_location(path: Any, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A local path, or a ``file://``/``local://`` URL without options, as a :class:`pathlib.Path`; another URL
    as it is, or opened read-only with ``storage_options``.

    zarr-python >= 3.2 parses every ``str`` as a URL (``urllib.parse.urlparse``), so a local path with ``#`` or
    ``?`` in it loses everything from that character on: ``out#1.zarr`` is opened, or written, as ``out``. A
    ``Path`` goes to a ``LocalStore`` of exactly that path in every zarr 3 version. zarr >= 3.2 also refuses
    ``storage_options`` with a ``file://`` URL (zarr 3.1 opened it through fsspec): a URL with options is opened
    here as zarr 3.1 did, an ``FsspecStore`` (read-only; the callers read). Without options zarr >= 3.2 cuts a
    ``file://`` URL at ``#``/``?`` and takes ``file://rel`` as a host, where zarr 3.1 opened it through fsspec:
    it becomes the local path fsspec gives it. A chained URL (``simplecache::s3://...``) stays a URL. Anything
    else (a zarr store) is returned as it is.

    Raises
    ------
    ConfigError
        ``storage_options`` given with a local path (they configure a URL's filesystem).
    """
    if not isinstance(path, (str, os.PathLike)):
        return path
    s = os.fspath(path)
    if "://" not in s and "::" not in s:  # "::" chains URLs (fsspec): it stays a URL
        if storage_options:
            raise ConfigError(
                f"storage_options {dict(storage_options)!r} given for the local path {s!r}; they apply to a URL "
                "(s3://, gs://, file://, ...)"
            )
        return Path(s)
    if storage_options:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(s, storage_options=dict(storage_options), read_only=True)
    import fsspec.core

    if "::" not in s and fsspec.core.split_protocol(s)[0] in ("file", "local"):
        from fsspec.implementations.local import LocalFileSystem

        return Path(LocalFileSystem._strip_protocol(s))  # zarr >= 3.2 cuts a file:// URL at '#' or '?'
    return s
