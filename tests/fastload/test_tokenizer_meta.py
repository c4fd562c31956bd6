"""Token metadata of multi-field configs: each field's metadata equals that of the field sampled alone.

``StructuredTokenizer.meta`` computes the metadata once per token geometry and copies it for the other fields of
that geometry; this checks the copies (values and independence) and a field of another geometry beside them.
"""

from __future__ import annotations

import types

import numpy as np

from fastload.config import FieldConfig, SamplingConfig
from fastload.sampling.chunks import FieldLayout
from fastload.sampling.tokenizer import LatLonTokenizer


def _tokenizer(fields):
    ny, nx, nt = 12, 20, 10
    grid = types.SimpleNamespace(kind="latlon", lat=np.linspace(80, -80, ny), lon=np.arange(nx) * 18.0,
                                 periodic_x=True, ny=ny, nx=nx)
    time = np.datetime64("2021-03-01T00:00", "ns") + np.arange(nt) * np.timedelta64(3, "h")
    layouts = {f.name: FieldLayout(name=f.name, array=f.name, shape=(nt, ny, nx), chunks=(4, 5, 7),
                                   axes=(0, None, None, 1, 2), periodic_x=True) for f in fields}
    return LatLonTokenizer(grid, time, SamplingConfig(fields=list(fields), time_step=1), layouts)


def test_meta_of_fields_sharing_a_geometry_equals_each_alone_and_is_not_shared():
    same = dict(num_tokens=(2, 2, 3), token_size=(2, 3, 4), normalization="none")
    fields = [FieldConfig(name="a", **same), FieldConfig(name="b", **same),
              FieldConfig(name="c", num_tokens=(1, 3, 2), token_size=(4, 2, 6), normalization="none")]
    tok = _tokenizer(fields)
    boxes = tok.check_boxes([[0, 0, 15], [6, 6, 0], [3, 2, 9]])  # the first crosses the x seam
    meta = tok.meta(boxes)
    for f in fields:
        alone = _tokenizer([f]).meta(boxes)[f.name]
        for key in ("t_index", "time", "hour", "day_of_year", "lat", "lon", "level"):
            np.testing.assert_array_equal(getattr(meta[f.name], key), getattr(alone, key), err_msg=f"{f.name}.{key}")
    assert meta["c"].lat.shape != meta["a"].lat.shape  # the other geometry really is another one
    for key in ("t_index", "time", "hour", "day_of_year", "lat", "lon"):
        assert not np.shares_memory(getattr(meta["a"], key), getattr(meta["b"], key)), key
    assert not np.shares_memory(meta["a"].hour, meta["a"].day_of_year)
    meta["b"].lat[...] = -1.0  # a consumer writing into one field's metadata leaves the other's alone
    np.testing.assert_array_equal(meta["a"].lat, _tokenizer([fields[0]]).meta(boxes)["a"].lat)
