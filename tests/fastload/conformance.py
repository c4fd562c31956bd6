"""Shared checks every byte source must pass (like zarr-python's ``StoreTests``).

Subclass :class:`ChunkSourceTests` in a ``Test*`` class and implement ``make_source(tmp_path, files)``, which
puts ``files`` (key -> bytes) under a fresh store root and returns a :class:`~fastload.store.BaseByteSource` on it.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import pytest

from fastload.store import BaseByteSource

FILES = {
    "zarr.json": b'{"zarr_format": 3, "node_type": "group"}',
    "a/zarr.json": b"{}",
    "a/c/0/0": bytes(range(256)) * 4,
    "a/c/0/1": b"short",
    "a/c/1/0": b"",
    "b/0.0": os.urandom(3000),
}


def write_files(root, files: dict[str, bytes]) -> None:
    """Put ``files`` (key -> bytes) under the folder ``root`` (for sources that read local files)."""
    for key, value in files.items():
        p = os.path.join(root, *key.split("/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(value)


class ChunkSourceTests:
    """Behaviour common to all byte sources: missing keys, ranges, batches, listing, threads."""

    def make_source(self, tmp_path, files: dict[str, bytes]) -> BaseByteSource:  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def source(self, tmp_path) -> BaseByteSource:
        return self.make_source(tmp_path, FILES)

    def test_get_returns_stored_bytes(self, source):
        for key, value in FILES.items():
            assert source.get(key) == value, key

    def test_get_missing_is_none(self, source):
        assert source.get("a/c/9/9") is None
        assert source.get("nothing/here") is None
        assert source.get("a/c/0/0/deeper") is None  # a path through a file

    def test_exists(self, source):
        assert source.exists("a/c/0/0")
        assert not source.exists("a/c/9/9")

    def test_get_range(self, source):
        v = FILES["a/c/0/0"]
        assert source.get_range("a/c/0/0", 10, 20) == v[10:30]
        assert source.get_range("a/c/0/0", 0, len(v)) == v
        assert source.get_range("a/c/0/0", -16, 16) == v[-16:]
        assert source.get_range("a/c/9/9", 0, 4) is None

    def test_get_range_past_the_end_is_short(self, source):
        assert source.get_range("a/c/0/1", 2, 100) == b"ort"

    def test_get_many_keeps_order_and_marks_missing(self, source):
        keys = ["b/0.0", "a/c/9/9", "a/c/0/0", "a/c/0/1"]
        assert source.get_many(keys) == [FILES["b/0.0"], None, FILES["a/c/0/0"], FILES["a/c/0/1"]]
        assert source.get_many([]) == []

    def test_get_ranges(self, source):
        reqs = [("a/c/0/0", 5, 7), ("a/c/9/9", 0, 4), ("b/0.0", -10, 10)]
        assert source.get_ranges(reqs) == [FILES["a/c/0/0"][5:12], None, FILES["b/0.0"][-10:]]

    def test_list_dir(self, source):
        assert set(source.list_dir("")) >= {"zarr.json", "a", "b"}
        assert set(source.list_dir("a/c")) == {"0", "1"}
        assert source.list_dir("nothing") == []

    def test_describe_names_the_key(self, source):
        assert "a/c/0/0" in source.describe("a/c/0/0")

    def test_walk_lists_every_object_below_a_folder_with_its_size(self, source):
        assert sorted(source.walk("")) == sorted((k, len(v)) for k, v in FILES.items())
        assert sorted(source.walk("a/c")) == sorted((k, len(v)) for k, v in FILES.items() if k.startswith("a/c/"))
        assert sorted(source.walk("a/")) == sorted(source.walk("a"))
        assert list(source.walk("nothing/here")) == []

    def test_many_threads_read_identical_bytes(self, source):
        keys = [k for k in FILES if k.startswith(("a/c", "b/"))] * 25
        expect = [FILES[k] for k in keys]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(source.get, keys))
            ranges = list(pool.map(lambda k: source.get_range(k, 1, 3), keys))
        assert got == expect
        assert ranges == [e[1:4] for e in expect]


def assert_chunks_equal(a: np.ndarray, b: np.ndarray) -> None:
    """Equal shape, dtype and values (NaN equal to NaN)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
