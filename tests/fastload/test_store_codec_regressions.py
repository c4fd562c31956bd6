"""Regressions found by the zarr differential fuzz (``test_store_fuzz.py``), each minimised to a plain test: the
bug it found is in its docstring."""

from __future__ import annotations

import json
import warnings

import numcodecs
import numpy as np
import pytest
import zarr

import fastload
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import CodecError, ConfigError
from fastload.store import open_store

from .stores import make_atmorep
from .test_extract import crop, tokens
from .test_store_fuzz import _quiet, assert_same, zarr_read


def _tiny_store(path, fmt: int, data: np.ndarray, **kw) -> None:
    """A per-variable store with field ``v`` (time, latitude, longitude) = ``data``, written by zarr-python with
    ``kw``, and plain coordinates."""
    dims = ("time", "latitude", "longitude")
    with _quiet():
        root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
        named = {"dimension_names": dims} if fmt == 3 else {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}}
        v = root.create_array("v", shape=data.shape, dtype=data.dtype, **named, **kw)
        v[...] = data
        nt, ny, nx = data.shape
        for name, vals, attrs in [
            ("time", np.arange(nt) * 6, {"units": "hours since 2000-01-01", "calendar": "standard"}),
            ("latitude", np.linspace(80.0, -80.0, ny), {}),
            ("longitude", np.arange(nx) * 360.0 / nx, {}),
        ]:
            attrs = {**attrs, "_ARRAY_DIMENSIONS": [name]} if fmt == 2 else attrs
            extra = {"dimension_names": (name,)} if fmt == 3 else {}
            c = root.create_array(name, shape=vals.shape, dtype=vals.dtype, attributes=attrs, **extra)
            c[...] = vals


def test_sharded_one_byte_type_whose_inner_bytes_codec_has_no_configuration(tmp_path):
    """zarr-python writes the inner ``bytes`` codec of a one-byte type as ``{"name": "bytes"}`` (no endian, so no
    configuration): open_store raised KeyError('configuration')."""
    from zarr.codecs import BytesCodec, ShardingCodec

    data = np.arange(2 * 3 * 4, dtype="u1").reshape(2, 3, 4)
    _tiny_store(tmp_path / "s.zarr", 3, data, chunks=(2, 3, 4), compressors=None, fill_value=0,
                serializer=ShardingCodec(chunk_shape=(1, 3, 4), codecs=[BytesCodec(endian=None)]))  # fmt: skip
    inner = json.loads((tmp_path / "s.zarr" / "v" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert inner == [{"name": "bytes"}]
    store = open_store(tmp_path / "s.zarr")
    assert_same(store.read_array("v"), zarr_read(tmp_path / "s.zarr", "v"), "read_array('v')")
    assert_same(store.read("v")[:, 0], data, "read('v')")


@pytest.mark.parametrize("transpose", [None, (0, 1, 2), (2, 0, 1), (2, 1, 0)])
def test_v3_numcodecs_delta_filter_reads_as_zarr(tmp_path, transpose):
    """zarr-python writes ``filters=[numcodecs.Delta]`` as the v3 array-to-array codec ``numcodecs.delta`` (a
    safe numeric codec): open_store refused it, telling the user to pass allow_unsafe_codecs=True, with which it
    failed too. It is read as zarr-python reads it, also inside a shard's inner chain. After a transpose that
    moves axes, zarr-python runs the delta over the transposed chunk in memory order and reads some such chunks
    back scrambled (order (2, 1, 0) here), so fastload refuses delta with a transpose, naming the array and why."""
    from zarr.codecs import BytesCodec, ShardingCodec, TransposeCodec
    from zarr.codecs import numcodecs as nc

    data = np.random.default_rng(0).integers(-1000, 1000, (3, 5, 7)).astype("i4")
    with _quiet():
        filters = ([TransposeCodec(order=transpose)] if transpose else []) + [nc.Delta(dtype="<i4")]
    _tiny_store(tmp_path / "s.zarr", 3, data, chunks=(2, 3, 4), filters=filters, compressors=None, fill_value=0)
    chain = [c["name"] for c in json.loads((tmp_path / "s.zarr" / "v" / "zarr.json").read_text())["codecs"]]
    assert chain[-2:] == ["numcodecs.delta", "bytes"]
    if transpose not in (None, (0, 1, 2)):
        with pytest.raises(CodecError, match=r"array 'v' .*'numcodecs.delta' with a 'transpose' .* is not supported"):
            open_store(tmp_path / "s.zarr")
        return
    store = open_store(tmp_path / "s.zarr")
    assert_same(store.read_array("v"), zarr_read(tmp_path / "s.zarr", "v"), "delta")
    assert_same(store.read_array("v"), data, "delta, as written")
    with _quiet():
        inner = ShardingCodec(chunk_shape=(1, 5, 7), codecs=[*filters, BytesCodec()])
    _tiny_store(tmp_path / "h.zarr", 3, data, chunks=(3, 5, 7), serializer=inner, compressors=None, fill_value=0)
    assert_same(open_store(tmp_path / "h.zarr").read_array("v"), zarr_read(tmp_path / "h.zarr", "v"), "sharded")


def test_v2_fixedscaleoffset_edge_chunk_padded_with_nan_decodes_without_warning(tmp_path):
    """zarr-python fills the part of an edge chunk past the array with the fill value (NaN), which
    fixedscaleoffset casts to INT_MIN; decoding it to float16 overflows to -inf there (never read). NumPy warned
    at each such chunk, and where warnings are errors (this test suite, ``python -W error``) the sound chunk was a
    ChunkReadError 'cannot decode: RuntimeWarning: overflow encountered in cast'."""
    data = (np.random.default_rng(0).standard_normal((2, 3, 4)) * 20 + 280).astype("f2")
    fso = numcodecs.FixedScaleOffset(offset=280, scale=100, dtype="<f2", astype="<i4")
    _tiny_store(tmp_path / "s.zarr", 2, data, chunks=(1, 3, 3), filters=[fso], compressors=None, fill_value=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = open_store(tmp_path / "s.zarr").read_array("v")
    assert_same(got, zarr_read(tmp_path / "s.zarr", "v"), "read_array('v')")


@pytest.mark.parametrize("fmt", [2, 3])
def test_packed_atmorep_array_is_refused_like_a_packed_field(tmp_path, fmt):
    """An AtmoRep array stored packed (``scale_factor``/``add_offset`` on ``data_sfc``, as xarray writes int16
    data) gave its raw integers to extract and the Loader: the packing check looked at the field's attributes,
    which an AtmoRep field did not carry. Its fields are now refused as packed per-variable fields are."""
    from .stores import _array

    truth = make_atmorep(tmp_path / "a.zarr", zarr_format=fmt, nt=2, ny=5, nx=8)
    with _quiet():
        root = zarr.open_group(str(tmp_path / "a.zarr"), mode="a")
        packed = np.round((truth["data_sfc"] - 273.15) / 0.01).astype("i2")
        del root["data_sfc"]
        _array(root, "data_sfc", packed, ("time", "field", "lat", "lon"), zarr_format=fmt, chunks=(1, 1, 5, 8),
               attrs={"fields": truth["sfc_fields"], "scale_factor": 0.01, "add_offset": 273.15}, fill_value=-999)
    store = open_store(tmp_path / "a.zarr")
    f = FieldConfig(name="t2m", num_tokens=(1, 1, 1), token_size=(1, 2, 2), normalization="none")
    with pytest.raises(ConfigError, match=r"fields\.t2m: stored packed \(attributes \['add_offset', 'scale_factor'\]\)"):
        fastload.extract(store, SamplingConfig(fields=[f]), [[0, 0, 0]])
    assert store.fields["t2m"].attrs == {"scale_factor": 0.01, "add_offset": 273.15}  # what rechunk --unpack reads
    g = FieldConfig(name="temperature", levels=(96.0,), num_tokens=(1, 1, 1), token_size=(1, 2, 2),
                    normalization="none")  # fmt: skip
    got = fastload.extract(store, SamplingConfig(fields=[g]), [[1, 3, 7]])["temperature"].data  # unpacked: read
    assert_same(got, tokens(crop(truth["data"][:, 0], [[1, 3, 7]], g.box, levels=[0]), g), "temperature")


def test_v3_float_delta_over_an_inf_decodes_as_zarr_python_without_warning(tmp_path):
    """An inf among float values (the fill value planted as a missing marker) under the delta filter: the writer
    stores inf then ``y - inf = -inf``, whose decode sums ``inf + -inf``: NaN, as zarr-python reads it, with NumPy's
    'invalid value encountered in accumulate', which made the chunk a ChunkReadError where warnings are errors
    (the store fuzz's example after review r3 M2 had narrowed the decode's quiet floating-point state to overflow)."""
    from zarr.codecs import numcodecs as nc

    data = np.random.default_rng(1).standard_normal((2, 3, 5)).astype("f4")
    data[0, 1, 1] = np.inf
    with _quiet():
        filters = [nc.Delta(dtype="<f4")]
    _tiny_store(tmp_path / "s.zarr", 3, data, chunks=(1, 3, 5), filters=filters, compressors=None,
                fill_value=np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = open_store(tmp_path / "s.zarr").read_array("v")
    assert_same(got, zarr_read(tmp_path / "s.zarr", "v"), "read_array('v')")
    assert np.isnan(got[0, 1, 2])  # what the writer's delta left of the value after the inf
