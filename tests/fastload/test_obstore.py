"""The obstore byte source passes the shared ChunkSourceTests; stores opened with ``backend="obstore"`` read the
same values as with plain file reads, through the store, the Python API and the loader; obstore's errors reach
the reader as the OSError kinds it classifies."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.errors import SchemaError, StoreError, StoreNotFoundError
from fastload.store import LatencySource, LocalSource, ObstoreSource, make_source, open_store
from tests.fastload.conformance import ChunkSourceTests, write_files
from tests.fastload.stores import make_per_variable

obstore = pytest.importorskip("obstore")


class TestObstoreFileSource(ChunkSourceTests):
    def make_source(self, tmp_path, files):
        write_files(tmp_path / "s", files)
        return ObstoreSource(f"file://{tmp_path / 's'}")


class TestObstoreMemorySource(ChunkSourceTests):
    def make_source(self, tmp_path, files):
        mem = obstore.store.MemoryStore()
        for key, value in files.items():
            obstore.put(mem, key, value)
        return ObstoreSource("memory:///", store=mem)


def test_suffix_range_and_empty_length(tmp_path):
    write_files(tmp_path / "s", {"k": b"0123456789"})
    src = ObstoreSource(f"file://{tmp_path / 's'}")
    assert src.get_range("k", -3, 3) == b"789"
    assert src.get_ranges([("k", -4, 4), ("k", 0, 0), ("k", 2, 3), ("nope", 0, 1)]) == [b"6789", b"", b"234", None]
    assert src.describe("k") == f"file://{tmp_path / 's'}/k" and "ObstoreSource" in repr(src)


@pytest.mark.parametrize("zarr_format,sharded", [(2, False), (3, False), (3, True)])
def test_store_through_obstore_equals_local(tmp_path, zarr_format, sharded):
    local = str(tmp_path / "s.zarr")
    truth = make_per_variable(local, zarr_format=zarr_format, sharded=sharded, codec="zstd")
    for where in (local, f"file://{local}"):  # a local path is read as file:// through obstore
        store = open_store(where, backend="obstore")
        assert isinstance(store.source, ObstoreSource) and store.backend == "obstore"
        for name in ("t", "q", "sp", "orog"):
            np.testing.assert_array_equal(store.read(name).reshape(truth[name].shape), truth[name])
        np.testing.assert_array_equal(store.time, truth["time"])
        info = store.arrays["t"]
        chunks = [tuple(c) for c in np.ndindex(*info.grid_shape)]
        plain = open_store(local)
        assert isinstance(plain.source, LocalSource) and plain.backend == "auto"
        assert store.chunk_bytes_many("t", chunks) == [plain.chunk_bytes("t", c) for c in chunks]


def test_backend_choice_and_errors(tmp_path):
    local = tmp_path / "s.zarr"
    make_per_variable(local, nt=2, ny=5, nx=8)
    assert isinstance(make_source(local, latency_ms=1.0, backend="obstore"), LatencySource)
    assert make_source(local, backend="fsspec").describe("").startswith("file://")
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'fsspec', 'obstore', got 'boto'"):
        open_store(local, backend="boto")
    with pytest.raises(StoreNotFoundError, match="no such file or folder"):
        open_store(tmp_path / "missing.zarr", backend="obstore")
    with pytest.raises(StoreNotFoundError, match="obstore cannot open this URL"):
        open_store("file:///definitely/not/here.zarr", backend="obstore")
    with pytest.raises(StoreNotFoundError, match=r"obstore cannot open this URL with storage_options \['bogus'\]"):
        ObstoreSource("s3://bucket/x.zarr", {"bogus": "1"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="empty: not a zarr store: expected zarr.json"):
        open_store(f"file://{tmp_path / 'empty'}", backend="obstore")


class _Failing:
    """Stands in for the obstore module: every request raises the obstore error it was given."""

    def __init__(self, error):
        self.error = error
        self.store = obstore.store

    def _raise(self, *a, **k):
        raise self.error

    get = get_range = head = list_with_delimiter = list = _raise

    async def get_async(self, *a, **k):
        raise self.error

    get_range_async = get_async


@pytest.mark.parametrize("error,kind", [
    (obstore.exceptions.GenericError("connection reset by peer"), OSError),
    (obstore.exceptions.PermissionDeniedError("403 Forbidden"), PermissionError),
    (obstore.exceptions.UnauthenticatedError("401"), PermissionError),
])
def test_obstore_errors_become_the_oserrors_the_reader_classifies(tmp_path, error, kind):
    """A refused request is a PermissionError (the reader does not retry it); any other failure a plain OSError
    (retried ``loader.retries`` times), naming the key and obstore's error; in batches too."""
    from fastload.reader import _transient

    write_files(tmp_path / "s", {"k": b"x"})
    src = ObstoreSource(f"file://{tmp_path / 's'}")
    src._obs = _Failing(error)
    calls = [lambda: src.get("k"), lambda: src.get_range("k", 0, 1), lambda: src.exists("k"),
             lambda: src.list_dir(""), lambda: src.get_many(["k", "k"]), lambda: src.get_ranges([("k", 0, 1)] * 2)]
    for call in calls[:2] + calls[4:]:
        with pytest.raises(kind, match=f"{tmp_path / 's'}/k: {type(error).__name__}: ") as got:
            call()
        assert type(got.value) is kind
        assert _transient(got.value) == (kind is OSError)
    with pytest.raises(kind, match=f"{tmp_path / 's'}/k: {type(error).__name__}: "):
        src.exists("k")
    # a listing the store refuses (a public bucket without LIST, a plain HTTP server) is a StoreError naming the
    # URL (the CLI reports it; it printed a traceback), also when walked (inspect's sizes: unknown, with a warning)
    with pytest.raises(StoreError, match=f"{tmp_path / 's'}: the store cannot be listed .*{type(error).__name__}"):
        src.list_dir("")
    with pytest.raises(StoreError, match="cannot be listed"):
        list(src.walk("a"))


def test_inspect_sizes_of_a_store_that_cannot_be_listed_are_unknown(tmp_path, caplog):
    from fastload.inspect import _stored_bytes

    make_per_variable(tmp_path / "s.zarr", nt=2, ny=5, nx=8)
    store = open_store(tmp_path / "s.zarr", backend="obstore")
    assert _stored_bytes(store, "t", remote=True)[0] > 0
    store.source._obs = _Failing(obstore.exceptions.PermissionDeniedError("403 ListBucket"))
    with caplog.at_level("WARNING", logger="fastload"):
        assert _stored_bytes(store, "t", remote=True) is None
    assert "stored bytes of 't' unknown" in caplog.text and "cannot be listed" in caplog.text


def test_local_paths_with_url_characters_and_empty_objects(tmp_path):
    """A local path with '%', '#', '?' or a space opens through obstore (its file:// URL is quoted); a range of an
    empty object is empty, as with plain reads (obstore refused a range from 0 of it)."""
    for name in ("a%20b.zarr", "c#d.zarr", "e?f.zarr", "g h.zarr"):
        truth = make_per_variable(tmp_path / name, nt=2, ny=5, nx=8)
        store = open_store(tmp_path / name, backend="obstore")
        np.testing.assert_array_equal(store.read("sp").reshape(truth["sp"].shape), truth["sp"])
    write_files(tmp_path / "s", {"e": b"", "k": b"12"})
    src = ObstoreSource(f"file://{tmp_path / 's'}")
    assert src.get_range("e", 0, 4) == b"" == LocalSource(tmp_path / "s").get_range("e", 0, 4)
    assert src.get_ranges([("e", 0, 4), ("k", 0, 1)]) == [b"", b"1"]


@pytest.mark.usefixtures("nothing_left")
def test_loader_batches_through_obstore_equal_reference(tmp_path):
    """End to end: the loader (two I/O threads, a small cache: several steps per batch) reads through obstore and
    gives the batches of the independent NumPy reference."""
    from fastload.loader import Loader
    from tests.fastload.loader_ref import build, reference

    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, sharded=True, codec="zstd")
    store = open_store(tmp_path / "s.zarr", backend="obstore")
    with Loader(store, cfg, samples_per_epoch=12, workers=2, prefetch=2, cache_bytes=40_000, seed=3) as loader:
        n = 0
        for batch in loader:
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])
            n += 1
        assert n == len(loader) > 0 and loader.stats.misses > 0


def test_batches_from_async_code(tmp_path):
    """A notebook cell runs in an event loop: batched requests still work there (asyncio.run would refuse)."""
    import asyncio

    write_files(tmp_path / "s", {"a": b"1", "b": b"22"})
    src = ObstoreSource(f"file://{tmp_path / 's'}")

    async def cell():
        return src.get_many(["a", "b", "c"]), src.get_ranges([("b", 1, 1), ("a", 0, 1)])

    assert asyncio.run(cell()) == ([b"1", b"22", None], [b"2", b"1"])
