"""The roof's plain chunk reader and chunk geometry agree with zarr-python; the page-cache tools work on files."""

from __future__ import annotations

import contextlib
import itertools
import warnings

import numpy as np
import pytest
import zarr

from profiling.chunkmap import ArrayChunks, batch_decodes, box_chunks, open_chunk_maps, window_chunks
from profiling.peers import FieldSpec, StoreSpec
from profiling.roofs import (
    drop_page_cache,
    memcpy_gbps,
    read_decode_roof,
    read_roof,
    resident_fraction,
    store_files,
)
from tests.fastload.stores import make_atmorep, make_per_variable

KINDS = {
    "v2-blosc": dict(layout="pv", zarr_format=2, codec="blosc-lz4"),
    "v3-sharded-zstd": dict(layout="pv", zarr_format=3, codec="zstd", sharded=True),
    "v3-lz4": dict(layout="pv", zarr_format=3, codec="lz4"),
    "atmorep-v3-gzip": dict(layout="ar", zarr_format=3, codec="gzip"),
    "atmorep-v2-none": dict(layout="ar", zarr_format=2, codec="none"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def store(request, tmp_path_factory):
    kw = dict(KINDS[request.param])
    layout = kw.pop("layout")
    path = tmp_path_factory.mktemp(request.param) / "s.zarr"
    make = make_per_variable if layout == "pv" else make_atmorep
    with _quiet():
        make(path, **kw)
    arrays = ("t", "q", "sp") if layout == "pv" else ("data", "data_sfc")
    return str(path), kw["zarr_format"], arrays


@contextlib.contextmanager
def _quiet():
    """zarr warns that numcodecs codecs (lz4) are not in the v3 spec; the builders and readers know."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_every_chunk_decodes_like_zarr(store):
    path, fmt, arrays = store
    for name in arrays:
        with _quiet():
            z = zarr.open_array(store=path, path=name, mode="r", zarr_format=fmt)
            full = z[...]
        geom = ArrayChunks(path, name, fmt)
        assert geom.chunks == tuple(z.chunks)
        assert geom._fast is not None  # plain chains decode straight into the roof's buffers
        grid = [range(-(-s // c)) for s, c in zip(geom.shape, geom.chunks)]
        missing = 0
        for chunk in itertools.product(*grid):
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(chunk, geom.chunks, geom.shape))
            raw = geom.read_raw(chunk)
            if raw is None:
                missing += 1
                assert np.isnan(full[region]).all(), (name, chunk)  # fill value NaN: never written
                continue
            dec = geom.decode(raw)
            assert dec.shape == geom.chunks and dec.dtype == full.dtype
            into = np.full(geom.chunk_nbytes, 0xAB, np.uint8)
            geom.decode_into(raw, into)
            np.testing.assert_array_equal(into.view(dec.dtype).reshape(dec.shape), dec)
            valid = tuple(slice(0, r.stop - r.start) for r in region)
            np.testing.assert_array_equal(dec[valid], full[region], err_msg=f"{name} {chunk}")
        if name == "q":
            assert missing > 0  # the builder leaves one time chunk of q unwritten


@pytest.mark.parametrize("endian", ["big", "little"])
@pytest.mark.parametrize("sharded", [False, True])
def test_a_v3_array_of_either_byte_order_decodes_like_numpy(tmp_path, endian, sharded):
    """The bytes codec's endian (an enum in zarr < 3.2, a string since) is read: the chunks of a big- and a
    little-endian float32 array decode to the NumPy array written, with and without shards."""
    from zarr.codecs import BytesCodec, ZstdCodec

    data = np.arange(6 * 8, dtype=np.float32).reshape(6, 8) * np.float32(1.5) - 7
    path = str(tmp_path / "e.zarr")
    with _quiet():
        z = zarr.create_array(store=path, name="a", shape=data.shape, chunks=(3, 4), dtype="float32",
                              shards=(6, 8) if sharded else None, serializer=BytesCodec(endian=endian),
                              compressors=ZstdCodec(), fill_value=np.nan)  # fmt: skip
        z[...] = data
    geom = ArrayChunks(path, "a", 3)
    assert geom._chain.endian == (">" if endian == "big" else "<")
    for chunk in itertools.product(range(2), range(2)):
        dec = geom.decode(geom.read_raw(chunk))
        assert dec.dtype == np.float32  # native order, as zarr hands it out
        np.testing.assert_array_equal(dec, data[chunk[0] * 3:(chunk[0] + 1) * 3, chunk[1] * 4:(chunk[1] + 1) * 4])


def _spec(path: str, fmt: int, arrays) -> StoreSpec:
    if arrays[0] == "t":
        fields = (FieldSpec(name="t", array="t", axes=(0, None, 1, 2, 3), field_index=None, level_index=(2, 0),
                            num_tokens=(1, 2, 2), token_size=(2, 2, 3)),)  # fmt: skip
        ny, nx = 9, 16
    else:
        fields = (FieldSpec(name="velocity_u", array="data", axes=(0, 1, 2, 3, 4), field_index=1,
                            level_index=(4, 1), num_tokens=(1, 2, 2), token_size=(2, 2, 3)),
                  FieldSpec(name="msl", array="data_sfc", axes=(0, 1, None, 2, 3), field_index=1, level_index=None,
                            num_tokens=(1, 1, 1), token_size=(2, 4, 6)))  # fmt: skip
        ny, nx = 9, 16
    return StoreSpec(path=path, fields=fields, time_step=2, ny=ny, nx=nx, periodic_x=True, zarr_format=fmt)


def test_box_chunks_are_the_chunks_of_the_touched_elements(store):
    spec = _spec(*store)
    maps = open_chunk_maps(spec)
    for f in spec.fields:
        g = maps[f.array]
        for box in [(0, 0, 0), (1, 5, 13), (2, 3, 15)]:  # the last two cross the 0/360 seam
            bt, bh, bw = f.box
            idx: list = [[0]] * len(g.shape)
            t, fa, lev, y, x = f.axes
            idx[t] = [box[0] + k * spec.time_step for k in range(bt)]
            if fa is not None:
                idx[fa] = [f.field_index]
            if lev is not None:
                idx[lev] = list(f.level_index)
            idx[y] = list(range(box[1], box[1] + bh))
            idx[x] = [(box[2] + k) % spec.nx for k in range(bw)]
            want = {tuple(i // c for i, c in zip(e, g.chunks)) for e in itertools.product(*idx)}
            got = box_chunks(f, spec, g, box)
            assert len(got) == len(set(got)) and set(got) == want, (f.name, box)
        whole = set(window_chunks(f, spec, g, 1))
        assert all(c[f.axes[4]] in range(-(-spec.nx // g.chunks[f.axes[4]])) for c in whole)
        assert {c[f.axes[3]] for c in whole} == set(range(-(-spec.ny // g.chunks[f.axes[3]])))


def test_decode_models_and_roofs(store):
    spec = _spec(*store)
    maps = open_chunk_maps(spec)
    boxes = np.array([[0, 0, 0], [0, 1, 1], [1, 5, 13]])
    per_sample = batch_decodes(spec, maps, boxes, "per_sample")
    unique = batch_decodes(spec, maps, boxes, "unique")
    window = batch_decodes(spec, maps, boxes, "per_window")
    assert set(unique) == set(per_sample) and len(unique) == len(set(unique)) <= len(per_sample)
    assert set(unique) <= set(window)
    with pytest.raises(ValueError, match="decode model"):
        batch_decodes(spec, maps, boxes, "bogus")
    present = [t for t in unique if maps[t[0]].read_raw(t[1]) is not None]
    roof = read_decode_roof(maps, [unique, unique], workers=2)
    assert roof["chunks"] == 2 * len(unique)
    assert roof["decoded_bytes"] == 2 * sum(maps[a].chunk_nbytes for a, _ in present)
    raw = read_roof(maps, unique + unique, workers=1)
    assert raw["chunks"] == len(unique) and raw["stored_bytes"] * 2 == roof["stored_bytes"]


def test_page_cache_tools(store):
    files = store_files(store[0])
    assert files
    for f in files:
        with open(f, "rb") as fh:
            fh.read()
    warm = resident_fraction(files)
    assert warm is not None and 0.0 < warm <= 1.0
    assert drop_page_cache(files) == len(files)
    cold = resident_fraction(files)
    assert cold is not None and 0.0 <= cold <= warm


def test_memcpy_rate_is_positive():
    assert memcpy_gbps(nbytes=2**20, repeats=2) > 0
