"""A byte source over obstore (Rust ``object_store``): S3, GCS, Azure, HTTP, local files and memory.

Why this exists: against object storage the reader's cost per chunk is the request, not the bytes. obstore issues
requests from a Rust runtime without holding the GIL, and this source sends a batch's requests (``get_many``,
``get_ranges``: up to 32 chunks per reader task) concurrently on it, where fsspec's ``cat`` goes through
Python's asyncio per request. Open a store with it by ``open_store(url, backend="obstore")`` (or the CLI's
``--backend obstore``); ``storage_options`` become obstore's configuration (``from_url(url, **storage_options)``:
``region``, ``skip_signature``, ``aws_endpoint``, ``client_options={...}``, ...).

obstore is an optional dependency (``pip install "fastload[obstore]"``). Bytes come back as ``bytes``: one copy
of each object out of obstore's buffer, small against a request's latency, so that every consumer (JSON
metadata, shard indices, numcodecs) sees the same type as with the other sources.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import StoreError, StoreNotFoundError
from ._source import BaseByteSource

__all__ = ["ObstoreSource"]


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:  # pragma: no cover - the message is the test (tests skip without obstore)
        raise ImportError('backend="obstore" needs the obstore package: pip install "fastload[obstore]"') from None
    return obstore


class ObstoreSource(BaseByteSource):
    """Objects under a URL read through obstore.

    Parameters
    ----------
    url : str
        Store URL (``s3://bucket/era5.zarr``, ``gs://...``, ``az://...``, ``https://...``, ``file:///data/era5.zarr``,
        ``memory:///``). Its path is the prefix of every key.
    storage_options : mapping, optional
        Keyword arguments of ``obstore.store.from_url`` (store configuration, ``client_options``,
        ``retry_config``, ``credential_provider``).
    store : obstore store, optional
        An existing obstore store (e.g. a ``MemoryStore``); then ``url`` only names it in messages.

    Raises
    ------
    StoreNotFoundError
        The URL names nothing obstore can open (an unknown scheme, a local folder that does not exist), or the
        options do not fit its store kind.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *, store: Any = None):
        self._obs = _obstore()
        from obstore import exceptions

        self._errors = exceptions.BaseError
        self._denied = (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError)
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        if store is None:
            try:
                store = self._obs.store.from_url(url, **self.storage_options)
            except (exceptions.BaseError, ValueError, TypeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise StoreNotFoundError(f"{url}: obstore cannot open this URL with storage_options "
                                         f"{sorted(self.storage_options)}: {first}") from None  # fmt: skip
        self.store = store
        self.root = self.url

    def _failed(self, e: BaseException, key: str, missing: Any, start: int | None = None) -> Any:
        """What a request that raised ``e`` answers: ``missing`` where there is no object (obstore's
        ``FileNotFoundError``; a local file system's "not a directory" / "is a directory", a key below a file or a
        folder, which obstore gives as a generic error carrying the OS error number); ``b""`` for a range that
        starts at or past the object's end (sources return short ranges, the caller checks); else raises
        :meth:`_os_error`."""
        if isinstance(e, FileNotFoundError) or "(os error 20)" in str(e) or "(os error 21)" in str(e):
            return missing
        if start is not None and start >= 0:
            try:
                size = self._obs.head(self.store, key)["size"]
            except Exception:  # noqa: BLE001 - the original error says more
                size = None
            if size is not None and start >= size:
                return b""
        raise self._os_error(e, key) from e

    def _os_error(self, e: BaseException, key: str) -> OSError:
        """obstore's error as the ``OSError`` the reader classifies: a refused request is a ``PermissionError``
        (not retried); any other (a connection reset, a 5xx after obstore's own retries) a plain ``OSError``, which
        the reader retries ``loader.retries`` times."""
        kind = PermissionError if isinstance(e, self._denied) else OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return kind(f"{self.describe(key)}: {type(e).__name__}: {first}")

    # -- single requests

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self._obs.get(self.store, key).bytes())
        except (FileNotFoundError, self._errors) as e:
            return self._failed(e, key, None)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        try:
            if start < 0:  # the last -start bytes
                return bytes(self._obs.get(self.store, key, options={"range": {"suffix": -start}}).bytes())
            if length <= 0:
                return b""
            return bytes(self._obs.get_range(self.store, key, start=start, end=start + length))
        except (FileNotFoundError, self._errors) as e:
            return self._failed(e, key, None, start)

    def exists(self, key: str) -> bool:
        try:
            self._obs.head(self.store, key)
        except (FileNotFoundError, self._errors) as e:
            return self._failed(e, key, False)
        return True

    def list_dir(self, prefix: str) -> list[str]:
        try:
            found = self._obs.list_with_delimiter(self.store, prefix.strip("/") or None)
        except (FileNotFoundError, self._errors) as e:
            try:
                return self._failed(e, prefix, [])
            except OSError as err:
                raise self._unlisted(prefix, err) from e
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        names += [o["path"].rsplit("/", 1)[-1] for o in found["objects"]]
        return sorted(set(names))

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        folder = prefix.strip("/")
        try:
            for chunk in self._obs.list(self.store, folder or None):
                for o in chunk:
                    yield o["path"], int(o["size"])
        except (FileNotFoundError, self._errors) as e:
            try:
                self._failed(e, folder, None)
            except OSError as err:
                raise self._unlisted(folder, err) from e

    def _unlisted(self, prefix: str, err: OSError) -> StoreError:
        """A listing the store refuses or cannot answer (a public bucket without LIST permission, a plain HTTP
        server): a :class:`~fastload.errors.StoreError` naming the URL (listings only explain what is missing or
        measure sizes; reading chunks needs none)."""
        return StoreError(f"{self.describe(prefix)}: the store cannot be listed ({err}); fastload reads its "
                          f"metadata and chunks by name and needs a listing only to explain what is missing or to "
                          f"measure sizes")

    def describe(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    # -- batches: every request of the batch in flight at once

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if len(keys) <= 1:
            return [self.get(k) for k in keys]
        obs, store = self._obs, self.store

        async def one(key: str) -> bytes | None:
            try:
                got = await obs.get_async(store, key)
                return bytes(await got.bytes_async())
            except (FileNotFoundError, self._errors) as e:
                return self._failed(e, key, None)

        return self._all([one(k) for k in keys])

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        if len(requests) <= 1:
            return [self.get_range(k, s, n) for k, s, n in requests]
        obs, store = self._obs, self.store

        async def one(key: str, start: int, length: int) -> bytes | None:
            try:
                if start < 0:
                    got = await obs.get_async(store, key, options={"range": {"suffix": -start}})
                    return bytes(await got.bytes_async())
                if length <= 0:
                    return b""
                return bytes(await obs.get_range_async(store, key, start=start, end=start + length))
            except (FileNotFoundError, self._errors) as e:
                return self._failed(e, key, None, start)

        return self._all([one(k, s, n) for k, s, n in requests])

    @staticmethod
    def _all(coros: list[Any]) -> list[bytes | None]:
        """Run the requests concurrently on an event loop of this thread's own (of a helper thread where this one
        already runs a loop); the first error is raised after all have finished (none is left running)."""

        async def gather() -> list[Any]:
            return await asyncio.gather(*coros, return_exceptions=True)

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread (the reader's I/O threads): run one here
            got = asyncio.run(gather())
        else:  # called from async code (a notebook's cell): asyncio.run refuses a nested loop, so use a thread
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                got = pool.submit(asyncio.run, gather()).result()
        for v in got:
            if isinstance(v, BaseException):
                raise v
        return got

    def __repr__(self) -> str:
        return f"ObstoreSource({self.url!r})"
