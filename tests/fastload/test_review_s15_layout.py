"""Store layout at open (review s15 G1, finding 4): repeated level values and missing coordinate chunks are refused.

Before: levels ``[96, 96, 114]`` opened and ``level_indices(field, [96])`` silently took index 0; a deleted
``level/0`` chunk opened with levels ``[0, 0, 0]`` (the fill value); a deleted ``time`` or ``latitude`` chunk was
reported as "not strictly increasing" / "non-finite". Now each is a :class:`SchemaError` naming the store and the
coordinate (and the value and its indices, or the chunk), at open.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.errors import SchemaError
from tests.fastload.stores import _array, make_atmorep, make_per_variable


def _chunk_files(store: Path, name: str) -> list[Path]:
    """The stored chunk objects of array ``name`` (v2 ``0``, ``1``...; v3 ``c/0``...), sorted by chunk index."""
    files = [Path(d) / f for d, _, fs in os.walk(store / name) for f in fs if not f.startswith((".", "zarr.json"))]
    return sorted(files, key=lambda p: int(re.split(r"[./]", p.name)[-1]))


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("levels, value, at", [((500, 500, 850), 500, [0, 1]), ((500, 850, 300, 850), 850, [1, 3])])
def test_per_variable_levels_that_repeat_are_refused(tmp_path, zarr_format, levels, value, at):
    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=zarr_format, levels=levels)
    with pytest.raises(SchemaError) as e:
        fastload.open_store(path)
    assert str(e.value) == (f"{path}: level coordinate 'level' has the value {value} {len(at)} times (at indices "
                            f"{at}) in {[float(v) for v in levels]}; expected distinct level values")


@pytest.mark.parametrize("level_coord", [False, True])
def test_atmorep_levels_that_repeat_are_refused(tmp_path, level_coord):
    path = tmp_path / "a.zarr"
    make_atmorep(path, levels=(96, 96, 114, 123, 137), level_coord=level_coord)
    what = "level coordinate 'level'" if level_coord else "attribute 'levels' of 'data'"
    with pytest.raises(SchemaError, match=re.escape(f"{path}: {what} has the value 96 2 times (at indices [0, 1])")):
        fastload.open_store(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_distinct_levels_still_open_with_the_values_written(tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    ref = make_per_variable(path, zarr_format=zarr_format, levels=(850, 500, 300))
    s = fastload.open_store(path)
    np.testing.assert_array_equal(s.fields["t"].levels, ref["level"])
    np.testing.assert_array_equal(s.level_indices("t", [300, 850]), [2, 0])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("coord", ["level", "time", "latitude", "longitude"])
def test_a_missing_coordinate_chunk_is_refused_naming_store_coordinate_and_chunk(tmp_path, zarr_format, coord):
    path = tmp_path / "s.zarr"
    ref = make_per_variable(path, zarr_format=zarr_format, levels=(96, 105, 114))
    (chunk,) = _chunk_files(path, coord)
    chunk.unlink()
    key = chunk.relative_to(path).as_posix()
    n = ref[coord].size
    with pytest.raises(SchemaError) as e:
        fastload.open_store(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: coordinate {coord!r} has no chunk [0] (key {key!r}, {n} of its {n} values): a "
                          f"missing chunk reads as the fill value "), msg
    assert msg.endswith("; write the coordinate whole"), msg


def test_a_missing_later_chunk_of_a_chunked_coordinate_is_named(tmp_path):
    path = tmp_path / "s.zarr"
    make_per_variable(path, levels=(96, 105, 114, 123, 137))
    _array(_group(path), "level", np.array([96.0, 105, 114, 123, 137]), ("level",), zarr_format=2, chunks=(2,),
           attrs={"units": "1", "level_type": "model"}, fill_value=0.0)
    assert [p.name for p in _chunk_files(path, "level")] == ["0", "1", "2"]
    (path / "level" / "1").unlink()
    with pytest.raises(SchemaError, match=re.escape(f"{path}: coordinate 'level' has no chunk [1] (key 'level/1', 2 "
                                                    f"of its 5 values): a missing chunk reads as the fill value 0.0")):
        fastload.open_store(path)


def test_a_missing_one_value_chunk_reads_as_the_fill_value_zarr_left_out(tmp_path):
    """zarr does not store a chunk equal to the fill value (write_empty_chunks=False): a level 0 alone in its chunk,
    with fill value 0, is legitimately absent, so a one-value chunk is not refused."""
    path = tmp_path / "s.zarr"
    make_per_variable(path, levels=(0, 500, 850), level_type=None)
    _array(_group(path), "level", np.array([0.0, 500, 850]), ("level",), zarr_format=2, chunks=(1,),
           attrs={"units": "1"}, fill_value=0.0)
    (path / "level" / "0").unlink(missing_ok=True)  # zarr may not have written it (all fill value)
    s = fastload.open_store(path)
    np.testing.assert_array_equal(s.fields["t"].levels, [0.0, 500.0, 850.0])


def _group(path: Path):
    """The store's root group, its ``level`` array removed (to write it again with other chunks)."""
    import zarr

    shutil.rmtree(path / "level")
    return zarr.open_group(path, mode="r+", zarr_format=2)


def test_a_missing_inner_chunk_of_a_sharded_coordinate_is_named(tmp_path):
    import zarr

    path = tmp_path / "s.zarr"
    make_per_variable(path, zarr_format=3, levels=(96, 105, 114, 123))
    shutil.rmtree(path / "level")
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    arr = root.create_array("level", shape=(4,), chunks=(2,), shards=(4,), dtype="f8", fill_value=0.0,
                            dimension_names=["level"], attributes={"units": "1", "level_type": "model"})
    arr[2:4] = [114.0, 123.0]  # inner chunk [0] never written: absent from the shard's index
    with pytest.raises(SchemaError, match=re.escape(f"{path}: coordinate 'level' has no chunk [0] (key 'level/c/0', 2 "
                                                    f"of its 4 values): a missing chunk reads as the fill value 0.0")):
        fastload.open_store(path)
    arr[0:2] = [96.0, 105.0]
    np.testing.assert_array_equal(fastload.open_store(path).fields["t"].levels, [96.0, 105.0, 114.0, 123.0])


# -- the check at the right depth (s16 A): detect_layout takes which chunks are stored; remote stores ask at once ---
def _chunked_time(path: Path, nt: int = 8, chunk: int = 2) -> np.ndarray:
    """A per-variable store whose ``time`` coordinate has ``nt // chunk`` chunks (v2 keys ``time/0``...); its values
    (hours since 2000-01-01) as written."""
    import zarr

    make_per_variable(path, nt=nt, chunks=(chunk, 1, 9, 16), missing_chunk=False, static=False)
    shutil.rmtree(path / "time")
    hours = np.arange(nt, dtype="f8") * 6
    _array(zarr.open_group(path, mode="r+", zarr_format=2), "time", hours, ("time",), zarr_format=2, chunks=(chunk,),
           attrs={"units": "hours since 2000-01-01", "calendar": "proleptic_gregorian"}, fill_value=0.0)
    return hours


def _zarr_read(path: Path):
    """A coordinate reader that is a plain function, not a store's method: zarr-python's values."""
    import zarr

    group = zarr.open_group(path, mode="r")
    return lambda name: np.asarray(group[name][...])


def test_detect_layout_refuses_a_chunk_its_stored_function_reports_missing(tmp_path):
    """Before s16 the check ran only when ``read`` was a bound method of a Store (found via ``read.__self__``);
    with any other reader a missing coordinate chunk passed silently."""
    from fastload.store._layout import detect_layout
    from fastload.store._meta import load_metadata
    from fastload.store._source import LocalSource

    path = tmp_path / "s.zarr"
    _chunked_time(path)
    meta = load_metadata(LocalSource(path))
    asked: dict[str, list] = {}

    def stored(name, chunks):
        asked[name] = list(chunks)
        return [not (name == "time" and c == (2,)) for c in chunks]

    with pytest.raises(SchemaError) as e:
        detect_layout(meta, _zarr_read(path), "WHERE", stored)
    assert str(e.value) == ("WHERE: coordinate 'time' has no chunk [2] (key 'time/2', 2 of its 8 values): a missing "
                            "chunk reads as the fill value 0.0; write the coordinate whole")
    assert asked["time"] == [(0,), (1,), (2,), (3,)]  # every chunk, in one call


def test_detect_layout_with_every_chunk_stored_gives_zarrs_values(tmp_path):
    from fastload.store._layout import detect_layout
    from fastload.store._meta import load_metadata
    from fastload.store._source import LocalSource

    path = tmp_path / "s.zarr"
    hours = _chunked_time(path)
    meta = load_metadata(LocalSource(path))
    asked = []
    layout = detect_layout(meta, _zarr_read(path), "W", lambda n, cs: asked.append(n) or [True] * len(cs))
    want = np.datetime64("2000-01-01T00", "ns") + hours.astype("int64") * np.timedelta64(1, "h")
    np.testing.assert_array_equal(layout.time, want)
    assert sorted(asked) == ["latitude", "level", "longitude", "time"]
    with pytest.raises(ValueError, match=re.escape("W: stored('")):  # a stored function answering too few
        detect_layout(meta, _zarr_read(path), "W", lambda n, cs: [True] * (len(cs) - 1))


class _InFlight:
    """A local store seen as remote (``versioned`` False): counts the ``exists`` requests of ``time`` chunks in flight
    at once and records every request. Each such ``exists`` waits (up to 2 s, then no more waiting in this source) for a second one
    to be in flight, so asking one at a time shows as a maximum of 1, not as a time."""

    versioned = False

    def __init__(self, root: Path):
        import threading

        from fastload.store._source import LocalSource

        self.inner = LocalSource(root)
        self.cond = threading.Condition()
        self.now = self.most = 0
        self.gave_up = False
        self.exists_keys: list[str] = []
        self.get_keys: list[str] = []
        self.batches: list[list[str]] = []

    def exists(self, key):
        self.exists_keys.append(key)
        if not key.startswith("time/"):  # the one coordinate of several chunks
            return self.inner.exists(key)
        with self.cond:
            self.now += 1
            self.most = max(self.most, self.now)
            self.cond.notify_all()
            if not self.gave_up and not self.cond.wait_for(lambda: self.most >= 2, timeout=2.0):
                self.gave_up = True
            self.now -= 1
        return self.inner.exists(key)

    def get(self, key):
        self.get_keys.append(key)
        return self.inner.get(key)

    def get_many(self, keys):
        self.batches.append(list(keys))
        return [self.inner.get(k) for k in keys]

    def __getattr__(self, name):  # get_range, list_dir, describe, ...: the files'
        return getattr(self.inner, name)


def test_a_remote_source_is_asked_for_a_coordinates_chunks_at_once(tmp_path):
    """A remote (or slowed, ``--store-latency-ms``) source: the coordinate's chunks are read in one batch and
    asked whether they exist concurrently, not one round trip per chunk in turn (open time grew with the chunks)."""
    from fastload.store._open import Store
    from fastload.store._source import BaseByteSource

    path = tmp_path / "s.zarr"
    hours = _chunked_time(path)
    src = _InFlight(path)
    BaseByteSource.register(type(src))
    store = Store(str(path), src)  # type: ignore[arg-type]
    time_keys = ["time/0", "time/1", "time/2", "time/3"]
    assert sorted(k for k in src.exists_keys if k.startswith("time/")) == time_keys
    assert src.most >= 2 and not src.gave_up
    assert time_keys in src.batches and not set(time_keys) & set(src.get_keys)  # one batch, no single reads
    np.testing.assert_array_equal(store.read_array("time"), hours)
    os.remove(path / "time" / "3")
    with pytest.raises(SchemaError, match=re.escape("coordinate 'time' has no chunk [3] (key 'time/3', 2 of its 8")):
        Store(str(path), _InFlight(path))  # type: ignore[arg-type]


@pytest.mark.parametrize("remote", [False, True])
def test_a_failed_exists_request_names_the_coordinate_chunk_and_key(tmp_path, remote):
    """A request that fails (not a missing object) is a ChunkReadError naming the array, chunk and key, with the
    source's error as its cause; before, the source's bare OSError came out of open."""
    from fastload.errors import ChunkReadError
    from fastload.store._open import Store
    from fastload.store._source import BaseByteSource

    path = tmp_path / "s.zarr"
    _chunked_time(path)
    src = _InFlight(path)
    src.versioned = not remote
    src.gave_up = True  # no waiting for a second request
    fail = OSError("connection reset")
    real = src.exists

    def exists(key):
        if key == "time/1":
            raise fail
        return real(key)

    src.exists = exists
    BaseByteSource.register(type(src))
    with pytest.raises(ChunkReadError) as e:
        Store(str(path), src)  # type: ignore[arg-type]
    assert (e.value.array, e.value.chunk, e.value.path) == ("time", (1,), str(path / "time" / "1"))
    assert str(e.value).endswith("asking whether it is stored: OSError: connection reset") and e.value.__cause__ is fail
