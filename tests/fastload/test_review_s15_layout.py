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
